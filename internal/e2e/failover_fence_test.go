package e2e

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

// TestFailoverFencing: p1 replicates synchronously to m1 through a fault
// proxy. The proxy partitions them; scripts/failover.sh on m1 refuses to
// promote while p1's NBD port answers (exit 2) and promotes with --force.
// A client of the old primary then gets no write acknowledged (every FUA
// write fails within the ack timeout, none reaches m1). Once the partition
// heals, p1 contacts m1, learns it is fenced (status replication.fenced,
// `blockmirror status` says FENCED) and fails writes at once.
func TestFailoverFencing(t *testing.T) {
	const blk = 64 << 10
	const ackTimeout = time.Second
	c := newFoCluster(t, 166, "p1", "m1")
	p1, m1 := c.N("p1"), c.N("m1")
	proxy := foStartProxy(t, "127.0.0.168", m1.Listen)
	m1.StartMirror()
	p1.StartPrimary("256M", "--mirror", "m1="+proxy.Addr(), "--mode", "sync", "--ack-timeout", ackTimeout.String(),
		"--listen", p1.Listen)

	aOffs := []int64{0, 16 << 20, 100 << 20}
	conn := foDial(t, p1.NBD)
	conn.foWriteBlocks(t, "A", aOffs, blk)
	foWaitCaughtUp(t, p1, m1, 20*time.Second)

	proxy.Partition(t, "both")
	t.Log("partitioned p1 from m1")

	// The script refuses while the old primary still answers...
	if r := runFailover(t, "--primary", p1.NBD, "--admin", m1.Admin); r.Code != 2 {
		t.Fatalf("failover.sh with the primary reachable exited %d, want 2 (refused)", r.Code)
	}
	if st, err := m1.Status(); err != nil || st.Mirror == nil {
		t.Fatalf("m1 should still be a mirror after a refused failover: %v %s", err, m1.RawStatus())
	}
	// ...and with --force the mirror is promoted although p1 lives on.
	r := runFailover(t, "--primary", p1.NBD, "--admin", m1.Admin, "--force")
	if r.Code != 0 {
		t.Fatalf("failover.sh --force exited %d", r.Code)
	}

	// No write on the old primary is acknowledged.
	var pOffs []int64
	for i := range 4 {
		pOffs = append(pOffs, int64(i)*blk+(50<<20))
	}
	for i, off := range pOffs {
		start := time.Now()
		err := conn.foWrite(foPattern("P", i, blk), off, 3*ackTimeout+5*time.Second)
		took := time.Since(start)
		var ne nbdError
		switch {
		case err == nil:
			t.Errorf("write %d on the old primary during the partition was acknowledged (after %v)", i, took)
		case errors.As(err, &ne):
			t.Logf("write %d on the old primary failed after %v: %v", i, took.Round(time.Millisecond), err)
		default:
			t.Fatalf("write %d on the old primary: connection error (the primary must answer with an error): %v", i, err)
		}
	}
	if st, err := p1.Status(); err == nil && st.Primary != nil && st.Primary.Replication != nil {
		t.Logf("p1 during the partition: fenced=%v degraded=%v quorum=%d last=%d", st.Primary.Replication.Fenced,
			st.Primary.Replication.Degraded, st.Primary.Replication.QuorumSeq, st.Primary.Replication.LastSeq)
	}

	proxy.Heal(t)
	t.Log("healed the partition")
	healed := time.Now()
	p1.WaitStatus(45*time.Second, "fenced", func(s *foStatus) (bool, string) {
		if s.Primary == nil || s.Primary.Replication == nil {
			return false, "no replication status"
		}
		return s.Primary.Replication.Fenced, "not fenced yet"
	})
	t.Logf("p1 reports fenced %v after the heal", time.Since(healed).Round(time.Millisecond))
	out := runCmd(t, 30*time.Second, binPath, "status", "--admin", p1.Admin)
	if !strings.Contains(out, "FENCED") {
		t.Errorf("`blockmirror status` of the old primary does not say FENCED:\n%s", out)
	}

	// Fenced: writes fail at once now.
	start := time.Now()
	if err := conn.foWrite(foPattern("F", 0, blk), 60<<20, 3*ackTimeout); err == nil {
		t.Errorf("a write on the fenced primary was acknowledged")
	} else if took := time.Since(start); took >= ackTimeout {
		t.Errorf("a write on the fenced primary took %v to fail (want at once, not after the ack timeout)", took)
	} else {
		t.Logf("write on the fenced primary failed in %v: %v", took.Round(time.Millisecond), err)
	}

	// The new primary has A and none of the old primary's later writes.
	foCheckBlocks(t, m1.NBD, "A", aOffs, blk)
	mc := foDial(t, m1.NBD)
	for i, off := range pOffs {
		got, err := mc.foRead(blk, off)
		if err != nil {
			t.Fatal(err)
		}
		if string(got) == string(foPattern("P", i, blk)) {
			t.Errorf("the old primary's unacknowledged write %d reached the new primary", i)
		}
	}
	if st, err := m1.Status(); err != nil || st.Primary == nil || st.Primary.SplitBrain != "" {
		t.Errorf("m1 after the heal: %v %s", err, m1.RawStatus())
	}
}

// TestFailoverFencingThirdMirror: p1 replicates synchronously (1 of 2) to
// m1 and m2; only the link p1→m1 is cut. m1 is promoted and replicates to
// m2. The old primary still reaches m2, but m2 now follows epoch 2: it
// must not acknowledge (or apply) p1's writes, so none of p1's writes
// completes and m2 stays identical to the new primary.
func TestFailoverFencingThirdMirror(t *testing.T) {
	const blk = 64 << 10
	c := newFoCluster(t, 190, "p1", "m1", "m2")
	p1, m1, m2 := c.N("p1"), c.N("m1"), c.N("m2")
	toM1 := foStartProxy(t, "127.0.0.193", m1.Listen)
	m1.StartMirror("--mirror", "m2="+m2.Listen, "--mode", "sync", "--allow-degraded", "--ack-timeout", "2s")
	m2.StartMirror()
	p1.StartPrimary("256M", "--mirror", "m1="+toM1.Addr(), "--mirror", "m2="+m2.Listen, "--mode", "sync",
		"--sync-acks", "1", "--ack-timeout", "2s", "--listen", p1.Listen)
	aOffs := []int64{0, 30 << 20}
	pc := foDial(t, p1.NBD)
	pc.foWriteBlocks(t, "A", aOffs, blk)
	foWaitCaughtUp(t, p1, m1, 20*time.Second)
	foWaitCaughtUp(t, p1, m2, 20*time.Second)

	toM1.Partition(t, "both")
	if r := runFailover(t, "--primary", p1.NBD, "--admin", m1.Admin, "--force"); r.Code != 0 {
		t.Fatalf("failover.sh --force exited %d", r.Code)
	}
	m1.WaitStatus(30*time.Second, "m2 following m1", func(s *foStatus) (bool, string) {
		if s.Primary == nil || s.Primary.Replication == nil {
			return false, "not a replicating primary"
		}
		p := replPeer(s.Primary.Replication, "m2")
		return p != nil && p.State == "in-sync", fmt.Sprintf("m2: %+v", p)
	})
	if st, err := m2.Status(); err == nil && st.Mirror != nil {
		t.Logf("m2 follows %s in epoch %d", st.Mirror.Primary, st.Mirror.Epoch)
	}

	var pOffs []int64
	acked := 0
	for i := range 4 {
		off := int64(i)*blk + 70<<20
		pOffs = append(pOffs, off)
		start := time.Now()
		err := pc.foWrite(foPattern("P", i, blk), off, 20*time.Second)
		if err == nil {
			acked++
			t.Errorf("write %d on the old primary was acknowledged after %v although m1 is primary in epoch 2", i, time.Since(start))
		} else {
			t.Logf("write %d on the old primary failed after %v: %v", i, time.Since(start).Round(time.Millisecond), err)
		}
	}
	if st, err := p1.Status(); err == nil && st.Primary != nil && st.Primary.Replication != nil {
		r := st.Primary.Replication
		t.Logf("p1: fenced=%v degraded=%v; peers: %+v", r.Fenced, r.Degraded, r.Peers)
	}
	// m2 holds none of p1's writes and is identical to m1 once quiet.
	mc := foDial(t, m1.NBD)
	if err := mc.foWrite(foPattern("N", 0, blk), 90<<20, 10*time.Second); err != nil {
		t.Fatalf("write on the new primary: %v", err)
	}
	foWaitCaughtUp(t, m1, m2, 20*time.Second)
	p1.Kill()
	m1.Stop()
	m2.Stop()
	for i, off := range pOffs {
		for _, n := range []*foNode{m1, m2} {
			got, err := foReadImage(n.Image(), off, blk)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) == string(foPattern("P", i, blk)) {
				t.Errorf("the old primary's write %d reached %s", i, n.Name)
			}
		}
	}
	foRequireIdentical(t, m1, m2)
}
