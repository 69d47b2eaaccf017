package nbd

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

const (
	// Handshake buffers are small so that connections stuck in
	// negotiation cost little; transmission gets big ones.
	handshakeBufSize = 4 << 10
	readBufSize      = 256 << 10
	writeBufSize     = 256 << 10
)

// errDisc ends transmission after NBD_CMD_DISC; errStopped after a
// graceful shutdown request. Both are orderly ends.
var (
	errDisc    = errors.New("nbd: client sent NBD_CMD_DISC")
	errStopped = errors.New("nbd: server shutting down")
)

// request is one transmission request. A connection owns MaxInFlight of
// them; the free list doubles as the in-flight semaphore.
type request struct {
	reqHeader
	buf *[]byte // pooled payload (WRITE data, READ result)
	mem int64   // bytes held against the connection's buffer budget
}

// conn is the per-connection state. Fields after the handshake block are
// used only in transmission.
type conn struct {
	s *Server
	// raw is the accepted connection: deadlines, and closing it when the
	// connection must end without ceremony. nc carries the protocol: raw
	// itself, or the TLS connection over it after NBD_OPT_STARTTLS; it
	// changes only on the serving goroutine, before transmission.
	raw net.Conn
	nc  net.Conn
	br  *bufio.Reader
	log *slog.Logger

	// Handshake state (used by the serving goroutine only).
	noZeroes   bool
	structured bool
	tls        bool // NBD_OPT_STARTTLS succeeded: nc is a *tls.Conn
	// refusedPlain: a plaintext option was refused (logged once).
	refusedPlain bool
	exp          *Export
	optBuf       []byte
	scratch      []byte

	// Device context: cancelled on hard disconnect, on a reply write
	// error, or when the shutdown timeout expires.
	ctx    context.Context
	cancel context.CancelFunc

	stopping atomic.Bool   // graceful shutdown requested
	stopCh   chan struct{} // closed when stopping is set

	// Reply path: one buffered writer; wq counts replies waiting for or
	// holding wmu, and the last one out flushes.
	wmu    sync.Mutex
	bw     *bufio.Writer
	wq     atomic.Int32
	hbuf   [chunkHeaderLen + 8]byte // reply header scratch, under wmu
	errbuf []byte                   // error chunk scratch, under wmu
	wfail  atomic.Bool
	// abandoned: the shutdown timeout expired; the connection is closed
	// without a TLS close_notify (which could wait for a stuck client).
	abandoned atomic.Bool

	free     chan *request
	work     chan *request
	inflight sync.WaitGroup // dispatched requests not yet finished
	workers  sync.WaitGroup // worker goroutines
	mem      budget
	busy     atomic.Int32 // requests dispatched to workers and not yet replied
}

func newConn(s *Server, nc net.Conn) *conn {
	ctx, cancel := context.WithCancel(context.Background())
	return &conn{
		s:      s,
		raw:    nc,
		nc:     nc,
		br:     bufio.NewReaderSize(nc, handshakeBufSize),
		bw:     bufio.NewWriterSize(nc, handshakeBufSize),
		log:    s.log,
		ctx:    ctx,
		cancel: cancel,
		stopCh: make(chan struct{}),
	}
}

// serve is ServeConn.
func (c *conn) serve(ctx context.Context) error {
	defer c.close()
	defer c.cancel()
	done := make(chan struct{})
	var watcher sync.WaitGroup
	watcher.Add(1)
	go func() {
		defer watcher.Done()
		c.watch(ctx, done)
	}()
	defer watcher.Wait()
	defer close(done)

	if c.s.opts.HandshakeTimeout > 0 {
		c.raw.SetDeadline(time.Now().Add(c.s.opts.HandshakeTimeout))
	}
	if err := c.handshake(); err != nil {
		switch {
		case errors.Is(err, errAbort), err == io.EOF, c.stopping.Load():
			return nil
		}
		return err
	}
	c.raw.SetDeadline(time.Time{})
	if c.stopping.Load() {
		return nil
	}
	c.growBuffers()
	c.log.Debug("nbd: transmission", "remote", c.remote(), "export", c.exp.Name, "structured", c.structured, "tls", c.tls)
	return c.transmit()
}

// close ends the connection: over TLS with a close_notify alert when the
// connection ended in order, otherwise by closing the socket.
func (c *conn) close() {
	if c.tls && !c.abandoned.Load() && !c.wfail.Load() {
		c.nc.Close()
		return
	}
	c.raw.Close()
}

func (c *conn) remote() string { return c.raw.RemoteAddr().String() }

// growBuffers switches to transmission-sized buffers. The handshake
// writer is always flushed here; bytes the client sent ahead (requests
// pipelined behind NBD_OPT_EXPORT_NAME) are kept in front of the socket.
func (c *conn) growBuffers() {
	c.bw = bufio.NewWriterSize(c.nc, writeBufSize)
	if n := c.br.Buffered(); n > 0 {
		ahead, _ := c.br.Peek(n)
		c.br = bufio.NewReaderSize(io.MultiReader(bytes.NewReader(bytes.Clone(ahead)), c.nc), readBufSize)
		return
	}
	c.br = bufio.NewReaderSize(c.nc, readBufSize)
}

// watch turns cancellation of ctx into a graceful stop: reading stops at
// once; after ShutdownTimeout the device context is cancelled and all I/O
// is made to fail so the connection ends.
func (c *conn) watch(ctx context.Context, done <-chan struct{}) {
	select {
	case <-done:
		return
	case <-ctx.Done():
	}
	c.stopping.Store(true)
	close(c.stopCh)
	c.raw.SetReadDeadline(time.Now())
	t := time.NewTimer(c.s.opts.ShutdownTimeout)
	defer t.Stop()
	select {
	case <-done:
		return
	case <-t.C:
	}
	c.log.Warn("nbd: shutdown timeout, abandoning in-flight requests", "remote", c.remote())
	c.abandoned.Store(true)
	c.cancel()
	c.raw.SetDeadline(time.Now())
}

// transmit serves requests until the client disconnects or the server
// stops, then completes in-flight requests.
func (c *conn) transmit() error {
	n := c.s.opts.MaxInFlight
	c.free = make(chan *request, n)
	reqs := make([]request, n)
	for i := range reqs {
		c.free <- &reqs[i]
	}
	c.work = make(chan *request)
	c.mem.init(c.s.opts.MaxBufferBytes)

	err := c.readLoop()
	switch {
	case errors.Is(err, errDisc), errors.Is(err, errStopped):
		// Orderly: let in-flight requests finish and reply.
	default:
		// The client is gone (EOF without NBD_CMD_DISC is a hard
		// disconnect) or broke the protocol: nobody will read the
		// replies, so stop device work early.
		c.cancel()
	}
	c.inflight.Wait()
	close(c.work)
	c.workers.Wait()
	c.wmu.Lock()
	ferr := c.bw.Flush()
	c.wmu.Unlock()

	switch {
	case errors.Is(err, errDisc), errors.Is(err, errStopped), err == io.EOF:
		if ferr != nil && !c.stopping.Load() {
			return fmt.Errorf("nbd: flush replies: %w", ferr)
		}
		return nil
	}
	return err
}

// readLoop reads and dispatches requests. It returns errDisc, errStopped,
// io.EOF (client closed between requests) or the error that ended it.
func (c *conn) readLoop() error {
	var hb [requestLen]byte
	exp := c.exp
	size := uint64(exp.Device.Size())
	for {
		var r *request
		select {
		case r = <-c.free:
		default:
			select {
			case r = <-c.free:
			case <-c.stopCh:
				return errStopped
			}
		}
		if _, err := io.ReadFull(c.br, hb[:]); err != nil {
			c.free <- r
			return c.readErr(err, "request header")
		}
		h, err := parseRequestHeader(hb[:])
		if err != nil {
			c.free <- r
			return fmt.Errorf("%w: %v", ErrProtocol, err)
		}
		r.reqHeader = h
		if h.cmd == cmdDisc {
			c.free <- r
			return errDisc
		}
		if errno, msg := c.check(&h, size); errno != 0 {
			if h.cmd == cmdWrite && h.length > 0 {
				if h.length > maxWriteDrain {
					c.free <- r
					return fmt.Errorf("%w: write of %d bytes exceeds limit", ErrProtocol, h.length)
				}
				if _, err := c.br.Discard(int(h.length)); err != nil {
					c.free <- r
					return c.readErr(err, "write payload")
				}
			}
			c.replyErr(r, errno, msg)
			c.free <- r
			continue
		}
		if h.length == 0 && h.cmd != cmdFlush {
			// Zero-length read/write/trim/zero: a successful no-op.
			if h.cmd == cmdRead && c.structured {
				c.replyNone(r)
			} else {
				c.replyOK(r)
			}
			c.free <- r
			continue
		}
		switch h.cmd {
		case cmdRead, cmdWrite:
			r.mem = min(int64(h.length), c.mem.total)
			if !c.mem.acquire(r.mem, c.stopCh) {
				r.mem = 0
				c.free <- r
				return errStopped
			}
			r.buf = c.s.bufs.get(int(h.length))
			if h.cmd == cmdWrite {
				if _, err := io.ReadFull(c.br, *r.buf); err != nil {
					c.release(r)
					return c.readErr(err, "write payload")
				}
			}
		}
		c.inflight.Add(1)
		c.busy.Add(1)
		select {
		case c.work <- r:
		default:
			c.workers.Add(1)
			go c.worker(r)
		}
	}
}

// readErr classifies a read error from the client.
func (c *conn) readErr(err error, what string) error {
	if c.stopping.Load() {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, os.ErrDeadlineExceeded) {
			return errStopped
		}
	}
	if err == io.EOF && what == "request header" {
		return io.EOF
	}
	return fmt.Errorf("nbd: read %s: %w", what, err)
}

// check validates a request header against the export; it returns 0 or
// the NBD error to reply with.
func (c *conn) check(h *reqHeader, size uint64) (uint32, string) {
	e := c.exp
	var allowed uint16
	write := false
	switch h.cmd {
	case cmdRead:
		allowed = cmdFlagFUA
		if c.structured {
			allowed |= cmdFlagDF
		}
	case cmdWrite, cmdTrim:
		allowed, write = cmdFlagFUA, true
	case cmdWriteZeroes:
		allowed, write = cmdFlagFUA|cmdFlagNoHole|cmdFlagFastZero, true
	case cmdFlush:
		return checkFlags(h.flags, cmdFlagFUA)
	default:
		return errnoInval, "unsupported command"
	}
	if errno, msg := checkFlags(h.flags, allowed); errno != 0 {
		return errno, msg
	}
	if write && e.ReadOnly {
		return errnoPerm, "export is read-only"
	}
	if h.length > e.MaxBlockSize {
		return errnoInval, "request longer than maximum block size"
	}
	if m := uint64(e.MinBlockSize); m > 1 && (h.off%m != 0 || uint64(h.length)%m != 0) {
		return errnoInval, "request not aligned to minimum block size"
	}
	end := h.off + uint64(h.length)
	if end < h.off || end > size {
		if write {
			return errnoNoSpc, "request beyond end of export"
		}
		return errnoInval, "request beyond end of export"
	}
	return 0, ""
}

func checkFlags(flags, allowed uint16) (uint32, string) {
	if flags&^allowed != 0 {
		return errnoInval, "unsupported command flags"
	}
	return 0, ""
}

// worker serves r and then further requests handed over on c.work until
// it is closed.
func (c *conn) worker(r *request) {
	defer c.workers.Done()
	for {
		c.do(r)
		var ok bool
		if r, ok = <-c.work; !ok {
			return
		}
	}
}

// do performs r on the device, replies, and releases r.
func (c *conn) do(r *request) {
	dev := c.exp.Device
	off := int64(r.off)
	fua := r.flags&cmdFlagFUA != 0
	var err error
	var start time.Time
	if c.exp.Observe != nil {
		start = time.Now()
	}
	switch r.cmd {
	case cmdRead:
		err = dev.ReadAt(c.ctx, *r.buf, off)
		c.replyRead(r, err)
	case cmdWrite:
		if ow, ok := dev.(OwningWriter); ok {
			p := *r.buf
			r.buf = nil // the device keeps p: not back to the pool
			err = ow.WriteOwned(c.ctx, p, off, fua)
		} else {
			err = dev.WriteAt(c.ctx, *r.buf, off, fua)
		}
		c.replyStatus(r, err)
	case cmdFlush:
		err = dev.Flush(c.ctx)
		c.replyStatus(r, err)
	case cmdTrim:
		err = dev.Trim(c.ctx, off, int64(r.length), fua)
		c.replyStatus(r, err)
	case cmdWriteZeroes:
		err = dev.WriteZeroes(c.ctx, off, int64(r.length), ZeroFlags{
			FUA:      fua,
			NoHole:   r.flags&cmdFlagNoHole != 0,
			FastZero: r.flags&cmdFlagFastZero != 0,
		})
		c.replyStatus(r, err)
	}
	if err != nil && c.log.Enabled(context.Background(), slog.LevelDebug) {
		c.log.Debug("nbd: request failed", "cmd", r.cmd, "off", r.off, "len", r.length, "err", err)
	}
	if c.exp.Observe != nil {
		c.exp.Observe(cmdName(r.cmd), int(r.length), time.Since(start), err)
	}
	c.busy.Add(-1)
	c.release(r)
	c.inflight.Done()
}

// cmdName is the operation name Export.Observe receives.
func cmdName(cmd uint16) string {
	switch cmd {
	case cmdRead:
		return "read"
	case cmdWrite:
		return "write"
	case cmdFlush:
		return "flush"
	case cmdTrim:
		return "trim"
	case cmdWriteZeroes:
		return "zero"
	}
	return "other"
}

// release returns r's buffer and budget and puts r back on the free list.
func (c *conn) release(r *request) {
	if r.buf != nil {
		c.s.bufs.put(r.buf)
		r.buf = nil
	}
	if r.mem != 0 {
		c.mem.release(r.mem)
		r.mem = 0
	}
	c.free <- r
}

// beginReply takes the writer; endReply releases it, flushing if no other
// reply is waiting.
func (c *conn) beginReply() {
	c.wq.Add(1)
	c.wmu.Lock()
}

func (c *conn) endReply() {
	if c.wq.Add(-1) != 0 {
		// A later reply is waiting for the lock; it will flush.
		c.wmu.Unlock()
		return
	}
	if c.busy.Load() > 1 && c.bw.Available() > 64<<10 {
		// Other requests are executing and may finish within
		// microseconds: give them a chance to queue their replies so one
		// write carries several. Whoever finds the queue empty afterwards
		// flushes, so no reply is left behind.
		c.wmu.Unlock()
		runtime.Gosched()
		if c.wq.Load() != 0 {
			return
		}
		c.wmu.Lock()
		if c.wq.Load() != 0 || c.bw.Buffered() == 0 {
			c.wmu.Unlock()
			return
		}
	}
	c.flushLocked()
	c.wmu.Unlock()
}

func (c *conn) flushLocked() {
	if err := c.bw.Flush(); err != nil && !c.wfail.Swap(true) {
		c.log.Debug("nbd: write reply", "err", err)
		c.cancel()
		c.raw.Close() // unblocks the reader
	}
}

func (c *conn) writeSimple(errno uint32, cookie uint64) {
	putSimpleReply(c.hbuf[:], errno, cookie)
	c.bw.Write(c.hbuf[:simpleReplyLen])
}

// replyOK sends a simple success reply without payload.
func (c *conn) replyOK(r *request) {
	c.beginReply()
	c.writeSimple(0, r.cookie)
	c.endReply()
}

// replyNone sends a structured NONE chunk (success, no data).
func (c *conn) replyNone(r *request) {
	c.beginReply()
	putChunkHeader(c.hbuf[:], replyFlagDone, replyNone, r.cookie, 0)
	c.bw.Write(c.hbuf[:chunkHeaderLen])
	c.endReply()
}

// replyErr sends an error reply: an NBD_REPLY_TYPE_ERROR chunk when
// structured replies are on, else a simple reply.
func (c *conn) replyErr(r *request, errno uint32, msg string) {
	c.beginReply()
	if c.structured {
		c.errbuf = appendErrorChunk(c.errbuf[:0], r.cookie, errno, msg)
		c.bw.Write(c.errbuf)
	} else {
		c.writeSimple(errno, r.cookie)
	}
	c.endReply()
}

// replyStatus answers a non-read command.
func (c *conn) replyStatus(r *request, err error) {
	if err != nil {
		c.replyErr(r, ErrnoOf(err), err.Error())
		return
	}
	c.replyOK(r)
}

// replyRead answers a read. Nothing is sent before the device call has
// finished, so an error never follows a success header.
func (c *conn) replyRead(r *request, err error) {
	c.beginReply()
	switch {
	case err != nil && c.structured:
		c.errbuf = appendErrorOffsetChunk(c.errbuf[:0], r.cookie, ErrnoOf(err), err.Error(), r.off)
		c.bw.Write(c.errbuf)
	case err != nil:
		c.writeSimple(ErrnoOf(err), r.cookie)
	case c.structured:
		putChunkHeader(c.hbuf[:], replyFlagDone, replyOffsetData, r.cookie, 8+r.length)
		binary.BigEndian.PutUint64(c.hbuf[chunkHeaderLen:], r.off)
		c.bw.Write(c.hbuf[:chunkHeaderLen+8])
		c.bw.Write(*r.buf)
	default:
		c.writeSimple(0, r.cookie)
		c.bw.Write(*r.buf)
	}
	c.endReply()
}

// budget is a byte semaphore with a single acquirer (the reader) and many
// releasers.
type budget struct {
	total int64
	avail atomic.Int64
	wake  chan struct{}
}

func (b *budget) init(total int64) {
	b.total = total
	b.avail.Store(total)
	b.wake = make(chan struct{}, 1)
}

// acquire takes n bytes, waiting for releases; false if stop closed first.
func (b *budget) acquire(n int64, stop <-chan struct{}) bool {
	for {
		if b.avail.Load() >= n {
			b.avail.Add(-n)
			return true
		}
		select {
		case <-b.wake:
		case <-stop:
			return false
		}
	}
}

func (b *budget) release(n int64) {
	b.avail.Add(n)
	select {
	case b.wake <- struct{}{}:
	default:
	}
}
