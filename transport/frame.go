package transport

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
)

// Frame format constants. They are part of the wire format.
const (
	// FrameHeaderLen is the size of a frame header: type (1 byte) + payload
	// length (4 bytes, big endian).
	FrameHeaderLen = 5
	// MaxFrameLimit is the largest payload the header can describe.
	MaxFrameLimit = math.MaxUint32
	// DefaultMaxFrame is the default payload limit of a Stream (64 MiB).
	DefaultMaxFrame = 64 << 20
)

// PutFrameHeader writes the header of a frame of type typ with a payload of
// length bytes into b[:FrameHeaderLen]. It panics if b is too short.
func PutFrameHeader(b []byte, typ uint8, length uint32) {
	_ = b[FrameHeaderLen-1]
	b[0] = typ
	binary.BigEndian.PutUint32(b[1:FrameHeaderLen], length)
}

// ParseFrameHeader decodes a frame header from the start of b. A b shorter
// than FrameHeaderLen yields io.ErrUnexpectedEOF (or io.EOF when empty).
func ParseFrameHeader(b []byte) (typ uint8, length uint32, err error) {
	if len(b) < FrameHeaderLen {
		if len(b) == 0 {
			return 0, 0, io.EOF
		}
		return 0, 0, io.ErrUnexpectedEOF
	}
	return b[0], binary.BigEndian.Uint32(b[1:FrameHeaderLen]), nil
}

// AppendFrame appends one encoded frame whose payload is the concatenation
// of parts to dst. It fails with ErrFrameTooLarge if the payload exceeds
// MaxFrameLimit.
func AppendFrame(dst []byte, typ uint8, parts ...[]byte) ([]byte, error) {
	n, err := payloadLen(parts, MaxFrameLimit)
	if err != nil {
		return dst, err
	}
	var hdr [FrameHeaderLen]byte
	PutFrameHeader(hdr[:], typ, uint32(n))
	dst = append(dst, hdr[:]...)
	for _, p := range parts {
		dst = append(dst, p...)
	}
	return dst, nil
}

// DecodeFrame decodes the first frame of b. payload aliases b; rest is what
// follows the frame. A frame longer than max (0 = DefaultMaxFrame) fails
// with ErrFrameTooLarge; a truncated frame with io.ErrUnexpectedEOF; an
// empty b with io.EOF.
func DecodeFrame(b []byte, max int) (typ uint8, payload, rest []byte, err error) {
	if max <= 0 {
		max = DefaultMaxFrame
	}
	typ, n, err := ParseFrameHeader(b)
	if err != nil {
		return 0, nil, b, err
	}
	if uint64(n) > uint64(max) {
		return 0, nil, b, fmt.Errorf("%w: %d bytes, limit %d", ErrFrameTooLarge, n, max)
	}
	if uint64(len(b)-FrameHeaderLen) < uint64(n) {
		return 0, nil, b, io.ErrUnexpectedEOF
	}
	end := FrameHeaderLen + int(n)
	return typ, b[FrameHeaderLen:end:end], b[end:], nil
}

func payloadLen(parts [][]byte, max int) (int, error) {
	n := 0
	for _, p := range parts {
		n += len(p)
		if n > max || n < 0 {
			return 0, fmt.Errorf("%w: payload over %d bytes", ErrFrameTooLarge, max)
		}
	}
	return n, nil
}

// FrameReader reads frames from an io.Reader. It is not safe for concurrent
// use. A Stream embeds one; it is exported for use over other transports
// (e.g. net.Pipe in tests).
type FrameReader struct {
	r      *bufio.Reader
	max    int
	hdr    [FrameHeaderLen]byte
	broken error // sticky error after ErrFrameTooLarge / mid-frame failure
}

// NewFrameReader returns a reader with a read buffer of bufSize bytes
// (0 = 64 KiB) and the payload limit max (0 = DefaultMaxFrame).
func NewFrameReader(r io.Reader, bufSize, max int) *FrameReader {
	if bufSize <= 0 {
		bufSize = 64 << 10
	}
	fr := &FrameReader{r: bufio.NewReaderSize(r, bufSize)}
	fr.SetMaxFrame(max)
	return fr
}

// SetMaxFrame sets the largest payload ReadFrame accepts (n <= 0 restores
// DefaultMaxFrame).
func (fr *FrameReader) SetMaxFrame(n int) {
	if n <= 0 {
		n = DefaultMaxFrame
	}
	if uint64(n) > MaxFrameLimit {
		n = MaxFrameLimit
	}
	fr.max = n
}

// ReadFrame reads the next frame. If cap(buf) is at least the payload
// length, payload is buf[:length] (no allocation); otherwise a new slice is
// allocated — but only after the length was checked against the limit.
//
// Errors: io.EOF if the stream ended cleanly between frames;
// io.ErrUnexpectedEOF if it ended inside a frame; ErrFrameTooLarge;
// otherwise the underlying error. An error that happens before any byte of
// a frame was consumed (e.g. a read deadline while idle) may be retried;
// any other error is sticky, because the stream is out of sync.
func (fr *FrameReader) ReadFrame(buf []byte) (typ uint8, payload []byte, err error) {
	if fr.broken != nil {
		return 0, nil, fr.broken
	}
	if n, err := io.ReadFull(fr.r, fr.hdr[:]); err != nil {
		if n > 0 { // part of a header consumed: the stream is out of sync
			fr.broken = err
		}
		return 0, nil, err // io.EOF at a boundary, io.ErrUnexpectedEOF inside
	}
	typ, n, _ := ParseFrameHeader(fr.hdr[:])
	if uint64(n) > uint64(fr.max) {
		fr.broken = fmt.Errorf("%w: %d bytes, limit %d", ErrFrameTooLarge, n, fr.max)
		return 0, nil, fr.broken
	}
	if uint64(cap(buf)) >= uint64(n) {
		payload = buf[:n]
	} else {
		payload = make([]byte, n)
	}
	if _, err := io.ReadFull(fr.r, payload); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		fr.broken = err
		return 0, nil, err
	}
	return typ, payload, nil
}

// FrameWriter writes frames to an io.Writer through a buffer. Small parts
// are copied into the buffer; parts at least as large as the buffer go to
// the underlying writer directly (after the buffered bytes). Not safe for
// concurrent use.
type FrameWriter struct {
	w   *bufio.Writer
	max int
	hdr [FrameHeaderLen]byte
}

// NewFrameWriter returns a writer with a buffer of bufSize bytes (0 = 64 KiB)
// that refuses payloads larger than max (0 = DefaultMaxFrame).
func NewFrameWriter(w io.Writer, bufSize, max int) *FrameWriter {
	if bufSize <= 0 {
		bufSize = 64 << 10
	}
	fw := &FrameWriter{w: bufio.NewWriterSize(w, bufSize)}
	fw.SetMaxFrame(max)
	return fw
}

// SetMaxFrame sets the largest payload WriteFrame accepts (n <= 0 restores
// DefaultMaxFrame).
func (fw *FrameWriter) SetMaxFrame(n int) {
	if n <= 0 {
		n = DefaultMaxFrame
	}
	if uint64(n) > MaxFrameLimit {
		n = MaxFrameLimit
	}
	fw.max = n
}

// WriteFrame buffers one frame whose payload is the concatenation of parts.
// Nothing is guaranteed to be sent until Flush. The parts are not retained
// after WriteFrame returns. Fails with ErrFrameTooLarge (nothing written) if
// the payload exceeds the limit.
func (fw *FrameWriter) WriteFrame(typ uint8, parts ...[]byte) error {
	n, err := payloadLen(parts, fw.max)
	if err != nil {
		return err
	}
	PutFrameHeader(fw.hdr[:], typ, uint32(n))
	if _, err := fw.w.Write(fw.hdr[:]); err != nil {
		return err
	}
	for _, p := range parts {
		if len(p) >= fw.w.Size() && fw.w.Buffered() > 0 && len(p) > fw.w.Available() {
			// Send what is buffered, then hand the big part over uncopied.
			if err := fw.w.Flush(); err != nil {
				return err
			}
		}
		if _, err := fw.w.Write(p); err != nil {
			return err
		}
	}
	return nil
}

// Buffered returns the number of bytes waiting for Flush.
func (fw *FrameWriter) Buffered() int { return fw.w.Buffered() }

// Flush sends all buffered bytes.
func (fw *FrameWriter) Flush() error { return fw.w.Flush() }
