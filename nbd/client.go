package nbd

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
)

// Client is an NBD client: the fixed newstyle handshake, options
// (NBD_OPT_GO, INFO, EXPORT_NAME, LIST, STRUCTURED_REPLY, STARTTLS, ABORT),
// and the transmission phase with any number of requests in flight, simple
// and structured replies.
//
// Negotiation is synchronous: NewClient reads the greeting, then the
// caller sends options one at a time (Go, Info, ... or SendOption and
// ReadOptionReply for anything else). Go and ExportName enter the
// transmission phase, where one reader goroutine, owned by the Client and
// ended by Close (or by the server closing the connection), matches
// replies to requests; Send may be called from any goroutine. Connect does
// all of it for the usual case.
//
// Replies are checked: a reply for a cookie not in flight, a structured
// reply nobody negotiated, data outside a read's range, a read answered
// with less data than asked, or a chunk longer than the protocol allows
// fail the connection with an error wrapping ErrProtocol, so a server's
// mistake is never taken for data. No length read from the wire allocates
// more than the request it answers (option replies: at most
// maxOptionReply bytes).
type Client struct {
	nc     net.Conn
	br     *bufio.Reader
	bw     *bufio.Writer
	hflags uint16
	cflags uint32

	noReader bool // ConnectOptions.IgnoreReplies

	// Negotiated state.
	structured bool
	size       uint64
	tflags     uint16

	wmu sync.Mutex // bw during transmission

	mu      sync.Mutex
	pending map[uint64]*Call
	cookie  uint64
	order   uint64
	err     error // why the connection failed (reader's view)
	done    chan struct{}
}

// maxOptionReply bounds the data of one option reply the client reads.
const maxOptionReply = 1 << 20

// Errno is an error value an NBD server replied with (the protocol's
// numbers: EPERM 1, EIO 5, ENOMEM 12, EINVAL 22, ENOSPC 28, EOVERFLOW 75,
// ENOTSUP 95, ESHUTDOWN 108).
type Errno uint32

func (e Errno) Error() string {
	names := map[Errno]string{
		Errno(errnoPerm): "EPERM", Errno(errnoIO): "EIO", Errno(errnoNoMem): "ENOMEM", Errno(errnoInval): "EINVAL",
		Errno(errnoNoSpc): "ENOSPC", Errno(errnoOverflow): "EOVERFLOW", Errno(errnoNotSup): "ENOTSUP", Errno(errnoShutdown): "ESHUTDOWN",
	}
	if n, ok := names[e]; ok {
		return fmt.Sprintf("nbd: server replied %s (%d)", n, uint32(e))
	}
	return fmt.Sprintf("nbd: server replied error %d", uint32(e))
}

// OptionError is a server's refusal of an option (an NBD_REP_ERR_* reply).
type OptionError struct {
	Option, Type uint32
	// Message is the server's text, if any.
	Message string
}

func (e *OptionError) Error() string {
	names := map[uint32]string{
		repErrUnsup: "unsupported", repErrPolicy: "refused by policy", repErrInvalid: "invalid",
		repErrPlatform: "not supported on the server's platform", repErrTLSReqd: "TLS required",
		repErrUnknown: "unknown export", repErrShutdown: "server shutting down", repErrBlkReqd: "block size required",
		repErrTooBig: "too big",
	}
	what, ok := names[e.Type]
	if !ok {
		what = fmt.Sprintf("error %#x", e.Type)
	}
	s := fmt.Sprintf("nbd: option %d refused: %s", e.Option, what)
	if e.Message != "" {
		s += ": " + e.Message
	}
	return s
}

// Is makes errors.Is(err, ErrTLSRequired) true for NBD_REP_ERR_TLS_REQD.
func (e *OptionError) Is(target error) bool {
	return target == ErrTLSRequired && e.Type == repErrTLSReqd
}

// Unsupported reports whether the server does not know the option.
func (e *OptionError) Unsupported() bool { return e.Type == repErrUnsup }

// OptionReply is one reply to an option.
type OptionReply struct {
	Option, Type uint32
	Data         []byte
}

// ExportInfo is what the server said about an export (NBD_OPT_INFO, GO or
// EXPORT_NAME).
type ExportInfo struct {
	Size  uint64
	Flags uint16 // transmission flags
	// Name and Description, when the server sent them.
	Name, Description       string
	HasName, HasDescription bool
	// Block size constraints, when the server sent them.
	MinBlock, PreferredBlock, MaxBlock uint32
	HasBlockSize                       bool
}

// Information types that Info and Go may ask for (NBD_INFO_*).
const (
	InfoName        = infoName
	InfoDescription = infoDescription
	InfoBlockSize   = infoBlockSize
)

// Transmission flags of an export (a subset; see the protocol).
const (
	FlagReadOnly  = tflagReadOnly
	FlagSendFlush = tflagSendFlush
	FlagSendFUA   = tflagSendFUA
	FlagSendTrim  = tflagSendTrim
)

// ConnectOptions say how Connect negotiates.
type ConnectOptions struct {
	// Export is the export to select ("" for the server's default).
	Export string
	// TLS, when set, upgrades the connection with NBD_OPT_STARTTLS first.
	TLS *tls.Config
	// Structured asks for structured replies.
	Structured bool
	// IgnoreReplies starts the transmission phase without the reader
	// goroutine: requests go out and their replies stay unread on the
	// socket (tests of a server whose client stops reading). Wait then
	// returns only when its context ends.
	IgnoreReplies bool
}

// Connect dials addr ("HOST:PORT" or "unix:PATH"), negotiates as opts say
// (STARTTLS, structured replies, NBD_OPT_GO, or NBD_OPT_EXPORT_NAME from a
// server without GO) and returns a client in the transmission phase. The
// handshake is bounded by ctx.
func Connect(ctx context.Context, addr string, opts ConnectOptions) (*Client, error) {
	network, address := "tcp", addr
	if p, ok := strings.CutPrefix(addr, "unix:"); ok {
		network, address = "unix", p
	}
	var d net.Dialer
	nc, err := d.DialContext(ctx, network, address)
	if err != nil {
		return nil, fmt.Errorf("nbd: connect to %s: %w", addr, err)
	}
	stop := context.AfterFunc(ctx, func() { nc.Close() })
	c, err := connect(nc, opts)
	if !stop() {
		err = errors.Join(err, ctx.Err())
	}
	if err != nil {
		nc.Close()
		if c != nil {
			c.Close()
		}
		return nil, fmt.Errorf("nbd: negotiate with %s: %w", addr, err)
	}
	return c, nil
}

func connect(nc net.Conn, opts ConnectOptions) (*Client, error) {
	c, err := NewClient(nc)
	if err != nil {
		return nil, err
	}
	c.noReader = opts.IgnoreReplies
	if opts.TLS != nil {
		if err := c.StartTLS(opts.TLS); err != nil {
			return c, err
		}
	}
	if opts.Structured {
		if err := c.StructuredReplies(); err != nil {
			return c, err
		}
	}
	_, err = c.Go(opts.Export)
	var oe *OptionError
	if errors.As(err, &oe) && oe.Unsupported() {
		_, err = c.ExportName(opts.Export)
	}
	return c, err
}

// NewClient reads the server's greeting on nc and answers with the client
// flags FIXED_NEWSTYLE and, when the server offers it, NO_ZEROES. It fails
// for a server that does not speak fixed newstyle.
func NewClient(nc net.Conn) (*Client, error) {
	c, err := greet(nc)
	if err != nil {
		return nil, err
	}
	if c.hflags&hflagFixedNewstyle == 0 {
		return nil, fmt.Errorf("%w: the server does not speak fixed newstyle", ErrProtocol)
	}
	flags := cflagFixedNewstyle
	if c.hflags&hflagNoZeroes != 0 {
		flags |= cflagNoZeroes
	}
	return c, c.sendFlags(flags)
}

// NewClientFlags is NewClient sending exactly flags, whatever the server
// offered (for tests of a server's checks).
func NewClientFlags(nc net.Conn, flags uint32) (*Client, error) {
	c, err := greet(nc)
	if err != nil {
		return nil, err
	}
	return c, c.sendFlags(flags)
}

func greet(nc net.Conn) (*Client, error) {
	c := &Client{nc: nc, br: bufio.NewReaderSize(nc, 1<<20), bw: bufio.NewWriterSize(nc, 1<<20), pending: map[uint64]*Call{}}
	var g [greetingLen]byte
	if _, err := io.ReadFull(c.br, g[:]); err != nil {
		return nil, fmt.Errorf("nbd: read greeting: %w", err)
	}
	if binary.BigEndian.Uint64(g[:]) != magicNBD || binary.BigEndian.Uint64(g[8:]) != magicIHaveOpt {
		return nil, fmt.Errorf("%w: not a newstyle NBD server (greeting % x)", ErrProtocol, g[:16])
	}
	c.hflags = binary.BigEndian.Uint16(g[16:])
	return c, nil
}

func (c *Client) sendFlags(flags uint32) error {
	c.cflags = flags
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], flags)
	if _, err := c.nc.Write(b[:]); err != nil {
		return fmt.Errorf("nbd: send client flags: %w", err)
	}
	return nil
}

// HandshakeFlags are the flags of the server's greeting.
func (c *Client) HandshakeFlags() uint16 { return c.hflags }

// Conn is the connection (the TLS connection after StartTLS).
func (c *Client) Conn() net.Conn { return c.nc }

// Reader is the buffered reader the client reads replies from. Reading it
// directly is for tests of exchanges the client does not model (a server
// expected to close the connection, raw replies to raw requests).
func (c *Client) Reader() *bufio.Reader { return c.br }

// SetConn replaces the connection, for a caller that performed a TLS
// handshake of its own after NBD_OPT_STARTTLS.
func (c *Client) SetConn(nc net.Conn) {
	c.nc, c.br, c.bw = nc, bufio.NewReaderSize(nc, 1<<20), bufio.NewWriterSize(nc, 1<<20)
	c.structured = false
}

// SendOption sends option opt with data.
func (c *Client) SendOption(opt uint32, data []byte) error {
	b := appendOptionHeader(make([]byte, 0, optHeaderLen+len(data)), optHeader{opt: opt, length: uint32(len(data))})
	if _, err := c.nc.Write(append(b, data...)); err != nil {
		return fmt.Errorf("nbd: send option %d: %w", opt, err)
	}
	return nil
}

// ReadOptionReply reads one option reply. An acknowledged
// NBD_OPT_STRUCTURED_REPLY makes the client expect structured replies.
func (c *Client) ReadOptionReply() (OptionReply, error) {
	r, err := readOptionReply(c.br)
	if err == nil && r.Option == optStructuredReply && r.Type == repAck {
		c.structured = true
	}
	return r, err
}

// readOptionReply decodes one option reply from br.
func readOptionReply(br *bufio.Reader) (OptionReply, error) {
	var h [optReplyHdrLen]byte
	if _, err := io.ReadFull(br, h[:]); err != nil {
		return OptionReply{}, fmt.Errorf("nbd: read option reply: %w", err)
	}
	if m := binary.BigEndian.Uint64(h[:]); m != magicOptReply {
		return OptionReply{}, fmt.Errorf("%w: option reply magic %#x", ErrProtocol, m)
	}
	r := OptionReply{Option: binary.BigEndian.Uint32(h[8:]), Type: binary.BigEndian.Uint32(h[12:])}
	n := binary.BigEndian.Uint32(h[16:])
	if n > maxOptionReply {
		return OptionReply{}, fmt.Errorf("%w: option reply of %d bytes", ErrProtocol, n)
	}
	r.Data = make([]byte, n)
	if _, err := io.ReadFull(br, r.Data); err != nil {
		return OptionReply{}, fmt.Errorf("nbd: read option reply: %w", err)
	}
	return r, nil
}

// reply reads the reply to opt, failing on a reply to another option and
// turning error replies into *OptionError.
func (c *Client) reply(opt uint32) (OptionReply, error) {
	r, err := c.ReadOptionReply()
	if err != nil {
		return r, err
	}
	if r.Option != opt {
		return r, fmt.Errorf("%w: reply for option %d, want %d", ErrProtocol, r.Option, opt)
	}
	if r.Type&(1<<31) != 0 {
		return r, &OptionError{Option: opt, Type: r.Type, Message: string(r.Data)}
	}
	return r, nil
}

// simpleOption sends opt without data and expects an ACK.
func (c *Client) simpleOption(opt uint32) error {
	if err := c.SendOption(opt, nil); err != nil {
		return err
	}
	r, err := c.reply(opt)
	if err == nil && r.Type != repAck {
		err = fmt.Errorf("%w: option %d answered with type %#x, want ACK", ErrProtocol, opt, r.Type)
	}
	return err
}

// StructuredReplies negotiates structured replies (NBD_OPT_STRUCTURED_REPLY).
func (c *Client) StructuredReplies() error { return c.simpleOption(optStructuredReply) }

// StartTLS upgrades the connection (NBD_OPT_STARTTLS, then a TLS client
// handshake with cfg). Negotiation then continues inside TLS.
func (c *Client) StartTLS(cfg *tls.Config) error {
	if err := c.simpleOption(optStartTLS); err != nil {
		return err
	}
	tc := tls.Client(c.nc, cfg)
	if err := tc.Handshake(); err != nil {
		return fmt.Errorf("nbd: TLS handshake: %w", err)
	}
	c.SetConn(tc)
	return nil
}

// Abort ends negotiation (NBD_OPT_ABORT) and closes the connection.
func (c *Client) Abort() error {
	err := c.simpleOption(optAbort)
	return errors.Join(err, c.nc.Close())
}

// ListEntry is one export of NBD_OPT_LIST.
type ListEntry struct {
	Name, Description string
}

// List asks for the server's exports (NBD_OPT_LIST).
func (c *Client) List() ([]ListEntry, error) {
	if err := c.SendOption(optList, nil); err != nil {
		return nil, err
	}
	var out []ListEntry
	for {
		r, err := c.reply(optList)
		if err != nil {
			return out, err
		}
		switch r.Type {
		case repAck:
			return out, nil
		case repServer:
			if len(r.Data) < 4 || uint64(binary.BigEndian.Uint32(r.Data)) > uint64(len(r.Data)-4) {
				return out, fmt.Errorf("%w: malformed NBD_REP_SERVER", ErrProtocol)
			}
			n := binary.BigEndian.Uint32(r.Data)
			out = append(out, ListEntry{Name: string(r.Data[4 : 4+n]), Description: string(r.Data[4+n:])})
		default:
			return out, fmt.Errorf("%w: NBD_OPT_LIST answered with type %#x", ErrProtocol, r.Type)
		}
	}
}

// Info asks about export name (NBD_OPT_INFO), requesting the information
// types infos (InfoName, ...).
func (c *Client) Info(name string, infos ...uint16) (ExportInfo, error) {
	return c.info(optInfo, name, infos)
}

// Go selects export name (NBD_OPT_GO) and enters the transmission phase.
func (c *Client) Go(name string, infos ...uint16) (ExportInfo, error) {
	ei, err := c.info(optGo, name, infos)
	if err == nil {
		c.size, c.tflags = ei.Size, ei.Flags
		c.Transmission()
	}
	return ei, err
}

func (c *Client) info(opt uint32, name string, infos []uint16) (ExportInfo, error) {
	if len(name) > maxStringLen {
		return ExportInfo{}, fmt.Errorf("nbd: export name of %d bytes (at most %d)", len(name), maxStringLen)
	}
	if err := c.SendOption(opt, appendInfoRequest(nil, infoRequest{name: name, infos: infos})); err != nil {
		return ExportInfo{}, err
	}
	var ei ExportInfo
	sawExport := false
	for {
		r, err := c.reply(opt)
		if err != nil {
			return ei, err
		}
		switch r.Type {
		case repAck:
			if !sawExport {
				return ei, fmt.Errorf("%w: ACK without NBD_INFO_EXPORT", ErrProtocol)
			}
			return ei, nil
		case repInfo:
			if err := ei.parse(r.Data, &sawExport); err != nil {
				return ei, err
			}
		default:
			return ei, fmt.Errorf("%w: option %d answered with type %#x", ErrProtocol, opt, r.Type)
		}
	}
}

// parse decodes one NBD_REP_INFO payload into ei.
func (ei *ExportInfo) parse(b []byte, sawExport *bool) error {
	if len(b) < 2 {
		return fmt.Errorf("%w: short NBD_REP_INFO", ErrProtocol)
	}
	d := b[2:]
	switch binary.BigEndian.Uint16(b) {
	case infoExport:
		if len(d) != 10 {
			return fmt.Errorf("%w: NBD_INFO_EXPORT of %d bytes", ErrProtocol, len(d))
		}
		ei.Size, ei.Flags, *sawExport = binary.BigEndian.Uint64(d), binary.BigEndian.Uint16(d[8:]), true
	case infoName:
		ei.Name, ei.HasName = string(d), true
	case infoDescription:
		ei.Description, ei.HasDescription = string(d), true
	case infoBlockSize:
		if len(d) != 12 {
			return fmt.Errorf("%w: NBD_INFO_BLOCK_SIZE of %d bytes", ErrProtocol, len(d))
		}
		ei.MinBlock, ei.PreferredBlock, ei.MaxBlock = binary.BigEndian.Uint32(d), binary.BigEndian.Uint32(d[4:]), binary.BigEndian.Uint32(d[8:])
		ei.HasBlockSize = true
	}
	return nil
}

// ExportName selects export name with NBD_OPT_EXPORT_NAME (for servers
// without NBD_OPT_GO; the server closes the connection for an unknown
// name) and enters the transmission phase.
func (c *Client) ExportName(name string) (ExportInfo, error) {
	if err := c.SendOption(optExportName, []byte(name)); err != nil {
		return ExportInfo{}, err
	}
	var b [10 + exportNameZeroes]byte
	n := 10
	if c.cflags&cflagNoZeroes == 0 {
		n += exportNameZeroes
	}
	if _, err := io.ReadFull(c.br, b[:n]); err != nil {
		return ExportInfo{}, fmt.Errorf("nbd: NBD_OPT_EXPORT_NAME %q: %w", name, err)
	}
	ei := ExportInfo{Size: binary.BigEndian.Uint64(b[:]), Flags: binary.BigEndian.Uint16(b[8:])}
	c.size, c.tflags = ei.Size, ei.Flags
	c.Transmission()
	return ei, nil
}

// Size is the selected export's size.
func (c *Client) Size() uint64 { return c.size }

// Flags are the selected export's transmission flags.
func (c *Client) Flags() uint16 { return c.tflags }

// Transmission enters the transmission phase (Go and ExportName call it;
// a caller that negotiated with SendOption and ReadOptionReply itself
// calls it once the export is selected): the reader goroutine starts.
func (c *Client) Transmission() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done != nil {
		return
	}
	c.done = make(chan struct{})
	if c.noReader {
		return
	}
	go c.readLoop()
}

// Done is closed when the reader goroutine has ended (the connection
// failed or closed); nil before the transmission phase.
func (c *Client) Done() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.done
}

// Err is why the connection ended, once Done is closed.
func (c *Client) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Close closes the connection and waits for the reader goroutine.
func (c *Client) Close() error {
	err := c.nc.Close()
	if d := c.Done(); d != nil && !c.noReader {
		<-d
	}
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	return err
}

// Call is one request in flight.
type Call struct {
	Cmd    uint16
	Offset uint64
	Length uint32
	// Data receives a READ's data.
	Data []byte
	// Err is the request's outcome once Done is closed: nil, an Errno
	// the server replied with, or why the connection failed.
	Err error
	// Message is the text of a structured error reply.
	Message string
	// Simple: the final reply was a simple reply.
	Simple bool
	// Order numbers the final replies in the order they arrived (1, 2, ...).
	Order uint64
	// Done is closed when the request has its final reply or failed.
	Done chan struct{}

	got uint64 // data bytes received
}

// Commands (NBD_CMD_*) and their flags for Send.
const (
	CmdRead        = cmdRead
	CmdWrite       = cmdWrite
	CmdDisc        = cmdDisc
	CmdFlush       = cmdFlush
	CmdTrim        = cmdTrim
	CmdWriteZeroes = cmdWriteZeroes

	CmdFlagFUA    = cmdFlagFUA
	CmdFlagNoHole = cmdFlagNoHole
)

// Send issues a request without waiting for its reply: for a WRITE
// payload is sent; a READ's data lands in Call.Data (length bytes). A
// request on a failed connection completes at once with the failure.
// NBD_CMD_DISC has no reply (its Call is done when sent); the server then
// closes the connection once every request in flight was answered.
func (c *Client) Send(cmd, flags uint16, off uint64, length uint32, payload []byte) *Call {
	cl := &Call{Cmd: cmd, Offset: off, Length: length, Done: make(chan struct{})}
	if cmd == cmdRead {
		cl.Data = make([]byte, length)
	}
	c.mu.Lock()
	if c.err != nil {
		cl.Err = c.err
		c.mu.Unlock()
		close(cl.Done)
		return cl
	}
	c.cookie++
	cookie := c.cookie
	if cmd != cmdDisc {
		c.pending[cookie] = cl
	}
	c.mu.Unlock()
	h := appendRequestHeader(make([]byte, 0, requestLen), reqHeader{flags: flags, cmd: cmd, cookie: cookie, off: off, length: length})
	c.wmu.Lock()
	c.bw.Write(h)
	c.bw.Write(payload)
	err := c.bw.Flush()
	c.wmu.Unlock()
	if err != nil {
		c.fail(fmt.Errorf("nbd: send request: %w", err))
	}
	if cmd == cmdDisc {
		cl.Err = err
		close(cl.Done)
	}
	return cl
}

// Wait waits for cl's reply (or ctx) and returns its outcome.
func (c *Client) Wait(ctx context.Context, cl *Call) error {
	select {
	case <-cl.Done:
		return cl.Err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (c *Client) do(ctx context.Context, cmd, flags uint16, off int64, length uint32, payload []byte) (*Call, error) {
	if off < 0 {
		return nil, fmt.Errorf("nbd: negative offset %d", off)
	}
	cl := c.Send(cmd, flags, uint64(off), length, payload)
	return cl, c.Wait(ctx, cl)
}

// ReadAt reads len(p) bytes at off.
func (c *Client) ReadAt(ctx context.Context, p []byte, off int64) error {
	cl, err := c.do(ctx, cmdRead, 0, off, uint32(len(p)), nil)
	if err == nil {
		copy(p, cl.Data)
	}
	return err
}

// WriteAt writes p at off (fua: durable when it completes).
func (c *Client) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	_, err := c.do(ctx, cmdWrite, fuaFlag(fua), off, uint32(len(p)), p)
	return err
}

// Flush makes every completed write durable.
func (c *Client) Flush(ctx context.Context) error {
	_, err := c.do(ctx, cmdFlush, 0, 0, 0, nil)
	return err
}

// Trim discards length bytes at off.
func (c *Client) Trim(ctx context.Context, off int64, length uint32, fua bool) error {
	_, err := c.do(ctx, cmdTrim, fuaFlag(fua), off, length, nil)
	return err
}

// WriteZeroes zeroes length bytes at off.
func (c *Client) WriteZeroes(ctx context.Context, off int64, length uint32, fua bool) error {
	_, err := c.do(ctx, cmdWriteZeroes, fuaFlag(fua), off, length, nil)
	return err
}

// Disconnect sends NBD_CMD_DISC and closes the connection.
func (c *Client) Disconnect() error {
	err := c.Send(cmdDisc, 0, 0, 0, nil).Err
	return errors.Join(err, c.Close())
}

func fuaFlag(fua bool) uint16 {
	if fua {
		return cmdFlagFUA
	}
	return 0
}

// fail ends the connection with err: every request in flight completes
// with it.
func (c *Client) fail(err error) {
	c.mu.Lock()
	if c.err == nil {
		c.err = err
	}
	err = c.err
	p := c.pending
	c.pending = map[uint64]*Call{}
	c.mu.Unlock()
	for _, cl := range p {
		cl.Err = err
		close(cl.Done)
	}
	c.nc.Close()
}

func (c *Client) readLoop() {
	defer close(c.done)
	for {
		if err := c.readReply(); err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
				err = fmt.Errorf("nbd: connection closed: %w", err)
			}
			c.fail(err)
			return
		}
	}
}

// finish completes cl with err as its final reply.
func (c *Client) finish(cookie uint64, cl *Call, err error, simple bool) {
	c.mu.Lock()
	delete(c.pending, cookie)
	c.order++
	cl.Order = c.order
	c.mu.Unlock()
	cl.Err, cl.Simple = err, simple
	close(cl.Done)
}

func (c *Client) lookup(cookie uint64) *Call {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.pending[cookie]
}

// readReply reads one reply (a simple reply or a structured chunk) and
// completes its request when it is final.
func (c *Client) readReply() error {
	var h [chunkHeaderLen]byte
	if _, err := io.ReadFull(c.br, h[:4]); err != nil {
		return err
	}
	switch m := binary.BigEndian.Uint32(h[:]); m {
	case magicSimple:
		if _, err := io.ReadFull(c.br, h[4:simpleReplyLen]); err != nil {
			return err
		}
		errno, cookie := binary.BigEndian.Uint32(h[4:]), binary.BigEndian.Uint64(h[8:])
		cl := c.lookup(cookie)
		if cl == nil {
			return fmt.Errorf("%w: simple reply for cookie %d, which is not in flight", ErrProtocol, cookie)
		}
		var err error
		if errno != 0 {
			err = Errno(errno)
		}
		if cl.Cmd == cmdRead {
			if c.structured {
				return fmt.Errorf("%w: simple reply to a READ with structured replies negotiated", ErrProtocol)
			}
			if errno == 0 {
				if _, err := io.ReadFull(c.br, cl.Data); err != nil {
					return err
				}
			}
		}
		c.finish(cookie, cl, err, true)
		return nil
	case magicStructured:
		if _, err := io.ReadFull(c.br, h[4:]); err != nil {
			return err
		}
		return c.readChunk(h)
	default:
		return fmt.Errorf("%w: reply magic %#x", ErrProtocol, m)
	}
}

// readChunk reads the payload of a structured reply chunk with header h.
func (c *Client) readChunk(h [chunkHeaderLen]byte) error {
	if !c.structured {
		return fmt.Errorf("%w: structured reply without negotiation", ErrProtocol)
	}
	flags, typ := binary.BigEndian.Uint16(h[4:]), binary.BigEndian.Uint16(h[6:])
	cookie, n := binary.BigEndian.Uint64(h[8:]), binary.BigEndian.Uint32(h[16:])
	cl := c.lookup(cookie)
	if cl == nil {
		return fmt.Errorf("%w: chunk for cookie %d, which is not in flight", ErrProtocol, cookie)
	}
	var err error
	switch typ {
	case replyNone:
		if n != 0 {
			return fmt.Errorf("%w: NONE chunk of %d bytes", ErrProtocol, n)
		}
	case replyOffsetData:
		if cl.Cmd != cmdRead || n < 9 || uint64(n-8) > uint64(cl.Length) {
			return fmt.Errorf("%w: OFFSET_DATA chunk of %d bytes for a %d-byte request", ErrProtocol, n, cl.Length)
		}
		var ob [8]byte
		if _, err := io.ReadFull(c.br, ob[:]); err != nil {
			return err
		}
		off, dl := binary.BigEndian.Uint64(ob[:]), uint64(n-8)
		if off < cl.Offset || off-cl.Offset > uint64(cl.Length)-dl {
			return fmt.Errorf("%w: data chunk [%d,+%d) outside the request [%d,+%d)", ErrProtocol, off, dl, cl.Offset, cl.Length)
		}
		if _, err := io.ReadFull(c.br, cl.Data[off-cl.Offset:off-cl.Offset+dl]); err != nil {
			return err
		}
		cl.got += dl
	case replyError, replyErrorOffset:
		if n < 6 || n > 6+maxStringLen+8 {
			return fmt.Errorf("%w: error chunk of %d bytes", ErrProtocol, n)
		}
		p := make([]byte, n)
		if _, err := io.ReadFull(c.br, p); err != nil {
			return err
		}
		ml := int(binary.BigEndian.Uint16(p[4:]))
		want := 6 + ml
		if typ == replyErrorOffset {
			want += 8
		}
		if want != len(p) {
			return fmt.Errorf("%w: error chunk of %d bytes with a %d-byte message", ErrProtocol, n, ml)
		}
		errno := binary.BigEndian.Uint32(p)
		if errno == 0 {
			return fmt.Errorf("%w: error chunk with error 0", ErrProtocol)
		}
		err, cl.Message = Errno(errno), string(p[6:6+ml])
	default:
		return fmt.Errorf("%w: unknown chunk type %d", ErrProtocol, typ)
	}
	if flags&replyFlagDone == 0 {
		if err != nil {
			cl.Err = err // a later chunk ends the request
		}
		return nil
	}
	if err == nil {
		err = cl.Err
	}
	if err == nil && cl.Cmd == cmdRead && cl.got != uint64(cl.Length) {
		return fmt.Errorf("%w: read reply has %d of %d bytes", ErrProtocol, cl.got, cl.Length)
	}
	c.finish(cookie, cl, err, false)
	return nil
}
