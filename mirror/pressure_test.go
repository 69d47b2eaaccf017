package mirror_test

import (
	"bytes"
	"path/filepath"
	"testing"
	"time"

	"github.com/blockmirror/blockmirror/journal"
	"github.com/blockmirror/blockmirror/mirror"
	"github.com/blockmirror/blockmirror/mirror/wire"
	"github.com/blockmirror/blockmirror/transport"
)

// The journal's size bound holds on a primary between its checkpoints
// (issue 18, item 2): over --journal-max, the journal asks the store's
// checkpoint to release the oldest records (OnPressure) and the volume
// checkpoints at once instead of at its next interval. With an interval
// of an hour, the journal would otherwise keep every record written.
func TestVolumeCheckpointsUnderJournalPressure(t *testing.T) {
	const seg, bound = 64 << 10, 256 << 10
	node, err := mirror.OpenNode(t.Context(), mirror.NodeOptions{Dir: filepath.Join(t.TempDir(), "p"), Size: 8 << 20,
		Role: mirror.RolePrimary, JournalSegment: seg, JournalMax: bound})
	if err != nil {
		t.Fatal(err)
	}
	defer node.Close()
	vol, err := mirror.NewVolume(node, nil, mirror.VolumeOptions{CheckpointInterval: time.Hour, CheckpointBytes: 1 << 40})
	if err != nil {
		t.Fatal(err)
	}
	defer vol.Close()
	worst := writeUnderBound(t, vol, node.Journal) // 4 MiB, 16 times the bound
	// A checkpoint may be running behind the last rotation: within the
	// bound plus the active segment once it is done.
	waitFor(t, "the journal back within its bound", func() bool { return node.Journal.Stats().Bytes <= bound+seg })
	if cp := node.Meta().CheckpointSeq; cp == 0 {
		t.Fatal("no checkpoint was taken")
	}
	t.Logf("largest journal while writing: %d bytes (bound %d, segment %d)", worst, bound, seg)
}

// The same on a mirror: its applier checkpoints when its journal is over
// the bound, not only at its interval or at the primary's checkpoints.
func TestMirrorCheckpointsUnderJournalPressure(t *testing.T) {
	const seg, bound = 64 << 10, 256 << 10
	ids := identities(t, "p", "m")
	dir := t.TempDir()
	host, err := mirror.NewReplicaHost(mirror.ReplicaHostOptions{Listen: "127.0.0.1:0", Transport: transport.Config{Identity: ids["m"]}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := host.AddVolume(t.Context(), "v", mirror.ReplicaOptions{Name: "m", CheckpointInterval: time.Hour,
		Node: mirror.NodeOptions{Dir: filepath.Join(dir, "m"), JournalSegment: seg, JournalMax: bound}}); err != nil {
		t.Fatal(err)
	}
	defer runHost(t, host)()
	node, err := mirror.OpenNode(t.Context(), mirror.NodeOptions{Dir: filepath.Join(dir, "p"), Size: 8 << 20, Role: mirror.RolePrimary})
	if err != nil {
		t.Fatal(err)
	}
	defer node.Close()
	repl, err := mirror.StartReplication(node, mirror.ReplicationOptions{
		Peers: []mirror.PeerAddr{{Name: "m", Addr: host.Addr()}}, Mode: wire.ModeSync, SyncAcks: 1, AckLevel: wire.AckWritten,
		NodeName: "p", VolumeName: "v", Transport: transport.Config{Identity: ids["p"]},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer repl.Close()
	// The primary never checkpoints on its own here, so it sends no
	// checkpoint hints either.
	vol, err := mirror.NewVolume(node, repl, mirror.VolumeOptions{CheckpointInterval: time.Hour, CheckpointBytes: 1 << 40})
	if err != nil {
		t.Fatal(err)
	}
	defer vol.Close()
	writeUnderBound(t, vol, node.Journal)
	mj := host.Volume("v").Node().Journal
	waitFor(t, "the mirror's journal back within its bound", func() bool { return mj.Stats().Bytes <= bound+seg })
}

// writeUnderBound writes 1024 blocks of 4 KiB over the first 2 MiB of vol and
// returns the largest size j had meanwhile.
func writeUnderBound(t *testing.T, vol *mirror.Volume, j *journal.Journal) int64 {
	t.Helper()
	var worst int64
	for i := range 1024 {
		if err := vol.WriteAt(t.Context(), bytes.Repeat([]byte{byte(i)}, 4096), int64(i%512)*4096, false); err != nil {
			t.Fatal(err)
		}
		worst = max(worst, j.Stats().Bytes)
	}
	return worst
}
