package nbd

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"testing"
	"time"
)

// replyConn is a net.Conn whose reads come from a fixed byte string and
// whose writes are discarded.
type replyConn struct{ r io.Reader }

func (c replyConn) Read(b []byte) (int, error)     { return c.r.Read(b) }
func (c replyConn) Write(b []byte) (int, error)    { return len(b), nil }
func (replyConn) Close() error                     { return nil }
func (replyConn) LocalAddr() net.Addr              { return &net.UnixAddr{Net: "unix"} }
func (replyConn) RemoteAddr() net.Addr             { return &net.UnixAddr{Net: "unix"} }
func (replyConn) SetDeadline(time.Time) error      { return nil }
func (replyConn) SetReadDeadline(time.Time) error  { return nil }
func (replyConn) SetWriteDeadline(time.Time) error { return nil }
func appendSimpleReply(b []byte, errno uint32, cookie uint64) []byte {
	var h [simpleReplyLen]byte
	putSimpleReply(h[:], errno, cookie)
	return append(b, h[:]...)
}

func appendChunk(b []byte, flags, typ uint16, cookie uint64, payload []byte) []byte {
	var h [chunkHeaderLen]byte
	putChunkHeader(h[:], flags, typ, cookie, uint32(len(payload)))
	return append(append(b, h[:]...), payload...)
}

// FuzzClientReplies feeds arbitrary bytes to the client's reply decoder
// with three requests in flight (cookie 1: READ 4096 at 0; 2: WRITE; 3:
// READ 512 at 1000), with and without structured replies. It must never
// panic or write outside a request's buffer, and every request it
// completes without error must be complete (a READ has all its data).
func FuzzClientReplies(f *testing.F) {
	data := bytes.Repeat([]byte{0xab}, 4096)
	f.Add(false, appendSimpleReply(append(appendSimpleReply(nil, 0, 2), appendSimpleReply(nil, 0, 1)...), 0, 3))
	f.Add(false, append(appendSimpleReply(nil, 0, 1), data...))
	f.Add(false, appendSimpleReply(nil, 5, 3))
	od := binary.BigEndian.AppendUint64(nil, 0)
	f.Add(true, appendChunk(nil, replyFlagDone, replyOffsetData, 1, append(od, data...)))
	f.Add(true, appendChunk(appendChunk(nil, 0, replyOffsetData, 1, append(od, data[:2048]...)), replyFlagDone, replyOffsetData, 1,
		append(binary.BigEndian.AppendUint64(nil, 2048), data[:2048]...)))
	f.Add(true, appendErrorChunk(nil, 3, errnoIO, "disk on fire"))
	f.Add(true, appendErrorOffsetChunk(nil, 3, errnoInval, "bad", 1000))
	f.Add(true, appendChunk(appendSimpleReply(nil, 0, 2), replyFlagDone, replyNone, 1, nil))
	f.Fuzz(func(t *testing.T, structured bool, b []byte) {
		c := &Client{nc: replyConn{bytes.NewReader(b)}, br: bufio.NewReader(bytes.NewReader(b)), pending: map[uint64]*Call{}, structured: structured}
		calls := map[uint64]*Call{
			1: {Cmd: cmdRead, Offset: 0, Length: 4096, Data: make([]byte, 4096), Done: make(chan struct{})},
			2: {Cmd: cmdWrite, Offset: 0, Length: 4096, Done: make(chan struct{})},
			3: {Cmd: cmdRead, Offset: 1000, Length: 512, Data: make([]byte, 512), Done: make(chan struct{})},
		}
		for k, cl := range calls {
			c.pending[k] = cl
		}
		var err error
		for err == nil {
			err = c.readReply()
		}
		if !errors.Is(err, ErrProtocol) && !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("decoder failed with %v, want a protocol error or the end of the input", err)
		}
		for k, cl := range calls {
			select {
			case <-cl.Done:
			default:
				continue // still pending when the input ended
			}
			if cl.Cmd == cmdRead && len(cl.Data) != int(cl.Length) {
				t.Fatalf("cookie %d: data buffer resized to %d", k, len(cl.Data))
			}
			if cl.Err == nil && cl.Cmd == cmdRead && !cl.Simple && cl.got != uint64(cl.Length) {
				t.Fatalf("cookie %d completed with %d of %d bytes", k, cl.got, cl.Length)
			}
			if !structured && !cl.Simple {
				t.Fatalf("cookie %d completed by a structured reply that was not negotiated", k)
			}
		}
	})
}

// FuzzClientOptionReplies feeds arbitrary bytes to the option-reply and
// NBD_REP_INFO decoders: no panic, and no reply longer than the bound.
func FuzzClientOptionReplies(f *testing.F) {
	rep := func(opt, typ uint32, data []byte) []byte {
		b := binary.BigEndian.AppendUint64(nil, magicOptReply)
		b = binary.BigEndian.AppendUint32(b, opt)
		b = binary.BigEndian.AppendUint32(b, typ)
		b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
		return append(b, data...)
	}
	f.Add(append(rep(optGo, repInfo, appendExportInfo(nil, 1<<20, tflagHasFlags)), rep(optGo, repAck, nil)...))
	f.Add(rep(optGo, repInfo, appendBlockSizeInfo(nil, 512, 4096, 1<<20)))
	f.Add(rep(optGo, repErrUnknown, []byte("no such export")))
	f.Add(rep(optList, repServer, append(binary.BigEndian.AppendUint32(nil, 4), "diskdescription"...)))
	f.Fuzz(func(t *testing.T, b []byte) {
		br := bufio.NewReader(bytes.NewReader(b))
		for {
			r, err := readOptionReply(br)
			if err != nil {
				return
			}
			if len(r.Data) > maxOptionReply {
				t.Fatalf("reply of %d bytes", len(r.Data))
			}
			var ei ExportInfo
			var saw bool
			if ei.parse(r.Data, &saw) == nil && saw && len(r.Data) != 12 {
				t.Fatalf("NBD_INFO_EXPORT accepted from %d bytes", len(r.Data))
			}
		}
	})
}
