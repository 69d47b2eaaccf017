package mirror_test

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"testing"
	"time"

	"github.com/blockmirror/blockmirror/internal/vfs"
	"github.com/blockmirror/blockmirror/mirror"
	"github.com/blockmirror/blockmirror/mirror/wire"
	"github.com/blockmirror/blockmirror/transport"
)

func startPrimaryOn(t *testing.T, fsys vfs.FS, dir, addr string, id *transport.Identity, size int64) *primaryVol {
	t.Helper()
	node, err := mirror.OpenNode(t.Context(), mirror.NodeOptions{FS: fsys, Dir: dir, Size: size, Role: mirror.RolePrimary})
	if err != nil {
		t.Fatal(err)
	}
	repl, err := mirror.StartReplication(node, mirror.ReplicationOptions{
		Peers: []mirror.PeerAddr{{Name: "m", Addr: addr}}, Mode: wire.ModeAsync, SyncAcks: 1, AckLevel: wire.AckDurable,
		NodeName: "p", VolumeName: "v", Transport: transport.Config{Identity: id},
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

// TestPrimaryPowerLossMirrorConverges protects the invariant "every copy
// is the same disk": a primary loses power while its mirror is away; its
// image may keep sectors of writes whose journal records the power loss
// took (the store is written once the journal write is handed to the
// kernel, not once it is durable), and those writes never reached the
// mirror. After the restart, once the mirror is back in sync, the two
// images must be identical.
func TestPrimaryPowerLossMirrorConverges(t *testing.T) {
	n := 12
	if testing.Short() {
		n = 3
	}
	for seed := range uint64(n) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) { testPrimaryPowerLoss(t, seed) })
	}
}

func testPrimaryPowerLoss(t *testing.T, seed uint64) {
	ids := identities(t, "p", "m")
	dir := t.TempDir()
	host := newHost(t, ids["m"], dir, "v")
	addr := host.Addr()
	stopHost := runHost(t, host)
	fsys := vfs.NewCrashableMem()
	const size = 4 << 20
	p := startPrimaryOn(t, fsys, "/p", addr, ids["p"], size)
	writeBlocks(t, p.vol, 'A', 0, 32)
	waitInSync(t, p, host.Volume("v"), 20*time.Second)
	stopHost() // the mirror goes away

	rng := rand.New(rand.NewPCG(seed, 7))
	ctx := t.Context()
	for i := range 300 {
		blk := 64 + rng.IntN(900)
		if err := p.vol.WriteAt(ctx, bytes.Repeat([]byte{byte(i)}, 4096), int64(blk)*4096, false); err != nil {
			t.Fatal(err)
		}
		if i == 150 {
			if err := p.vol.Flush(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
	crashed := fsys.CrashClone(rng) // the power is lost
	p.close()

	host2, err := mirror.NewReplicaHost(mirror.ReplicaHostOptions{Listen: addr, Transport: transport.Config{Identity: ids["m"]}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := host2.AddVolume(t.Context(), "v", mirror.ReplicaOptions{Name: "m", Node: mirror.NodeOptions{Dir: filepath.Join(dir, "m-v")}}); err != nil {
		t.Fatal(err)
	}
	defer runHost(t, host2)()
	d := host2.Volume("v")
	p2 := startPrimaryOn(t, crashed, "/p", addr, ids["p"], 0)
	t.Logf("before the power loss the journal held 1..%d; after it %d..%d; mirror at %d", p.node.Journal.LastSeq(),
		p2.node.Journal.FirstSeq(), p2.node.Journal.LastSeq(), d.Status().Written)
	defer p2.close()
	writeBlocks(t, p2.vol, 'C', 1000, 8)
	waitInSync(t, p2, d, 60*time.Second)
	sameImages(t, p2.node, d.Node())
}
