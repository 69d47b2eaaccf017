package e2e

// A product bug found while writing the resync tests: with a mirror, an
// NBD flush that has nothing left to wait for fails with EIO.

import (
	"context"
	"testing"
	"time"
)

// TestReplRepeatedFlush: a write, then several flushes in a row through a
// primary with one in-sync mirror. Every flush must succeed. (Found with
// blockmirror at 98ab29b: the first flush succeeds, every further one
// fails at once with EIO; the primary logs at debug level "mirror:
// request N was never admitted". Replication.AdmitFlush runs
// processLocked, which completes a flush whose barrier is already durable
// everywhere and deletes its waiter; Replication.LocalDone then finds no
// waiter and returns that error.)
func TestReplRepeatedFlush(t *testing.T) {
	c := newReplCluster(t, "64M", "m1")
	c.StartMirror("m1")
	c.StartPrimary(primaryOpts{})
	c.WaitPeerState(15*time.Second, "in-sync", "m1")
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	conn, err := rawDial(ctx, c.Primary.NBD, defaultExport)
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.disconnect()
	if err := conn.pwrite(randBytes(1, 4096), 0, 0); err != nil {
		t.Fatal(err)
	}
	for i := range 4 {
		if err := conn.flush(); err != nil {
			t.Errorf("flush %d after one write: %v", i+1, err)
		}
	}
	// And once the mirror has applied everything (nothing in flight).
	c.WaitApplied(10*time.Second, "m1")
	if err := conn.flush(); err != nil {
		t.Errorf("flush with everything applied: %v", err)
	}
}
