package nbd

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
)

// errAbort ends a connection after NBD_OPT_ABORT (an orderly end).
var errAbort = errors.New("nbd: client aborted negotiation")

// ErrProtocol is wrapped by errors ServeConn returns when the client
// violates the protocol.
var ErrProtocol = errors.New("nbd: protocol violation")

// ErrTLSRequired is wrapped by errors ServeConn returns when a server with
// Options.RequireTLS closed a connection that did not start TLS where the
// protocol gives no way to refuse politely (NBD_OPT_EXPORT_NAME, or a
// client without fixed newstyle negotiation).
var ErrTLSRequired = errors.New("nbd: TLS is required")

// transmissionFlags computes the flags advertised for e.
func transmissionFlags(e *Export, structured bool) uint16 {
	f := tflagHasFlags | tflagSendFlush | tflagCanMultiConn
	if e.ReadOnly {
		f |= tflagReadOnly
	} else {
		f |= tflagSendFUA | tflagSendTrim | tflagSendWriteZeros | tflagSendFastZero
	}
	if structured {
		f |= tflagSendDF // reads are always answered with one data chunk
	}
	return f
}

// handshake runs fixed-newstyle negotiation. On success c.exp is set and
// the connection is ready for transmission.
func (c *conn) handshake() error {
	var g [greetingLen]byte
	binary.BigEndian.PutUint64(g[0:], magicNBD)
	binary.BigEndian.PutUint64(g[8:], magicIHaveOpt)
	binary.BigEndian.PutUint16(g[16:], hflagFixedNewstyle|hflagNoZeroes)
	c.bw.Write(g[:])
	if err := c.bw.Flush(); err != nil {
		return fmt.Errorf("nbd: send greeting: %w", err)
	}
	var cf [4]byte
	if _, err := io.ReadFull(c.br, cf[:]); err != nil {
		return fmt.Errorf("nbd: read client flags: %w", err)
	}
	flags := binary.BigEndian.Uint32(cf[:])
	if flags&^cflagKnown != 0 {
		return fmt.Errorf("%w: unknown client flags %#x", ErrProtocol, flags)
	}
	c.noZeroes = flags&cflagNoZeroes != 0
	if c.s.opts.RequireTLS && flags&cflagFixedNewstyle == 0 {
		c.log.Warn("nbd: refused a client without fixed newstyle negotiation: TLS is required and needs it", "remote", c.remote())
		return fmt.Errorf("%w: the client does not use fixed newstyle negotiation", ErrTLSRequired)
	}

	var hb [optHeaderLen]byte
	for {
		if _, err := io.ReadFull(c.br, hb[:]); err != nil {
			if errors.Is(err, io.EOF) {
				return io.EOF
			}
			return fmt.Errorf("nbd: read option header: %w", err)
		}
		h, err := parseOptionHeader(hb[:])
		if err != nil {
			return fmt.Errorf("%w: %v", ErrProtocol, err)
		}
		if h.length > maxOptionLen {
			if h.opt == optExportName || h.length > maxOptionDrain {
				return fmt.Errorf("%w: option %d has %d bytes of data", ErrProtocol, h.opt, h.length)
			}
			if _, err := c.br.Discard(int(h.length)); err != nil {
				return fmt.Errorf("nbd: discard option data: %w", err)
			}
			typ, msg := repErrTooBig, "option data too long"
			switch {
			case h.opt == optStartTLS:
				typ, msg = repErrInvalid, "NBD_OPT_STARTTLS takes no data"
			case c.plaintextRefused(h.opt):
				typ, msg = repErrTLSReqd, tlsRequiredMsg
			}
			if err := c.optReply(h.opt, typ, []byte(msg)); err != nil {
				return err
			}
			continue
		}
		if cap(c.optBuf) < int(h.length) {
			c.optBuf = make([]byte, h.length)
		}
		data := c.optBuf[:h.length]
		if _, err := io.ReadFull(c.br, data); err != nil {
			return fmt.Errorf("nbd: read option %d data: %w", h.opt, err)
		}
		done, err := c.option(h.opt, data)
		if err != nil || done {
			return err
		}
	}
}

// tlsRequiredMsg accompanies NBD_REP_ERR_TLS_REQD.
const tlsRequiredMsg = "this server requires TLS: send NBD_OPT_STARTTLS first (e.g. an nbds:// URI)"

// plaintextRefused reports whether opt must be refused because TLS is
// required and not yet started: every option but STARTTLS and ABORT.
func (c *conn) plaintextRefused(opt uint32) bool {
	if !c.s.opts.RequireTLS || c.tls || opt == optStartTLS || opt == optAbort {
		return false
	}
	if !c.refusedPlain {
		c.refusedPlain = true // once per connection: a client may send many
		c.log.Warn("nbd: refused an option sent before TLS (TLS is required)", "remote", c.remote(), "option", opt)
	}
	return true
}

// option handles one option; done reports that transmission starts.
func (c *conn) option(opt uint32, data []byte) (done bool, err error) {
	if c.plaintextRefused(opt) {
		if opt == optExportName {
			// It cannot be answered with an error: close.
			return false, fmt.Errorf("%w: NBD_OPT_EXPORT_NAME before NBD_OPT_STARTTLS", ErrTLSRequired)
		}
		return false, c.optReply(opt, repErrTLSReqd, []byte(tlsRequiredMsg))
	}
	switch opt {
	case optStartTLS:
		return false, c.startTLS(data)

	case optExportName:
		e := c.s.lookup(string(data))
		if e == nil {
			return false, fmt.Errorf("%w: NBD_OPT_EXPORT_NAME for unknown export %q", ErrProtocol, data)
		}
		c.exp = e
		var b [8 + 2 + exportNameZeroes]byte
		binary.BigEndian.PutUint64(b[0:], uint64(e.Device.Size()))
		binary.BigEndian.PutUint16(b[8:], transmissionFlags(e, c.structured))
		n := len(b)
		if c.noZeroes {
			n = 10
		}
		c.bw.Write(b[:n])
		if err := c.bw.Flush(); err != nil {
			return false, fmt.Errorf("nbd: send export info: %w", err)
		}
		return true, nil

	case optAbort:
		// Best effort: the client may already have gone.
		_ = c.optReply(opt, repAck, nil)
		return false, errAbort

	case optList:
		if len(data) != 0 {
			return false, c.optReply(opt, repErrInvalid, []byte("NBD_OPT_LIST takes no data"))
		}
		for _, e := range c.s.list() {
			b := c.scratch[:0]
			b = binary.BigEndian.AppendUint32(b, uint32(len(e.Name)))
			b = append(b, e.Name...)
			b = append(b, e.Description...)
			c.scratch = b
			if err := c.optReplyNoFlush(opt, repServer, b); err != nil {
				return false, err
			}
		}
		return false, c.optReply(opt, repAck, nil)

	case optInfo, optGo:
		req, err := parseInfoRequest(data)
		if err != nil {
			return false, c.optReply(opt, repErrInvalid, []byte(err.Error()))
		}
		e := c.s.lookup(req.name)
		if e == nil {
			return false, c.optReply(opt, repErrUnknown, []byte("no such export"))
		}
		b := appendExportInfo(c.scratch[:0], uint64(e.Device.Size()), transmissionFlags(e, c.structured))
		if err := c.optReplyNoFlush(opt, repInfo, b); err != nil {
			return false, err
		}
		var wantName, wantDesc bool
		for _, t := range req.infos {
			switch t {
			case infoName:
				wantName = true
			case infoDescription:
				wantDesc = true
			}
		}
		if wantName {
			b = binary.BigEndian.AppendUint16(c.scratch[:0], infoName)
			b = append(b, e.Name...)
			if err := c.optReplyNoFlush(opt, repInfo, b); err != nil {
				return false, err
			}
		}
		if wantDesc && e.Description != "" {
			b = binary.BigEndian.AppendUint16(c.scratch[:0], infoDescription)
			b = append(b, e.Description...)
			if err := c.optReplyNoFlush(opt, repInfo, b); err != nil {
				return false, err
			}
		}
		// Block sizes are always sent (the protocol allows unrequested
		// info), so clients learn the 32 MiB request cap.
		b = appendBlockSizeInfo(c.scratch[:0], e.MinBlockSize, e.PreferredBlockSize, e.MaxBlockSize)
		c.scratch = b
		if err := c.optReplyNoFlush(opt, repInfo, b); err != nil {
			return false, err
		}
		if err := c.optReply(opt, repAck, nil); err != nil {
			return false, err
		}
		if opt == optGo {
			c.exp = e
			return true, nil
		}
		return false, nil

	case optStructuredReply:
		if len(data) != 0 {
			return false, c.optReply(opt, repErrInvalid, []byte("NBD_OPT_STRUCTURED_REPLY takes no data"))
		}
		c.structured = true
		return false, c.optReply(opt, repAck, nil)

	default:
		// Metadata contexts, extended headers and anything unknown.
		return false, c.optReply(opt, repErrUnsup, []byte("option not supported"))
	}
}

// startTLS answers NBD_OPT_STARTTLS and, after the ACK, runs the TLS
// handshake; option haggling then goes on inside TLS with the state
// negotiated before it forgotten, as the protocol requires. A failed
// handshake ends the connection (after the ACK there is no way back).
func (c *conn) startTLS(data []byte) error {
	switch {
	case c.s.opts.TLS == nil:
		return c.optReply(optStartTLS, repErrUnsup, []byte("TLS is not enabled on this server"))
	case c.tls:
		return c.optReply(optStartTLS, repErrInvalid, []byte("TLS is already active"))
	case len(data) != 0:
		return c.optReply(optStartTLS, repErrInvalid, []byte("NBD_OPT_STARTTLS takes no data"))
	}
	if err := c.optReply(optStartTLS, repAck, nil); err != nil {
		return err
	}
	// A client that sent its ClientHello without waiting for the ACK has
	// bytes in c.br already: the TLS layer reads them first.
	var under net.Conn = c.raw
	if n := c.br.Buffered(); n > 0 {
		ahead, _ := c.br.Peek(n)
		under = &prefixConn{Conn: c.raw, r: io.MultiReader(bytes.NewReader(bytes.Clone(ahead)), c.raw)}
	}
	tc := tls.Server(under, c.s.opts.TLS)
	if err := tc.Handshake(); err != nil {
		if !c.stopping.Load() {
			c.log.Warn("nbd: TLS handshake failed", "remote", c.remote(), "err", err)
		}
		return fmt.Errorf("nbd: TLS handshake: %w", err)
	}
	st := tc.ConnectionState()
	client := ""
	if len(st.PeerCertificates) > 0 {
		client = st.PeerCertificates[0].Subject.CommonName
	}
	c.log.Debug("nbd: TLS started", "remote", c.remote(), "version", tls.VersionName(st.Version),
		"cipher", tls.CipherSuiteName(st.CipherSuite), "client_cert", client)
	c.nc, c.tls = tc, true
	c.br = bufio.NewReaderSize(tc, handshakeBufSize)
	c.bw = bufio.NewWriterSize(tc, handshakeBufSize)
	c.structured = false
	return nil
}

// prefixConn reads r (bytes already buffered, then the connection) and
// otherwise is its Conn.
type prefixConn struct {
	net.Conn
	r io.Reader
}

func (p *prefixConn) Read(b []byte) (int, error) { return p.r.Read(b) }

// optReplyNoFlush queues one option reply.
func (c *conn) optReplyNoFlush(opt, typ uint32, data []byte) error {
	var h [optReplyHdrLen]byte
	binary.BigEndian.PutUint64(h[0:], magicOptReply)
	binary.BigEndian.PutUint32(h[8:], opt)
	binary.BigEndian.PutUint32(h[12:], typ)
	binary.BigEndian.PutUint32(h[16:], uint32(len(data)))
	c.bw.Write(h[:])
	if _, err := c.bw.Write(data); err != nil {
		return fmt.Errorf("nbd: send option reply: %w", err)
	}
	return nil
}

// optReply sends one option reply and flushes.
func (c *conn) optReply(opt, typ uint32, data []byte) error {
	if err := c.optReplyNoFlush(opt, typ, data); err != nil {
		return err
	}
	if err := c.bw.Flush(); err != nil {
		return fmt.Errorf("nbd: send option reply: %w", err)
	}
	return nil
}
