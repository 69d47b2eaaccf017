package vfs_test

import (
	"bytes"
	"errors"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/blockmirror/blockmirror/internal/vfs"
)

// TestFailNth: only the nth operation matching kind and path fails, with
// the given error, and it is not performed.
func TestFailNth(t *testing.T) {
	m := vfs.NewCrashableMem()
	inj := vfs.FailNth(2, vfs.And(vfs.OpIs(vfs.OpWrite), vfs.PathContains("target")), syscall.EIO)
	e := vfs.WithErrors(m, inj)
	other := create(t, e, "/other", []byte("1"), false)
	other.WriteAt([]byte("2"), 1)
	f := create(t, e, "/target", []byte("a"), false) // first matching write
	if inj.Fired() {
		t.Fatal("fired on the first matching write")
	}
	if _, err := f.WriteAt([]byte("b"), 1); !errors.Is(err, syscall.EIO) {
		t.Fatalf("second matching write: %v, want EIO", err)
	}
	if _, err := f.WriteAt([]byte("c"), 1); err != nil {
		t.Fatalf("third matching write: %v", err)
	}
	if !inj.Fired() || inj.Seen() != 3 {
		t.Fatalf("Fired %v, Seen %d; want true, 3", inj.Fired(), inj.Seen())
	}
	if got := contents(t, m, "/target"); string(got) != "ac" {
		t.Fatalf("target holds %q: the failed write was performed", got)
	}
	if got := contents(t, m, "/other"); string(got) != "12" {
		t.Fatalf("other holds %q", got)
	}
}

// TestWithErrorsOps: every FS and File operation consults the injector
// with its kind and path.
func TestWithErrorsOps(t *testing.T) {
	m := vfs.NewCrashableMem()
	var seen []vfs.Op
	var paths []string
	e := vfs.WithErrors(m, vfs.InjectorFunc(func(op vfs.Op, path string) error {
		seen = append(seen, op)
		paths = append(paths, path)
		return nil
	}))
	e.MkdirAll("/d", 0o700)
	f, _ := e.Create("/d/f", 0o600)
	f.WriteAt([]byte("x"), 0)
	f.ReadAt(make([]byte, 1), 0)
	f.Truncate(1)
	f.Size()
	f.Sync()
	f.Close()
	e.SyncDir("/d")
	e.Rename("/d/f", "/d/g")
	e.Stat("/d/g")
	e.ReadDir("/d")
	g, _ := e.OpenRW("/d/g")
	g.Close()
	r, _ := e.Open("/d/g")
	r.Close()
	e.Remove("/d/g")
	want := []vfs.Op{vfs.OpMkdirAll, vfs.OpCreate, vfs.OpWrite, vfs.OpRead, vfs.OpTruncate, vfs.OpSize, vfs.OpSync,
		vfs.OpClose, vfs.OpSyncDir, vfs.OpRename, vfs.OpStat, vfs.OpReadDir, vfs.OpOpenRW, vfs.OpClose, vfs.OpOpen,
		vfs.OpClose, vfs.OpRemove}
	if len(seen) != len(want) {
		t.Fatalf("ops %v, want %v", seen, want)
	}
	for i := range want {
		if seen[i] != want[i] {
			t.Fatalf("op %d is %v, want %v (all: %v)", i, seen[i], want[i], seen)
		}
	}
	if paths[2] != "/d/f" || paths[9] != "/d/f" || paths[12] != "/d/g" {
		t.Fatalf("paths %v", paths)
	}
}

// TestWithErrorsCapabilities: a wrapped file offers the optional
// capabilities; one the underlying file lacks reports ErrUnsupported, and
// one it has is forwarded.
func TestWithErrorsCapabilities(t *testing.T) {
	type puncher interface{ PunchHole(off, n int64) error }
	mem := vfs.WithErrors(vfs.NewCrashableMem(), vfs.InjectorFunc(func(vfs.Op, string) error { return nil }))
	f := create(t, mem, "/f", []byte("abc"), false)
	err := f.(puncher).PunchHole(0, 1)
	if !errors.Is(err, errors.ErrUnsupported) || !vfs.Unsupported(err) {
		t.Fatalf("PunchHole on a MemFS file: %v, want ErrUnsupported", err)
	}

	osfs := vfs.WithErrors(vfs.OS, vfs.InjectorFunc(func(vfs.Op, string) error { return nil }))
	p := filepath.Join(t.TempDir(), "f")
	g := create(t, osfs, p, bytes.Repeat([]byte("x"), 8192), false)
	defer g.Close()
	if err := g.(puncher).PunchHole(0, 4096); err != nil && !vfs.Unsupported(err) {
		t.Fatal(err)
	} else if err == nil {
		if got := contents(t, vfs.OS, p); !bytes.Equal(got[:4096], make([]byte, 4096)) || got[4096] != 'x' {
			t.Fatal("punched range does not read as zeroes")
		}
	}
}
