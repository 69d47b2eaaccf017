package vfs_test

import (
	"bytes"
	"errors"
	"io"
	"io/fs"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/blockmirror/blockmirror/internal/vfs"
)

func create(t *testing.T, fsys vfs.FS, path string, data []byte, sync bool) vfs.File {
	t.Helper()
	f, err := fsys.Create(path, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(data, 0); err != nil {
		t.Fatal(err)
	}
	if sync {
		if err := f.Sync(); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

func mustSyncDir(t *testing.T, fsys vfs.FS, dir string) {
	t.Helper()
	if err := fsys.SyncDir(dir); err != nil {
		t.Fatal(err)
	}
}

// contents reads path whole, or returns nil if it does not exist.
func contents(t *testing.T, fsys vfs.FS, path string) []byte {
	t.Helper()
	b, err := vfs.ReadFile(fsys, path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestMemFileBasics: a MemFS file reads back what was written, with the
// OS's EOF, exclusive-create, read-only and closed-handle behaviour.
func TestMemFileBasics(t *testing.T) {
	m := vfs.NewCrashableMem()
	if err := m.MkdirAll("/a/b", 0o700); err != nil {
		t.Fatal(err)
	}
	f := create(t, m, "/a/b/f", []byte("hello"), false)
	if _, err := f.WriteAt([]byte("XY"), 8); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 12)
	n, err := f.ReadAt(buf, 0)
	if n != 10 || err != io.EOF || !bytes.Equal(buf[:n], []byte("hello\x00\x00\x00XY")) {
		t.Fatalf("ReadAt = %d %v %q", n, err, buf[:n])
	}
	if sz, _ := f.Size(); sz != 10 {
		t.Fatalf("size %d, want 10", sz)
	}
	if err := f.Truncate(3); err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(6); err != nil {
		t.Fatal(err)
	}
	if got := contents(t, m, "/a/b/f"); !bytes.Equal(got, []byte("hel\x00\x00\x00")) {
		t.Fatalf("after shrink and grow: %q", got)
	}
	if _, err := m.Create("/a/b/f", 0o600); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("Create over an existing file: %v, want ErrExist", err)
	}
	if _, err := m.OpenRW("/a/b/none"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("OpenRW of a missing file: %v, want ErrNotExist", err)
	}
	ro, err := m.Open("/a/b/f")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ro.WriteAt([]byte("x"), 0); err == nil {
		t.Fatal("write through a read-only handle succeeded")
	}
	f.Close()
	if _, err := f.ReadAt(buf, 0); !errors.Is(err, fs.ErrClosed) {
		t.Fatalf("read after close: %v, want ErrClosed", err)
	}
	if names, _ := m.ReadDir("/a/b"); !slices.Equal(names, []string{"f"}) {
		t.Fatalf("ReadDir = %v", names)
	}
	if err := m.Remove("/a/b"); err == nil {
		t.Fatal("removed a non-empty directory")
	}
	if err := m.Rename("/a/b/f", "/a/g"); err != nil {
		t.Fatal(err)
	}
	if st, err := m.Stat("/a/g"); err != nil || st.Size() != 6 || st.IsDir() {
		t.Fatalf("Stat after rename: %v %v", st, err)
	}
	if _, err := m.Stat("/a/b/f"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("old name after rename: %v", err)
	}
}

// TestMemCrashKeepsOnlySynced: after CrashCloneDropUnsynced a file holds
// exactly its contents and size as of its last Sync: later writes,
// overwrites and growth are gone. Invariant: Sync is what survives.
func TestMemCrashKeepsOnlySynced(t *testing.T) {
	m := vfs.NewCrashableMem()
	f := create(t, m, "/f", bytes.Repeat([]byte("a"), 2000), true)
	mustSyncDir(t, m, "/")
	f.WriteAt(bytes.Repeat([]byte("b"), 100), 50) // overwrite, unsynced
	f.WriteAt([]byte("tail"), 5000)               // growth, unsynced
	c := m.CrashCloneDropUnsynced()
	if got := contents(t, c, "/f"); !bytes.Equal(got, bytes.Repeat([]byte("a"), 2000)) {
		t.Fatalf("after the crash: %d bytes, want the 2000 synced ones", len(got))
	}
	// Without the crash (a process crash) everything written is there.
	if got := contents(t, m, "/f"); len(got) != 5004 || got[50] != 'b' {
		t.Fatalf("the page cache lost data: %d bytes", len(got))
	}
	// A Sync makes it durable.
	f.Sync()
	if got := contents(t, m.CrashCloneDropUnsynced(), "/f"); len(got) != 5004 || got[50] != 'b' || string(got[5000:]) != "tail" {
		t.Fatalf("synced data lost: %d bytes", len(got))
	}
}

// TestMemCrashTearsBySector: an unsynced write is lost, kept or torn, and
// a torn one keeps or loses whole 512-byte sectors; the same seed gives the
// same state. Invariant: the crash model produces every outcome a disk can,
// and nothing finer than a sector.
func TestMemCrashTearsBySector(t *testing.T) {
	const sectors = 8
	m := vfs.NewCrashableMem()
	f := create(t, m, "/f", bytes.Repeat([]byte("o"), sectors*vfs.SectorSize), true)
	mustSyncDir(t, m, "/")
	f.WriteAt(bytes.Repeat([]byte("n"), sectors*vfs.SectorSize), 0)
	var lost, kept, torn int
	for seed := range uint64(200) {
		c := m.CrashClone(rand.New(rand.NewPCG(seed, 1)))
		got := contents(t, c, "/f")
		again := contents(t, m.CrashClone(rand.New(rand.NewPCG(seed, 1))), "/f")
		if !bytes.Equal(got, again) {
			t.Fatalf("seed %d: two clones differ", seed)
		}
		news := 0
		for s := range sectors {
			sec := got[s*vfs.SectorSize : (s+1)*vfs.SectorSize]
			switch {
			case bytes.Equal(sec, bytes.Repeat([]byte("n"), vfs.SectorSize)):
				news++
			case bytes.Equal(sec, bytes.Repeat([]byte("o"), vfs.SectorSize)):
			default:
				t.Fatalf("seed %d: sector %d is a mix of old and new bytes", seed, s)
			}
		}
		switch news {
		case 0:
			lost++
		case sectors:
			kept++
		default:
			torn++
		}
	}
	// Each outcome has probability 1/3 (a torn write losing or keeping
	// all 8 sectors is rare); 40 of 200 is far below the expected ~66.
	if lost < 40 || kept < 40 || torn < 40 {
		t.Fatalf("outcomes over 200 seeds: %d lost, %d kept, %d torn; want each about a third", lost, kept, torn)
	}
}

// TestMemCrashGrowthLeavesGap: a lost write before a kept one past the
// durable size leaves zeroes, as unwritten extents read after a power loss.
func TestMemCrashGrowthLeavesGap(t *testing.T) {
	m := vfs.NewCrashableMem()
	f := create(t, m, "/f", nil, true)
	mustSyncDir(t, m, "/")
	f.WriteAt(bytes.Repeat([]byte("1"), vfs.SectorSize), 0)
	f.WriteAt(bytes.Repeat([]byte("2"), vfs.SectorSize), vfs.SectorSize)
	seen := false
	for seed := range uint64(100) {
		got := contents(t, m.CrashClone(rand.New(rand.NewPCG(seed, 2))), "/f")
		if len(got) == 2*vfs.SectorSize && got[0] == 0 && got[vfs.SectorSize] == '2' {
			seen = true
		}
		if len(got) != 0 && len(got) != vfs.SectorSize && len(got) != 2*vfs.SectorSize {
			t.Fatalf("seed %d: size %d is not at a write's end", seed, len(got))
		}
	}
	if !seen {
		t.Fatal("no seed lost the first write and kept the second")
	}
}

// TestMemCrashTruncate: an unsynced truncate may or may not survive; a
// synced one does.
func TestMemCrashTruncate(t *testing.T) {
	m := vfs.NewCrashableMem()
	f := create(t, m, "/f", bytes.Repeat([]byte("x"), 4096), true)
	mustSyncDir(t, m, "/")
	f.Truncate(1000)
	sizes := map[int]bool{}
	for seed := range uint64(50) {
		sizes[len(contents(t, m.CrashClone(rand.New(rand.NewPCG(seed, 3))), "/f"))] = true
	}
	if !sizes[1000] || !sizes[4096] || len(sizes) != 2 {
		t.Fatalf("sizes after a crash: %v, want 1000 and 4096", sizes)
	}
	if got := len(contents(t, m.CrashCloneDropUnsynced(), "/f")); got != 4096 {
		t.Fatalf("unsynced truncate kept by DropUnsynced: size %d", got)
	}
	f.Sync()
	if got := len(contents(t, m.CrashCloneDropUnsynced(), "/f")); got != 1000 {
		t.Fatalf("synced truncate lost: size %d", got)
	}
}

// TestMemCrashDirectoryEntries: creations, removals and renames revert at a
// crash unless their directory was synced; a synced file whose entry was
// never synced vanishes. Invariant: SyncDir is what makes names durable.
func TestMemCrashDirectoryEntries(t *testing.T) {
	m := vfs.NewCrashableMem()
	if err := vfs.MkdirAllSynced(m, "/d", 0o700); err != nil {
		t.Fatal(err)
	}
	create(t, m, "/d/synced-data-only", []byte("x"), true)
	if got := contents(t, m.CrashCloneDropUnsynced(), "/d/synced-data-only"); got != nil {
		t.Fatal("a file whose directory entry was never synced survived the crash")
	}

	create(t, m, "/d/meta", []byte("old"), true)
	mustSyncDir(t, m, "/d")
	create(t, m, "/d/.meta.tmp", []byte("new"), true)
	if err := m.Rename("/d/.meta.tmp", "/d/meta"); err != nil {
		t.Fatal(err)
	}
	c := m.CrashCloneDropUnsynced()
	if got := contents(t, c, "/d/meta"); string(got) != "old" {
		t.Fatalf("unsynced rename: meta holds %q, want the old contents", got)
	}
	if names, _ := c.ReadDir("/d"); !slices.Equal(names, []string{"meta", "synced-data-only"}) {
		t.Fatalf("after the crash /d holds %v", names)
	}
	mustSyncDir(t, m, "/d")
	c = m.CrashCloneDropUnsynced()
	if got := contents(t, c, "/d/meta"); string(got) != "new" {
		t.Fatalf("synced rename: meta holds %q", got)
	}
	if names, _ := c.ReadDir("/d"); !slices.Equal(names, []string{"meta", "synced-data-only"}) {
		t.Fatalf("after the synced rename /d holds %v", names)
	}

	if err := m.Remove("/d/meta"); err != nil {
		t.Fatal(err)
	}
	if got := contents(t, m.CrashCloneDropUnsynced(), "/d/meta"); string(got) != "new" {
		t.Fatalf("unsynced removal: meta holds %q, want it back", got)
	}
	mustSyncDir(t, m, "/d")
	if got := contents(t, m.CrashCloneDropUnsynced(), "/d/meta"); got != nil {
		t.Fatal("synced removal reverted")
	}

	// A directory whose parent was not synced vanishes with its contents.
	if err := m.MkdirAll("/d/sub", 0o700); err != nil {
		t.Fatal(err)
	}
	create(t, m, "/d/sub/f", []byte("y"), true)
	mustSyncDir(t, m, "/d/sub")
	if _, err := m.CrashCloneDropUnsynced().Stat("/d/sub"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("a directory whose parent was never synced: %v, want gone", err)
	}
	if err := vfs.MkdirAllSynced(m, "/d/sub2/deeper", 0o700); err != nil {
		t.Fatal(err)
	}
	create(t, m, "/d/sub2/deeper/f", []byte("z"), true)
	mustSyncDir(t, m, "/d/sub2/deeper")
	if got := contents(t, m.CrashCloneDropUnsynced(), "/d/sub2/deeper/f"); string(got) != "z" {
		t.Fatalf("MkdirAllSynced directory lost: %q", got)
	}
}

// TestMemCrashCloneIsolated: a clone and the original (and the handles
// opened on it) do not share state.
func TestMemCrashCloneIsolated(t *testing.T) {
	m := vfs.NewCrashableMem()
	f := create(t, m, "/f", []byte("aaaa"), true)
	mustSyncDir(t, m, "/")
	c := m.CrashCloneDropUnsynced()
	f.WriteAt([]byte("b"), 0)
	f.Sync()
	if got := contents(t, c, "/f"); string(got) != "aaaa" {
		t.Fatalf("a write to the original reached the clone: %q", got)
	}
	g, err := c.OpenRW("/f")
	if err != nil {
		t.Fatal(err)
	}
	g.WriteAt([]byte("c"), 1)
	if got := contents(t, m, "/f"); string(got) != "baaa" {
		t.Fatalf("a write to the clone reached the original: %q", got)
	}
}

// TestMkdirAllSyncedOS: on the OS the helper creates the directories.
func TestMkdirAllSyncedOS(t *testing.T) {
	dir := t.TempDir() + "/x/y"
	if err := vfs.MkdirAllSynced(vfs.OS, dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if st, err := vfs.OS.Stat(dir); err != nil || !st.IsDir() {
		t.Fatalf("Stat(%s) = %v, %v", dir, st, err)
	}
	if err := vfs.MkdirAllSynced(vfs.OS, dir, 0o700); err != nil {
		t.Fatalf("again: %v", err)
	}
}
