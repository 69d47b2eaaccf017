package journal_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/blockmirror/blockmirror/internal/vfs"
	"github.com/blockmirror/blockmirror/journal"
)

// Durability only where asked: rotation does not fdatasync the segment it
// closes (the dirty window may start its writeback, which promises
// nothing: see TestDirtyWindowBounded). The price is on the recovery side: after a power loss
// the unsynced tail of any segment of the last sync window may be torn
// while a newer segment survived. These tests build such states on the
// crashable MemFS and check what Open makes of them.

const rotSegBytes = 16 << 10

func rotOpts(fsys vfs.FS) journal.Options {
	return journal.Options{FS: fsys, Dir: "/j", Volume: testVolume, SegmentBytes: rotSegBytes, MaxBytes: 1 << 40}
}

// writeOnly submits from..to (1000-byte records, ~16 per segment) and
// waits until they are written, never durable.
func writeOnly(t *testing.T, j *journal.Journal, from, to uint64) {
	t.Helper()
	ctx := context.Background()
	for s := from; s <= to; s++ {
		if err := j.Submit(ctx, rec(s, 1000)); err != nil {
			t.Fatal(err)
		}
	}
	if err := j.Wait(ctx, to, journal.Written); err != nil {
		t.Fatal(err)
	}
}

// TestRotationDoesNotSync: writing many segments' worth of records that no
// waiter wants durable issues no fdatasync at all, and after a power loss
// none of them need be there; a sync then covers every segment written
// since the last one; segments released meanwhile are not synced.
func TestRotationDoesNotSync(t *testing.T) {
	ctx := context.Background()
	m := vfs.NewCrashableMem()
	j, err := journal.Open(rotOpts(m))
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	if err := j.AddConsumer("store", 1, false); err != nil {
		t.Fatal(err)
	}
	writeOnly(t, j, 1, 100)
	st := j.Stats()
	if st.Segments < 5 {
		t.Fatalf("only %d segments: the test needs several rotations", st.Segments)
	}
	if st.Syncs != 0 {
		t.Fatalf("%d fdatasyncs for records nobody asked to be durable (%d segments)", st.Syncs, st.Segments)
	}
	// A power loss now may leave nothing but the segment headers: the
	// journal opens, empty, where it started.
	lost, err := journal.Open(rotOpts(m.CrashCloneDropUnsynced()))
	if err != nil {
		t.Fatalf("open after losing every unsynced record: %v", err)
	}
	if lost.FirstSeq() != 1 || lost.LastSeq() != 0 {
		t.Fatalf("after the power loss: seqs %d..%d, want an empty journal starting at 1", lost.FirstSeq(), lost.LastSeq())
	}
	lost.Close()

	// Durable for one record covers every segment up to it: one fdatasync
	// per segment written since the last sync.
	if err := j.Wait(ctx, 100, journal.Durable); err != nil {
		t.Fatal(err)
	}
	if got := j.Stats().Syncs; got != uint64(st.Segments) {
		t.Fatalf("%d fdatasyncs to make %d segments durable, want one each", got, st.Segments)
	}
	kept, err := journal.Open(rotOpts(m.CrashCloneDropUnsynced()))
	if err != nil {
		t.Fatal(err)
	}
	checkChain(t, kept, 1, 100, func(uint64) int { return 1000 })
	kept.Close()

	// Records released before anyone asked for durability: their segments
	// are removed, and the next sync does not write them.
	writeOnly(t, j, 101, 300)
	j.Release("store", 280)
	waitFor(t, func() bool { return j.FirstSeq() > 200 })
	before := j.Stats()
	if err := j.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	// The segments that are left (the active one and any older ones not
	// released) are synced; none of the removed ones is.
	if got := j.Stats().Syncs - before.Syncs; got != uint64(before.Segments) {
		t.Fatalf("a sync after the release issued %d fdatasyncs for %d remaining segments", got, before.Segments)
	}
}

// TestPowerLossTornOlderSegment: records 1..10 are durable; 11..60 are
// only written, across several segments; the kernel happened to write
// back a newer segment but not the one before it. The power loss leaves
// an older segment without its tail and a newer one intact. Open cuts the
// journal where the chain breaks, removes every later segment (none of
// their records was durable), keeps every durable record and continues
// after the cut; the state is durable (a second power loss changes
// nothing).
func TestPowerLossTornOlderSegment(t *testing.T) {
	ctx := context.Background()
	m := vfs.NewCrashableMem()
	j, err := journal.Open(rotOpts(m))
	if err != nil {
		t.Fatal(err)
	}
	for s := uint64(1); s <= 10; s++ {
		if err := j.Append(ctx, rec(s, 1000), journal.Durable); err != nil {
			t.Fatal(err)
		}
	}
	writeOnly(t, j, 11, 60)
	segs := memSegs(t, m)
	if len(segs) < 4 {
		t.Fatalf("%d segments, want at least 4", len(segs))
	}
	// Writeback reached the newest full segment but not the ones before.
	syncMemFile(t, m, segs[len(segs)-2])
	crashed := m.CrashCloneDropUnsynced() // the power goes
	j.Close()                             // (on the old file system)

	if n := len(memSegs(t, crashed)); n != len(segs) {
		t.Fatalf("%d segment files after the crash, want %d (headers are synced at creation)", n, len(segs))
	}
	j, err = journal.Open(rotOpts(crashed))
	if err != nil {
		t.Fatalf("open after an older segment lost its tail: %v", err)
	}
	// 11.. were in the first segment's lost tail: the journal ends at the
	// last durable record, and the newer segment that survived is gone.
	last := j.LastSeq()
	if last != 10 {
		t.Fatalf("last seq %d after the power loss, want 10", last)
	}
	if n := len(memSegs(t, crashed)); n != 1 {
		t.Fatalf("%d segment files after the recovery, want 1 (every later one removed)", n)
	}
	checkChain(t, j, 1, last, func(uint64) int { return 1000 })
	for s := last + 1; s <= last+5; s++ { // the journal continues after the cut
		if err := j.Append(ctx, rec(s, 1000), journal.Durable); err != nil {
			t.Fatal(err)
		}
	}
	j.Close()
	again, err := journal.Open(rotOpts(crashed.CrashCloneDropUnsynced()))
	if err != nil {
		t.Fatalf("open after a second power loss: %v", err)
	}
	defer again.Close()
	if again.LastSeq() != last+5 {
		t.Fatalf("after a second power loss: last seq %d, want %d", again.LastSeq(), last+5)
	}
	checkChain(t, again, 1, last+5, func(uint64) int { return 1000 })
}

// TestDamageBeforeDurableInOlderSegment: a sync came after the damaged
// records, so a damaged record or a missing segment is corruption
// (ErrCorrupt), not a torn tail. Two things prove it: records written
// after the sync (their sync lag reaches the damaged seq), and, when
// nothing was written after it, the header of the segment that was active
// then (the sync set FlagOlderDurable in it before its fdatasync).
func TestDamageBeforeDurableInOlderSegment(t *testing.T) {
	ctx := context.Background()
	t.Run("later record", func(t *testing.T) {
		m := vfs.NewCrashableMem()
		j, err := journal.Open(rotOpts(m))
		if err != nil {
			t.Fatal(err)
		}
		writeOnly(t, j, 1, 20) // the second segment is active
		if err := j.Sync(ctx); err != nil {
			t.Fatal(err)
		}
		// 21.. fill the second segment and start a third, whose header
		// cannot say that the second is durable: its tail is not. The
		// kernel wrote the third back, not the second's tail.
		writeOnly(t, j, 21, 40)
		segs := memSegs(t, m)
		if len(segs) != 3 {
			t.Fatalf("%d segments, want 3", len(segs))
		}
		syncMemFile(t, m, segs[2])
		crashed := m.CrashCloneDropUnsynced()
		j.Close()
		zeroMemRecord(t, crashed, segs[1], 1) // 17: durable since the sync
		_, err = journal.Open(rotOpts(crashed))
		if !errors.Is(err, journal.ErrCorrupt) || !strings.Contains(err.Error(), "already durable") ||
			!strings.Contains(err.Error(), filepath.Base(segs[1])) || !strings.Contains(err.Error(), filepath.Base(segs[2])) {
			t.Fatalf("damage to a durable record of an older segment: %v, want ErrCorrupt naming %s and the proof in %s", err, segs[1], segs[2])
		}
	})
	build := func(t *testing.T) (*vfs.MemFS, []string) {
		m := vfs.NewCrashableMem()
		j, err := journal.Open(rotOpts(m))
		if err != nil {
			t.Fatal(err)
		}
		writeOnly(t, j, 1, 60)
		if err := j.Sync(ctx); err != nil { // and nothing after it
			t.Fatal(err)
		}
		crashed := m.CrashCloneDropUnsynced()
		j.Close()
		return crashed, memSegs(t, crashed)
	}
	t.Run("header of the segment active at the sync", func(t *testing.T) {
		crashed, segs := build(t)
		zeroMemRecord(t, crashed, segs[1], 0)
		_, err := journal.Open(rotOpts(crashed))
		if !errors.Is(err, journal.ErrCorrupt) || !strings.Contains(err.Error(), "header of "+filepath.Base(segs[len(segs)-1])) {
			t.Fatalf("damage to a durable record of an older segment: %v, want ErrCorrupt naming the header", err)
		}
	})
	t.Run("missing segment", func(t *testing.T) {
		crashed, segs := build(t)
		if err := crashed.Remove(segs[1]); err != nil {
			t.Fatal(err)
		}
		if _, err := journal.Open(rotOpts(crashed)); !errors.Is(err, journal.ErrCorrupt) {
			t.Fatalf("a segment missing in front of durable records: %v, want ErrCorrupt", err)
		}
	})
}

// memSegs lists the segment files of the journal in /j, in order.
func memSegs(t *testing.T, m *vfs.MemFS) []string {
	t.Helper()
	names, err := m.ReadDir("/j")
	if err != nil {
		t.Fatal(err)
	}
	var segs []string
	for _, n := range names {
		if strings.HasSuffix(n, ".seg") {
			segs = append(segs, filepath.Join("/j", n))
		}
	}
	return segs
}

// syncMemFile makes path's current contents durable, as the kernel's
// writeback may do for any file at any time.
func syncMemFile(t *testing.T, m *vfs.MemFS, path string) {
	t.Helper()
	f, err := m.OpenRW(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
}

// zeroMemRecord zeroes the header of the n-th record of the segment at
// path (durably: it stands for damage, not for a lost write).
func zeroMemRecord(t *testing.T, m *vfs.MemFS, path string, n int) {
	t.Helper()
	b, err := vfs.ReadFile(m, path)
	if err != nil {
		t.Fatal(err)
	}
	off := journal.SegmentHeaderSize
	for i := 0; i < n; i++ {
		_, sz, err := journal.DecodeRecord(b[off:])
		if err != nil {
			t.Fatalf("%s record %d: %v", path, i, err)
		}
		off += sz
	}
	f, err := m.OpenRW(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(make([]byte, journal.RecordHeaderSize), int64(off)); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
}

// TestOlderFormatSyncedWhenClosed: a version-2 segment left by an earlier
// build is appended to and then closed by rotation; it is synced then (its
// format's recovery rule counts on it), while the version-3 segments after
// it are not, and a header flag a version-2 reader would not know is never
// set on it.
func TestOlderFormatSyncedWhenClosed(t *testing.T) {
	m := vfs.NewCrashableMem()
	if err := vfs.MkdirAllSynced(m, "/j", 0o755); err != nil {
		t.Fatal(err)
	}
	b := journal.AppendSegmentHeader(nil, journal.SegmentHeader{Version: 2, Volume: testVolume, FirstSeq: 1})
	f, err := m.Create("/j/00000000000000000001.seg", 0o644)
	if err == nil {
		_, err = f.WriteAt(b, 0)
	}
	if err == nil {
		err = f.Sync()
	}
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	if err := m.SyncDir("/j"); err != nil {
		t.Fatal(err)
	}
	j, err := journal.Open(rotOpts(m))
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	writeOnly(t, j, 1, 40) // fills the version-2 segment and two more
	if got := j.Stats().Syncs; got != 1 {
		t.Fatalf("%d fdatasyncs, want 1 (the version-2 segment when it was closed)", got)
	}
	if err := j.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	raw, err := vfs.ReadFile(m, "/j/00000000000000000001.seg")
	if err != nil {
		t.Fatal(err)
	}
	if h, err := journal.DecodeSegmentHeader(raw); err != nil || h.Version != 2 || h.OlderDurable {
		t.Fatalf("version-2 header after appending and a sync: %+v, %v", h, err)
	}
	crashed, err := journal.Open(rotOpts(m.CrashCloneDropUnsynced()))
	if err != nil {
		t.Fatal(err)
	}
	defer crashed.Close()
	checkChain(t, crashed, 1, 40, func(uint64) int { return 1000 })
}

// TestRotationDuringSync: a long fdatasync (a checkpoint making a GiB of
// journal durable) does not hold up writes that fill segments: rotation
// does not wait for the sync. Written waits complete while the sync is
// blocked; the Durable wait completes once it is let go, and what was
// written meanwhile is made durable by the next sync.
func TestRotationDuringSync(t *testing.T) {
	ctx := context.Background()
	m := vfs.NewCrashableMem()
	// The sync blocks in the first segment (the oldest it covers); the
	// new segments' headers are synced as usual.
	fsys := &gateFS{FS: m, path: "/j/00000000000000000001.seg", gate: make(chan struct{})}
	j, err := journal.Open(rotOpts(fsys))
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	writeOnly(t, j, 1, 20) // the second segment is active
	fsys.armed.Store(true)
	durable := make(chan error, 1)
	go func() { durable <- j.Wait(ctx, 20, journal.Durable) }()
	waitFor(t, func() bool { return fsys.blocked.Load() })
	// Several rotations while the sync is blocked.
	written := make(chan error, 1)
	go func() {
		for s := uint64(21); s <= 80; s++ {
			if err := j.Submit(ctx, rec(s, 1000)); err != nil {
				written <- err
				return
			}
		}
		written <- j.Wait(ctx, 80, journal.Written)
	}()
	select {
	case err := <-written:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		fsys.armed.Store(false)
		close(fsys.gate)
		t.Fatal("writes that fill segments waited for a blocked fdatasync")
	}
	if n := j.Stats().Segments; n < 5 {
		t.Fatalf("%d segments: the test needs rotations during the sync", n)
	}
	select {
	case err := <-durable:
		t.Fatalf("Durable returned while its fdatasync was blocked: %v", err)
	default:
	}
	fsys.armed.Store(false)
	close(fsys.gate)
	if err := <-durable; err != nil {
		t.Fatal(err)
	}
	if err := j.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	crashed, err := journal.Open(rotOpts(m.CrashCloneDropUnsynced()))
	if err != nil {
		t.Fatal(err)
	}
	defer crashed.Close()
	checkChain(t, crashed, 1, 80, func(uint64) int { return 1000 })
}

// gateFS blocks the Sync of the file at path while armed, until gate is
// closed.
type gateFS struct {
	vfs.FS
	path    string
	gate    chan struct{}
	armed   atomic.Bool
	blocked atomic.Bool
}

func (g *gateFS) Create(p string, perm os.FileMode) (vfs.File, error) {
	f, err := g.FS.Create(p, perm)
	if err != nil {
		return nil, err
	}
	return &gateFile{f, g, p}, nil
}

func (g *gateFS) OpenRW(p string) (vfs.File, error) {
	f, err := g.FS.OpenRW(p)
	if err != nil {
		return nil, err
	}
	return &gateFile{f, g, p}, nil
}

type gateFile struct {
	vfs.File
	g    *gateFS
	path string
}

func (f *gateFile) Sync() error {
	if f.path == f.g.path && f.g.armed.Load() {
		f.g.blocked.Store(true)
		<-f.g.gate
	}
	return f.File.Sync()
}

// removeGateFS blocks every Remove while armed, until gate is closed.
type removeGateFS struct {
	vfs.FS
	gate    chan struct{}
	armed   atomic.Bool
	blocked atomic.Int32
}

func (g *removeGateFS) Remove(p string) error {
	if g.armed.Load() {
		g.blocked.Add(1)
		<-g.gate
	}
	return g.FS.Remove(p)
}

// TestWriteNotBehindSegmentRemoval: unlinking a released segment (tens of
// milliseconds for 64 MiB on ext4 with discard) does not hold up writes:
// while a Remove is blocked, records are still written, synced and read,
// and the segments the consumer released are no longer readable. Once
// the Remove returns the files are gone; Close waits for that.
func TestWriteNotBehindSegmentRemoval(t *testing.T) {
	ctx := context.Background()
	m := vfs.NewCrashableMem()
	g := &removeGateFS{FS: m, gate: make(chan struct{})}
	j, err := journal.Open(rotOpts(g))
	if err != nil {
		t.Fatal(err)
	}
	if err := j.AddConsumer("store", 1, false); err != nil {
		t.Fatal(err)
	}
	writeOnly(t, j, 1, 100)
	before := len(memSegs(t, m))
	g.armed.Store(true)
	j.Release("store", 60)
	for deadline := time.Now().Add(10 * time.Second); g.blocked.Load() == 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("retention did not call Remove within 10 s of the release")
		}
	}
	if first := j.FirstSeq(); first <= 1 {
		t.Errorf("first seq %d while the released segments are being removed: want them out of the journal first", first)
	}
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	for s := uint64(101); s <= 140; s++ {
		if err := j.Submit(wctx, rec(s, 1000)); err != nil {
			t.Fatal(err)
		}
	}
	if err := j.Wait(wctx, 140, journal.Durable); err != nil {
		t.Fatalf("a write and a sync waited for a segment's Remove to return: %v", err)
	}
	if _, err := j.NewReader(1); !errors.Is(err, journal.ErrGone) {
		t.Errorf("reader at seq 1 while its segment is being removed: %v, want ErrGone", err)
	}
	// A power loss in the middle of the removal: the old segments are still
	// there in front of the chain, and every durable record is intact.
	crashed, err := journal.Open(rotOpts(m.CrashCloneDropUnsynced()))
	if err != nil {
		t.Fatalf("open after a power loss during segment removal: %v", err)
	}
	if first := crashed.FirstSeq(); first != 1 {
		t.Errorf("after a power loss before any unlink the journal starts at %d, want 1", first)
	}
	checkChain(t, crashed, 1, 140, func(uint64) int { return 1000 })
	if err := crashed.Close(); err != nil {
		t.Fatal(err)
	}
	g.armed.Store(false)
	close(g.gate)
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	after := memSegs(t, m)
	if len(after) >= before {
		t.Errorf("segments on disk %d before the release, %d after Close: the released ones were not removed", before, len(after))
	}
	re, err := journal.Open(rotOpts(m))
	if err != nil {
		t.Fatal(err)
	}
	defer re.Close()
	if first := re.FirstSeq(); first <= 1 || re.LastSeq() != 140 {
		t.Errorf("reopened journal holds %d..%d; want the released records gone and 140 last", first, re.LastSeq())
	}
}
