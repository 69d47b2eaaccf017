package coord

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// trio is a primary a (epoch 3, seq 100) with mirrors b (seq 100) and c
// (seq 90), each coordinator reaching etcd through its own proxy.
type trio struct {
	w       *world
	a, b, c *fakeNode
	px      map[string][]*tcpProxy
	co      map[string]*running
	cli     *clientv3.Client // the test's own, direct
}

func newTrio(t *testing.T, endpoints []string, mode Mode, k int, degraded bool, tweak func(name string, cfg *Config)) *trio {
	t.Helper()
	tr := &trio{w: newWorld(), px: map[string][]*tcpProxy{}, co: map[string]*running{}, cli: newClient(t, endpoints...)}
	tr.a = tr.w.add("a", RolePrimary, 3, 100)
	tr.b = tr.w.add("b", RoleMirror, 3, 100)
	tr.c = tr.w.add("c", RoleMirror, 3, 90)
	tr.a.setPeers(mode, k, degraded, "b", "c")
	for _, n := range []*fakeNode{tr.a, tr.b, tr.c} {
		var eps []string
		for _, e := range endpoints {
			p := newTCPProxy(t, e)
			tr.px[n.name] = append(tr.px[n.name], p)
			eps = append(eps, p.URL())
		}
		cfg := testConfig(t, newClient(t, eps...), n.name)
		if tweak != nil {
			tweak(n.name, &cfg)
		}
		tr.co[n.name] = startCoord(t, cfg, n)
	}
	eventually(t, 15*time.Second, "a holds the leader key and may write", func() bool {
		return tr.co["a"].c.Status().Leader && tr.a.get().until.After(time.Now())
	})
	return tr
}

// crash cuts node off etcd and from every other node, as kill -9 or a
// power loss looks from outside (its coordinator keeps running, so the
// test sees what a frozen-then-resumed process would do).
func (tr *trio) crash(name string) {
	tr.cutEtcd(name, true)
	tr.w.isolate(name, true)
}

// cutEtcd cuts (or heals) node's connections to etcd.
func (tr *trio) cutEtcd(name string, cut bool) {
	for _, p := range tr.px[name] {
		p.setCut(cut)
	}
}

func TestFailoverToTheMostUpToDateMirror(t *testing.T) {
	e := startEtcd(t)
	tr := newTrio(t, []string{e.Endpoint()}, ModeSync, 1, false, nil)
	cs := status(t, tr.cli)
	if cs.Leader != "a" || cs.Epoch != 3 || cs.Sync == nil || !sameSet(cs.Sync.Members, []string{"b", "c"}) || cs.Sync.K != 1 {
		t.Fatalf("before the crash:\n%s", cs)
	}

	tr.crash("a")
	crashed := time.Now()
	eventually(t, 20*time.Second, "b is promoted", func() bool { return tr.b.get().role == RolePrimary })
	pb := tr.b.get().promotions[0]
	t.Logf("b promoted to epoch %d %v after the cut", pb.epoch, pb.at.Sub(crashed).Round(time.Millisecond))
	if pb.epoch != 4 {
		t.Errorf("b promoted to epoch %d, want 4 (etcd's 3 + 1)", pb.epoch)
	}
	// Every deadline a was ever granted passed before b was promoted: no
	// write of a can complete after b's first, even had a been frozen
	// and resumed (it checks the deadline at completion).
	if ma := tr.a.get().maxUntil; !ma.Before(pb.at) {
		t.Errorf("a could complete writes until %v after b's promotion", ma.Sub(pb.at))
	}
	eventually(t, 10*time.Second, "b holds the key and may write", func() bool {
		return tr.co["b"].c.Status().Leader && tr.b.get().until.After(time.Now())
	})
	cs = status(t, tr.cli)
	if cs.Leader != "b" || cs.Epoch != 4 || cs.EpochNode != "b" || cs.LastFailover == nil || !cs.LastFailover.Automatic || cs.LastFailover.From != "a" {
		t.Errorf("after the failover:\n%s", cs)
	}
	if p := tr.w.promotions(); len(p) != 1 {
		t.Errorf("promotions %v, want only b's", p)
	}

	// a returns: it sees epoch 4 and rejoins as a mirror.
	tr.cutEtcd("a", false)
	tr.w.isolate("a", false)
	eventually(t, 15*time.Second, "a demotes itself", func() bool { return tr.a.get().role == RoleMirror })
	if v := tr.a.get(); v.demotions != 1 || v.until.After(time.Now()) {
		t.Errorf("a after return: %+v", v)
	}
	never(t, 3*time.Second, "a second failover", func() bool { return len(tr.w.promotions()) != 1 })
}

func TestCutOffPrimaryFencesBeforeItsLeaseExpires(t *testing.T) {
	e := startEtcd(t)
	tr := newTrio(t, []string{e.Endpoint()}, ModeSync, 1, false, func(name string, cfg *Config) {
		cfg.NoFailsafe = true
		cfg.TTL, cfg.Margin = 4*time.Second, 1500*time.Millisecond
	})
	ctx := context.Background()
	lease := tr.co["a"].c.sessionLease()
	tr.cutEtcd("a", true) // a is cut off etcd only; mirrors still hear it
	cut := time.Now()
	eventually(t, 10*time.Second, "a fences", func() bool { return !tr.a.get().until.After(time.Now()) })
	fenced := time.Now()
	// etcd still has the lease at that moment: the primary stopped first.
	ttl, err := tr.cli.TimeToLive(ctx, lease)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("a fenced %v after the cut, etcd's lease had %ds left", fenced.Sub(cut).Round(time.Millisecond), ttl.TTL)
	if ttl.TTL < 0 {
		t.Errorf("the lease had expired at etcd before a fenced")
	}
	if r := tr.a.get().reason; !strings.Contains(r, "not confirmed the lease") {
		t.Errorf("fence reason %q", r)
	}
	// Without failsafe, a fenced primary stops confirming: the mirrors
	// take over once the lease and their contact window are gone.
	eventually(t, 20*time.Second, "b is promoted", func() bool { return tr.b.get().role == RolePrimary })
	if ma, pb := tr.a.get().maxUntil, tr.b.get().promotions[0].at; !ma.Before(pb) {
		t.Errorf("a's last deadline %v after b's promotion", ma.Sub(pb))
	}
}

func TestFailsafeKeepsAPrimaryCutOffEtcdServing(t *testing.T) {
	e := startEtcd(t)
	tr := newTrio(t, []string{e.Endpoint()}, ModeSync, 1, false, nil)
	tr.cutEtcd("a", true)
	// For three TTLs: no failover, and a may always write (failsafe).
	end := time.Now().Add(6 * time.Second)
	for time.Now().Before(end) {
		if !tr.a.get().until.After(time.Now()) {
			t.Fatalf("a fenced although every mirror of the sync set confirms it: %s", tr.a.get().reason)
		}
		if len(tr.w.promotions()) > 0 {
			t.Fatalf("failover while the primary serves its mirrors: %v", tr.w.promotions())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !tr.co["a"].c.Status().Failsafe {
		t.Errorf("a is not in failsafe: %+v", tr.co["a"].c.Status())
	}
	if d := tr.co["b"].c.Status().Decision; !strings.Contains(d, "contacted this mirror") {
		t.Errorf("b's decision %q", d)
	}
	// One mirror of the sync set loses a: a must fence within the contact
	// window, and then c (out of contact, a fenced) may take over.
	tr.w.setLink("a", "c", false)
	eventually(t, 5*time.Second, "a fences", func() bool { return !tr.a.get().until.After(time.Now()) })
	if r := tr.a.get().reason; !strings.Contains(r, "failsafe") {
		t.Errorf("fence reason %q", r)
	}
	eventually(t, 20*time.Second, "a mirror is promoted", func() bool { return len(tr.w.promotions()) == 1 })
	p := tr.w.promotions()[0]
	if ma := tr.a.get().maxUntil; !ma.Before(p.at) {
		t.Errorf("a's last deadline %v after %s's promotion", ma.Sub(p.at), p.node)
	}
	// b is ahead of c (100 vs 90) and still sees a? No: a is fenced, so b
	// is out of contact too; b must be the one.
	if p.node != "b" {
		t.Errorf("%s promoted, want b (seq 100 > c's 90)", p.node)
	}
}

func TestPrimaryCutFromItsMirrorsKeepsTheKey(t *testing.T) {
	e := startEtcd(t)
	tr := newTrio(t, []string{e.Endpoint()}, ModeSync, 1, false, nil)
	tr.w.isolate("a", true) // etcd still reachable for everyone
	never(t, 6*time.Second, "failover while the primary holds its lease", func() bool { return len(tr.w.promotions()) > 0 })
	if !tr.a.get().until.After(time.Now()) {
		t.Errorf("a fenced: %s", tr.a.get().reason)
	}
	if d := tr.co["b"].c.Status().Decision; d != "" {
		t.Errorf("b considered a campaign: %q", d)
	}
}

func TestEtcdLeaderLossIsNoFailover(t *testing.T) {
	members := startEtcd3(t)
	var eps []string
	for _, m := range members {
		eps = append(eps, m.Endpoint())
	}
	tr := newTrio(t, eps, ModeSync, 1, false, nil)
	var leader *Embedded
	eventually(t, 5*time.Second, "etcd has a leader", func() bool {
		for _, m := range members {
			if m.IsLeader() {
				leader = m
				return true
			}
		}
		return false
	})
	t.Logf("killing etcd's leader %s", leader.Name())
	leader.Close()
	never(t, 8*time.Second, "failover after etcd lost its leader", func() bool { return len(tr.w.promotions()) > 0 })
	cs := status(t, tr.cli)
	if cs.Leader != "a" || cs.Epoch != 3 {
		t.Errorf("after etcd's leader loss:\n%s", cs)
	}
	eventually(t, 5*time.Second, "a may write", func() bool { return tr.a.get().until.After(time.Now()) })
	t.Logf("a was fenced %d times during etcd's election", tr.a.get().fences)
}

func TestEtcdDownFailsafePolicy(t *testing.T) {
	e := startEtcd(t)
	tr := newTrio(t, []string{e.Endpoint()}, ModeSync, 1, false, nil)
	e.Close()
	// etcd is gone for everyone: nobody can campaign; a serves while both
	// mirrors of the sync set confirm it.
	end := time.Now().Add(5 * time.Second)
	for time.Now().Before(end) {
		if !tr.a.get().until.After(time.Now()) {
			t.Fatalf("a fenced while etcd is down and every mirror confirms it: %s", tr.a.get().reason)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !tr.co["a"].c.Status().Failsafe || tr.co["a"].c.Status().EtcdError == "" {
		t.Errorf("a's status %+v", tr.co["a"].c.Status())
	}
	tr.w.setLink("a", "b", false)
	eventually(t, 5*time.Second, "a fences once b stops confirming", func() bool { return !tr.a.get().until.After(time.Now()) })
	if len(tr.w.promotions()) > 0 {
		t.Errorf("a promotion without etcd: %v", tr.w.promotions())
	}
}

func TestPauseStopsFailover(t *testing.T) {
	e := startEtcd(t)
	tr := newTrio(t, []string{e.Endpoint()}, ModeSync, 1, false, nil)
	ctx := context.Background()
	if err := Pause(ctx, tr.cli, "/test", "vol", "disk swap"); err != nil {
		t.Fatal(err)
	}
	tr.crash("a")
	never(t, 7*time.Second, "failover while paused", func() bool { return len(tr.w.promotions()) > 0 })
	if d := tr.co["b"].c.Status().Decision; !strings.Contains(d, "paused (disk swap)") {
		t.Errorf("b's decision %q", d)
	}
	if s := status(t, tr.cli).String(); !strings.Contains(s, "PAUSED") {
		t.Errorf("status does not show the pause:\n%s", s)
	}
	if err := Resume(ctx, tr.cli, "/test", "vol"); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "b is promoted after resume", func() bool { return tr.b.get().role == RolePrimary })
}

func TestMinimumIntervalBetweenFailovers(t *testing.T) {
	e := startEtcd(t)
	tr := newTrio(t, []string{e.Endpoint()}, ModeSync, 1, false, func(name string, cfg *Config) {
		cfg.MinInterval = time.Hour
	})
	tr.b.setPeers(ModeSync, 1, false, "a", "c")
	tr.crash("a")
	eventually(t, 20*time.Second, "b is promoted", func() bool { return tr.b.get().role == RolePrimary })
	eventually(t, 10*time.Second, "b may write", func() bool { return tr.b.get().until.After(time.Now()) })
	tr.c.set(func(n *fakeNode) { n.seq = 100 })
	tr.crash("b")
	never(t, 7*time.Second, "a second automatic failover within the interval", func() bool { return tr.c.get().role == RolePrimary })
	if d := tr.co["c"].c.Status().Decision; !strings.Contains(d, "minimum interval") {
		t.Errorf("c's decision %q", d)
	}
}

func TestSyncSetRule(t *testing.T) {
	t.Run("K=1 of 2: the survivor cannot know it has every acknowledged write", func(t *testing.T) {
		e := startEtcd(t)
		tr := newTrio(t, []string{e.Endpoint()}, ModeSync, 1, false, nil)
		tr.co["c"].stop() // c's record goes with its session
		tr.w.isolate("c", true)
		tr.crash("a")
		never(t, 7*time.Second, "b promoted without seeing c", func() bool { return len(tr.w.promotions()) > 0 })
		if d := tr.co["b"].c.Status().Decision; !strings.Contains(d, "sees 1 of the sync set") {
			t.Errorf("b's decision %q", d)
		}
	})
	t.Run("degraded: a mirror outside the sync set is never promoted", func(t *testing.T) {
		e := startEtcd(t)
		tr := newTrio(t, []string{e.Endpoint()}, ModeSync, 1, true, nil)
		// c falls out of sync: the primary narrows its ack set and the
		// sync set to b alone (recorded first, then narrowed).
		tr.c.set(func(n *fakeNode) { n.consistent = false })
		eventually(t, 10*time.Second, "the sync set narrows to b", func() bool {
			cs := status(t, tr.cli)
			return cs.Sync != nil && sameSet(cs.Sync.Members, []string{"b"}) && cs.Sync.K == 1
		})
		if a := tr.a.get().ackSet; !a.Equal(AckSet{Members: []string{"b"}, K: 1}) {
			t.Errorf("a's ack set %+v", a)
		}
		// c is consistent again but not back in sync as far as the record
		// goes when a and b are lost.
		tr.w.isolate("c", true)
		tr.c.set(func(n *fakeNode) { n.consistent = true; n.seq = 200 })
		tr.crash("a")
		tr.crash("b")
		never(t, 7*time.Second, "c promoted from outside the sync set", func() bool { return len(tr.w.promotions()) > 0 })
		if d := tr.co["c"].c.Status().Decision; !strings.Contains(d, "not in the sync set") {
			t.Errorf("c's decision %q", d)
		}
	})
}

func TestSwitchover(t *testing.T) {
	e := startEtcd(t)
	tr := newTrio(t, []string{e.Endpoint()}, ModeSync, 1, false, nil)
	ctx := context.Background()
	// c is behind: the switchover waits until it has seq 100.
	go func() {
		time.Sleep(500 * time.Millisecond)
		tr.c.set(func(n *fakeNode) { n.seq = 100 })
	}()
	start := time.Now()
	if err := tr.co["a"].c.Switchover(ctx, "c"); err != nil {
		t.Fatal(err)
	}
	t.Logf("switchover took %v", time.Since(start).Round(time.Millisecond))
	if v := tr.a.get(); v.role != RoleMirror || v.demotions != 1 {
		t.Errorf("a after switchover: %+v", v)
	}
	if v := tr.c.get(); v.role != RolePrimary || v.epoch != 4 {
		t.Errorf("c after switchover: %+v", v)
	}
	if p := tr.w.promotions(); len(p) != 1 || p[0].node != "c" {
		t.Errorf("promotions %v", p)
	}
	// a demoted (its deadline ended) before c was promoted.
	if ma, pc := tr.a.get().writesEnd, tr.c.get().promotions[0].at; !ma.Before(pc) {
		t.Errorf("a could write until %v after c's promotion", ma.Sub(pc))
	}
	cs := status(t, tr.cli)
	if cs.Epoch != 4 || cs.LastFailover == nil || cs.LastFailover.Automatic || cs.Switchover != nil {
		t.Errorf("after switchover:\n%s", cs)
	}
	if err := tr.co["b"].c.Switchover(ctx, "a"); err != ErrNotLeader {
		t.Errorf("switchover on a mirror: %v", err)
	}
}

func TestClusterStatusText(t *testing.T) {
	e := startEtcd(t)
	tr := newTrio(t, []string{e.Endpoint()}, ModeSync, 1, false, nil)
	eventually(t, 5*time.Second, "members and lag are published", func() bool {
		cs := status(t, tr.cli)
		return len(cs.Members) == 3 && cs.LeaseTTL == 2*time.Second && slices.ContainsFunc(cs.Members, func(m MemberStatus) bool {
			return m.Node == "c" && m.InSync != nil && *m.InSync
		})
	})
	s := status(t, tr.cli).String()
	for _, want := range []string{"leader a", "epoch 3", "sync set [b c]", "NODE", "following"} {
		if !strings.Contains(s, want) {
			t.Errorf("status text lacks %q:\n%s", want, s)
		}
	}
}

func TestTwoEqualCandidatesOneWinner(t *testing.T) {
	e := startEtcd(t)
	tr := newTrio(t, []string{e.Endpoint()}, ModeSync, 1, false, nil)
	tr.c.set(func(n *fakeNode) { n.seq = 100 }) // b and c both hold everything
	eventually(t, 5*time.Second, "c's seq is published", func() bool {
		for _, m := range status(t, tr.cli).Members {
			if m.Node == "c" && m.Seq == 100 {
				return true
			}
		}
		return false
	})
	tr.crash("a")
	eventually(t, 20*time.Second, "a mirror is promoted", func() bool { return len(tr.w.promotions()) > 0 })
	never(t, 4*time.Second, "a second promotion", func() bool { return len(tr.w.promotions()) > 1 })
	p := tr.w.promotions()[0]
	if cs := status(t, tr.cli); cs.Leader != p.node || cs.Epoch != 4 || cs.EpochNode != p.node {
		t.Errorf("%s promoted to %d, but etcd says:\n%s", p.node, p.epoch, cs)
	}
}
