package e2e

// A minimal NBD client (fixed newstyle handshake, NBD_OPT_GO, simple
// replies) for tests that need control no client tool gives: pipelining
// without reading replies, dropping the connection mid-request.

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"
)

// Protocol constants (NBD protocol specification).
const (
	nbdMagic          = 0x4e42444d41474943 // "NBDMAGIC"
	nbdOptMagic       = 0x49484156454f5054 // "IHAVEOPT"
	nbdRepMagic       = 0x0003e889045565a9
	nbdRequestMagic   = 0x25609513
	nbdSimpleReply    = 0x67446698
	flagFixedNewstyle = 1 << 0
	flagNoZeroes      = 1 << 1

	optExportName = 1
	optGo         = 7
	repAck        = 1
	repInfo       = 3
	repErrBit     = 1 << 31
	repErrUnsup   = repErrBit | 1
	infoExport    = 0

	cmdRead        = 0
	cmdWrite       = 1
	cmdDisc        = 2
	cmdFlush       = 3
	cmdTrim        = 4
	cmdWriteZeroes = 6

	cmdFlagFUA = 1 << 0
)

// rawConn is one NBD connection in transmission phase.
type rawConn struct {
	c      net.Conn
	size   uint64
	tflags uint16
	cookie uint64
}

// rawDial connects to addr ("HOST:PORT" or "unix:PATH") and negotiates
// export name.
func rawDial(ctx context.Context, addr, export string) (*rawConn, error) {
	network, a := "tcp", addr
	if p, ok := strings.CutPrefix(addr, "unix:"); ok {
		network, a = "unix", p
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, network, a)
	if err != nil {
		return nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	r := &rawConn{c: c}
	if err := r.handshake(export); err != nil {
		c.Close()
		return nil, fmt.Errorf("nbd handshake with %s: %w", addr, err)
	}
	c.SetDeadline(time.Time{})
	return r, nil
}

func (r *rawConn) handshake(export string) error {
	var hdr struct {
		Magic, Opt uint64
		Flags      uint16
	}
	if err := binary.Read(r.c, binary.BigEndian, &hdr); err != nil {
		return err
	}
	if hdr.Magic != nbdMagic || hdr.Opt != nbdOptMagic {
		return fmt.Errorf("bad greeting %#x %#x", hdr.Magic, hdr.Opt)
	}
	if hdr.Flags&flagFixedNewstyle == 0 {
		return errors.New("server is not fixed newstyle")
	}
	noZeroes := hdr.Flags&flagNoZeroes != 0
	cflags := uint32(flagFixedNewstyle)
	if noZeroes {
		cflags |= flagNoZeroes
	}
	if err := binary.Write(r.c, binary.BigEndian, cflags); err != nil {
		return err
	}
	// NBD_OPT_GO: name length, name, 0 information requests.
	var data bytes.Buffer
	binary.Write(&data, binary.BigEndian, uint32(len(export)))
	data.WriteString(export)
	binary.Write(&data, binary.BigEndian, uint16(0))
	if err := r.sendOpt(optGo, data.Bytes()); err != nil {
		return err
	}
	gotInfo := false
	for {
		var rep struct {
			Magic     uint64
			Opt, Type uint32
			Len       uint32
		}
		if err := binary.Read(r.c, binary.BigEndian, &rep); err != nil {
			return err
		}
		if rep.Magic != nbdRepMagic || rep.Opt != optGo {
			return fmt.Errorf("bad option reply %#x for option %d", rep.Magic, rep.Opt)
		}
		if rep.Len > 1<<20 {
			return fmt.Errorf("option reply of %d bytes", rep.Len)
		}
		payload := make([]byte, rep.Len)
		if _, err := io.ReadFull(r.c, payload); err != nil {
			return err
		}
		switch {
		case rep.Type == repErrUnsup:
			return r.exportName(export, noZeroes)
		case rep.Type&repErrBit != 0:
			return fmt.Errorf("NBD_OPT_GO refused: reply type %#x %q", rep.Type, payload)
		case rep.Type == repInfo:
			if len(payload) >= 12 && binary.BigEndian.Uint16(payload) == infoExport {
				r.size = binary.BigEndian.Uint64(payload[2:])
				r.tflags = binary.BigEndian.Uint16(payload[10:])
				gotInfo = true
			}
		case rep.Type == repAck:
			if !gotInfo {
				return errors.New("NBD_OPT_GO acknowledged without NBD_INFO_EXPORT")
			}
			return nil
		}
	}
}

func (r *rawConn) exportName(export string, noZeroes bool) error {
	if err := r.sendOpt(optExportName, []byte(export)); err != nil {
		return err
	}
	var rep struct {
		Size  uint64
		Flags uint16
	}
	if err := binary.Read(r.c, binary.BigEndian, &rep); err != nil {
		return err
	}
	r.size, r.tflags = rep.Size, rep.Flags
	if !noZeroes {
		_, err := io.ReadFull(r.c, make([]byte, 124))
		return err
	}
	return nil
}

func (r *rawConn) sendOpt(opt uint32, data []byte) error {
	b := binary.BigEndian.AppendUint64(nil, nbdOptMagic)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	_, err := r.c.Write(append(b, data...))
	return err
}

// send writes one request (with its payload for writes) and returns its
// cookie.
func (r *rawConn) send(typ, flags uint16, off uint64, length uint32, payload []byte) (uint64, error) {
	r.cookie++
	b := make([]byte, 28, 28+len(payload))
	binary.BigEndian.PutUint32(b[0:], nbdRequestMagic)
	binary.BigEndian.PutUint16(b[4:], flags)
	binary.BigEndian.PutUint16(b[6:], typ)
	binary.BigEndian.PutUint64(b[8:], r.cookie)
	binary.BigEndian.PutUint64(b[16:], off)
	binary.BigEndian.PutUint32(b[24:], length)
	_, err := r.c.Write(append(b, payload...))
	return r.cookie, err
}

// nbdError is a non-zero error code in a simple reply.
type nbdError uint32

func (e nbdError) Error() string { return fmt.Sprintf("nbd error %d", uint32(e)) }

// reply reads one simple reply; for a successful read, dataLen bytes of
// data follow and are returned.
func (r *rawConn) reply(wantCookie uint64, dataLen int) ([]byte, error) {
	var h struct {
		Magic, Err uint32
		Cookie     uint64
	}
	if err := binary.Read(r.c, binary.BigEndian, &h); err != nil {
		return nil, err
	}
	if h.Magic != nbdSimpleReply {
		return nil, fmt.Errorf("bad reply magic %#x", h.Magic)
	}
	if h.Cookie != wantCookie {
		return nil, fmt.Errorf("reply for cookie %d, want %d", h.Cookie, wantCookie)
	}
	if h.Err != 0 {
		return nil, nbdError(h.Err)
	}
	if dataLen == 0 {
		return nil, nil
	}
	p := make([]byte, dataLen)
	_, err := io.ReadFull(r.c, p)
	return p, err
}

func (r *rawConn) pwrite(p []byte, off uint64, flags uint16) error {
	c, err := r.send(cmdWrite, flags, off, uint32(len(p)), p)
	if err != nil {
		return err
	}
	_, err = r.reply(c, 0)
	return err
}

func (r *rawConn) pread(n int, off uint64) ([]byte, error) {
	c, err := r.send(cmdRead, 0, off, uint32(n), nil)
	if err != nil {
		return nil, err
	}
	return r.reply(c, n)
}

func (r *rawConn) flush() error {
	c, err := r.send(cmdFlush, 0, 0, 0, nil)
	if err != nil {
		return err
	}
	_, err = r.reply(c, 0)
	return err
}

// disconnect sends NBD_CMD_DISC and closes the connection.
func (r *rawConn) disconnect() error {
	_, err := r.send(cmdDisc, 0, 0, 0, nil)
	if cerr := r.c.Close(); err == nil {
		err = cerr
	}
	return err
}
