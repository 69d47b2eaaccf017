package mirror

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/blockmirror/blockmirror/internal/vfs"
	"github.com/blockmirror/blockmirror/journal"
)

// TestSenderFailureEndsSession protects liveness: a session whose sender
// fails (here: the records the mirror needs were dropped from the journal
// after the handshake decided to stream them) must end, so the next
// handshake can decide anew (a resync), instead of staying up with nobody
// sending. Found by the simulation (seed 811: a resync's From dropped by
// the journal's size bound right after it was chosen); made
// deterministic here with a core whose idea of the journal's first seq
// is stale (its tick never runs).
func TestSenderFailureEndsSession(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		net := newSimNet(1)
		net.partition("p", "m", nil)
		ln, err := net.listen("m", "m")
		if err != nil {
			t.Fatal(err)
		}
		mctx, stop := context.WithCancel(ctx)
		d, err := newReplicaOn(mctx, ln, ReplicaOptions{Name: "m", Node: NodeOptions{Dir: "/d", FS: vfs.NewCrashableMem()}})
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- d.Run(mctx) }()

		node, err := OpenNode(ctx, NodeOptions{Dir: "/d", FS: vfs.NewCrashableMem(), Size: simSize, Role: RolePrimary,
			JournalSegment: 1 << 10, JournalMax: 16 << 10})
		if err != nil {
			t.Fatal(err)
		}
		repl, err := StartReplication(node, ReplicationOptions{
			Peers: []PeerAddr{{Name: "m", Addr: "m"}}, Mode: ModeAsync, SyncAcks: 1, NodeName: "p", VolumeName: "v",
			Tick: time.Hour, Pool: newConnPool(net.dialer("p", func() bool { return false })),
		})
		if err != nil {
			t.Fatal(err)
		}
		vol, err := NewVolume(node, repl, VolumeOptions{CheckpointInterval: 10 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		// Nothing tracks what m lacks (no consumer, no dirty bitmap), so
		// only the core's first seq, stale at 1, decides how m catches up.
		node.Journal.RemoveConsumer(peerConsumer("m"))
		for i := range 30 {
			if err := vol.WriteAt(ctx, bytes.Repeat([]byte{byte(i + 1)}, simBlock), int64(i%simBlocks)*simBlock, false); err != nil {
				t.Fatal(err)
			}
			time.Sleep(20 * time.Millisecond) // checkpoints release records; the size bound drops them
		}
		if first := node.Journal.FirstSeq(); first <= 1 {
			t.Fatalf("the journal still starts at %d", first)
		}
		net.heal()
		deadline := time.Now().Add(time.Minute)
		for {
			time.Sleep(100 * time.Millisecond)
			st := repl.Status()
			if ms := d.Status(); st.Peers[0].State == "in-sync" && ms.Applied == st.LastSeq && !ms.Inconsistent {
				if diff := simDiffBlocks(node, d.Node()); len(diff) > 0 {
					t.Fatalf("in sync, but the images differ in blocks %v", diff)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the mirror never caught up: primary %+v, mirror %+v", st.Peers[0], d.Status())
			}
		}
		vol.Close()
		repl.Close()
		node.Close()
		stop()
		<-done
	})
}

// TestPromoteWhileStopping: a mirror stopped while an online promotion
// waits for its applier (here: the store's writes fail, so it never
// catches up) closes its volume and Run does not return ErrPromoted; the
// promotion fails. Found by the simulation (seed 1276: a mirror lost power
// while the operator promoted it); before the fix Run saw the promotion's
// flag, returned ErrPromoted and left the volume open, and the promotion
// failed afterwards: nobody served or closed the node.
func TestPromoteWhileStopping(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		var broken atomic.Bool
		fsys := vfs.WithErrors(vfs.NewCrashableMem(), vfs.InjectorFunc(func(op vfs.Op, path string) error {
			if broken.Load() && op == vfs.OpWrite && filepath.Base(path) == DiskFile {
				return errors.New("injected I/O error")
			}
			return nil
		}))
		n, err := OpenNode(ctx, NodeOptions{FS: fsys, Dir: "/m", Size: simSize, Role: RoleMirror})
		if err != nil {
			t.Fatal(err)
		}
		n.Close()
		net := newSimNet(1)
		ln, err := net.listen("m", "m")
		if err != nil {
			t.Fatal(err)
		}
		mctx, stop := context.WithCancel(ctx)
		d, err := newReplicaOn(mctx, ln, ReplicaOptions{Name: "m", Node: NodeOptions{Dir: "/m", FS: fsys}})
		if err != nil {
			t.Fatal(err)
		}
		broken.Store(true)
		for s := uint64(1); s <= 3; s++ {
			r := journal.Record{Op: journal.OpWrite, Epoch: 1, Seq: s, Offset: s * simBlock, Length: simBlock, Data: bytes.Repeat([]byte{byte(s)}, simBlock)}
			if err := d.Node().Journal.Submit(ctx, r); err != nil {
				t.Fatal(err)
			}
		}
		done := make(chan error, 1)
		go func() { done <- d.Run(mctx) }()
		promoted := make(chan error, 1)
		go func() {
			pctx, cancel := context.WithTimeout(ctx, time.Hour)
			defer cancel()
			_, err := d.Promote(pctx, false)
			promoted <- err
		}()
		time.Sleep(time.Second) // the promotion waits for the applier
		stop()
		if err := <-done; err != nil {
			t.Errorf("Run returned %v; want nil (the promotion did not happen)", err)
		}
		if err := <-promoted; err == nil {
			t.Errorf("the promotion succeeded on a volume that stopped")
		}
		if node := d.Node(); node.Meta().Role != RoleMirror {
			t.Errorf("the node's role is %s", node.Meta().Role)
		}
	})
}
