package mirror_test

import (
	"bytes"
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/blockmirror/blockmirror/internal/faultproxy"
	"github.com/blockmirror/blockmirror/mirror"
	"github.com/blockmirror/blockmirror/mirror/wire"
	"github.com/blockmirror/blockmirror/transport"
)

// TestResyncKeepsMarksMadeDuringIt protects the invariant "a region whose
// records the journal dropped before a mirror had them stays marked in the
// mirror's bitmap until a resync has copied it after the drop": while a
// resync runs, the resyncer holds the bitmap in memory and saves it every
// second. Records dropped meanwhile for the mirror (here: a partition with a
// small journal) are marked too; the resyncer's saves must not overwrite
// those marks, or the next resync skips the regions and the mirror is
// marked consistent while stale.
func TestResyncKeepsMarksMadeDuringIt(t *testing.T) {
	if testing.Short() {
		t.Skip("resync with a partition: seconds")
	}
	ids := identities(t, "p", "m")
	dir := t.TempDir()
	host := newHost(t, ids["m"], dir, "v")
	defer runHost(t, host)()
	d := host.Volume("v")
	proxy, err := faultproxy.New(faultproxy.Config{Listen: "127.0.0.1:0", Target: host.Addr()})
	if err != nil {
		t.Fatal(err)
	}
	pctx, pcancel := context.WithCancel(t.Context())
	defer pcancel()
	go proxy.Run(pctx)

	node, err := mirror.OpenNode(t.Context(), mirror.NodeOptions{Dir: filepath.Join(dir, "p"), Size: 8 << 20, Role: mirror.RolePrimary,
		JournalSegment: 64 << 10, JournalMax: 256 << 10})
	if err != nil {
		t.Fatal(err)
	}
	defer node.Close()
	proxy.Partition(faultproxy.Both)
	repl, err := mirror.StartReplication(node, mirror.ReplicationOptions{
		Peers: []mirror.PeerAddr{{Name: "m", Addr: proxy.Addr().String()}}, Mode: wire.ModeAsync, SyncAcks: 1, AckLevel: wire.AckWritten,
		NodeName: "p", VolumeName: "v", Resync: mirror.ResyncOptions{Rate: 1 << 20, Window: 256 << 10},
		Transport: transport.Config{Identity: ids["p"], KeepAlive: 100 * time.Millisecond, IdleTimeout: 700 * time.Millisecond},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer repl.Close()
	vol, err := mirror.NewVolume(node, repl, mirror.VolumeOptions{CheckpointInterval: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer vol.Close()

	// The mirror is away: 48 chunks of 64 KiB are written and dropped from
	// the journal for it, so they are marked in its bitmap.
	ctx := t.Context()
	for c := range 48 {
		for b := range 16 {
			if err := vol.WriteAt(ctx, bytes.Repeat([]byte{byte(c + 1)}, 4096), int64(c)*64<<10+int64(b)*4096, false); err != nil {
				t.Fatal(err)
			}
		}
	}
	waitFor(t, "records dropped for the mirror", func() bool { return node.Meta().Peers["m"].NeedsResync })

	// The mirror comes back and is resynced, at 1 MiB/s.
	proxy.Heal()
	var last string
	deadline := time.Now().Add(30 * time.Second)
	for {
		st := repl.Status()
		if len(st.Peers) == 1 && st.Peers[0].Resync != nil && st.Peers[0].Resync.Active && st.Peers[0].Resync.DoneBytes >= 8<<16 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no resync under way: %s", last)
		}
		last = fmt.Sprintf("%+v %+v", st.Peers[0], st.Peers[0].Resync)
		time.Sleep(5 * time.Millisecond)
	}
	// A partition in the middle of it: new writes to chunks the resync has
	// copied already are dropped for the mirror (their regions marked)
	// while the resyncer still runs.
	proxy.Partition(faultproxy.Both)
	for i := range 96 {
		if err := vol.WriteAt(ctx, bytes.Repeat([]byte{0xd0 + byte(i%4)}, 4096), int64(i%4)*64<<10+int64(i/4%16)*4096, false); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "the session to end", func() bool {
		st := repl.Status()
		return len(st.Peers) == 1 && !st.Peers[0].Connected
	})
	time.Sleep(1500 * time.Millisecond) // at least one periodic save of a live resyncer would have run
	proxy.Heal()

	deadline = time.Now().Add(60 * time.Second)
	for {
		st := repl.Status()
		ms := d.Status()
		if st.Peers[0].State == "in-sync" && ms.Applied >= st.LastSeq && !ms.Inconsistent {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("mirror not back in sync: %+v / %+v", st.Peers[0], ms)
		}
		time.Sleep(20 * time.Millisecond)
	}
	sameImages(t, node, d.Node())
}
