package nbd_test

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// A minimal NBD client for tests, written from the protocol document
// independently of the server's encoders.

const (
	cNBDMAGIC      = 0x4e42444d41474943
	cIHAVEOPT      = 0x49484156454F5054
	cOptReplyMagic = 0x3e889045565a9
	cReqMagic      = 0x25609513
	cSimpleMagic   = 0x67446698
	cStructMagic   = 0x668e33ef

	cOptExportName = 1
	cOptAbort      = 2
	cOptList       = 3
	cOptStartTLS   = 5
	cOptInfo       = 6
	cOptGo         = 7
	cOptStructured = 8
	cOptListMeta   = 9
	cOptSetMeta    = 10
	cOptExtHeaders = 11

	cRepAck        = 1
	cRepServer     = 2
	cRepInfo       = 3
	cRepErrUnsup   = 1<<31 + 1
	cRepErrInvalid = 1<<31 + 3
	cRepErrUnknown = 1<<31 + 6
	cRepErrTooBig  = 1<<31 + 9

	cInfoExport = 0
	cInfoName   = 1
	cInfoDesc   = 2
	cInfoBlock  = 3

	cFlagHasFlags  = 1 << 0
	cFlagReadOnly  = 1 << 1
	cFlagFlush     = 1 << 2
	cFlagFUA       = 1 << 3
	cFlagTrim      = 1 << 5
	cFlagWZeroes   = 1 << 6
	cFlagDF        = 1 << 7
	cFlagMultiConn = 1 << 8
	cFlagFastZero  = 1 << 11

	cCmdRead   = 0
	cCmdWrite  = 1
	cCmdDisc   = 2
	cCmdFlush  = 3
	cCmdTrim   = 4
	cCmdCache  = 5
	cCmdZeroes = 6
	cCmdBlock  = 7

	cCmdFlagFUA      = 1 << 0
	cCmdFlagNoHole   = 1 << 1
	cCmdFlagDF       = 1 << 2
	cCmdFlagFastZero = 1 << 4

	cReplyNone        = 0
	cReplyOffsetData  = 1
	cReplyError       = 1<<15 + 1
	cReplyErrorOffset = 1<<15 + 2

	eEPERM   = 1
	eEIO     = 5
	eEINVAL  = 22
	eENOSPC  = 28
	eENOTSUP = 95
)

type client struct {
	t  testing.TB
	nc net.Conn
	br *bufio.Reader

	structured bool
	size       uint64
	tflags     uint16

	wmu     sync.Mutex
	bw      *bufio.Writer
	mu      sync.Mutex
	pending map[uint64]*call
	cookie  atomic.Uint64
	rerr    error
	nreply  uint64 // replies received (reader goroutine only)
	rdone   chan struct{}
	strict  error // protocol violation seen by the reader
}

type call struct {
	cmd     uint16
	off     uint64
	length  uint32
	buf     []byte // READ destination
	errno   uint32
	msg     string
	simple  bool
	got     uint64 // bytes of data received
	done    chan struct{}
	replied bool   // set by the reader before done is closed
	seq     uint64 // arrival order of the final reply
}

// dialRaw connects and performs the greeting, sending clientFlags.
func dialRaw(t testing.TB, addr net.Addr, clientFlags uint32) *client {
	t.Helper()
	nc, err := net.DialTimeout(addr.Network(), addr.String(), 5*time.Second)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	return handshakeRaw(t, nc, clientFlags)
}

func handshakeRaw(t testing.TB, nc net.Conn, clientFlags uint32) *client {
	t.Helper()
	c := &client{t: t, nc: nc, br: bufio.NewReaderSize(nc, 1<<20), bw: bufio.NewWriterSize(nc, 1<<20), pending: map[uint64]*call{}}
	nc.SetDeadline(time.Now().Add(20 * time.Second))
	var g [18]byte
	if _, err := io.ReadFull(c.br, g[:]); err != nil {
		t.Fatalf("read greeting: %v", err)
	}
	if binary.BigEndian.Uint64(g[:]) != cNBDMAGIC || binary.BigEndian.Uint64(g[8:]) != cIHAVEOPT {
		t.Fatalf("bad greeting % x", g)
	}
	if hf := binary.BigEndian.Uint16(g[16:]); hf != 3 {
		t.Fatalf("handshake flags %#x, want FIXED_NEWSTYLE|NO_ZEROES", hf)
	}
	var f [4]byte
	binary.BigEndian.PutUint32(f[:], clientFlags)
	c.raw(f[:])
	if overTLS != nil && clientFlags&^3 == 0 && clientFlags&1 != 0 {
		if err := c.startTLS(overTLS.clientConfig(nil)); err != nil {
			t.Fatalf("TLS handshake: %v", err)
		}
	}
	return c
}

func (c *client) raw(b []byte) {
	c.t.Helper()
	if _, err := c.nc.Write(b); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

func (c *client) sendOpt(opt uint32, data []byte) {
	c.t.Helper()
	c.raw(appendOpt(nil, opt, data))
}

type optReply struct {
	opt, typ uint32
	data     []byte
}

func (c *client) readOptReply() (optReply, error) {
	var h [20]byte
	if _, err := io.ReadFull(c.br, h[:]); err != nil {
		return optReply{}, err
	}
	if m := binary.BigEndian.Uint64(h[:]); m != cOptReplyMagic {
		return optReply{}, fmt.Errorf("option reply magic %#x", m)
	}
	r := optReply{opt: binary.BigEndian.Uint32(h[8:]), typ: binary.BigEndian.Uint32(h[12:])}
	n := binary.BigEndian.Uint32(h[16:])
	if n > 1<<20 {
		return optReply{}, fmt.Errorf("option reply length %d", n)
	}
	r.data = make([]byte, n)
	if _, err := io.ReadFull(c.br, r.data); err != nil {
		return optReply{}, err
	}
	return r, nil
}

func (c *client) mustOptReply(opt uint32) optReply {
	c.t.Helper()
	r, err := c.readOptReply()
	if err != nil {
		c.t.Fatalf("option %d: %v", opt, err)
	}
	if r.opt != opt {
		c.t.Fatalf("reply for option %d, want %d", r.opt, opt)
	}
	return r
}

func infoData(name string, infos ...uint16) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
	b = append(b, name...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(infos)))
	for _, i := range infos {
		b = binary.BigEndian.AppendUint16(b, i)
	}
	return b
}

type exportInfo struct {
	size              uint64
	tflags            uint16
	name, desc        string
	hasName, hasDesc  bool
	minB, prefB, maxB uint32
	hasBlock          bool
}

// info sends NBD_OPT_INFO or NBD_OPT_GO and collects the replies up to the
// final one; it returns the final reply type.
func (c *client) info(opt uint32, name string, infos ...uint16) (exportInfo, uint32) {
	c.t.Helper()
	c.sendOpt(opt, infoData(name, infos...))
	var ei exportInfo
	sawExport := false
	for {
		r := c.mustOptReply(opt)
		switch r.typ {
		case cRepInfo:
			if len(r.data) < 2 {
				c.t.Fatalf("short NBD_REP_INFO")
			}
			d := r.data[2:]
			switch binary.BigEndian.Uint16(r.data) {
			case cInfoExport:
				if len(d) != 10 {
					c.t.Fatalf("INFO_EXPORT length %d", len(d))
				}
				ei.size, ei.tflags, sawExport = binary.BigEndian.Uint64(d), binary.BigEndian.Uint16(d[8:]), true
			case cInfoName:
				ei.name, ei.hasName = string(d), true
			case cInfoDesc:
				ei.desc, ei.hasDesc = string(d), true
			case cInfoBlock:
				if len(d) != 12 {
					c.t.Fatalf("INFO_BLOCK_SIZE length %d", len(d))
				}
				ei.minB, ei.prefB, ei.maxB = binary.BigEndian.Uint32(d), binary.BigEndian.Uint32(d[4:]), binary.BigEndian.Uint32(d[8:])
				ei.hasBlock = true
			}
		case cRepAck:
			if !sawExport {
				c.t.Fatalf("ACK without NBD_INFO_EXPORT")
			}
			if opt == cOptGo {
				c.size, c.tflags = ei.size, ei.tflags
			}
			return ei, r.typ
		default:
			return ei, r.typ
		}
	}
}

// negotiate runs the usual libnbd-like handshake: optional structured
// replies, then GO.
func negotiate(t testing.TB, addr net.Addr, export string, structured bool) *client {
	t.Helper()
	c := dialRaw(t, addr, 3)
	if structured {
		c.sendOpt(cOptStructured, nil)
		if r := c.mustOptReply(cOptStructured); r.typ != cRepAck {
			t.Fatalf("structured reply: type %#x", r.typ)
		}
		c.structured = true
	}
	if _, typ := c.info(cOptGo, export, cInfoBlock); typ != cRepAck {
		t.Fatalf("GO %q: reply %#x", export, typ)
	}
	c.start()
	return c
}

// start begins transmission: a goroutine demultiplexes replies.
func (c *client) start() {
	c.nc.SetDeadline(time.Time{})
	c.rdone = make(chan struct{})
	go c.readLoop()
}

func (c *client) fail(err error) {
	c.mu.Lock()
	if c.rerr == nil {
		c.rerr = err
	}
	p := c.pending
	c.pending = map[uint64]*call{}
	c.mu.Unlock()
	for _, cl := range p {
		close(cl.done)
	}
}

func (c *client) violation(format string, a ...any) {
	c.mu.Lock()
	if c.strict == nil {
		c.strict = fmt.Errorf(format, a...)
	}
	c.mu.Unlock()
}

func (c *client) readLoop() {
	defer close(c.rdone)
	var hdr [20]byte
	for {
		if _, err := io.ReadFull(c.br, hdr[:4]); err != nil {
			c.fail(err)
			return
		}
		switch binary.BigEndian.Uint32(hdr[:]) {
		case cSimpleMagic:
			if _, err := io.ReadFull(c.br, hdr[4:16]); err != nil {
				c.fail(err)
				return
			}
			errno, cookie := binary.BigEndian.Uint32(hdr[4:]), binary.BigEndian.Uint64(hdr[8:])
			cl := c.take(cookie)
			if cl == nil {
				c.fail(fmt.Errorf("simple reply for unknown cookie %d", cookie))
				return
			}
			cl.errno, cl.simple = errno, true
			if cl.cmd == cCmdRead {
				if c.structured {
					c.violation("simple reply to READ with structured replies")
				}
				if errno == 0 {
					if _, err := io.ReadFull(c.br, cl.buf); err != nil {
						c.fail(err)
						return
					}
					cl.got = uint64(len(cl.buf))
				}
			}
			c.nreply++
			cl.replied, cl.seq = true, c.nreply
			close(cl.done)
		case cStructMagic:
			if _, err := io.ReadFull(c.br, hdr[4:20]); err != nil {
				c.fail(err)
				return
			}
			if !c.structured {
				c.violation("structured reply without negotiation")
			}
			flags, typ := binary.BigEndian.Uint16(hdr[4:]), binary.BigEndian.Uint16(hdr[6:])
			cookie, n := binary.BigEndian.Uint64(hdr[8:]), binary.BigEndian.Uint32(hdr[16:])
			c.mu.Lock()
			cl := c.pending[cookie]
			c.mu.Unlock()
			if cl == nil || n > 64<<20 {
				c.fail(fmt.Errorf("chunk for cookie %d (len %d) unexpected", cookie, n))
				return
			}
			payload := make([]byte, n)
			if _, err := io.ReadFull(c.br, payload); err != nil {
				c.fail(err)
				return
			}
			switch typ {
			case cReplyNone:
				if n != 0 {
					c.violation("NONE chunk with length %d", n)
				}
			case cReplyOffsetData:
				if n < 9 {
					c.violation("OFFSET_DATA length %d", n)
					break
				}
				off := binary.BigEndian.Uint64(payload)
				d := payload[8:]
				if off < cl.off || off+uint64(len(d)) > cl.off+uint64(cl.length) {
					c.violation("data chunk [%d,+%d) outside request [%d,+%d)", off, len(d), cl.off, cl.length)
					break
				}
				copy(cl.buf[off-cl.off:], d)
				cl.got += uint64(len(d))
			case cReplyError, cReplyErrorOffset:
				if n < 6 {
					c.violation("error chunk length %d", n)
					break
				}
				cl.errno = binary.BigEndian.Uint32(payload)
				ml := int(binary.BigEndian.Uint16(payload[4:]))
				if 6+ml > len(payload) {
					c.violation("error message length %d", ml)
					break
				}
				cl.msg = string(payload[6 : 6+ml])
				if typ == cReplyErrorOffset {
					if len(payload) != 6+ml+8 {
						c.violation("ERROR_OFFSET length %d", n)
					}
				}
			default:
				c.violation("unknown chunk type %d", typ)
			}
			if flags&1 != 0 {
				c.take(cookie)
				c.nreply++
				cl.replied, cl.seq = true, c.nreply
				close(cl.done)
			}
		default:
			c.fail(fmt.Errorf("bad reply magic % x", hdr[:4]))
			return
		}
	}
}

func (c *client) take(cookie uint64) *call {
	c.mu.Lock()
	defer c.mu.Unlock()
	cl := c.pending[cookie]
	delete(c.pending, cookie)
	return cl
}

// send issues a request without waiting. For WRITE, payload is sent; for
// READ, the reply is stored in a new buffer of length bytes.
func (c *client) send(cmd, flags uint16, off uint64, length uint32, payload []byte) *call {
	cl := &call{cmd: cmd, off: off, length: length, done: make(chan struct{})}
	if cmd == cCmdRead {
		cl.buf = make([]byte, length)
	}
	cookie := c.cookie.Add(1)
	if cmd != cCmdDisc {
		c.mu.Lock()
		if c.rerr != nil {
			c.mu.Unlock()
			close(cl.done)
			return cl
		}
		c.pending[cookie] = cl
		c.mu.Unlock()
	}
	var h [28]byte
	binary.BigEndian.PutUint32(h[:], cReqMagic)
	binary.BigEndian.PutUint16(h[4:], flags)
	binary.BigEndian.PutUint16(h[6:], cmd)
	binary.BigEndian.PutUint64(h[8:], cookie)
	binary.BigEndian.PutUint64(h[16:], off)
	binary.BigEndian.PutUint32(h[24:], length)
	c.wmu.Lock()
	c.bw.Write(h[:])
	c.bw.Write(payload)
	err := c.bw.Flush()
	c.wmu.Unlock()
	if err != nil {
		c.fail(err)
	}
	return cl
}

// wait waits for cl and returns its NBD error (or a transport error if
// the connection failed before the reply arrived).
func (c *client) wait(cl *call) (uint32, error) {
	c.t.Helper()
	select {
	case <-cl.done:
	case <-time.After(20 * time.Second):
		c.t.Fatalf("timeout waiting for reply (cmd %d off %d)", cl.cmd, cl.off)
	}
	c.mu.Lock()
	err, strict := c.rerr, c.strict
	c.mu.Unlock()
	if strict != nil {
		c.t.Fatalf("protocol violation by server: %v", strict)
	}
	if !cl.replied {
		return 0, fmt.Errorf("no reply: %w", err)
	}
	if cl.errno == 0 && cl.cmd == cCmdRead && cl.got != uint64(cl.length) {
		return 0, fmt.Errorf("read reply has %d of %d bytes", cl.got, cl.length)
	}
	return cl.errno, nil
}

func (c *client) read(off uint64, n uint32) ([]byte, uint32) {
	c.t.Helper()
	cl := c.send(cCmdRead, 0, off, n, nil)
	errno, err := c.wait(cl)
	if err != nil {
		c.t.Fatalf("read %d+%d: %v", off, n, err)
	}
	return cl.buf, errno
}

func (c *client) do(cmd, flags uint16, off uint64, length uint32, payload []byte) uint32 {
	c.t.Helper()
	errno, err := c.wait(c.send(cmd, flags, off, length, payload))
	if err != nil {
		c.t.Fatalf("cmd %d %d+%d: %v", cmd, off, length, err)
	}
	return errno
}

func (c *client) write(off uint64, p []byte, flags uint16) uint32 {
	c.t.Helper()
	return c.do(cCmdWrite, flags, off, uint32(len(p)), p)
}

// disconnect sends NBD_CMD_DISC and waits for the server to close.
func (c *client) disconnect() {
	c.send(cCmdDisc, 0, 0, 0, nil)
	select {
	case <-c.rdone:
	case <-time.After(10 * time.Second):
		c.t.Errorf("server did not close after DISC")
	}
	c.nc.Close()
}
