package resync

import (
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/blockmirror/blockmirror/internal/vfs"
	"github.com/blockmirror/blockmirror/store"
	"github.com/zeebo/blake3"
	"github.com/zeebo/xxh3"
)

func TestHashRangeHolesAndData(t *testing.T) {
	st, err := store.Create(filepath.Join(t.TempDir(), "d"), 4<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	h := NewHasher(st, 64<<10)
	before, err := h.HashRange(0, 4<<20, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(before) != 64 {
		t.Fatalf("%d hashes for 64 chunks", len(before))
	}
	for i := range before {
		if before[i] != sum128(make([]byte, 64<<10)) {
			t.Fatalf("hole chunk %d does not hash as zeroes", i)
		}
	}
	st.WriteAt([]byte{1}, 3*(64<<10)+5)
	after, _ := h.HashRange(0, 4<<20, nil)
	for i := range after {
		if (after[i] != before[i]) != (i == 3) {
			t.Fatalf("chunk %d changed=%v", i, after[i] != before[i])
		}
	}
	// Writing zeroes back makes it equal again (content, not allocation).
	st.WriteAt([]byte{0}, 3*(64<<10)+5)
	again, _ := h.HashRange(0, 4<<20, nil)
	if again[3] != before[3] {
		t.Fatal("allocated zero chunk hashes differently from a hole")
	}
	if _, err := h.HashRange(100, 64<<10, nil); err == nil {
		t.Fatal("unaligned range accepted")
	}
}

func TestBitmapPersistence(t *testing.T) {
	p := filepath.Join(t.TempDir(), "b")
	b := NewBitmap(10<<20+4096, 64<<10)
	b.SetRange(0, 1)
	b.SetRange(5<<20, 200<<10)
	b.SetChunk(b.Chunks() - 1)
	if b.Count() != 1+4+1 {
		t.Fatalf("count %d", b.Count())
	}
	if b.Bytes() != 5*(64<<10)+4096 {
		t.Fatalf("bytes %d", b.Bytes())
	}
	if err := b.Save(vfs.OS, p); err != nil {
		t.Fatal(err)
	}
	c, err := LoadBitmap(p, 10<<20+4096, 64<<10)
	if err != nil || c.Count() != b.Count() {
		t.Fatalf("load: %v count %d", err, c.Count())
	}
	for i := int64(0); i < b.Chunks(); i++ {
		if b.Test(i) != c.Test(i) {
			t.Fatalf("chunk %d differs after load", i)
		}
	}
	if n := c.Next(2); n != 80 {
		t.Fatalf("next after 2 = %d, want 80", n)
	}
	if _, err := LoadBitmap(p, 20<<20, 64<<10); err == nil {
		t.Fatal("bitmap of another geometry accepted")
	}
	if x, err := LoadBitmap(filepath.Join(t.TempDir(), "none"), 1, 1); x != nil || err != nil {
		t.Fatal("missing bitmap should be nil, nil")
	}
}

func FuzzBitmapDecode(f *testing.F) {
	b := NewBitmap(1<<20, 64<<10)
	b.SetRange(0, 100000)
	p := filepath.Join(f.TempDir(), "b")
	b.Save(vfs.OS, p)
	data, _ := readFileForFuzz(p)
	f.Add(data)
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > 1<<20 {
			return
		}
		decodeBitmap(data) // must not panic or over-allocate
	})
}

func TestRecentExtents(t *testing.T) {
	var r RecentExtents
	if !r.Overlaps(1, 2, 0, 10) {
		t.Fatal("an empty ring must answer 'maybe'")
	}
	for s := uint64(1); s <= 10; s++ {
		r.Add(s, s*100, 10)
	}
	if r.Overlaps(5, 10, 0, 100) {
		t.Fatal("no record in (5,10] touches [0,100)")
	}
	if !r.Overlaps(5, 10, 700, 705) {
		t.Fatal("record 7 touches [700,705)")
	}
	if r.Overlaps(7, 10, 700, 705) {
		t.Fatal("record 7 is not after 7")
	}
}

// BenchmarkChunkHash compares candidate chunk hashes on 64 KiB chunks;
// the resync uses the faster (xxh3-128).
func BenchmarkChunkHash(b *testing.B) {
	buf := make([]byte, 64<<10)
	r := rand.New(rand.NewPCG(1, 2))
	for i := range buf {
		buf[i] = byte(r.Uint32())
	}
	b.Run("xxh3-128", func(b *testing.B) {
		b.SetBytes(int64(len(buf)))
		b.ReportAllocs()
		for b.Loop() {
			_ = xxh3.Hash128(buf)
		}
	})
	b.Run("blake3-256", func(b *testing.B) {
		b.SetBytes(int64(len(buf)))
		b.ReportAllocs()
		for b.Loop() {
			_ = blake3.Sum256(buf)
		}
	})
}

func readFileForFuzz(p string) ([]byte, error) { return os.ReadFile(p) }
