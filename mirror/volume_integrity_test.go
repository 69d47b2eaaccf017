package mirror_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/blockmirror/blockmirror/internal/vfs"
	"github.com/blockmirror/blockmirror/mirror"
	"github.com/blockmirror/blockmirror/mirror/core"

	// gateFS is the OS file system with a gate on journal writes: while closed,
	// every WriteAt to a journal segment waits until it opens. It lets a test
	// hold records between submission and the write that makes them Written.
	"github.com/blockmirror/blockmirror/mirror/wire"
)

type gateFS struct {
	vfs.FS
	closed atomic.Bool
	mu     sync.Mutex
	open   chan struct{}
	inside atomic.Int32 // writes waiting at the gate
}

func newGateFS() *gateFS { return &gateFS{FS: vfs.OS, open: make(chan struct{})} }

func (g *gateFS) shut() {
	g.mu.Lock()
	g.open = make(chan struct{})
	g.mu.Unlock()
	g.closed.Store(true)
}

func (g *gateFS) release() {
	g.closed.Store(false)
	g.mu.Lock()
	close(g.open)
	g.mu.Unlock()
}

func (g *gateFS) wait() {
	if !g.closed.Load() {
		return
	}
	g.mu.Lock()
	ch := g.open
	g.mu.Unlock()
	g.inside.Add(1)
	<-ch
	g.inside.Add(-1)
}

func (g *gateFS) gated(path string, f vfs.File, err error) (vfs.File, error) {
	if err != nil || !strings.Contains(path, string(filepath.Separator)+mirror.JournalDir+string(filepath.Separator)) {
		return f, err
	}
	return gateFile{f, g}, nil
}

func (g *gateFS) Create(path string, perm os.FileMode) (vfs.File, error) {
	f, err := g.FS.Create(path, perm)
	return g.gated(path, f, err)
}

func (g *gateFS) OpenRW(path string) (vfs.File, error) {
	f, err := g.FS.OpenRW(path)
	return g.gated(path, f, err)
}

type gateFile struct {
	vfs.File
	g *gateFS
}

func (f gateFile) WriteAt(p []byte, off int64) (int, error) {
	f.g.wait()
	return f.File.WriteAt(p, off)
}

// coreRepl is a Replicator over a bare PrimaryCore in async mode without
// mirrors: what a Volume sees of replication, with the core's own
// bookkeeping (seqs, pending requests) observable.
type coreRepl struct {
	mu      sync.Mutex
	c       *core.PrimaryCore
	waiters map[uint64]chan error
}

func newCoreRepl(t *testing.T, next uint64) *coreRepl {
	t.Helper()
	c, err := core.NewPrimaryCore(core.PrimaryConfig{Mode: wire.ModeAsync, Epoch: 1, NextSeq: next})
	if err != nil {
		t.Fatal(err)
	}
	return &coreRepl{c: c, waiters: make(map[uint64]chan error)}
}

func (r *coreRepl) deliverLocked() {
	rd := r.c.Ready()
	for _, c := range rd.Completions {
		if ch := r.waiters[c.ID]; ch != nil {
			ch <- c.Err
		}
	}
}

func (r *coreRepl) Admit(id uint64, bytes int, fua bool) (uint64, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	seq, err := r.c.ProposeWrite(id, fua)
	if err == nil {
		r.waiters[id] = make(chan error, 1)
	}
	r.deliverLocked()
	return seq, err
}

func (r *coreRepl) AdmitFlush(id uint64) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.waiters[id] = make(chan error, 1)
	err := r.c.ProposeFlush(id)
	r.deliverLocked()
	return err
}

func (r *coreRepl) LocalDone(ctx context.Context, id uint64) error {
	r.mu.Lock()
	ch := r.waiters[id]
	r.c.LocalDone(id)
	r.deliverLocked()
	r.mu.Unlock()
	defer func() { r.mu.Lock(); delete(r.waiters, id); r.mu.Unlock() }()
	select {
	case err := <-ch:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (r *coreRepl) WaitsForMirrors(bool) bool { return false }

func (r *coreRepl) Forget(id uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.c.Forget(id)
	delete(r.waiters, id)
	r.deliverLocked()
}

func (r *coreRepl) status() core.PrimaryStatus {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.c.Status()
}

func openGateVolume(t *testing.T, dir string, fs vfs.FS, repl *coreRepl) (*mirror.Node, *mirror.Volume) {
	t.Helper()
	node, err := mirror.OpenNode(t.Context(), mirror.NodeOptions{Dir: dir, Size: 64 << 20, Role: mirror.RolePrimary, FS: fs})
	if err != nil {
		t.Fatal(err)
	}
	var r mirror.Replicator
	if repl != nil {
		r = repl
	}
	v, err := mirror.NewVolume(node, r, mirror.VolumeOptions{CheckpointInterval: time.Hour})
	if err != nil {
		node.Close()
		t.Fatal(err)
	}
	return node, v
}

// waitFor polls cond for up to 10 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestVolumeAdmitNeverPartsFromSubmit protects the invariant "seq
// assignment and journal submission never part": a write whose context
// ends while the journal's queue is full must not leave the replication
// core a seq ahead of the journal (which failed every later write with an
// out-of-order seq) nor a request pending in the core forever.
func TestVolumeAdmitNeverPartsFromSubmit(t *testing.T) {
	g := newGateFS()
	repl := newCoreRepl(t, 1)
	node, v := openGateVolume(t, t.TempDir(), g, repl)
	defer node.Close()
	defer v.Close()

	// Fill the queue (64 MiB by default) with seven 8 MiB writes whose
	// journal write cannot proceed: an eighth does not fit.
	g.shut()
	const blk = 8 << 20
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for i := range 7 {
		wg.Go(func() {
			errs <- v.WriteAt(context.Background(), bytes.Repeat([]byte{byte(i + 1)}, blk), int64(i%4)*blk, false)
		})
	}
	waitFor(t, "a full journal queue", func() bool { return node.Journal.Stats().QueuedBytes >= 56<<20 })

	// This write cannot be queued; its client gives up.
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	err := v.WriteAt(ctx, bytes.Repeat([]byte{0xee}, blk), 4*blk, false)
	cancel()
	if err == nil {
		t.Fatal("a write into a full queue succeeded although its context ended")
	}
	t.Logf("write into the full queue: %v", err)

	g.release()
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("a queued write failed: %v", err)
		}
	}
	// Later writes continue the journal's seqs.
	if err := v.WriteAt(context.Background(), bytes.Repeat([]byte{0x55}, 4096), 5*blk, false); err != nil {
		t.Fatalf("a write after the abandoned one failed: %v", err)
	}
	st := repl.status()
	if last := node.Journal.LastSeq(); st.LastSeq != last {
		t.Errorf("core's last seq %d, journal's %d: they parted", st.LastSeq, last)
	}
	if st.Pending != 0 {
		t.Errorf("%d requests still pending in the core after every write returned", st.Pending)
	}
}

// TestVolumeCancelledWriteIsApplied protects the invariant "a record once
// submitted is applied to the primary's store whatever happens to the
// request that made it": the record is journaled and may already be on a
// mirror, so a primary that skipped the store write (and checkpointed past
// it) would differ from its mirrors for good.
func TestVolumeCancelledWriteIsApplied(t *testing.T) {
	dir := t.TempDir()
	g := newGateFS()
	node, v := openGateVolume(t, dir, g, newCoreRepl(t, 1))

	g.shut()
	first := make(chan error, 1)
	go func() { first <- v.WriteAt(context.Background(), bytes.Repeat([]byte{1}, 4096), 0, false) }()
	// The first write holds the journal's write pass at the gate.
	waitFor(t, "the first write at the gate", func() bool { return g.inside.Load() > 0 })

	// The second write is submitted, then its context ends while it waits
	// for the pass under way.
	const off = 1 << 20
	want := bytes.Repeat([]byte{0xab}, 64<<10)
	ctx, cancel := context.WithCancel(context.Background())
	second := make(chan error, 1)
	go func() { second <- v.WriteAt(ctx, want, off, false) }()
	waitFor(t, "the second record submitted", func() bool { return node.Journal.LastSeq() == 2 })
	time.Sleep(20 * time.Millisecond)
	cancel()
	// On the old code the second write returns now, without its store write.
	select {
	case err := <-second:
		t.Logf("cancelled write returned before its record was written: %v", err)
	case <-time.After(100 * time.Millisecond):
	}
	g.release()
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-second:
		t.Logf("cancelled write: %v", err)
	case <-time.After(10 * time.Second):
	}
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(want))
	if _, err := node.Store.ReadAt(got, off); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("the cancelled write's record is in the journal (and on the mirrors) but not in the primary's store")
	}
	node.Close()

	// After a restart, too (a checkpoint must not have passed it unapplied).
	node, err := mirror.OpenNode(t.Context(), mirror.NodeOptions{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer node.Close()
	if _, err := node.Store.ReadAt(got, off); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("after a restart the primary's store lacks the cancelled write's record")
	}
}

// indirectPrimary is a primary volume on a core-backed replication, with
// the indirect path on for writes of 64 KiB and more; closed at the end of
// the test.
func indirectPrimary(t *testing.T) (*mirror.Node, *coreRepl, *mirror.Volume) {
	t.Helper()
	node, err := mirror.OpenNode(t.Context(), mirror.NodeOptions{Dir: t.TempDir(), Size: 64 << 20, Role: mirror.RolePrimary})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { node.Close() })
	repl := newCoreRepl(t, 1)
	v, err := mirror.NewVolume(node, repl, mirror.VolumeOptions{CheckpointInterval: time.Hour, IndirectMin: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { v.Close() })
	return node, repl, v
}

// fence makes the core fenced by a node of a higher epoch.
func (r *coreRepl) fence(epoch uint64) {
	r.mu.Lock()
	r.c.Fence(epoch)
	r.mu.Unlock()
}

// A primary fenced between an indirect write's image write and its Admit
// (the fence arrives while the data is written) holds bytes in its image
// that no record has. Demoted online, it must be marked for a resync: the
// clean demotion left it a mirror with that data, in sync with nobody
// (the simulation's seeds 1850 and 3209). coreRepl has no early fence
// check, so the write takes exactly that path.
func TestDemoteAfterFailedIndirectWriteResyncs(t *testing.T) {
	node, repl, v := indirectPrimary(t)
	if err := v.WriteAt(t.Context(), bytes.Repeat([]byte{1}, 128<<10), 0, false); err != nil {
		t.Fatal(err)
	}
	repl.fence(2)
	if err := v.WriteAt(t.Context(), bytes.Repeat([]byte{2}, 128<<10), 1<<20, false); !errors.Is(err, core.ErrFenced) {
		t.Fatalf("indirect write on a fenced core: %v, want ErrFenced", err)
	}
	if err := v.Demote(t.Context(), false); err != nil {
		t.Fatal(err)
	}
	if m := node.Meta(); m.Role != mirror.RoleMirror || !m.NeedsResync {
		t.Fatalf("after the demotion: role %s, needs resync %v; want a mirror that needs a resync", m.Role, m.NeedsResync)
	}
}

// The clean case stays clean: a fenced primary whose writes all failed
// before touching the image (journaled writes, which fail at Admit) is
// demoted without a resync.
func TestDemoteFencedWithoutImageWriteStaysClean(t *testing.T) {
	node, repl, v := indirectPrimary(t)
	repl.fence(2)
	if err := v.WriteAt(t.Context(), bytes.Repeat([]byte{2}, 4<<10), 1<<20, false); !errors.Is(err, core.ErrFenced) {
		t.Fatalf("journaled write on a fenced core: %v, want ErrFenced", err)
	}
	if err := v.Demote(t.Context(), false); err != nil {
		t.Fatal(err)
	}
	if m := node.Meta(); m.Role != mirror.RoleMirror || m.NeedsResync {
		t.Fatalf("after the demotion: role %s, needs resync %v; want a mirror without a resync", m.Role, m.NeedsResync)
	}
}
