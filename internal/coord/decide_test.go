package coord

import (
	"strings"
	"testing"
	"time"
)

var testRules = Rules{ContactWindow: 5 * time.Second, Margin: time.Second, MinInterval: 5 * time.Minute,
	Settle: 300 * time.Millisecond, DelayPerRecord: time.Millisecond, MaxDelay: 5 * time.Second, StaleAfter: 5 * time.Second}

// base is a mirror "b" that may campaign: leader gone 1 s ago (at rev
// 100), consistent, out of contact, in the sync set {b, c} with K=1, and
// c's final record (rev 101) behind it.
func base() CampaignInput {
	now := time.Unix(1_000_000, 0)
	return CampaignInput{
		Self:         Member{Node: "b", Role: RoleMirror, Epoch: 3, Seq: 500, Consistent: true},
		SinceContact: 6 * time.Second,
		SinceGone:    time.Second,
		GoneRev:      100,
		Epoch:        &EpochRecord{Epoch: 3, Node: "a"},
		Sync:         &SyncSet{Mode: ModeSync, K: 1, Members: []string{"b", "c"}},
		Others:       []Member{{Node: "c", Role: RoleMirror, Epoch: 3, Seq: 490, Consistent: true, Rev: 101}},
		Now:          now,
		Rules:        testRules,
	}
}

func TestDecideCampaign(t *testing.T) {
	tests := []struct {
		name   string
		change func(*CampaignInput)
		ok     bool
		reason string // substring of Reason
		wait   time.Duration
	}{
		{"eligible", func(*CampaignInput) {}, true, "eligible", 0},
		{"leader held", func(in *CampaignInput) { in.LeaderHeld = true }, false, "held", 0},
		{"paused", func(in *CampaignInput) { in.Paused = &PauseRecord{Reason: "maintenance"} }, false, "paused (maintenance)", 0},
		{"inconsistent", func(in *CampaignInput) { in.Self.Consistent = false }, false, "inconsistent", 0},
		{"primary still in contact", func(in *CampaignInput) { in.SinceContact = 2 * time.Second }, false, "contacted this mirror", 3 * time.Second},
		{"min interval not passed", func(in *CampaignInput) {
			in.LastFailover = &FailoverRecord{Time: in.Now.Add(-time.Minute).UnixNano(), To: "a", Epoch: 3, Automatic: true}
		}, false, "minimum interval", 4 * time.Minute},
		{"min interval passed", func(in *CampaignInput) {
			in.LastFailover = &FailoverRecord{Time: in.Now.Add(-6 * time.Minute).UnixNano(), To: "a", Epoch: 3, Automatic: true}
		}, true, "eligible", 0},
		{"planned switchover does not count toward the interval", func(in *CampaignInput) {
			in.LastFailover = &FailoverRecord{Time: in.Now.Add(-time.Minute).UnixNano(), To: "a", Epoch: 3}
		}, true, "eligible", 0},
		{"no sync set recorded", func(in *CampaignInput) { in.Sync = nil }, false, "no sync set", 0},
		{"not in the sync set", func(in *CampaignInput) { in.Sync.Members = []string{"c", "d"} }, false, "--force", 0},
		{"async: not a candidate", func(in *CampaignInput) { in.Sync = &SyncSet{Mode: ModeAsync, Members: []string{"c"}} }, false, "candidates", 0},
		{"async: a candidate alone", func(in *CampaignInput) {
			in.Sync = &SyncSet{Mode: ModeAsync, Members: []string{"b", "c"}}
			in.Others = nil
		}, true, "eligible", 0},
		{"another mirror ahead", func(in *CampaignInput) { in.Others[0].Seq = 501 }, false, "mirror c (epoch 3, seq 501) is ahead", 0},
		{"another mirror of a later epoch", func(in *CampaignInput) { in.Others[0].Epoch, in.Others[0].Seq = 4, 10 }, false, "ahead", 0},
		{"equal seq: both may campaign, etcd picks one", func(in *CampaignInput) { in.Others[0].Seq = 500 }, true, "eligible", 0},
		{"record not final yet", func(in *CampaignInput) { in.Others[0].Rev = 99 }, false, "final seq", testRules.Settle},
		{"record still following", func(in *CampaignInput) { in.Others[0].Following = true }, false, "still in contact", testRules.Settle},
		{"stale record of an unreachable member is ignored in async", func(in *CampaignInput) {
			in.Sync = &SyncSet{Mode: ModeAsync, Members: []string{"b", "c"}}
			in.Others[0].Rev, in.Others[0].Seq = 99, 900
			in.SinceGone = 6 * time.Second
		}, true, "eligible", 0},
		{"sync K=1 of 2: must see both", func(in *CampaignInput) { in.Others = nil }, false, "sees 1 of the sync set", testRules.Settle},
		{"sync K=2 of 2: itself is enough", func(in *CampaignInput) { in.Others = nil; in.Sync.K = 2 }, true, "eligible", 0},
		{"sync K=2 of 3: sees 2", func(in *CampaignInput) { in.Sync.K, in.Sync.Members = 2, []string{"b", "c", "d"} }, true, "eligible", 0},
		{"sync K=1 of 3: sees 2, needs 3", func(in *CampaignInput) { in.Sync.Members = []string{"b", "c", "d"} }, false, "needs 3", testRules.Settle},
		{"stale record does not count as seen", func(in *CampaignInput) { in.Others[0].Rev = 99; in.SinceGone = 6 * time.Second }, false, "sees 1", testRules.Settle},
		{"a mirror outside the set does not count as seen", func(in *CampaignInput) { in.Others[0].Node = "x" }, false, "sees 1", testRules.Settle},
		{"just gone: settle first", func(in *CampaignInput) { in.SinceGone = 100 * time.Millisecond }, true, "eligible", 200 * time.Millisecond},
		{"behind the last primary: waits longer", func(in *CampaignInput) { in.SinceGone = 0; in.LastPrimarySeq = 600 }, true, "eligible", testRules.Settle + 100*time.Millisecond},
		{"far behind: waits at most MaxDelay more", func(in *CampaignInput) { in.SinceGone = 0; in.LastPrimarySeq = 1 << 40 }, true, "eligible", testRules.Settle + testRules.MaxDelay},
		{"switchover to another node", func(in *CampaignInput) { in.Switchover = &SwitchoverRecord{From: "a", To: "c", Seq: 500} }, false, "switchover from a to c", 0},
		{"switchover to self, caught up: no pause, contact or interval rules", func(in *CampaignInput) {
			in.Switchover = &SwitchoverRecord{From: "a", To: "b", Seq: 500}
			in.Paused = &PauseRecord{}
			in.SinceContact = 0
			in.SinceGone = 0
			in.LastFailover = &FailoverRecord{Time: in.Now.UnixNano(), To: "a", Automatic: true}
		}, true, "switchover", 0},
		{"switchover to self, behind", func(in *CampaignInput) { in.Switchover = &SwitchoverRecord{From: "a", To: "b", Seq: 501} }, false, "waiting for 501", testRules.Settle},
		{"primary reclaims its key", func(in *CampaignInput) {
			in.Self.Role = RolePrimary
			in.Self.Node = "a"
			in.Paused = &PauseRecord{}
			in.SinceContact = 0
		}, true, "reclaiming", 0},
		{"primary behind a mirror (lost its journal tail)", func(in *CampaignInput) {
			in.Self.Role, in.Self.Node = RolePrimary, "a"
			in.Others[0].Seq = 600
		}, false, "ahead", 0},
		{"primary of an old epoch", func(in *CampaignInput) {
			in.Self.Role, in.Self.Node = RolePrimary, "a"
			in.Epoch = &EpochRecord{Epoch: 4, Node: "c"}
		}, false, "rejoin as a mirror", 0},
		{"primary whose epoch another node took", func(in *CampaignInput) {
			in.Self.Role, in.Self.Node = RolePrimary, "a"
			in.Epoch = &EpochRecord{Epoch: 3, Node: "c"}
		}, false, "split brain", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := base()
			tt.change(&in)
			v := DecideCampaign(in)
			if v.Campaign != tt.ok || !strings.Contains(v.Reason, tt.reason) || v.Wait != tt.wait {
				t.Errorf("got campaign=%v wait=%v reason %q; want campaign=%v wait=%v reason containing %q",
					v.Campaign, v.Wait, v.Reason, tt.ok, tt.wait, tt.reason)
			}
		})
	}
}

func TestCampaignDelayGrowsWithLag(t *testing.T) {
	prev := time.Duration(-1)
	for _, behind := range []uint64{0, 1, 10, 100, 1000, 5000, 1 << 20, 1 << 62} {
		d := CampaignDelay(1000, 1000+behind, false, testRules)
		if d < prev {
			t.Errorf("behind %d: delay %v < %v for fewer", behind, d, prev)
		}
		if d < testRules.Settle || d > testRules.Settle+testRules.MaxDelay {
			t.Errorf("behind %d: delay %v outside [Settle, Settle+MaxDelay]", behind, d)
		}
		prev = d
	}
	if d := CampaignDelay(1000, 10, true, testRules); d != testRules.Settle+testRules.MaxDelay {
		t.Errorf("a later epoch known: delay %v, want the maximum", d)
	}
}

func TestDecideLease(t *testing.T) {
	t0 := time.Unix(0, 0).Add(time.Hour)
	sync := &SyncSet{Mode: ModeSync, K: 1, Members: []string{"b", "c"}}
	both := func(age time.Duration) map[string]time.Time {
		return map[string]time.Time{"b": t0.Add(-age), "c": t0.Add(-age)}
	}
	tests := []struct {
		name     string
		in       LeaseInput
		until    time.Time // zero: fenced
		failsafe bool
		reason   string
	}{
		{"fresh renewal", LeaseInput{Now: t0, Renewed: t0.Add(-time.Second), TTL: 5 * time.Second}, t0.Add(3 * time.Second), false, "not confirmed"},
		{"renewal too old", LeaseInput{Now: t0, Renewed: t0.Add(-4 * time.Second), TTL: 5 * time.Second}, t0, false, "has not confirmed the lease for 4s"},
		{"granted TTL counts", LeaseInput{Now: t0, Renewed: t0.Add(-time.Second), TTL: 3 * time.Second}, t0.Add(time.Second), false, ""},
		{"never renewed", LeaseInput{Now: t0, TTL: 5 * time.Second}, time.Time{}, false, "not confirmed yet"},
		{"lost", LeaseInput{Now: t0, Renewed: t0, TTL: 5 * time.Second, Lost: "the leader key is gone"}, time.Time{}, false, "the leader key is gone"},
		{"failsafe: every mirror confirms", LeaseInput{Now: t0, Renewed: t0.Add(-10 * time.Second), TTL: 5 * time.Second,
			Failsafe: true, Sync: sync, Confirmed: both(500 * time.Millisecond)}, t0.Add(3500 * time.Millisecond), true, "failsafe"},
		{"failsafe: the oldest confirmation counts", LeaseInput{Now: t0, Renewed: t0.Add(-10 * time.Second), TTL: 5 * time.Second,
			Failsafe: true, Sync: sync, Confirmed: map[string]time.Time{"b": t0, "c": t0.Add(-2 * time.Second)}}, t0.Add(2 * time.Second), true, ""},
		{"failsafe: one mirror silent", LeaseInput{Now: t0, Renewed: t0.Add(-10 * time.Second), TTL: 5 * time.Second,
			Failsafe: true, Sync: sync, Confirmed: map[string]time.Time{"b": t0}}, t0.Add(-6 * time.Second), false, "no confirmation from c"},
		{"failsafe: confirmations too old", LeaseInput{Now: t0, Renewed: t0.Add(-10 * time.Second), TTL: 5 * time.Second,
			Failsafe: true, Sync: sync, Confirmed: both(5 * time.Second)}, t0.Add(-6 * time.Second), false, ""},
		{"failsafe off", LeaseInput{Now: t0, Renewed: t0.Add(-10 * time.Second), TTL: 5 * time.Second,
			Sync: sync, Confirmed: both(0)}, t0.Add(-6 * time.Second), false, ""},
		{"failsafe does not help a primary that never held the lease", LeaseInput{Now: t0, TTL: 5 * time.Second,
			Failsafe: true, Sync: sync, Confirmed: both(0)}, time.Time{}, false, ""},
		{"failsafe does not override a lost lease", LeaseInput{Now: t0, Renewed: t0, TTL: 5 * time.Second, Lost: "expired",
			Failsafe: true, Sync: sync, Confirmed: both(0)}, time.Time{}, false, "expired"},
		{"failsafe with an empty sync set", LeaseInput{Now: t0, Renewed: t0.Add(-10 * time.Second), TTL: 5 * time.Second,
			Failsafe: true, Sync: &SyncSet{Mode: ModeSync}}, t0.Add(-6 * time.Second), false, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.in.Rules = testRules
			v := DecideLease(tt.in)
			if !v.Until.Equal(tt.until) || v.Failsafe != tt.failsafe || !strings.Contains(v.Reason, tt.reason) {
				t.Errorf("got until %v failsafe %v reason %q; want until %v failsafe %v reason containing %q",
					v.Until.Sub(t0), v.Failsafe, v.Reason, tt.until.Sub(t0), tt.failsafe, tt.reason)
			}
			// The rule itself: never past the last renewal's send time +
			// TTL − margin, unless every sync set mirror confirmed later.
			if !v.Failsafe && !tt.in.Renewed.IsZero() && v.Until.After(tt.in.Renewed.Add(tt.in.TTL-testRules.Margin)) {
				t.Errorf("deadline %v past the lease", v.Until.Sub(t0))
			}
		})
	}
}

func TestWantAckSet(t *testing.T) {
	peers := []PeerView{{Name: "c", InSync: true}, {Name: "b", InSync: false}, {Name: "d", InSync: true}}
	tests := []struct {
		mode     Mode
		k        int
		degraded bool
		want     AckSet
	}{
		{ModeSync, 2, false, AckSet{Members: []string{"b", "c", "d"}, K: 2}},
		{ModeSync, 1, true, AckSet{Members: []string{"c", "d"}, K: 1}},
		{ModeSync, 3, true, AckSet{Members: []string{"c", "d"}, K: 2}},
		{ModeAsync, 1, false, AckSet{Members: []string{"b", "c", "d"}}},
	}
	for _, tt := range tests {
		if got := WantAckSet(tt.mode, tt.k, tt.degraded, peers); !got.Equal(tt.want) {
			t.Errorf("%s k=%d degraded=%v: %v, want %v", tt.mode, tt.k, tt.degraded, got, tt.want)
		}
	}
}

func TestPlanSync(t *testing.T) {
	set := func(k int, m ...string) *SyncSet { return &SyncSet{Mode: ModeSync, K: k, Members: m} }
	ack := func(k int, m ...string) AckSet { return AckSet{Members: m, K: k} }
	tests := []struct {
		name   string
		in     SyncInput
		write  *SyncSet
		setAck *AckSet
		done   bool
	}{
		{"first start: record before anything", SyncInput{Current: ack(1, "b", "c"), Want: ack(1, "b", "c")}, set(1, "b", "c"), nil, false},
		{"steady", SyncInput{Recorded: set(1, "b", "c"), Current: ack(1, "b", "c"), Want: ack(1, "b", "c")}, nil, nil, true},
		{"add a mirror: record the union first", SyncInput{Recorded: set(1, "b"), Current: ack(1, "b"), Want: ack(1, "b", "c")}, set(1, "b", "c"), nil, false},
		{"add a mirror: then the ack set", SyncInput{Recorded: set(1, "b", "c"), Current: ack(1, "b"), Want: ack(1, "b", "c")}, nil, &AckSet{Members: []string{"b", "c"}, K: 1}, false},
		{"degrade: record the smaller K on the union first", SyncInput{Recorded: set(2, "b", "c"), Current: ack(2, "b", "c"), Want: ack(1, "c")}, set(1, "b", "c"), nil, false},
		{"degrade: then the ack set", SyncInput{Recorded: set(1, "b", "c"), Current: ack(2, "b", "c"), Want: ack(1, "c")}, nil, &AckSet{Members: []string{"c"}, K: 1}, false},
		{"degrade: narrow only once the rest acked the switch seq", SyncInput{Recorded: set(1, "b", "c"), Current: ack(1, "c"), Want: ack(1, "c"),
			Acked: map[string]uint64{"b": 900, "c": 899}, SwitchSeq: 900}, nil, nil, false},
		{"degrade: narrow", SyncInput{Recorded: set(1, "b", "c"), Current: ack(1, "c"), Want: ack(1, "c"),
			Acked: map[string]uint64{"c": 900}, SwitchSeq: 900}, set(1, "c"), nil, false},
		{"no mirror in sync: K 0, no candidate", SyncInput{Recorded: set(1, "c"), Current: ack(1, "c"), Want: ack(0)}, set(0, "c"), nil, false},
		{"a record of another mode is replaced first", SyncInput{Recorded: &SyncSet{Mode: ModeAsync, Members: []string{"b"}}, Current: ack(1, "b"), Want: ack(1, "b")}, set(1, "b"), nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.in.Mode == "" {
				tt.in.Mode = ModeSync
			}
			s := PlanSync(tt.in)
			if (s.Write == nil) != (tt.write == nil) || s.Write != nil && (!sameSet(s.Write.Members, tt.write.Members) || s.Write.K != tt.write.K) {
				t.Errorf("write %+v, want %+v (%s)", s.Write, tt.write, s.Reason)
			}
			if (s.SetAck == nil) != (tt.setAck == nil) || s.SetAck != nil && !s.SetAck.Equal(*tt.setAck) {
				t.Errorf("set ack %+v, want %+v (%s)", s.SetAck, tt.setAck, s.Reason)
			}
			if s.Done != tt.done {
				t.Errorf("done %v, want %v", s.Done, tt.done)
			}
		})
	}
}

// TestPlanSyncInvariant walks random ack-set changes through PlanSync and
// checks, after every step, that each write acknowledged so far is on at
// least Recorded.K members of the recorded set.
func TestPlanSyncInvariant(t *testing.T) {
	names := []string{"b", "c", "d"}
	for seed := uint64(1); seed <= 300; seed++ {
		r := seed
		rnd := func(n int) int { r = r*6364136223846793005 + 1442695040888963407; return int((r >> 33) % uint64(n)) }
		pick := func() AckSet {
			var m []string
			for _, n := range names {
				if rnd(2) == 0 {
					m = append(m, n)
				}
			}
			return AckSet{Members: m, K: min(1+rnd(2), len(m))}
		}
		cur := AckSet{Members: names, K: 1}
		var rec *SyncSet
		acked := map[string]uint64{}
		var seq, switchSeq uint64
		var writes []uint64
		want := pick()
		for round := 0; round < 60; round++ {
			if rnd(8) == 0 {
				want = pick()
			}
			// A write acknowledged under cur, once the record covers cur:
			// acknowledged by cur.K of its members, the least the rule
			// allows. Acks are cumulative (a mirror that acks a seq holds
			// every seq before it), as on the wire.
			if Covers(rec, ModeSync, cur) && cur.K > 0 && rnd(2) == 0 {
				seq++
				for _, i := range rndPerm(rnd, len(cur.Members))[:cur.K] {
					acked[cur.Members[i]] = seq
				}
				writes = append(writes, seq)
			}
			// A mirror catches up now and then.
			if rnd(3) == 0 {
				acked[names[rnd(len(names))]] = seq
			}
			s := PlanSync(SyncInput{Mode: ModeSync, Recorded: rec, Current: cur, Want: want, Acked: acked, SwitchSeq: switchSeq})
			switch {
			case s.Write != nil:
				w := *s.Write
				rec = &w
			case s.SetAck != nil:
				cur = *s.SetAck
				switchSeq = seq
			}
			if rec == nil {
				continue
			}
			for _, w := range writes {
				n := 0
				for _, m := range rec.Members {
					if acked[m] >= w {
						n++
					}
				}
				if n < rec.K {
					t.Fatalf("seed %d round %d: write %d is on only %d of the recorded %v (K=%d); acks %v", seed, round, w, n, rec.Members, rec.K, acked)
				}
			}
		}
	}
}

// rndPerm is a permutation of 0..n-1 drawn with rnd.
func rndPerm(rnd func(int) int, n int) []int {
	p := make([]int, n)
	for i := range p {
		p[i] = i
	}
	for i := n - 1; i > 0; i-- {
		j := rnd(i + 1)
		p[i], p[j] = p[j], p[i]
	}
	return p
}
