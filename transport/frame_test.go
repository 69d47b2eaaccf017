package transport_test

import (
	"bytes"
	"errors"
	"io"
	"runtime"
	"testing"

	"github.com/blockmirror/blockmirror/transport"
)

func TestDecodeFrameErrors(t *testing.T) {
	b, err := transport.AppendFrame(nil, 3, []byte("abc"), []byte("de"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b, []byte{3, 0, 0, 0, 5, 'a', 'b', 'c', 'd', 'e'}) {
		t.Fatalf("encoding % x", b)
	}
	if _, _, _, err := transport.DecodeFrame(nil, 0); err != io.EOF {
		t.Errorf("empty: %v", err)
	}
	for n := 1; n < len(b); n++ {
		if _, _, _, err := transport.DecodeFrame(b[:n], 0); err != io.ErrUnexpectedEOF {
			t.Errorf("truncated to %d: %v", n, err)
		}
	}
	if _, _, _, err := transport.DecodeFrame(b, 4); !errors.Is(err, transport.ErrFrameTooLarge) {
		t.Errorf("over limit: %v", err)
	}
}

func TestFrameReaderChecksLengthBeforeAllocating(t *testing.T) {
	hdr := make([]byte, transport.FrameHeaderLen)
	transport.PutFrameHeader(hdr, 9, 0xFFFFFFF0)
	fr := transport.NewFrameReader(bytes.NewReader(hdr), 0, 0)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, _, err := fr.ReadFrame(nil)
	runtime.ReadMemStats(&after)
	if !errors.Is(err, transport.ErrFrameTooLarge) {
		t.Fatalf("err = %v", err)
	}
	if d := after.TotalAlloc - before.TotalAlloc; d > 64<<10 {
		t.Fatalf("allocated %d bytes for a rejected frame", d)
	}
	// Truncated payload: io.ErrUnexpectedEOF.
	b, _ := transport.AppendFrame(nil, 1, make([]byte, 100))
	fr = transport.NewFrameReader(bytes.NewReader(b[:50]), 0, 0)
	if _, _, err := fr.ReadFrame(nil); err != io.ErrUnexpectedEOF {
		t.Fatalf("truncated payload: %v", err)
	}
}

func TestFrameWriterRefusesOversize(t *testing.T) {
	var out bytes.Buffer
	fw := transport.NewFrameWriter(&out, 0, 10)
	if err := fw.WriteFrame(1, make([]byte, 6), make([]byte, 5)); !errors.Is(err, transport.ErrFrameTooLarge) {
		t.Fatalf("err = %v", err)
	}
	if fw.Buffered() != 0 || out.Len() != 0 {
		t.Fatal("oversize frame partially written")
	}
}

// FuzzFrames checks decode(encode(x)) == x for frame sequences built from
// the input, and that arbitrary input never panics nor allocates beyond the
// limit.
func FuzzFrames(f *testing.F) {
	seed, _ := transport.AppendFrame(nil, 1, []byte("hello"))
	seed, _ = transport.AppendFrame(seed, 255, nil)
	seed, _ = transport.AppendFrame(seed, 0, bytes.Repeat([]byte{7}, 300))
	f.Add(seed, uint16(4096))
	f.Add([]byte{1, 0xff, 0xff, 0xff, 0xff}, uint16(10))
	f.Add([]byte{1, 0, 0}, uint16(0))
	f.Fuzz(func(t *testing.T, data []byte, limit uint16) {
		max := int(limit) + 1
		// 1. Arbitrary bytes: both decoders agree and respect the limit.
		fr := transport.NewFrameReader(bytes.NewReader(data), 16, max)
		rest := data
		for {
			typ, p, r, err := transport.DecodeFrame(rest, max)
			typ2, p2, err2 := fr.ReadFrame(nil)
			if (err == nil) != (err2 == nil) {
				t.Fatalf("DecodeFrame err %v, ReadFrame err %v", err, err2)
			}
			if err != nil {
				if !(err == io.EOF || err == io.ErrUnexpectedEOF || errors.Is(err, transport.ErrFrameTooLarge)) {
					t.Fatalf("unexpected error %v", err)
				}
				break
			}
			if len(p) > max || typ != typ2 || !bytes.Equal(p, p2) {
				t.Fatalf("decoders disagree or limit exceeded: %d/%d bytes", len(p), len(p2))
			}
			rest = r
		}
		// 2. Round trip: split data into frames and re-decode.
		var enc []byte
		var want [][]byte
		for i := 0; i < len(data); i += max {
			part := data[i:min(i+max, len(data))]
			var err error
			if enc, err = transport.AppendFrame(enc, uint8(i), part); err != nil {
				t.Fatal(err)
			}
			want = append(want, part)
		}
		rest = enc
		for i, w := range want {
			typ, p, r, err := transport.DecodeFrame(rest, max)
			if err != nil || typ != uint8(i*max) || !bytes.Equal(p, w) {
				t.Fatalf("frame %d: %v", i, err)
			}
			rest = r
		}
		if len(rest) != 0 {
			t.Fatalf("%d trailing bytes", len(rest))
		}
	})
}

// stutter returns data in the given chunk sizes, failing with errTimeout
// between chunks once.
type stutter struct {
	chunks [][]byte
	failed bool
}

var errTimeout = errors.New("timeout")

func (s *stutter) Read(p []byte) (int, error) {
	if len(s.chunks) == 0 {
		return 0, io.EOF
	}
	if !s.failed {
		s.failed = true
		return 0, errTimeout
	}
	s.failed = false
	n := copy(p, s.chunks[0])
	s.chunks[0] = s.chunks[0][n:]
	if len(s.chunks[0]) == 0 {
		s.chunks = s.chunks[1:]
	}
	return n, nil
}

func TestFrameReaderErrorsBetweenAndInsideFrames(t *testing.T) {
	f1, _ := transport.AppendFrame(nil, 1, []byte("abc"))
	f2, _ := transport.AppendFrame(nil, 2, []byte("defg"))
	// An error before a frame starts is retryable.
	fr := transport.NewFrameReader(&stutter{chunks: [][]byte{f1, f2}}, 16, 0)
	var got []string
	for len(got) < 2 {
		_, p, err := fr.ReadFrame(nil)
		if errors.Is(err, errTimeout) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, string(p))
	}
	if got[0] != "abc" || got[1] != "defg" {
		t.Fatalf("got %q", got)
	}
	// An error after part of a header is sticky.
	fr = transport.NewFrameReader(&stutter{chunks: [][]byte{f1[:2], f1[2:]}, failed: true}, 16, 0)
	if _, _, err := fr.ReadFrame(nil); !errors.Is(err, errTimeout) {
		t.Fatalf("first error %v", err)
	}
	if _, _, err := fr.ReadFrame(nil); !errors.Is(err, errTimeout) {
		t.Fatalf("error after a torn header is not sticky: %v", err)
	}
}
