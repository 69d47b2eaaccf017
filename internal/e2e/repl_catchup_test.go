package e2e

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/blockmirror/blockmirror/mirror"
)

// TestReplCatchUpState (issue 18 item 1): sync mode with --sync-acks 1, m1
// direct and m2 behind the fault proxy, a write load going on. A partition
// of m2 shorter than the transport's idle timeout keeps its session, so
// writes go on with m1's acks while m2 falls behind; then the link heals
// and m2 catches up. Sampled every few milliseconds throughout, the
// primary's status must never call m2 in-sync while its lag is above the
// bound (a tenth of --ack-timeout): it is catching-up, connected, with the
// records and bytes it lacks, and /metrics says the same; once m2 is back
// within the bound it is in-sync.
func TestReplCatchUpState(t *testing.T) {
	seed := rand.Uint64()
	t.Logf("seed %d", seed)
	c := newReplCluster(t, "64M", "m1", "m2")
	c.StartMirror("m1")
	c.StartMirror("m2")
	proxy := startPartitioner(t, c.M("m2").Listen)
	const ackTimeout = 2 * time.Second
	const bound = 0.2 // seconds: ackTimeout/10
	c.StartPrimary(primaryOpts{
		Via:  map[string]string{"m2": proxy.Addr()},
		Args: []string{"--mode", "sync", "--sync-acks", "1", "--ack-timeout", ackTimeout.String()},
	})
	c.WaitPeerState(15*time.Second, "in-sync", "m1", "m2")
	if st, err := c.PrimaryStatus(); err != nil || st.InSyncLagSeconds != bound {
		t.Errorf("in_sync_lag_seconds: %+v, %v; want %v (--ack-timeout %v / 10)", st, err, bound, ackTimeout)
	}
	w := startLoad(t, c.Primary.NBD, seed, 256)
	defer w.Stop()
	time.Sleep(500 * time.Millisecond)

	// sample checks one status snapshot of m2 and returns it.
	var samples, inSyncLagging int
	sample := func(phase string) *mirror.PeerReport {
		t.Helper()
		st, err := c.PrimaryStatus()
		if err != nil {
			t.Fatal(err)
		}
		p := replPeer(st, "m2")
		if p == nil {
			t.Fatalf("no peer m2 in %+v", st)
		}
		samples++
		if p.State == "in-sync" && p.LagSeconds > bound+1e-9 {
			inSyncLagging++
			if inSyncLagging <= 3 {
				t.Errorf("%s: m2 is in-sync %.2f s (%d records, %d bytes) behind; the bound is %.2f s",
					phase, p.LagSeconds, p.LagRecords, p.LagBytes, bound)
			}
		}
		return p
	}

	proxy.Partition(t, "both")
	tp := time.Now()
	var behind *mirror.PeerReport
	for time.Since(tp) < 3*time.Second { // < the 10 s idle timeout: the session survives
		p := sample("partitioned")
		if p.State == "catching-up" && p.Connected && p.LagRecords > 0 && p.LagBytes > 0 && p.LagSeconds > bound {
			behind = p
		}
		time.Sleep(5 * time.Millisecond)
	}
	if behind == nil {
		t.Errorf("m2 was never shown catching-up (connected, with records and bytes behind) during a 3 s partition")
	} else {
		t.Logf("partitioned: m2 %s, %d records, %d bytes, %.2f s behind, eta %v, age %.2f s", behind.State,
			behind.LagRecords, behind.LagBytes, behind.LagSeconds, fmtETA(behind.ETASeconds), behind.AgeSeconds)
		// Writes m1 acknowledged went on: a failover to m2 would lose
		// about as much as it lags.
		if behind.AgeSeconds < behind.LagSeconds-0.5 {
			t.Errorf("m2's age %.2f s while %.2f s behind", behind.AgeSeconds, behind.LagSeconds)
		}
	}
	m := metricValues(t, c.Primary.Admin)
	const series = `blockmirror_peer_state{peer="m2",state="%s",volume="disk"}`
	if m[fmt.Sprintf(series, "catching-up")] != 1 || m[fmt.Sprintf(series, "in-sync")] != 0 {
		t.Errorf("/metrics during the partition: catching-up %v, in-sync %v (want 1, 0)",
			m[fmt.Sprintf(series, "catching-up")], m[fmt.Sprintf(series, "in-sync")])
	}
	if age := m[`blockmirror_peer_age_seconds{peer="m2",volume="disk"}`]; age < 1 {
		t.Errorf("/metrics: peer_age_seconds of m2 %v after 3 s of partition", age)
	}
	if n := countStarted(w.Results(), tp.Add(100*time.Millisecond), true); n < 10 {
		t.Errorf("only %d writes completed during the partition with m1 acking", n)
	}

	proxy.Heal(t)
	th := time.Now()
	var catching int
	var caughtUp time.Duration
	for time.Since(th) < 30*time.Second {
		p := sample("healed")
		if p.State == "catching-up" {
			catching++
			if catching == 1 || catching%200 == 0 {
				t.Logf("healed +%v: m2 catching-up, %d records, %d bytes, %.2f s behind, eta %v", time.Since(th).Round(time.Millisecond),
					p.LagRecords, p.LagBytes, p.LagSeconds, fmtETA(p.ETASeconds))
			}
		}
		if p.State == "in-sync" {
			caughtUp = time.Since(th)
			t.Logf("healed +%v: m2 in-sync, %d records, %.3f s behind", caughtUp.Round(time.Millisecond), p.LagRecords, p.LagSeconds)
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if caughtUp == 0 {
		t.Fatalf("m2 not in-sync within 30 s of the heal")
	}
	// In sync it stays (a healthy link keeps it within the bound).
	for tq := time.Now(); time.Since(tq) < time.Second; time.Sleep(10 * time.Millisecond) {
		if p := sample("caught up"); p.State != "in-sync" {
			t.Logf("caught up: m2 %s %.3f s behind", p.State, p.LagSeconds)
		}
	}
	t.Logf("%d status samples, %d catching-up after the heal, in-sync %v after it; proxy: %s", samples, catching,
		caughtUp.Round(time.Millisecond), proxy.Stats())
	if inSyncLagging > 0 {
		t.Errorf("%d samples showed m2 in-sync beyond the bound", inSyncLagging)
	}
	w.Stop()
	for _, r := range w.Results() {
		if r.Err != nil {
			t.Errorf("write of block %d version %d failed: %v", r.Block, r.Version, r.Err)
			break
		}
	}
	c.WaitApplied(30*time.Second, "m1", "m2")
	c.StopAll()
	c.RequireIdentical("m1", "m2")
}

func fmtETA(s *float64) string {
	if s == nil {
		return "none (not gaining)"
	}
	return fmt.Sprintf("%.2f s", *s)
}
