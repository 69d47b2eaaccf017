package transport

import (
	"io"
	"time"

	"github.com/quic-go/quic-go"
)

// streamBufSize is the size of a Stream's read buffer and of its write
// buffer. Parts of a frame at least this large bypass the write buffer.
const streamBufSize = 64 << 10

// Stream is a bidirectional, ordered, reliable byte stream carrying frames
// (see the package documentation for the format).
//
// Concurrency: one goroutine may read (ReadFrame) while another writes
// (WriteFrame, Flush, CloseWrite); neither side may be used by two
// goroutines at once. Cancel and the deadline setters may be called from
// any goroutine.
type Stream struct {
	qs *quic.Stream
	fr *FrameReader
	fw *FrameWriter
}

func newStream(qs *quic.Stream) *Stream {
	return &Stream{
		qs: qs,
		fr: NewFrameReader(qs, streamBufSize, DefaultMaxFrame),
		fw: NewFrameWriter(qs, streamBufSize, DefaultMaxFrame),
	}
}

// ID is the QUIC stream ID (unique within the connection).
func (s *Stream) ID() int64 { return int64(s.qs.StreamID()) }

// SetMaxFrame sets the largest payload accepted by ReadFrame and
// WriteFrame (default DefaultMaxFrame; n <= 0 restores it).
func (s *Stream) SetMaxFrame(n int) {
	s.fr.SetMaxFrame(n)
	s.fw.SetMaxFrame(n)
}

// WriteFrame buffers a frame whose payload is the concatenation of parts.
// Parts of 64 KiB or more are handed to QUIC without copying; smaller ones
// are copied into the buffer. The parts may be reused once WriteFrame
// returns. Data is only guaranteed to leave after Flush. Blocks on flow
// control (bounded by the write deadline).
func (s *Stream) WriteFrame(typ uint8, parts ...[]byte) error {
	return mapErr(s.fw.WriteFrame(typ, parts...))
}

// Flush hands all buffered frames to QUIC for sending.
func (s *Stream) Flush() error { return mapErr(s.fw.Flush()) }

// ReadFrame reads the next frame. The payload aliases buf when cap(buf)
// suffices, otherwise it is freshly allocated; the length is checked
// against the limit before any allocation (ErrFrameTooLarge). io.EOF means
// the peer called CloseWrite after a whole frame; io.ErrUnexpectedEOF that
// it did so inside one. A cancelled stream yields *StreamError; a dead
// connection its *CloseError / ErrIdleTimeout. A read deadline that expires
// before any byte of the next frame arrived may be retried; one that
// expires inside a frame leaves the stream unusable (the error repeats).
func (s *Stream) ReadFrame(buf []byte) (typ uint8, payload []byte, err error) {
	typ, payload, err = s.fr.ReadFrame(buf)
	if err != nil && err != io.EOF {
		err = mapErr(err)
	}
	return typ, payload, err
}

// CloseWrite flushes and then ends the sending direction; the peer's
// ReadFrame returns io.EOF after the last frame. Reading may continue.
func (s *Stream) CloseWrite() error {
	if err := s.fw.Flush(); err != nil {
		return mapErr(err)
	}
	return mapErr(s.qs.Close())
}

// Cancel aborts both directions with an application error code: unsent
// data is discarded and the peer's reads and writes fail with *StreamError.
func (s *Stream) Cancel(code uint64) {
	s.qs.CancelRead(quic.StreamErrorCode(code))
	s.qs.CancelWrite(quic.StreamErrorCode(code))
}

// SetDeadline sets both read and write deadlines; a blocked call then
// fails with an error matching os.ErrDeadlineExceeded. Zero clears it.
func (s *Stream) SetDeadline(t time.Time) error { return s.qs.SetDeadline(t) }

// SetReadDeadline sets the deadline for ReadFrame.
func (s *Stream) SetReadDeadline(t time.Time) error { return s.qs.SetReadDeadline(t) }

// SetWriteDeadline sets the deadline for WriteFrame, Flush and CloseWrite.
func (s *Stream) SetWriteDeadline(t time.Time) error { return s.qs.SetWriteDeadline(t) }
