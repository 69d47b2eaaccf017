package core_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/blockmirror/blockmirror/mirror/core"
	"github.com/blockmirror/blockmirror/mirror/wire"
)

func newPrimary(t testing.TB, cfg core.PrimaryConfig) *core.PrimaryCore {
	t.Helper()
	if cfg.Epoch == 0 {
		cfg.Epoch = 1
	}
	p, err := core.NewPrimaryCore(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// up connects every named peer at seq 0 and discards the outputs.
func up(t testing.TB, p *core.PrimaryCore, peers ...string) {
	t.Helper()
	for _, n := range peers {
		if err := p.PeerUp(n, core.PeerInfo{Epoch: 1}); err != nil {
			t.Fatal(err)
		}
	}
	p.Ready()
}

func completions(rd core.PrimaryReady) map[uint64]error {
	m := map[uint64]error{}
	for _, c := range rd.Completions {
		m[c.ID] = c.Err
	}
	return m
}

func wantDone(t *testing.T, p *core.PrimaryCore, want map[uint64]error) core.PrimaryReady {
	t.Helper()
	rd := p.Ready()
	got := completions(rd)
	if len(got) != len(rd.Completions) {
		t.Fatalf("duplicate completions: %+v", rd.Completions)
	}
	if len(got) != len(want) {
		t.Fatalf("completions %v, want %v", got, want)
	}
	for id, err := range want {
		g, ok := got[id]
		if !ok || !errors.Is(g, err) || (err == nil) != (g == nil) {
			t.Fatalf("completions %v, want %v", got, want)
		}
	}
	return rd
}

func TestPrimaryConfigValidation(t *testing.T) {
	bad := map[string]core.PrimaryConfig{
		"k too large":     {Peers: []string{"a"}, SyncAcks: 2, Epoch: 1},
		"sync no peers":   {Epoch: 1},
		"duplicate peer":  {Peers: []string{"a", "a"}, Epoch: 1},
		"empty peer":      {Peers: []string{""}, Epoch: 1},
		"no epoch":        {Peers: []string{"a"}},
		"bad level":       {Peers: []string{"a"}, AckLevel: 7, Epoch: 1},
		"durable > last":  {Peers: []string{"a"}, Epoch: 1, NextSeq: 5, LocalDurable: 9},
		"negative lag":    {Peers: []string{"a"}, Mode: wire.ModeAsync, MaxLagTicks: -1, Epoch: 1},
		"unknown mode":    {Peers: []string{"a"}, Mode: 9, Epoch: 1},
		"negative k":      {Peers: []string{"a"}, SyncAcks: -1, Epoch: 1},
		"journal > next:": {Peers: []string{"a"}, Epoch: 1, NextSeq: 5, JournalFirst: 7},
	}
	for name, cfg := range bad {
		if _, err := core.NewPrimaryCore(cfg); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := core.NewPrimaryCore(core.PrimaryConfig{Mode: wire.ModeAsync, Epoch: 1}); err != nil {
		t.Errorf("async without mirrors: %v", err)
	}
}

func TestPrimarySyncQuorum(t *testing.T) {
	p := newPrimary(t, core.PrimaryConfig{Peers: []string{"a", "b", "c"}, SyncAcks: 2, AckLevel: wire.AckWritten})
	up(t, p, "a", "b", "c")
	s1, _ := p.ProposeWrite(1, false)
	s2, _ := p.ProposeWrite(2, false)
	if s1 != 1 || s2 != 2 {
		t.Fatalf("seqs %d %d", s1, s2)
	}
	p.PeerAck("a", wire.Ack{Received: 2, Written: 2})
	p.PeerAck("b", wire.Ack{Received: 2, Written: 1})
	wantDone(t, p, nil) // quorum through 1, but nothing local yet
	p.LocalDone(2)
	wantDone(t, p, nil) // 2 is local but only one mirror wrote it
	p.LocalDone(1)
	wantDone(t, p, map[uint64]error{1: nil})
	p.PeerAck("c", wire.Ack{Received: 2, Written: 2, Durable: 2})
	rd := wantDone(t, p, map[uint64]error{2: nil})
	if len(rd.Releases) != 1 || rd.Releases[0] != (core.Release{Peer: "c", Through: 2}) {
		t.Fatalf("releases %+v", rd.Releases)
	}
	p.LocalDone(2) // again: ignored
	wantDone(t, p, nil)
	st := p.Status()
	if st.QuorumSeq != 2 || st.Pending != 0 || st.Degraded || st.Peers[1].LagRecords != 1 {
		t.Fatalf("status %+v", st)
	}
}

func TestPrimaryReceivedLevelIgnoresWritten(t *testing.T) {
	p := newPrimary(t, core.PrimaryConfig{Peers: []string{"a"}, AckLevel: wire.AckReceived})
	up(t, p, "a")
	p.ProposeWrite(1, false)
	p.LocalDone(1)
	p.PeerAck("a", wire.Ack{Received: 1})
	wantDone(t, p, map[uint64]error{1: nil})
}

func TestPrimaryFUAAndFlush(t *testing.T) {
	p := newPrimary(t, core.PrimaryConfig{Peers: []string{"a", "b"}, SyncAcks: 1, AckLevel: wire.AckWritten})
	up(t, p, "a", "b")
	p.ProposeWrite(1, false)
	p.ProposeWrite(2, true)
	if err := p.ProposeFlush(3); err != nil {
		t.Fatal(err)
	}
	rd := p.Ready()
	if rd.SyncLocal != 2 || len(rd.PeerFlushes) != 2 || rd.PeerFlushes[0].Through != 2 {
		t.Fatalf("ready %+v", rd)
	}
	p.LocalDone(1)
	p.LocalDone(2)
	p.PeerAck("a", wire.Ack{Received: 2, Written: 2, Durable: 1})
	wantDone(t, p, map[uint64]error{1: nil}) // FUA needs durable acks
	p.PeerAck("a", wire.Ack{Received: 2, Written: 2, Durable: 2})
	wantDone(t, p, nil) // and local durability
	p.LocalDurable(2)
	wantDone(t, p, map[uint64]error{2: nil, 3: nil})
	// A flush with nothing new completes at once.
	p.ProposeFlush(4)
	wantDone(t, p, map[uint64]error{4: nil})
	if err := p.ProposeFlush(4); err != nil {
		t.Fatalf("reused id after completion: %v", err)
	}
	wantDone(t, p, map[uint64]error{4: nil})
}

func TestPrimaryTimeoutAndDegraded(t *testing.T) {
	for _, degraded := range []bool{false, true} {
		p := newPrimary(t, core.PrimaryConfig{Peers: []string{"a", "b"}, SyncAcks: 2, AckTimeoutTicks: 3, AllowDegraded: degraded})
		up(t, p, "a", "b")
		p.ProposeWrite(1, false)
		p.LocalDone(1)
		p.PeerAck("a", wire.Ack{Received: 1, Written: 1})
		p.Tick()
		p.Tick()
		wantDone(t, p, nil)
		p.Tick()
		if degraded {
			wantDone(t, p, map[uint64]error{1: nil})
			st := p.Status()
			if !st.Degraded || st.Peers[1].State != core.PeerCatchingUp {
				t.Fatalf("status %+v", st)
			}
			// b catches up: in sync again, full quorum needed again.
			p.PeerAck("b", wire.Ack{Received: 1, Written: 1})
			if st := p.Status(); st.Degraded {
				t.Fatalf("still degraded: %+v", st)
			}
		} else {
			wantDone(t, p, map[uint64]error{1: core.ErrNoQuorum})
		}
	}
}

func TestPrimaryDegradedNoMirrors(t *testing.T) {
	p := newPrimary(t, core.PrimaryConfig{Peers: []string{"a", "b"}, SyncAcks: 2, AllowDegraded: true})
	up(t, p, "a")
	p.ProposeWrite(1, true)
	p.LocalDone(1)
	p.LocalDurable(1)
	wantDone(t, p, nil) // a is in sync: needs a's durable ack
	p.PeerDown("a")
	wantDone(t, p, map[uint64]error{1: nil}) // local alone
	if st := p.Status(); !st.Degraded || st.Peers[0].State != core.PeerDisconnected {
		t.Fatalf("status %+v", st)
	}
}

func TestPrimaryFencing(t *testing.T) {
	p := newPrimary(t, core.PrimaryConfig{Peers: []string{"a"}, Epoch: 3})
	up(t, p, "a")
	p.ProposeWrite(1, false)
	p.ProposeWrite(2, false)
	p.LocalDone(1)
	p.PeerEpoch(3) // not higher: nothing
	wantDone(t, p, nil)
	p.PeerEpoch(4)
	wantDone(t, p, map[uint64]error{1: core.ErrFenced, 2: core.ErrFenced})
	if _, err := p.ProposeWrite(3, false); !errors.Is(err, core.ErrFenced) {
		t.Fatalf("propose after fence: %v", err)
	}
	p.ProposeFlush(4)
	wantDone(t, p, map[uint64]error{4: core.ErrFenced})
	p.LocalDone(2)
	wantDone(t, p, nil)
	if !p.Status().Fenced || !p.Fenced() || p.LastSeq() != 2 {
		t.Fatal("status not fenced")
	}
	q := newPrimary(t, core.PrimaryConfig{Peers: []string{"a"}, Epoch: 3})
	err := q.PeerUp("a", core.PeerInfo{Epoch: 5})
	if !errors.Is(err, core.ErrFenced) || !strings.Contains(err.Error(), "epoch 5") {
		t.Fatalf("PeerUp with higher epoch: %v", err)
	}
}

func TestPrimaryCatchUpAndResync(t *testing.T) {
	p := newPrimary(t, core.PrimaryConfig{Peers: []string{"a", "b", "c"}, NextSeq: 101, JournalFirst: 50})
	p.PeerUp("a", core.PeerInfo{Epoch: 1, LastSeq: 60, DurableSeq: 55})
	p.PeerUp("b", core.PeerInfo{Epoch: 1, LastSeq: 20})
	p.PeerUp("c", core.PeerInfo{Epoch: 1, LastSeq: 120})
	rd := p.Ready()
	if len(rd.StartStreams) != 1 || rd.StartStreams[0] != (core.StreamStart{Peer: "a", From: 61}) {
		t.Fatalf("start streams %+v", rd.StartStreams)
	}
	if len(rd.NeedResync) != 2 || rd.NeedResync[0] != "b" || rd.NeedResync[1] != "c" {
		t.Fatalf("need resync %+v", rd.NeedResync)
	}
	if len(rd.Releases) != 1 || rd.Releases[0].Through != 55 {
		t.Fatalf("releases %+v", rd.Releases)
	}
	st := p.Status()
	if st.Peers[0].State != core.PeerCatchingUp || st.Peers[1].State != core.PeerNeedsResync || st.Peers[0].LagRecords != 40 {
		t.Fatalf("status %+v", st)
	}
	p.ProposeWrite(1, false) // seq 101
	p.PeerAck("a", wire.Ack{Received: 100, Written: 100, Durable: 60})
	if st := p.Status(); st.Peers[0].State != core.PeerInSync {
		t.Fatalf("a not in sync after acking the target: %+v", st.Peers[0])
	}
	if err := p.PeerAck("a", wire.Ack{Received: 500}); err == nil {
		t.Fatal("ack beyond the last seq accepted")
	}
}

func TestPrimaryAsyncThrottle(t *testing.T) {
	p := newPrimary(t, core.PrimaryConfig{Peers: []string{"a"}, Mode: wire.ModeAsync, MaxLagTicks: 2})
	up(t, p, "a")
	p.ProposeWrite(1, false)
	p.LocalDone(1)
	wantDone(t, p, map[uint64]error{1: nil}) // lag 0
	p.Tick()
	p.Tick()
	p.Tick() // seq 1 unacked for 3 ticks > 2
	p.ProposeWrite(2, true)
	p.LocalDone(2)
	p.LocalDurable(2)
	if !p.Status().Throttled {
		t.Fatal("not throttled")
	}
	p.ProposeFlush(3)
	wantDone(t, p, map[uint64]error{3: nil}) // flushes are not held
	p.PeerAck("a", wire.Ack{Received: 1, Written: 1})
	wantDone(t, p, map[uint64]error{2: nil})
	// Disconnected mirror: degraded, no throttle.
	p.PeerDown("a")
	p.ProposeWrite(4, false)
	for i := 0; i < 10; i++ {
		p.Tick()
	}
	p.LocalDone(4)
	wantDone(t, p, map[uint64]error{4: nil})
	if st := p.Status(); !st.Degraded || st.Throttled {
		t.Fatalf("status %+v", st)
	}
}

func TestPrimaryDuplicateID(t *testing.T) {
	p := newPrimary(t, core.PrimaryConfig{Peers: []string{"a"}})
	p.ProposeWrite(7, false)
	if _, err := p.ProposeWrite(7, false); !errors.Is(err, core.ErrDuplicateID) {
		t.Fatalf("duplicate write id: %v", err)
	}
	if err := p.ProposeFlush(7); !errors.Is(err, core.ErrDuplicateID) {
		t.Fatalf("duplicate flush id: %v", err)
	}
}

// BenchmarkPrimaryWrite measures one write's trip through the core in
// sync mode with three mirrors: ProposeWrite, LocalDone, three acks, Ready.
func BenchmarkPrimaryWrite(b *testing.B) {
	p := newPrimary(b, core.PrimaryConfig{Peers: []string{"a", "b", "c"}, SyncAcks: 2, AckLevel: wire.AckWritten})
	up(b, p, "a", "b", "c")
	b.ReportAllocs()
	var id uint64
	for b.Loop() {
		id++
		seq, err := p.ProposeWrite(id, false)
		if err != nil {
			b.Fatal(err)
		}
		p.LocalDone(id)
		a := wire.Ack{Received: seq, Written: seq, Durable: seq - 1}
		p.PeerAck("a", a)
		p.PeerAck("b", a)
		p.PeerAck("c", a)
		if rd := p.Ready(); len(rd.Completions) != 1 {
			b.Fatalf("%d completions", len(rd.Completions))
		}
		if id%64 == 0 {
			p.Tick()
		}
	}
}

// BenchmarkPrimaryWritePipelined keeps 64 writes in flight and acks in
// batches, as a busy driver does.
func BenchmarkPrimaryWritePipelined(b *testing.B) {
	p := newPrimary(b, core.PrimaryConfig{Peers: []string{"a", "b"}, SyncAcks: 1})
	up(b, p, "a", "b")
	b.ReportAllocs()
	var id, done uint64
	for b.Loop() {
		id++
		seq, _ := p.ProposeWrite(id, false)
		p.LocalDone(id)
		if id%64 == 0 {
			a := wire.Ack{Received: seq, Written: seq, Durable: seq}
			p.PeerAck("a", a)
			p.PeerAck("b", a)
			done += uint64(len(p.Ready().Completions))
			p.Tick()
		}
	}
	_ = done
}

// TestPrimaryQuorumStatusWithoutMirrors: with the degraded rule and no
// mirror in sync, the quorum point in status is what the mirrors acked
// (0), not the degraded rule's "everything" (MaxUint64).
func TestPrimaryQuorumStatusWithoutMirrors(t *testing.T) {
	p := newPrimary(t, core.PrimaryConfig{Peers: []string{"a"}, AllowDegraded: true})
	p.ProposeWrite(1, false)
	p.LocalDone(1)
	wantDone(t, p, map[uint64]error{1: nil})
	if st := p.Status(); st.QuorumSeq != 0 || st.QuorumDurable != 0 || !st.Degraded {
		t.Fatalf("status %+v: want quorum 0 and degraded", st)
	}
}

// TestPrimaryFlushesReachResyncingMirror: a mirror being resynced counts
// toward the durable quorum, so FUA writes and flushes must be sent to it
// (and those asked meanwhile once it leaves the resync), or they wait for
// its periodic sync.
func TestPrimaryFlushesReachResyncingMirror(t *testing.T) {
	p := newPrimary(t, core.PrimaryConfig{Peers: []string{"a"}, NextSeq: 11, JournalFirst: 5})
	p.PeerUp("a", core.PeerInfo{Epoch: 1, LastSeq: 2}) // behind the journal
	p.Ready()
	if err := p.StartResync("a", 5, 0); err != nil {
		t.Fatal(err)
	}
	p.Ready()
	p.ProposeWrite(1, true) // seq 11, FUA
	rd := p.Ready()
	if len(rd.PeerFlushes) != 1 || rd.PeerFlushes[0] != (core.PeerFlush{Peer: "a", Through: 11}) {
		t.Fatalf("flushes to the resyncing mirror: %+v", rd.PeerFlushes)
	}
}

// A coordinated core does not degrade by itself: with AllowDegraded a
// mirror that does not ack fails the request (the coordinator narrows the
// ack set), and only the acks of the ack set count toward its K.
func TestPrimaryCoordinatedAckSet(t *testing.T) {
	p := newPrimary(t, core.PrimaryConfig{Peers: []string{"a", "b"}, SyncAcks: 2, AckTimeoutTicks: 3,
		AllowDegraded: true, Coordinated: true})
	up(t, p, "a", "b")
	p.ProposeWrite(1, false)
	p.LocalDone(1)
	p.PeerAck("a", wire.Ack{Received: 1, Written: 1})
	for range 3 {
		p.Tick()
	}
	wantDone(t, p, map[uint64]error{1: core.ErrNoQuorum})
	// b is reported catching-up (it lags beyond InSyncLagTicks) but still
	// counts: the core did not demote it, so the primary is not degraded.
	if st := p.Status(); st.Degraded || st.Peers[1].State != core.PeerCatchingUp {
		t.Fatalf("b demoted by the core itself: %+v", st)
	}

	// Ack set {b}, K 1: a's acks no longer count.
	if err := p.SetAckSet([]string{"b"}, 1); err != nil {
		t.Fatal(err)
	}
	p.ProposeWrite(2, false)
	p.LocalDone(2)
	p.PeerAck("a", wire.Ack{Received: 2, Written: 2})
	wantDone(t, p, nil)
	p.PeerAck("b", wire.Ack{Received: 2, Written: 2})
	wantDone(t, p, map[uint64]error{2: nil})

	// A request pending when the set changes completes under the new set.
	p.ProposeWrite(3, false)
	p.LocalDone(3)
	p.PeerAck("a", wire.Ack{Received: 3, Written: 3})
	wantDone(t, p, nil)
	if err := p.SetAckSet([]string{"a", "b"}, 1); err != nil {
		t.Fatal(err)
	}
	wantDone(t, p, map[uint64]error{3: nil})

	// K 0 with no members: local alone.
	if err := p.SetAckSet(nil, 0); err != nil {
		t.Fatal(err)
	}
	p.ProposeWrite(4, false)
	p.LocalDone(4)
	wantDone(t, p, map[uint64]error{4: nil})
	if m, k := p.AckSet(); len(m) != 0 || k != 0 {
		t.Fatalf("AckSet %v %d", m, k)
	}

	for _, bad := range []struct {
		m []string
		k int
	}{{[]string{"c"}, 1}, {[]string{"a", "a"}, 1}, {[]string{"a"}, 2}, {[]string{"a"}, -1}} {
		if err := p.SetAckSet(bad.m, bad.k); err == nil {
			t.Errorf("SetAckSet(%v, %d) accepted", bad.m, bad.k)
		}
	}
}

// TestPrimaryResyncingPeerCreditedOnlyWithWhatItHolds (issue 18 item 3):
// a resync that starts its live records above a write still waiting for
// the quorum (the lean resync skips the journal tail) must not let the
// resyncing mirror's start count as an ack of that write: the mirror has
// it only in a chunk not yet copied. 79d3f5d's driver did exactly this
// and the simulation (seed 56) saw an acknowledged write held by no node
// but the primary.
func TestPrimaryResyncingPeerCreditedOnlyWithWhatItHolds(t *testing.T) {
	p := newPrimary(t, core.PrimaryConfig{Peers: []string{"a", "b"}, SyncAcks: 1})
	up(t, p, "a", "b")
	if _, err := p.ProposeWrite(1, false); err != nil { // seq 1
		t.Fatal(err)
	}
	p.LocalDone(1)
	wantDone(t, p, nil)
	if err := p.RequireResync("b"); err != nil {
		t.Fatal(err)
	}
	p.Ready()
	// b's resync restarts live records after seq 1 (its chunk carries it).
	if err := p.StartResync("b", 2, 0); err != nil {
		t.Fatal(err)
	}
	wantDone(t, p, nil) // seq 1: only the primary holds it
	if st := p.Status(); st.QuorumSeq != 0 {
		t.Fatalf("quorum seq %d, want 0: b holds nothing below 2", st.QuorumSeq)
	}
	p.ProposeWrite(2, false) // seq 2, streamed to b
	p.LocalDone(2)
	if err := p.PeerAck("b", wire.Ack{Received: 2, Written: 2}); err != nil {
		t.Fatal(err)
	}
	wantDone(t, p, nil) // b holds 2 but not 1: no prefix has a holder
	// a acks seq 1: now every seq below b's start has its holder, and b's
	// ack of 2 counts.
	if err := p.PeerAck("a", wire.Ack{Received: 1, Written: 1}); err != nil {
		t.Fatal(err)
	}
	wantDone(t, p, map[uint64]error{1: nil, 2: nil})
}

// ResyncSkipLimit in sync mode: below the first request waiting for a
// mirror ack, the last seq when none waits.
func TestPrimaryResyncSkipLimitSync(t *testing.T) {
	p := newPrimary(t, core.PrimaryConfig{Peers: []string{"a", "b"}, SyncAcks: 1})
	up(t, p, "a", "b")
	p.ProposeWrite(1, false) // seq 1
	p.LocalDone(1)
	p.ProposeWrite(2, true) // seq 2, FUA
	p.LocalDone(2)
	p.RequireResync("b")
	if h := p.ResyncSkipLimit("b"); h != 0 {
		t.Fatalf("ResyncSkipLimit %d with seq 1 waiting, want 0", h)
	}
	p.PeerAck("a", wire.Ack{Received: 2, Written: 2})
	if h := p.ResyncSkipLimit("b"); h != 1 {
		t.Fatalf("ResyncSkipLimit %d with the FUA seq 2 waiting for a durable ack, want 1", h)
	}
	p.PeerAck("a", wire.Ack{Received: 2, Written: 2, Durable: 2})
	wantDone(t, p, map[uint64]error{1: nil}) // 2 waits for the local journal only
	if h := p.ResyncSkipLimit("b"); h != 1 {
		t.Fatalf("ResyncSkipLimit %d with nothing waiting for a mirror, want the seq before the last (1)", h)
	}
	if h := p.ResyncSkipLimit("nobody"); h != 0 {
		t.Fatalf("ResyncSkipLimit of an unknown peer %d", h)
	}
}

// One mirror, K 1, resynced from the journal's first seq with nothing
// waiting: crediting it with the seqs before decides nothing, so the
// writes streamed to it complete on its acks (found by a review of the
// first version of this change, which made them wait for the resync).
func TestPrimarySingleMirrorResyncLiveness(t *testing.T) {
	p := newPrimary(t, core.PrimaryConfig{Peers: []string{"a"}, SyncAcks: 1, NextSeq: 11, JournalFirst: 5})
	if err := p.PeerUp("a", core.PeerInfo{Epoch: 1, LastSeq: 2}); err != nil { // behind the journal
		t.Fatal(err)
	}
	p.Ready()
	if err := p.StartResync("a", 5, 0); err != nil {
		t.Fatal(err)
	}
	p.Ready()
	p.ProposeWrite(1, false) // seq 11
	p.LocalDone(1)
	p.PeerAck("a", wire.Ack{Received: 11, Written: 11})
	wantDone(t, p, map[uint64]error{1: nil})
}

// ResyncSkipLimit in async mode: the throttle's K-th ack over the other
// peers while the throttle can hold writes, else the last seq.
func TestPrimaryResyncSkipLimitAsync(t *testing.T) {
	p := newPrimary(t, core.PrimaryConfig{Peers: []string{"a", "b"}, Mode: wire.ModeAsync, SyncAcks: 1, MaxLagTicks: 10})
	up(t, p, "a", "b")
	for id := uint64(1); id <= 3; id++ {
		p.ProposeWrite(id, false)
		p.LocalDone(id)
	}
	p.PeerAck("a", wire.Ack{Received: 2, Written: 2})
	p.PeerAck("b", wire.Ack{Received: 3, Written: 3})
	p.ProposeWrite(4, false)
	if h := p.ResyncSkipLimit("b"); h != 2 {
		t.Fatalf("ResyncSkipLimit(b) %d, want a's 2 (b's own ack does not count)", h)
	}
	q := newPrimary(t, core.PrimaryConfig{Peers: []string{"a"}, Mode: wire.ModeAsync, SyncAcks: 1})
	q.ProposeWrite(1, false)
	q.ProposeWrite(2, false)
	if h := q.ResyncSkipLimit("a"); h != 1 {
		t.Fatalf("ResyncSkipLimit %d without a max lag, want the seq before the last (1)", h)
	}
}

// A flush proposed during a resync before any new write covers only seqs
// the resyncing mirror lacks: it must not complete on the mirror's start
// (the simulation's seed 3126 caught b5a1154 doing so after a resync
// that skipped the whole journal tail), only once the resync is done.
func TestPrimaryFlushDuringResyncWaitsForIt(t *testing.T) {
	p := newPrimary(t, core.PrimaryConfig{Peers: []string{"a"}, SyncAcks: 1, NextSeq: 11, JournalFirst: 5})
	if err := p.PeerUp("a", core.PeerInfo{Epoch: 1, LastSeq: 2}); err != nil {
		t.Fatal(err)
	}
	p.Ready()
	if err := p.StartResync("a", 11, 0); err != nil { // the tail 5..10 skipped
		t.Fatal(err)
	}
	p.Ready()
	if err := p.ProposeFlush(1); err != nil { // seq 10
		t.Fatal(err)
	}
	wantDone(t, p, nil)
	p.PeerDown("a")
	wantDone(t, p, nil)
	if err := p.PeerUp("a", core.PeerInfo{Epoch: 1, LastSeq: 10, DurableSeq: 10, AppliedSeq: 10}); err != nil {
		t.Fatal(err) // reconnected with its resync done and its store synced
	}
	wantDone(t, p, map[uint64]error{1: nil})
}

// A resync that starts past records the journal still keeps for the
// mirror (it copies their chunks instead) must not release them before
// the resync is done: the mirror does not have them yet, and a checkpoint
// would drop the only journal copy (the simulation's seed 2316: a failover
// to that mirror, then the old primary's quarantine missed write 1). The
// mirror's own acks count from the resync's start on as before.
func TestPrimaryResyncPastKeptRecordsHoldsThem(t *testing.T) {
	p := newPrimary(t, core.PrimaryConfig{Peers: []string{"a"}, NextSeq: 11, JournalFirst: 1})
	if err := p.PeerUp("a", core.PeerInfo{Epoch: 1}); err != nil {
		t.Fatal(err)
	}
	p.RequireResync("a")
	p.Ready()
	if err := p.StartResync("a", 5, 1); err != nil { // 1..4 credited, kept from 1
		t.Fatal(err)
	}
	p.PeerAck("a", wire.Ack{Received: 8, Written: 8, Durable: 8, Applied: 8})
	if rd := p.Ready(); len(rd.Releases) != 0 {
		t.Fatalf("released %+v during a resync that skipped kept records", rd.Releases)
	}
	// The session ends and the next one resyncs again from further on: the
	// hold stays where it was.
	p.PeerDown("a")
	if err := p.PeerUp("a", core.PeerInfo{Epoch: 1, LastSeq: 8, DurableSeq: 8}); err != nil {
		t.Fatal(err)
	}
	p.RequireResync("a")
	p.Ready()
	if err := p.StartResync("a", 9, 1); err != nil {
		t.Fatal(err)
	}
	if rd := p.Ready(); len(rd.Releases) != 0 {
		t.Fatalf("released %+v during the second session of the resync", rd.Releases)
	}
	if err := p.ResyncDone("a"); err != nil {
		t.Fatal(err)
	}
	rd := p.Ready()
	if len(rd.Releases) != 1 || rd.Releases[0] != (core.Release{Peer: "a", Through: 8}) {
		t.Fatalf("releases after the resync %+v, want a through 8", rd.Releases)
	}
}

// A resync from the mirror's next seq (nothing credited) releases as the
// mirror acknowledges: no hold, so the journal does not grow during it.
func TestPrimaryResyncFromNextSeqReleases(t *testing.T) {
	p := newPrimary(t, core.PrimaryConfig{Peers: []string{"a"}, NextSeq: 11, JournalFirst: 1})
	if err := p.PeerUp("a", core.PeerInfo{Epoch: 1, LastSeq: 4, DurableSeq: 4}); err != nil {
		t.Fatal(err)
	}
	p.RequireResync("a")
	p.Ready()
	if err := p.StartResync("a", 5, 5); err != nil {
		t.Fatal(err)
	}
	p.PeerAck("a", wire.Ack{Received: 8, Written: 8, Durable: 8, Applied: 8})
	rd := p.Ready()
	if n := len(rd.Releases); n == 0 || rd.Releases[n-1] != (core.Release{Peer: "a", Through: 8}) {
		t.Fatalf("releases %+v, want a through 8", rd.Releases)
	}
}
