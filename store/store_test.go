package store_test

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/blockmirror/blockmirror/internal/vfs"
	"github.com/blockmirror/blockmirror/store"
)

func newImage(t *testing.T, size int64) *store.File {
	t.Helper()
	s, err := store.Create(filepath.Join(t.TempDir(), "disk.img"), size)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestCreateRefusesExisting(t *testing.T) {
	p := filepath.Join(t.TempDir(), "disk.img")
	s, err := store.Create(p, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	if _, err := store.Create(p, 1<<20); !errors.Is(err, os.ErrExist) {
		t.Fatalf("second create: got %v, want ErrExist", err)
	}
	if _, err := store.Create(filepath.Join(t.TempDir(), "x"), 1000); !errors.Is(err, store.ErrSize) {
		t.Fatalf("odd size: got %v, want ErrSize", err)
	}
}

func TestReadWriteTrimZero(t *testing.T) {
	s := newImage(t, 4<<20)
	data := bytes.Repeat([]byte{0xab}, 64<<10)
	if _, err := s.WriteAt(data, 4096); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(data))
	if _, err := s.ReadAt(got, 4096); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read back: %v", err)
	}
	if err := s.Trim(8192, 8192); err != nil {
		t.Fatal(err)
	}
	if err := s.Zero(20000, 3000, true); err != nil { // unaligned: falls back where needed
		t.Fatal(err)
	}
	if _, err := s.ReadAt(got, 4096); err != nil {
		t.Fatal(err)
	}
	for i, b := range got {
		off := 4096 + i
		inTrim := off >= 8192 && off < 16384
		inZero := off >= 20000 && off < 23000
		want := byte(0xab)
		if inTrim || inZero {
			want = 0
		}
		if b != want {
			t.Fatalf("byte at %d = %#x, want %#x", off, b, want)
		}
	}
	if err := s.Sync(); err != nil {
		t.Fatal(err)
	}
}

func TestBounds(t *testing.T) {
	s := newImage(t, 1<<20)
	if _, err := s.WriteAt(make([]byte, 512), 1<<20-256); !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("write past end: %v", err)
	}
	if _, err := s.ReadAt(make([]byte, 1), -1); !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("negative offset: %v", err)
	}
	if err := s.Trim(1<<20, 1); !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("trim past end: %v", err)
	}
}

func TestDataRangesSkipsHoles(t *testing.T) {
	s := newImage(t, 64<<20)
	if _, err := s.WriteAt(bytes.Repeat([]byte{1}, 1<<20), 8<<20); err != nil {
		t.Fatal(err)
	}
	var total int64
	err := s.DataRanges(0, s.Size(), func(off, n int64) error {
		if off+n <= 8<<20 || off >= 9<<20 {
			t.Errorf("range [%d,+%d) outside the written MiB", off, n)
		}
		total += n
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if total < 1<<20 || total > 2<<20 {
		t.Fatalf("data ranges cover %d bytes, want about 1 MiB", total)
	}
}

func TestOpenExisting(t *testing.T) {
	p := filepath.Join(t.TempDir(), "disk.img")
	s, err := store.Create(p, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	s.WriteAt([]byte("hello"), 100)
	s.Close()
	s, err = store.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s.Size() != 1<<20 {
		t.Fatalf("size %d", s.Size())
	}
	b := make([]byte, 5)
	s.ReadAt(b, 100)
	if string(b) != "hello" {
		t.Fatalf("got %q", b)
	}
	if _, err := store.Open(t.TempDir()); err == nil {
		t.Fatal("opening a directory succeeded")
	}
}

// TestUnalignedWritesMatchModel checks the page-sized splitting of WriteAt
// against an in-memory model: writes of every size and alignment, across
// page boundaries, read back exactly and touch nothing else.
func TestUnalignedWritesMatchModel(t *testing.T) {
	const size = 1 << 20
	s := newImage(t, size)
	model := make([]byte, size)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 300 {
		n := 1 + rng.IntN(70000)
		if i%10 == 0 {
			n = 1 + rng.IntN(16)
		}
		off := rng.IntN(size - n + 1)
		p := make([]byte, n)
		for j := range p {
			p[j] = byte(rng.Uint32())
		}
		if w, err := s.WriteAt(p, int64(off)); err != nil || w != n {
			t.Fatalf("write %d bytes at %d: n=%d err=%v", n, off, w, err)
		}
		copy(model[off:], p)
	}
	got := make([]byte, size)
	if _, err := s.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if i := firstDiff(got, model); i >= 0 {
		t.Fatalf("image differs from model at byte %d", i)
	}
}

func firstDiff(a, b []byte) int {
	for i := range a {
		if a[i] != b[i] {
			return i
		}
	}
	return -1
}

// TestMemFSFallbacks: on a file system without the fast paths (the
// crashable MemFS), trim and zero write zeroes, ZeroFast reports ENOTSUP
// and changes nothing, and DataRanges reports the whole range; what Create
// and Sync made durable survives a power loss.
func TestMemFSFallbacks(t *testing.T) {
	m := vfs.NewCrashableMem()
	if err := vfs.MkdirAllSynced(m, "/n", 0o700); err != nil {
		t.Fatal(err)
	}
	s, err := store.CreateFS(m, "/n/disk.img", 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := store.CreateFS(m, "/n/disk.img", 1<<20); !errors.Is(err, os.ErrExist) {
		t.Fatalf("second create: %v, want ErrExist", err)
	}
	data := bytes.Repeat([]byte{7}, 64<<10)
	if _, err := s.WriteAt(data, 0); err != nil {
		t.Fatal(err)
	}
	if err := s.ZeroFast(0, 4096, false); !errors.Is(err, syscall.ENOTSUP) {
		t.Fatalf("ZeroFast on MemFS: %v, want ENOTSUP", err)
	}
	if err := s.Trim(4096, 4096); err != nil {
		t.Fatal(err)
	}
	if err := s.Zero(10000, 100, false); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(data))
	if _, err := s.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	for i, b := range got {
		want := byte(7)
		if (i >= 4096 && i < 8192) || (i >= 10000 && i < 10100) {
			want = 0
		}
		if b != want {
			t.Fatalf("byte %d = %d, want %d", i, b, want)
		}
	}
	var ranges [][2]int64
	s.DataRanges(0, 1<<20, func(off, n int64) error { ranges = append(ranges, [2]int64{off, n}); return nil })
	if len(ranges) != 1 || ranges[0] != [2]int64{0, 1 << 20} {
		t.Fatalf("DataRanges without hole information: %v, want the whole image", ranges)
	}
	crashed := m.CrashCloneDropUnsynced()
	c, err := store.OpenFS(crashed, "/n/disk.img")
	if err != nil {
		t.Fatalf("the created image did not survive a power loss: %v", err)
	}
	if c.Size() != 1<<20 {
		t.Fatalf("size after the crash %d", c.Size())
	}
	if _, err := c.ReadAt(got[:1], 0); err != nil || got[0] != 0 {
		t.Fatalf("an unsynced write survived DropUnsynced: %d %v", got[0], err)
	}
	c.Close()
	if err := s.Sync(); err != nil {
		t.Fatal(err)
	}
	c, err = store.OpenFS(m.CrashCloneDropUnsynced(), "/n/disk.img")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.ReadAt(got, 0); err != nil || got[0] != 7 || got[4096] != 0 {
		t.Fatalf("synced data lost: %d %d %v", got[0], got[4096], err)
	}
}

// TestSyncErrorReported: a failing fdatasync is an error of Sync (never
// swallowed), naming the image.
func TestSyncErrorReported(t *testing.T) {
	m := vfs.NewCrashableMem()
	inj := vfs.FailNth(2, vfs.OpIs(vfs.OpSync), syscall.EIO) // the first is Create's
	s, err := store.CreateFS(vfs.WithErrors(m, inj), "/disk.img", 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.Sync(); !errors.Is(err, syscall.EIO) || !strings.Contains(err.Error(), "/disk.img") {
		t.Fatalf("Sync = %v, want EIO naming the image", err)
	}
}
