package mirror_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/blockmirror/blockmirror/journal"
	"github.com/blockmirror/blockmirror/mirror"
	"github.com/blockmirror/blockmirror/mirror/core"
	"github.com/blockmirror/blockmirror/mirror/wire"
	"github.com/blockmirror/blockmirror/transport"
)

// startPrimaryMode opens (or creates) the primary in dir and replicates it
// in mode, at ack level durable, to the mirror "m" at addr.
func startPrimaryMode(t *testing.T, dir, addr string, id *transport.Identity, mode wire.Mode) *primaryVol {
	t.Helper()
	node, err := mirror.OpenNode(t.Context(), mirror.NodeOptions{Dir: dir, Size: 4 << 20, Role: mirror.RolePrimary, JournalSegment: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	repl, err := mirror.StartReplication(node, mirror.ReplicationOptions{
		Peers: []mirror.PeerAddr{{Name: "m", Addr: addr}}, Mode: mode, SyncAcks: 1,
		AckLevel: wire.AckDurable, AckTimeout: 20 * time.Second, NodeName: "p", VolumeName: "v",
		Transport: transport.Config{Identity: id},
	})
	if err != nil {
		node.Close()
		t.Fatal(err)
	}
	vol, err := mirror.NewVolume(node, repl, mirror.VolumeOptions{CheckpointInterval: time.Hour})
	if err != nil {
		repl.Close()
		node.Close()
		t.Fatal(err)
	}
	return &primaryVol{node: node, repl: repl, vol: vol}
}

// copyTree copies the regular files under src to dst (a data directory
// as a power loss would leave it on disk, once the test trims it).
func copyTree(t *testing.T, src, dst string) {
	t.Helper()
	err := filepath.Walk(src, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		to := filepath.Join(dst, rel)
		if fi.IsDir() {
			return os.MkdirAll(to, 0o700)
		}
		in, err := os.Open(p)
		if err != nil {
			return err
		}
		defer in.Close()
		out, err := os.Create(to)
		if err != nil {
			return err
		}
		if _, err := io.Copy(out, in); err != nil {
			out.Close()
			return err
		}
		return out.Close()
	})
	if err != nil {
		t.Fatal(err)
	}
}

func writeBlocks(t *testing.T, v *mirror.Volume, tag byte, first, n int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	for i := first; i < first+n; i++ {
		if err := v.WriteAt(ctx, bytes.Repeat([]byte{tag}, 4096), int64(i)*4096, false); err != nil {
			t.Fatalf("write %c%d: %v", tag, i, err)
		}
	}
}

// waitInSync waits until the mirror is in sync with p and has applied its
// last seq.
func waitInSync(t *testing.T, p *primaryVol, d *mirror.Replica, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		st := p.repl.Status()
		ms := d.Status()
		if len(st.Peers) == 1 && st.Peers[0].State == "in-sync" && ms.Applied >= st.LastSeq && !ms.Inconsistent {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("mirror not in sync after %v: primary %+v, mirror %+v", within, st.Peers, ms)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func sameImages(t *testing.T, a, b *mirror.Node) {
	t.Helper()
	size := a.Store.Size()
	ba, bb := make([]byte, 4096), make([]byte, 4096)
	var diff []int64
	for off := int64(0); off < size; off += 4096 {
		if _, err := a.Store.ReadAt(ba, off); err != nil {
			t.Fatal(err)
		}
		if _, err := b.Store.ReadAt(bb, off); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(ba, bb) {
			diff = append(diff, off/4096)
		}
	}
	if len(diff) > 0 {
		t.Errorf("the primary's and the mirror's images differ in %d blocks: %v", len(diff), diff)
	}
}

// TestRestartedPrimaryDoesNotReuseSeqs protects the invariant "a mirror is
// a write-order prefix of its primary's history": a primary that stops
// uncleanly may have streamed records to its mirror that its own journal
// lost (the sender streams from the memory tail before the local write,
// and non-FUA records are not synced locally). Restarted, it must not hand
// out those seqs again as if the mirror held its new records: the fork is
// found, the mirror's records after the primary's last are quarantined,
// the mirror is resynced, and both images end identical.
func TestRestartedPrimaryDoesNotReuseSeqs(t *testing.T) {
	for _, mode := range []wire.Mode{wire.ModeSync, wire.ModeAsync} {
		t.Run(mode.String(), func(t *testing.T) { testRestartedPrimary(t, mode, false) })
	}
}

// TestResetResyncComparesWholeDisk protects the invariant "a mirror marked
// consistent equals its primary": when a mirror's journal diverged (here:
// it holds records a power loss took from the primary, whose store lost
// them too), a dirty bitmap that exists for other reasons (records dropped
// for the mirror while it was away) does not cover what differs, so the
// reset resync must compare the whole disk.
func TestResetResyncComparesWholeDisk(t *testing.T) {
	testRestartedPrimary(t, wire.ModeAsync, true)
}

// testRestartedPrimary: see TestRestartedPrimaryDoesNotReuseSeqs. lossy:
// the power loss also took the store's writes of seqs 11..20, and the
// restarted primary's small journal drops records for the absent mirror.
func testRestartedPrimary(t *testing.T, mode wire.Mode, lossy bool) {
	ids := identities(t, "p", "m")
	dir := t.TempDir()
	host := newHost(t, ids["m"], dir, "v")
	addr := host.Addr()
	stop := runHost(t, host)
	d := host.Volume("v")

	pdir := filepath.Join(dir, "p")
	p := startPrimaryMode(t, pdir, addr, ids["p"], mode)
	writeBlocks(t, p.vol, 'A', 0, 20) // seqs 1..20, durable on the mirror
	waitInSync(t, p, d, 20*time.Second)

	// The power is lost: on disk the primary's journal ends at seq 10.
	crashed := filepath.Join(dir, "p-after-power-loss")
	copyTree(t, pdir, crashed)
	p.close()
	stop() // the mirror is away while the primary restarts
	j, err := journal.Open(journal.Options{Dir: filepath.Join(crashed, mirror.JournalDir), Volume: p.node.Meta().Volume})
	if err != nil {
		t.Fatal(err)
	}
	if err := j.TruncateAfter(10); err != nil {
		t.Fatal(err)
	}
	j.Close()
	nB := 30
	var opts mirror.NodeOptions
	if lossy {
		f, err := os.OpenFile(filepath.Join(crashed, mirror.DiskFile), os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteAt(make([]byte, 10*4096), 10*4096); err != nil { // blocks of seqs 11..20
			t.Fatal(err)
		}
		f.Close()
		opts = mirror.NodeOptions{JournalSegment: 64 << 10, JournalMax: 256 << 10}
		nB = 200
	}

	// Restarted, the primary takes its writes (past the mirror's seq 20)
	// before the mirror is back, degraded (async: without a throttle).
	p2 := startPrimaryDegraded(t, crashed, addr, ids["p"], mode, opts)
	defer p2.close()
	writeBlocks(t, p2.vol, 'B', 100, nB)
	if lossy {
		waitFor(t, "records dropped for the mirror", func() bool { return p2.node.Meta().Peers["m"].NeedsResync })
	}
	host2, err := mirror.NewReplicaHost(mirror.ReplicaHostOptions{Listen: addr, Transport: transport.Config{Identity: ids["m"]}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := host2.AddVolume(t.Context(), "v", mirror.ReplicaOptions{Name: "m", Node: mirror.NodeOptions{Dir: filepath.Join(dir, "m-v")}}); err != nil {
		t.Fatal(err)
	}
	defer runHost(t, host2)()
	d = host2.Volume("v")
	waitInSync(t, p2, d, 30*time.Second)
	writeBlocks(t, p2.vol, 'C', 200, 5)
	waitInSync(t, p2, d, 30*time.Second)
	sameImages(t, p2.node, d.Node())
	for _, q := range d.Status().Quarantined {
		t.Logf("mirror quarantined seqs %d..%d (%d records) after fork %d", q.FirstSeq, q.LastSeq, q.Records, q.ForkSeq)
	}
	if len(d.Status().Quarantined) == 0 {
		t.Errorf("the mirror's records 11..20 from before the restart were not quarantined")
	}
}

func startPrimaryDegraded(t *testing.T, dir, addr string, id *transport.Identity, mode wire.Mode, opts mirror.NodeOptions) *primaryVol {
	t.Helper()
	opts.Dir, opts.Role = dir, mirror.RolePrimary
	node, err := mirror.OpenNode(t.Context(), opts)
	if err != nil {
		t.Fatal(err)
	}
	repl, err := mirror.StartReplication(node, mirror.ReplicationOptions{
		Peers: []mirror.PeerAddr{{Name: "m", Addr: addr}}, Mode: mode, SyncAcks: 1, AllowDegraded: true,
		AckLevel: wire.AckDurable, AckTimeout: time.Second, NodeName: "p", VolumeName: "v",
		Transport: transport.Config{Identity: id},
	})
	if err != nil {
		node.Close()
		t.Fatal(err)
	}
	vol, err := mirror.NewVolume(node, repl, mirror.VolumeOptions{CheckpointInterval: 100 * time.Millisecond})
	if err != nil {
		repl.Close()
		node.Close()
		t.Fatal(err)
	}
	return &primaryVol{node: node, repl: repl, vol: vol}
}

// crashCopy writes n 4 KiB blocks through a primary volume without
// replication in a node with small journal segments, records that mirror
// "m" acknowledged seqs ≤ durable as durable, and returns a copy of the
// data directory as a crash would leave it (the node was never closed).
func crashCopy(t *testing.T, n int, durable uint64) string {
	t.Helper()
	dir := t.TempDir()
	node, err := mirror.OpenNode(t.Context(), mirror.NodeOptions{Dir: filepath.Join(dir, "p"), Size: 4 << 20, Role: mirror.RolePrimary, JournalSegment: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	err = node.UpdateMeta(func(m *mirror.Meta) error {
		m.Peers = map[string]mirror.PeerMeta{"m": {DurableSeq: durable}}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	v, err := mirror.NewVolume(node, nil, mirror.VolumeOptions{CheckpointInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	writeBlocks(t, v, 'A', 0, n)
	crashed := filepath.Join(dir, "crashed")
	copyTree(t, filepath.Join(dir, "p"), crashed)
	v.Close()
	node.Close()
	return crashed
}

// TestReplayKeepsRecordsMirrorsNeed protects the invariant "the journal
// keeps every record a mirror has not acknowledged as durable, or marks its
// region in the mirror's dirty bitmap": the replay after an unclean stop
// checkpoints the store, and must not release the segments the mirrors
// still need before their consumers are registered (StartReplication comes
// later). Otherwise a mirror that was away needs a full resync, or cannot
// be registered at all.
func TestReplayKeepsRecordsMirrorsNeed(t *testing.T) {
	crashed := crashCopy(t, 100, 5)
	node, err := mirror.OpenNode(t.Context(), mirror.NodeOptions{Dir: crashed, JournalSegment: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	defer node.Close()
	if first := node.Journal.FirstSeq(); first > 6 {
		t.Fatalf("after the replay the journal starts at seq %d; mirror m needs every record from seq 6", first)
	}
	if _, ok := node.Journal.Consumer("peer:m"); !ok {
		t.Errorf("mirror m's journal consumer is not registered at open")
	}
}

// TestDemotedPrimaryKeepsDivergentRecords protects the invariant
// "divergent records are quarantined, never dropped": an old primary that
// crashed and is demoted offline must keep the records none of its mirrors
// acknowledged until, as a mirror, it has compared histories with the new
// primary and quarantined those after the fork.
func TestDemotedPrimaryKeepsDivergentRecords(t *testing.T) {
	crashed := crashCopy(t, 100, 5)
	node, err := mirror.OpenNode(t.Context(), mirror.NodeOptions{Dir: crashed, JournalSegment: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	if err := mirror.Demote(node, false); err != nil {
		t.Fatal(err)
	}
	node.Close()
	node, err = mirror.OpenNode(t.Context(), mirror.NodeOptions{Dir: crashed, JournalSegment: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	defer node.Close()
	// The new primary (the mirror, promoted after seq 5) forks here.
	rep, err := node.Quarantine(5, "test")
	if err != nil {
		t.Fatal(err)
	}
	if rep == nil || rep.Records != 95 || rep.MissingBefore != 0 {
		t.Fatalf("quarantine after the fork at seq 5: %+v; want the 95 records 6..100, none missing", rep)
	}
}

// TestFenceSurvivesRestart protects the invariant "at most one node
// acknowledges writes in an epoch's lineage": a primary that learned a node
// is primary in a higher epoch (here: that node's replication contacted
// its responder) is fenced, and stays fenced after a restart — before, a
// restarted old primary took writes again until it happened to contact a
// mirror (in async mode it acknowledged them).
func TestFenceSurvivesRestart(t *testing.T) {
	ids := identities(t, "p", "q")
	dir := t.TempDir()
	pdir := filepath.Join(dir, "p")
	node, err := mirror.OpenNode(t.Context(), mirror.NodeOptions{Dir: pdir, Size: 4 << 20, Role: mirror.RolePrimary})
	if err != nil {
		t.Fatal(err)
	}
	stale := make(chan uint64, 1)
	resp, err := mirror.NewResponder("127.0.0.1:0", "p", node, transport.Config{Identity: ids["p"]},
		func(e uint64) { stale <- e }, nil)
	if err != nil {
		t.Fatal(err)
	}
	rctx, rcancel := context.WithCancel(t.Context())
	go resp.Run(rctx)

	// q: a mirror of the same volume, promoted to epoch 2, replicating to
	// p's address (as after a failover).
	q, err := mirror.OpenNode(t.Context(), mirror.NodeOptions{Dir: filepath.Join(dir, "q"), Size: 4 << 20, Role: mirror.RoleMirror, Volume: node.Meta().Volume})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	if _, err := mirror.Promote(q, false); err != nil {
		t.Fatal(err)
	}
	repl, err := mirror.StartReplication(q, mirror.ReplicationOptions{
		Peers: []mirror.PeerAddr{{Name: "p", Addr: resp.Addr()}}, Mode: wire.ModeAsync, SyncAcks: 1, AckLevel: wire.AckWritten,
		NodeName: "q", VolumeName: "v", Transport: transport.Config{Identity: ids["q"]},
	})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case e := <-stale:
		t.Logf("p learned that epoch %d exists", e)
	case <-time.After(20 * time.Second):
		t.Fatal("p's responder never learned of the higher epoch")
	}
	repl.Close()
	rcancel()
	node.Close()

	node, err = mirror.OpenNode(t.Context(), mirror.NodeOptions{Dir: pdir})
	if err != nil {
		t.Fatal(err)
	}
	defer node.Close()
	v, err := mirror.NewVolume(node, nil, mirror.VolumeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	if err := v.WriteAt(t.Context(), make([]byte, 4096), 0, false); err == nil {
		t.Fatal("the restarted old primary acknowledged a write although a node is primary in epoch 2")
	} else if !errors.Is(err, core.ErrFenced) {
		t.Fatalf("write on the restarted old primary: %v, want ErrFenced", err)
	}
}
