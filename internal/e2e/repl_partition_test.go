package e2e

// Partitions between the primary and a sync mirror, made with an
// in-process UDP proxy (testutil.UDPProxy) between them.

import (
	"math/rand/v2"
	"testing"
	"time"

	"github.com/blockmirror/blockmirror/internal/testutil"
)

// TestReplPartition: sync 2-of-2, m2 behind a proxy. While m2 is
// partitioned away, writes stall (none started during the partition
// completes); once healed they complete and go on. A short partition
// keeps the QUIC connection; a long one (beyond the 10 s idle timeout,
// skipped with -short) makes the primary reconnect and catch m2 up. At the
// end the data read back matches the newest acknowledged version of every
// block (overwritten many times, so a lost, duplicated or reordered
// record would show) and the three images are identical.
func TestReplPartition(t *testing.T) {
	seed := rand.Uint64()
	t.Logf("seed %d", seed)
	c := newReplCluster(t, "64M", "m1", "m2")
	c.StartMirror("m1")
	c.StartMirror("m2")
	proxy := testutil.StartUDPProxy(t, testutil.FreeUDPAddr(t), c.M("m2").Listen)
	c.StartPrimary(primaryOpts{
		Via:  map[string]string{"m2": proxy.Addr()},
		Args: []string{"--mode", "sync", "--sync-acks", "2", "--ack-timeout", "60s"},
	})
	c.WaitPeerState(15*time.Second, "in-sync", "m1", "m2")

	w := startLoad(t, c.Primary.NBD, seed, 128)
	partitions := []time.Duration{2 * time.Second, 2500 * time.Millisecond}
	if !testing.Short() {
		partitions = append(partitions, 13*time.Second) // > transport idle timeout (10 s)
	}
	for i, d := range partitions {
		time.Sleep(700 * time.Millisecond)
		before := len(w.Results())
		dir := testutil.Both
		if i == 1 {
			dir = testutil.ToClient // acks lost, records still arrive
		}
		tp := time.Now()
		proxy.Partition(dir)
		time.Sleep(d)
		rs := w.Results()
		// Writes in flight when the partition began may still complete;
		// none that started later may.
		late := countStarted(rs, tp.Add(50*time.Millisecond), true)
		pend, stuck := w.Pending()
		proxy.Heal()
		th := time.Now()
		t.Logf("partition %d (%v, directions %b): %d writes before, %d completed after it began (%d started after), write pending: %v",
			i, d, dir, before, len(rs)-before, late, stuck)
		if late > 0 {
			t.Errorf("partition %d: %d writes that started during the partition completed without m2's ack", i, late)
		}
		if !stuck || time.Since(pend.Start) < time.Second {
			t.Errorf("partition %d: no write has been waiting ≥ 1 s (pending %v since %v)", i, stuck, pend.Start)
		}
		// The stalled write must complete, successfully, after the heal.
		var resumed *writeResult
		for deadline := time.Now().Add(30 * time.Second); resumed == nil && time.Now().Before(deadline); {
			for _, r := range w.Results() {
				if r.Start.Equal(pend.Start) {
					resumed = &r
					break
				}
			}
			time.Sleep(20 * time.Millisecond)
		}
		if resumed == nil {
			t.Fatalf("partition %d: the write stalled by the partition did not finish within 30 s of the heal", i)
		}
		if resumed.Err != nil {
			t.Fatalf("partition %d: the stalled write failed after the heal: %v", i, resumed.Err)
		}
		t.Logf("partition %d: stalled write completed %v after the heal (%v in total)", i,
			resumed.End.Sub(th).Round(time.Millisecond), resumed.End.Sub(resumed.Start).Round(time.Millisecond))
		time.Sleep(500 * time.Millisecond)
		if n := countStarted(w.Results(), th, true); n < 10 {
			t.Errorf("partition %d: only %d writes succeeded after the heal", i, n)
		}
	}
	w.Stop()
	if err := w.ConnErr(); err != nil {
		t.Errorf("load connection failed: %v", err)
	}
	for _, r := range w.Results() {
		if r.Err != nil {
			t.Errorf("write of block %d version %d failed: %v", r.Block, r.Version, r.Err)
			break
		}
	}
	t.Logf("%d writes, proxy forwarded %d and dropped %d datagrams", len(w.Results()), proxy.Forwarded.Load(), proxy.Dropped.Load())
	c.WaitPeerState(30*time.Second, "in-sync", "m1", "m2")
	c.WaitApplied(30*time.Second, "m1", "m2")
	conn, err := rawDial(t.Context(), c.Primary.NBD, defaultExport)
	if err != nil {
		t.Fatal(err)
	}
	verifyModel(t, conn, seed, w.Model())
	conn.disconnect()
	c.StopAll()
	c.RequireIdentical("m1", "m2")
}
