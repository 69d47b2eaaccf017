package mirror

import (
	"testing"
)

// TestBranchLowersMirrorAckPoints: a primary that finds it did not stop
// cleanly and whose journal ends before a mirror's durable ack point
// (a power loss took records that mirror has) starts a new branch at
// last+1; the mirror's ack point, for the old branch, drops to last and
// its journal consumer keeps the new branch's records from last+1
// (simulation seed 13465: a demotion's checkpoint released them and the
// quarantine missed them).
func TestBranchLowersMirrorAckPoints(t *testing.T) {
	dir := t.TempDir()
	n, err := OpenNode(t.Context(), NodeOptions{Dir: dir, Size: 4 << 20, Role: RolePrimary})
	if err != nil {
		t.Fatal(err)
	}
	// The state a power loss leaves: writes were open, the mirror m1 had
	// acknowledged seq 5 and m2 nothing, the journal is empty.
	if err := n.UpdateMeta(func(m *Meta) error {
		m.WritesOpen = true
		m.Peers = map[string]PeerMeta{"m1": {DurableSeq: 5, TrackedFrom: 1}, "m2": {TrackedFrom: 1}}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	n.Close()
	n, err = OpenNode(t.Context(), NodeOptions{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	if err := n.BeginWrites(); err != nil {
		t.Fatal(err)
	}
	m := n.Meta()
	if len(m.History) < 2 {
		t.Fatalf("history %v: no new branch after an unclean stop", m.History)
	}
	for name, want := range map[string]uint64{"m1": 0, "m2": 0} {
		if got := m.Peers[name].DurableSeq; got != want {
			t.Errorf("%s: durable ack point %d after the branch, want %d", name, got, want)
		}
		if rel, ok := n.Journal.Consumer(peerConsumer(name)); !ok || rel != want {
			t.Errorf("%s: journal consumer released through %d (registered %v), want %d: the new branch's seq 1 is unguarded", name, rel, ok, want)
		}
	}
}
