package wire

import (
	"bytes"
	"errors"
	"reflect"
	"testing"
)

func TestResyncWireRoundTrip(t *testing.T) {
	rb := ResyncBegin{From: 77, Reset: true, Chunk: 64 << 10}
	if got, err := DecodeResyncBegin(AppendResyncBegin(nil, rb)); err != nil || got != rb {
		t.Fatalf("resync begin: %+v %v", got, err)
	}
	hr := SyncHashReq{Off: 1 << 30, Len: 64 << 20, Leaves: true}
	if got, err := DecodeSyncHashReq(AppendSyncHashReq(nil, hr)); err != nil || got != hr {
		t.Fatalf("hash req: %+v %v", got, err)
	}
	hs := SyncHashes{Off: 4096, Len: 8192, Leaves: true, Hashes: [][HashLen]byte{{1, 2}, {3}}}
	b, err := AppendSyncHashes(nil, &hs)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := DecodeSyncHashes(b); err != nil || !reflect.DeepEqual(got, hs) {
		t.Fatalf("hashes: %+v %v", got, err)
	}
	ch := SyncChunk{Off: 65536, Len: 4, Tag: 9, Data: []byte("abcd")}
	b, err = AppendSyncChunk(nil, &ch)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := DecodeSyncChunk(b); err != nil || got.Off != ch.Off || got.Tag != 9 || !bytes.Equal(got.Data, ch.Data) {
		t.Fatalf("chunk: %+v %v", got, err)
	}
	z := SyncChunk{Off: 0, Len: 65536, Tag: 3, Zero: true}
	b, _ = AppendSyncChunk(nil, &z)
	if got, err := DecodeSyncChunk(b); err != nil || !got.Zero || got.Data != nil || got.Len != 65536 {
		t.Fatalf("zero chunk: %+v %v", got, err)
	}
	ack := SyncChunkAck{Results: []SyncChunkResult{{Off: 1, Len: 2, OK: true}, {Off: 3, Len: 4}}}
	b, _ = AppendSyncChunkAck(nil, &ack)
	if got, err := DecodeSyncChunkAck(b); err != nil || !reflect.DeepEqual(got, ack) {
		t.Fatalf("ack: %+v %v", got, err)
	}
	if got, err := DecodeSyncComplete(AppendSyncComplete(nil, SyncComplete{Tag: 5})); err != nil || got.Tag != 5 {
		t.Fatalf("complete: %+v %v", got, err)
	}
}

func TestResyncWireRejects(t *testing.T) {
	// Every truncation and every bit flip of a chunk message is rejected.
	ch := SyncChunk{Off: 65536, Len: 8, Tag: 9, Data: []byte("abcdefgh")}
	b, _ := AppendSyncChunk(nil, &ch)
	for i := range b {
		if _, err := DecodeSyncChunk(b[:i]); !errors.Is(err, ErrMalformed) {
			t.Fatalf("truncated at %d: %v", i, err)
		}
		for bit := 0; bit < 8; bit++ {
			c := bytes.Clone(b)
			c[i] ^= 1 << bit
			if _, err := DecodeSyncChunk(c); err == nil {
				t.Fatalf("flip at byte %d bit %d accepted", i, bit)
			}
		}
	}
	if _, err := AppendSyncChunk(nil, &SyncChunk{Len: MaxSyncChunk + 1}); err == nil {
		t.Fatal("oversized chunk encoded")
	}
	if _, err := DecodeResyncBegin(AppendResyncBegin(nil, ResyncBegin{From: 1, Chunk: 1000})); err == nil {
		t.Fatal("chunk size not a multiple of 512 accepted")
	}
}

func FuzzResyncMessages(f *testing.F) {
	f.Add(uint8(0), AppendResyncBegin(nil, ResyncBegin{From: 3, Chunk: 65536}))
	f.Add(uint8(1), AppendSyncHashReq(nil, SyncHashReq{Off: 1, Len: 2}))
	b, _ := AppendSyncHashes(nil, &SyncHashes{Off: 1, Len: 2, Hashes: [][HashLen]byte{{9}}})
	f.Add(uint8(2), b)
	b, _ = AppendSyncChunk(nil, &SyncChunk{Off: 1, Len: 3, Tag: 4, Data: []byte("xyz")})
	f.Add(uint8(3), b)
	b, _ = AppendSyncChunkAck(nil, &SyncChunkAck{Results: []SyncChunkResult{{Off: 1, Len: 2, OK: true}}})
	f.Add(uint8(4), b)
	f.Add(uint8(5), AppendSyncComplete(nil, SyncComplete{Tag: 8}))
	f.Fuzz(func(t *testing.T, kind uint8, p []byte) {
		switch kind % 6 {
		case 0:
			if m, err := DecodeResyncBegin(p); err == nil && !bytes.Equal(AppendResyncBegin(nil, m), p) {
				t.Fatal("resync begin does not re-encode")
			}
		case 1:
			if m, err := DecodeSyncHashReq(p); err == nil && !bytes.Equal(AppendSyncHashReq(nil, m), p) {
				t.Fatal("hash req does not re-encode")
			}
		case 2:
			if m, err := DecodeSyncHashes(p); err == nil {
				if b, _ := AppendSyncHashes(nil, &m); !bytes.Equal(b, p) {
					t.Fatal("hashes do not re-encode")
				}
			}
		case 3:
			if m, err := DecodeSyncChunk(p); err == nil {
				if b, _ := AppendSyncChunk(nil, &m); !bytes.Equal(b, p) {
					t.Fatal("chunk does not re-encode")
				}
			}
		case 4:
			if m, err := DecodeSyncChunkAck(p); err == nil {
				if b, _ := AppendSyncChunkAck(nil, &m); !bytes.Equal(b, p) {
					t.Fatal("chunk ack does not re-encode")
				}
			}
		case 5:
			if m, err := DecodeSyncComplete(p); err == nil && !bytes.Equal(AppendSyncComplete(nil, m), p) {
				t.Fatal("complete does not re-encode")
			}
		}
	})
}
