package nbd_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/blockmirror/blockmirror/nbd"
)

// The tests drive the server through nbd.Client; client adds t.Fatal to
// it, and the c* constants below are the protocol's numbers written from
// the protocol document, for the raw messages the tests craft.

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

	eEPERM   = 1
	eEIO     = 5
	eEINVAL  = 22
	eENOSPC  = 28
	eENOTSUP = 95
)

// client is an nbd.Client whose helpers fail the test.
type client struct {
	*nbd.Client
	t testing.TB
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
	nc.SetDeadline(time.Now().Add(20 * time.Second))
	nc2, err := nbd.NewClientFlags(nc, clientFlags)
	if err != nil {
		t.Fatalf("greeting: %v", err)
	}
	c := &client{Client: nc2, t: t}
	if hf := c.HandshakeFlags(); hf != 3 {
		t.Fatalf("handshake flags %#x, want FIXED_NEWSTYLE|NO_ZEROES", hf)
	}
	if overTLS != nil && clientFlags&^3 == 0 && clientFlags&1 != 0 {
		if err := c.startTLS(overTLS.clientConfig(nil)); err != nil {
			t.Fatalf("TLS handshake: %v", err)
		}
	}
	return c
}

func (c *client) raw(b []byte) {
	c.t.Helper()
	if _, err := c.Conn().Write(b); err != nil {
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
	r, err := c.ReadOptionReply()
	return optReply{r.Option, r.Type, r.Data}, err
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
	var ei nbd.ExportInfo
	var err error
	switch opt {
	case cOptInfo:
		ei, err = c.Info(name, infos...)
	case cOptGo:
		ei, err = c.Go(name, infos...)
	default:
		c.t.Fatalf("info: option %d", opt)
	}
	out := exportInfo{size: ei.Size, tflags: ei.Flags, name: ei.Name, desc: ei.Description, hasName: ei.HasName, hasDesc: ei.HasDescription,
		minB: ei.MinBlock, prefB: ei.PreferredBlock, maxB: ei.MaxBlock, hasBlock: ei.HasBlockSize}
	var oe *nbd.OptionError
	switch {
	case err == nil:
		return out, cRepAck
	case errors.As(err, &oe):
		return out, oe.Type
	}
	c.t.Fatalf("option %d %q: %v", opt, name, err)
	return out, 0
}

// negotiate runs the usual libnbd-like handshake: optional structured
// replies, then GO.
func negotiate(t testing.TB, addr net.Addr, export string, structured bool) *client {
	t.Helper()
	c := dialRaw(t, addr, 3)
	if structured {
		if err := c.StructuredReplies(); err != nil {
			t.Fatalf("structured reply: %v", err)
		}
	}
	if _, typ := c.info(cOptGo, export, cInfoBlock); typ != cRepAck {
		t.Fatalf("GO %q: reply %#x", export, typ)
	}
	c.start()
	return c
}

// start begins transmission (after an export was selected by hand).
func (c *client) start() {
	c.Conn().SetDeadline(time.Time{})
	c.Transmission()
}

// send issues a request without waiting. For WRITE, payload is sent; for
// READ, the reply is stored in Call.Data.
func (c *client) send(cmd, flags uint16, off uint64, length uint32, payload []byte) *nbd.Call {
	return c.Send(cmd, flags, off, length, payload)
}

// wait waits for cl and returns its NBD error (or a transport error if
// the connection failed before the reply arrived). A protocol violation
// by the server fails the test.
func (c *client) wait(cl *nbd.Call) (uint32, error) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	err := c.Wait(ctx, cl)
	var errno nbd.Errno
	switch {
	case err == nil:
		return 0, nil
	case errors.As(err, &errno):
		return uint32(errno), nil
	case errors.Is(err, context.DeadlineExceeded):
		c.t.Fatalf("timeout waiting for reply (cmd %d off %d)", cl.Cmd, cl.Offset)
	case errors.Is(err, nbd.ErrProtocol):
		c.t.Fatalf("protocol violation by server: %v", err)
	}
	return 0, fmt.Errorf("no reply: %w", err)
}

func (c *client) read(off uint64, n uint32) ([]byte, uint32) {
	c.t.Helper()
	cl := c.send(cCmdRead, 0, off, n, nil)
	errno, err := c.wait(cl)
	if err != nil {
		c.t.Fatalf("read %d+%d: %v", off, n, err)
	}
	return cl.Data, errno
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
	case <-c.Done():
	case <-time.After(10 * time.Second):
		c.t.Errorf("server did not close after DISC")
	}
	c.Close()
}
