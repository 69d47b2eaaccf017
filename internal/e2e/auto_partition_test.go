package e2e

import (
	"strings"
	"testing"
	"time"

	"github.com/blockmirror/blockmirror/internal/faultproxy"
)

// TestAutoFailoverPartitions: a primary (n1) and two mirrors (sync, K=1)
// on a three-member etcd cluster; n1 reaches etcd through TCP proxies and
// its mirrors through UDP fault proxies. Under a steady writer, for three
// TTLs each:
//
//  1. etcd's raft leader is killed: no failover (etcd elects another
//     leader and keeps the leases); writes go on.
//  2. n1 is cut off from etcd but not from its mirrors: the failsafe
//     holds (every mirror of the sync set confirms contact, so none
//     campaigns): no failover, n1 keeps completing writes and says it is
//     in failsafe; once healed it holds the leader key again.
//  3. n1 is cut off from its mirrors but not from etcd: it keeps the
//     leader key, so no mirror campaigns (no split brain); its writes wait
//     for acks and fail after --ack-timeout; once healed they complete.
//  4. etcd is entirely down: the stated policy (failsafe) holds: n1 keeps
//     serving on its mirrors' confirmations, no mirror promotes itself
//     without etcd; etcd comes back and n1 holds the key again.
//
// After each, the epoch is unchanged and n1 is the only primary.
func TestAutoFailoverPartitions(t *testing.T) {
	if testing.Short() {
		t.Skip("slow: four fault scenarios with real processes (skipped with -short)")
	}
	c := newAutoCluster(t, 190, 3, "sync", "n1", "n2", "n3")
	n1, n2, n3 := c.N("n1"), c.N("n2"), c.N("n3")
	var eps []string
	var etcdProxies []*faultproxy.TCPProxy
	for _, ep := range c.endpoints {
		tp, err := faultproxy.NewTCP(foFreeAddr(t, "tcp", "127.0.0.190"), strings.TrimPrefix(ep, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		go tp.Run(t.Context())
		etcdProxies = append(etcdProxies, tp)
		eps = append(eps, "http://"+tp.Addr())
	}
	c.etcdFor["n1"] = strings.Join(eps, ",")
	px2, px3 := foStartProxy(t, "127.0.0.190", n2.Listen), foStartProxy(t, "127.0.0.190", n3.Listen)
	c.mirrorFor["n1"] = map[string]string{"n2": px2.Addr(), "n3": px3.Addr()}
	c.Start(n2, false)
	c.Start(n3, false)
	c.Start(n1, true)
	if p := c.WaitPrimary(30 * time.Second); p != n1 {
		t.Fatalf("primary %s, want n1", p.Name)
	}
	st, err := n1.AutoStatus()
	if err != nil {
		t.Fatal(err)
	}
	epoch := st.Primary.Epoch
	w := startStampWriter(t, n1, "load", 0, 2)
	defer w.stop()

	acksBetween := func(from, to time.Time) int {
		w.mu.Lock()
		defer w.mu.Unlock()
		n := 0
		for _, a := range w.acks {
			if !a.at.Before(from) && a.at.Before(to) {
				n++
			}
		}
		return n
	}
	// noFailover checks, for d, that n1 stays the only primary in epoch
	// and the mirrors stay mirrors; check sees n1's status at every poll.
	noFailover := func(what string, d time.Duration, check func(*autoStatus) string) {
		t.Helper()
		var problems []string
		for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(200 * time.Millisecond) {
			for _, n := range []*foNode{n2, n3} {
				if s, err := n.AutoStatus(); err == nil && s.Primary != nil {
					t.Fatalf("%s: %s became primary (epoch %d)%s", what, n.Name, s.Primary.Epoch, c.describe())
				}
			}
			s, err := n1.AutoStatus()
			if err != nil {
				problems = append(problems, err.Error())
				continue
			}
			if s.Primary == nil || s.Primary.Epoch != epoch {
				t.Fatalf("%s: n1 is no longer the primary of epoch %d: %s", what, epoch, n1.RawStatus())
			}
			if check != nil {
				if p := check(s); p != "" {
					problems = append(problems, p)
				}
			}
		}
		if len(problems) > 0 {
			t.Errorf("%s: %d of the polls found problems, e.g. %s", what, len(problems), problems[0])
		}
	}
	writesFlow := func(what string, from time.Time) {
		t.Helper()
		if n := acksBetween(from, time.Now()); n == 0 {
			t.Errorf("%s: no write completed%s", what, c.describe())
		} else {
			t.Logf("%s: %d writes completed", what, n)
		}
	}
	backToNormal := func(what string) {
		t.Helper()
		if p := c.WaitPrimary(30 * time.Second); p != n1 {
			t.Fatalf("after %s: primary %s, want n1", what, p.Name)
		}
		from := time.Now()
		time.Sleep(time.Second)
		writesFlow("after "+what, from)
	}

	// 1. etcd's leader dies.
	leader := c.etcdLeader()
	t.Logf("killing etcd's leader %s", c.etcdCfg[leader].Name)
	from := time.Now()
	c.stopEtcd(leader)
	noFailover("etcd leader killed", 3*autoTTL, nil)
	writesFlow("etcd leader killed", from)
	c.startEtcd()
	backToNormal("the etcd member's return")

	// 2. n1 cut off from etcd, not from its mirrors.
	from = time.Now()
	for _, tp := range etcdProxies {
		tp.Partition()
	}
	time.Sleep(autoTTL) // the lease runs out
	sawFailsafe := false
	noFailover("n1 cut off from etcd", 3*autoTTL, func(s *autoStatus) string {
		sawFailsafe = sawFailsafe || s.Failover.Failsafe
		if s.Failover.WritesUntil <= 0 {
			return "n1 fenced: " + s.Failover.Fenced
		}
		return ""
	})
	writesFlow("n1 cut off from etcd", from)
	if !sawFailsafe {
		t.Errorf("n1 cut off from etcd never reported failsafe: %s", n1.RawStatus())
	}
	for _, tp := range etcdProxies {
		tp.Heal()
	}
	backToNormal("n1's etcd partition healed")

	// 3. n1 cut off from its mirrors, not from etcd.
	px2.Partition(t, "both")
	px3.Partition(t, "both")
	noFailover("n1 cut off from its mirrors", 3*autoTTL, nil)
	px2.Heal(t)
	px3.Heal(t)
	backToNormal("n1's partition from its mirrors healed")

	// 4. etcd entirely down.
	from = time.Now()
	for i := range c.etcd {
		c.stopEtcd(i)
	}
	noFailover("etcd down", 3*autoTTL, func(s *autoStatus) string {
		if s.Failover.WritesUntil <= 0 {
			return "n1 fenced: " + s.Failover.Fenced
		}
		return ""
	})
	writesFlow("etcd down", from)
	c.startEtcd()
	backToNormal("etcd's return")
	if _, errs := w.stop(); errs > 0 {
		t.Logf("%d writes failed in all (expected only while n1 was cut off from its mirrors)", errs)
	}
}
