package store_test

import (
	"math/rand/v2"
	"os"
	"sync"
	"testing"

	"github.com/blockmirror/blockmirror/internal/vfs"
	"github.com/blockmirror/blockmirror/store"
)

// kickFS gives the files of a MemFS a StartWriteback that records the
// ranges asked for.
type kickFS struct {
	vfs.FS
	mu     sync.Mutex
	kicked [][2]int64
}

func (k *kickFS) Create(p string, perm os.FileMode) (vfs.File, error) {
	f, err := k.FS.Create(p, perm)
	if err != nil {
		return nil, err
	}
	return &kickFile{f, k}, nil
}

type kickFile struct {
	vfs.File
	fs *kickFS
}

func (f *kickFile) StartWriteback(off, n int64) error {
	f.fs.mu.Lock()
	f.fs.kicked = append(f.fs.kicked, [2]int64{off, n})
	f.fs.mu.Unlock()
	return nil
}

// TestWritebackWindow: a stream of large writes has its writeback started
// every window's worth of bytes, over exactly the range written since the
// last start; scattered small writes are left to the page cache; a Sync
// starts the count again; a window of 0 turns it off.
func TestWritebackWindow(t *testing.T) {
	const window = 1 << 20
	k := &kickFS{FS: vfs.NewCrashableMem()}
	s, err := store.CreateFS(k, "/disk.img", 64<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.SetWritebackWindow(window)
	buf := make([]byte, 128<<10)
	for off := int64(0); off < 4*window; off += int64(len(buf)) {
		if _, err := s.WriteAt(buf, off); err != nil {
			t.Fatal(err)
		}
	}
	k.mu.Lock()
	got := append([][2]int64(nil), k.kicked...)
	k.kicked = nil
	k.mu.Unlock()
	if len(got) != 4 {
		t.Fatalf("writeback started %d times for 4 windows of sequential writes: %v", len(got), got)
	}
	for i, r := range got {
		if r != [2]int64{int64(i) * window, window} {
			t.Fatalf("writeback %d over [%d, +%d), want [%d, +%d)", i, r[0], r[1], int64(i)*window, window)
		}
	}

	// 4 KiB writes scattered over 64 MiB: far from dense.
	rng := rand.New(rand.NewPCG(1, 2))
	small := make([]byte, 4096)
	for range 2 * window / len(small) {
		if _, err := s.WriteAt(small, rng.Int64N(64<<20/4096)*4096); err != nil {
			t.Fatal(err)
		}
	}
	// A Sync empties the window: the next half window starts nothing.
	if err := s.Sync(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.WriteAt(make([]byte, window/2), 0); err != nil {
		t.Fatal(err)
	}
	if err := s.Sync(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.WriteAt(make([]byte, window/2+4096), window); err != nil {
		t.Fatal(err)
	}
	s.SetWritebackWindow(0)
	if _, err := s.WriteAt(make([]byte, 2*window), 0); err != nil {
		t.Fatal(err)
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if len(k.kicked) != 0 {
		t.Fatalf("writeback started for scattered small writes, after a Sync or with the window off: %v", k.kicked)
	}
}
