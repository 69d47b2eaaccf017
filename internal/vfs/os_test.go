package vfs_test

import (
	"bytes"
	"errors"
	"io/fs"
	"path/filepath"
	"slices"
	"testing"

	"github.com/blockmirror/blockmirror/internal/vfs"
)

// TestOSFile: the OS implementation creates exclusively, renames, syncs,
// and its files have the fast paths the journal and store use.
func TestOSFile(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	f := create(t, vfs.OS, p, bytes.Repeat([]byte("d"), 3*65536), true)
	defer f.Close()
	if _, err := vfs.OS.Create(p, 0o600); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("exclusive create over a file: %v", err)
	}
	if err := vfs.OS.SyncDir(dir); err != nil {
		t.Fatal(err)
	}
	type caps interface {
		Preallocate(n int64) error
		StartWriteback(off, n int64) error
		PunchHole(off, n int64) error
		ZeroRange(off, n int64) error
		DataRanges(off, n int64, fn func(off, n int64) error) error
		Fd() uintptr
	}
	c, ok := f.(caps)
	if !ok {
		t.Fatalf("%T lacks an optional capability", f)
	}
	if err := c.Preallocate(1 << 20); err != nil && !vfs.Unsupported(err) {
		t.Fatal(err)
	}
	if sz, _ := f.Size(); sz != 3*65536 {
		t.Fatalf("Preallocate changed the size to %d", sz)
	}
	if err := c.StartWriteback(0, 65536); err != nil {
		t.Fatal(err)
	}
	if err := c.PunchHole(65536, 65536); err != nil {
		if vfs.Unsupported(err) {
			t.Skipf("the file system of %s cannot punch holes", dir)
		}
		t.Fatal(err)
	}
	var ranges [][2]int64
	if err := c.DataRanges(0, 3*65536, func(off, n int64) error {
		ranges = append(ranges, [2]int64{off, n})
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(ranges, [][2]int64{{0, 65536}, {2 * 65536, 65536}}) && !slices.Equal(ranges, [][2]int64{{0, 3 * 65536}}) {
		t.Fatalf("data ranges %v around a 64 KiB hole", ranges)
	}
	got := contents(t, vfs.OS, p)
	if !bytes.Equal(got[65536:2*65536], make([]byte, 65536)) || got[2*65536] != 'd' {
		t.Fatal("the punched range does not read as zeroes")
	}
	if err := vfs.OS.Rename(p, p+"2"); err != nil {
		t.Fatal(err)
	}
	if names, err := vfs.OS.ReadDir(dir); err != nil || !slices.Equal(names, []string{"f2"}) {
		t.Fatalf("ReadDir = %v, %v", names, err)
	}
}
