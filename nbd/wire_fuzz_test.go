package nbd

import (
	"bytes"
	"testing"
)

func FuzzParseRequestHeader(f *testing.F) {
	for _, h := range []reqHeader{
		{},
		{flags: cmdFlagFUA, cmd: cmdWrite, cookie: 1, off: 4096, length: 512},
		{flags: 0xffff, cmd: 0xffff, cookie: ^uint64(0), off: ^uint64(0), length: ^uint32(0)},
	} {
		f.Add(appendRequestHeader(nil, h))
	}
	f.Add([]byte("short"))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := parseRequestHeader(b)
		if err != nil {
			return
		}
		enc := appendRequestHeader(nil, h)
		if !bytes.Equal(enc, b[:requestLen]) {
			t.Fatalf("re-encode differs: % x vs % x", enc, b[:requestLen])
		}
		h2, err := parseRequestHeader(enc)
		if err != nil || h2 != h {
			t.Fatalf("round trip: %+v %v", h2, err)
		}
	})
}

func FuzzParseOptionHeader(f *testing.F) {
	f.Add(appendOptionHeader(nil, optHeader{opt: optGo, length: 10}))
	f.Add(appendOptionHeader(nil, optHeader{opt: ^uint32(0), length: ^uint32(0)}))
	f.Add([]byte("IHAVEOP"))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := parseOptionHeader(b)
		if err != nil {
			return
		}
		enc := appendOptionHeader(nil, h)
		if !bytes.Equal(enc, b[:optHeaderLen]) {
			t.Fatalf("re-encode differs")
		}
		if h2, err := parseOptionHeader(enc); err != nil || h2 != h {
			t.Fatalf("round trip: %+v %v", h2, err)
		}
	})
}

func FuzzParseInfoRequest(f *testing.F) {
	f.Add(appendInfoRequest(nil, infoRequest{}))
	f.Add(appendInfoRequest(nil, infoRequest{name: "disk", infos: []uint16{infoName, infoBlockSize}}))
	f.Add(appendInfoRequest(nil, infoRequest{name: string(make([]byte, 300)), infos: []uint16{0xffff}}))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := parseInfoRequest(b)
		if err != nil {
			return
		}
		// Never more than the data could describe.
		if len(r.name) > maxStringLen || 2*len(r.infos) > len(b) {
			t.Fatalf("parsed more than present: name %d infos %d from %d bytes", len(r.name), len(r.infos), len(b))
		}
		enc := appendInfoRequest(nil, r)
		if !bytes.Equal(enc, b) {
			t.Fatalf("re-encode differs")
		}
		r2, err := parseInfoRequest(enc)
		if err != nil || r2.name != r.name || len(r2.infos) != len(r.infos) {
			t.Fatalf("round trip: %+v %v", r2, err)
		}
		for i := range r.infos {
			if r.infos[i] != r2.infos[i] {
				t.Fatalf("info %d differs", i)
			}
		}
	})
}

func TestErrorChunkEncoding(t *testing.T) {
	b := appendErrorChunk(nil, 7, errnoIO, string(make([]byte, 1000)))
	if len(b) != chunkHeaderLen+6+maxErrMsgLen {
		t.Fatalf("error chunk length %d", len(b))
	}
	b = appendErrorOffsetChunk(nil, 7, errnoIO, "m", 4096)
	if len(b) != chunkHeaderLen+6+1+8 {
		t.Fatalf("error offset chunk length %d", len(b))
	}
}

func TestBufClass(t *testing.T) {
	var p bufPool
	for _, n := range []int{1, 4095, 4096, 4097, 65536, 1 << 20, MaxRequestLen - 1, MaxRequestLen} {
		b := p.get(n)
		if len(*b) != n || cap(*b) < n || cap(*b) > 2*max(n, 4096) {
			t.Fatalf("get(%d): len %d cap %d", n, len(*b), cap(*b))
		}
		p.put(b)
	}
}
