package e2e

import (
	"bytes"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/blockmirror/blockmirror/internal/testutil"
)

// TestPrimaryCrashJournalLag: the primary's local journal is made to lag
// its mirror (the test build's --test-journal-delay holds every local
// journal write pass, while the sender streams records from memory), the
// primary is killed (SIGKILL) under a write load, restarted and written
// to, then both nodes stop cleanly. The mirror holds records the
// restarted primary never wrote; they must be quarantined and the mirror
// resynced, and the two images must end byte-identical, with every write
// that was acknowledged before the kill on both (sync and async mode).
func TestPrimaryCrashJournalLag(t *testing.T) {
	for i, mode := range []string{"sync", "async"} {
		t.Run(mode, func(t *testing.T) { testPrimaryCrashJournalLag(t, mode, 194+2*i) })
	}
}

func testPrimaryCrashJournalLag(t *testing.T, mode string, host int) {
	const blk = 4096
	c := newFoCluster(t, host, "p1", "m1")
	p1, m1 := c.N("p1"), c.N("m1")
	m1.StartMirror()
	args := []string{"--mirror", "m1=" + m1.Listen, "--mode", mode, "--max-lag", "0", "--ack-level", "written"}
	p1.StartPrimary("64M", append(args, "--test-journal-delay", "20ms")...)

	// Eight writers, each write to a block of its own, non-FUA and without
	// flushes; what was acknowledged is kept.
	var mu sync.Mutex
	acked := map[int64][]byte{}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 8 {
		conn := foDial(t, p1.NBD)
		wg.Go(func() {
			for i := 0; i < 1000; i++ {
				select {
				case <-stop:
					return
				default:
				}
				off := int64(w*1000+i) * blk
				p := foPattern(fmt.Sprintf("A%d", w), i, blk)
				conn.c.SetDeadline(time.Now().Add(20 * time.Second))
				if err := conn.pwrite(p, uint64(off), 0); err != nil {
					return // the primary was killed
				}
				mu.Lock()
				acked[off] = p
				mu.Unlock()
			}
		})
	}
	time.Sleep(1500 * time.Millisecond)
	p1.Kill()
	close(stop)
	wg.Wait()
	t.Logf("killed the primary after %d acknowledged writes", len(acked))

	p1.StartPrimary("64M", args...)
	conn := foDial(t, p1.NBD)
	for i := range 64 {
		off := int64(40<<20) + int64(i)*blk
		p := foPattern("B", i, blk)
		if err := conn.foWrite(p, off, 30*time.Second); err != nil {
			t.Fatalf("write B%d after the restart: %v", i, err)
		}
		acked[off] = p
	}
	foWaitCaughtUp(t, p1, m1, 90*time.Second)
	reps := foQuarantine(t, m1.Data)
	records := 0
	for _, q := range reps {
		records += q.Records
		t.Logf("m1 quarantined seqs %d..%d (%d records) after the fork at %d", q.FirstSeq, q.LastSeq, q.Records, q.ForkSeq)
	}
	if records == 0 {
		t.Errorf("m1 quarantined nothing: the lagging journal left it no records ahead of the primary's (the test did not exercise its case)")
	}
	p1.Stop()
	m1.Stop()
	foRequireIdentical(t, p1, m1)
	if off, err := testutil.CompareFiles(p1.Image(), m1.Image()); err == nil && off >= 0 {
		a, _ := foReadImage(p1.Image(), off/blk*blk, blk)
		b, _ := foReadImage(m1.Image(), off/blk*blk, blk)
		_, wasAcked := acked[off/blk*blk]
		t.Errorf("block %d: p1 has %q, m1 has %q (acknowledged: %v)", off/blk, foHead(a), foHead(b), wasAcked)
	}
	missing := 0
	for off, want := range acked {
		for _, n := range []*foNode{p1, m1} {
			got, err := foReadImage(n.Image(), off, blk)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				missing++
				if missing <= 5 {
					t.Errorf("%s lacks the acknowledged write at block %d (has %q)", n.Name, off/blk, foHead(got))
				}
			}
		}
	}
	if missing > 0 {
		t.Errorf("%d acknowledged writes missing", missing)
	}
}
