package e2e

import (
	"fmt"
	"sync"
	"testing"
	"time"
)

// TestFailoverFUAWritesComplete: a promoted node (replicating
// asynchronously to its dead old primary) takes FUA writes from one
// client, one at a time, then from several at once; every one must
// complete, and no journal sync request may fail. A FUA write makes the replication core
// ask the journal to sync its seq as soon as the seq is assigned (Admit),
// before the volume has submitted the record; the sync loop then gets
// ErrTruncated ("wait for N: records truncated (last seq N-1)"), drops the
// request and the write never completes (seen first as a hang of
// TestFailoverFailback's writes C).
func TestFailoverFUAWritesComplete(t *testing.T) {
	const (
		clients = 4
		writes  = 400
		blk     = 4096
	)
	c := newFoCluster(t, 188, "p1", "m1")
	p1, m1 := c.N("p1"), c.N("m1")
	m1.StartMirror("--mirror", "p1="+p1.Listen, "--mode", "async", "--max-lag", "0")
	p1.StartPrimary("256M", "--mirror", "m1="+m1.Listen, "--mode", "sync", "--listen", p1.Listen)
	foWaitCaughtUp(t, p1, m1, 20*time.Second)
	p1.Kill()
	if r := runFailover(t, "--primary", p1.NBD, "--admin", m1.Admin); r.Code != 0 {
		t.Fatalf("failover.sh exited %d", r.Code)
	}
	// One client, one FUA write at a time: a dropped sync request is not
	// covered by a later one, so the write hangs.
	seq := foDial(t, m1.NBD)
	for i := range 2000 {
		if err := seq.foWriteFUA(foPattern("Q", i, blk), int64(i)*blk+(64<<20), 10*time.Second); err != nil {
			t.Fatalf("sequential FUA write %d: %v\n%s", i, err, m1.Proc.LogLine("local journal sync failed"))
		}
	}
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for k := range clients {
		conn := foDial(t, m1.NBD)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range writes {
				off := int64(k*writes+i) * blk
				if err := conn.foWriteFUA(foPattern("F", k*writes+i, blk), off, 10*time.Second); err != nil {
					errs <- fmt.Errorf("client %d: FUA write %d of %d at %d: %w", k, i, writes, off, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if line := m1.Proc.LogLine("local journal sync failed"); line != "" {
		t.Errorf("the promoted node logged: %s", line)
	}
}
