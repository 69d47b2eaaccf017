package e2e

import (
	"bytes"
	"testing"
	"time"
)

// TestAutoFailoverAsync: async mode with --max-lag 1s; the primary reaches
// its mirrors through fault proxies that delay every datagram by 150 ms,
// so the mirrors trail it (the link is slower than the writer). It is
// killed under a writer (64 KiB blocks at fresh offsets); a mirror takes
// over with no command. The loss is bounded by --max-lag: the primary
// completes no write once the oldest record its best mirror lacks was
// proposed more than --max-lag ago, so every acknowledged write the new
// primary lacks was acknowledged within --max-lag of the first of them
// (and so was every later acknowledgement). The old primary, restarted,
// rejoins as a mirror and quarantines its divergent records: every
// acknowledged write the new primary lacks is in its quarantine.
func TestAutoFailoverAsync(t *testing.T) {
	if testing.Short() {
		t.Skip("slow: a failover with real processes (skipped with -short)")
	}
	const maxLag = time.Second
	c := newAutoCluster(t, 190, 1, "async", "n1", "n2", "n3")
	c.extra = []string{"--max-lag", maxLag.String()}
	n1, n2, n3 := c.N("n1"), c.N("n2"), c.N("n3")
	px2, px3 := foStartProxy(t, "127.0.0.190", n2.Listen), foStartProxy(t, "127.0.0.190", n3.Listen)
	c.mirrorFor["n1"] = map[string]string{"n2": px2.Addr(), "n3": px3.Addr()}
	c.Start(n2, false)
	c.Start(n3, false)
	c.Start(n1, true)
	if p := c.WaitPrimary(30 * time.Second); p != n1 {
		t.Fatalf("primary %s, want n1", p.Name)
	}
	px2.Faults(t, "dir=up&delay=150ms")
	px3.Faults(t, "dir=up&delay=150ms")

	w := startBlockWriter(t, n1, "async", 0, (128<<20)/blockSize)
	time.Sleep(3 * time.Second)
	t.Logf("n1 before the kill: %s", n1.RawStatus())
	killAt := time.Now()
	n1.Kill()
	r := probeTakeover(t, []*foNode{n2, n3}, autoProbeOff, 30*time.Second)
	t.Logf("RTO (async): %s served NBD %v after the kill, first write %v", r.by.Name,
		r.served.Sub(killAt).Round(time.Millisecond), r.wrote.Sub(killAt).Round(time.Millisecond))
	acked, _ := w.stop()
	w.mu.Lock()
	times := append([]time.Time(nil), w.times...)
	w.mu.Unlock()
	if len(acked) == 0 {
		t.Fatal("no write acknowledged before the kill")
	}

	// Which acknowledged blocks does the new primary lack?
	conn := foDial(t, r.by.NBD)
	var missing []int
	for i, off := range acked {
		got, err := conn.foRead(blockSize, off)
		if err != nil {
			t.Fatalf("read %d: %v", off, err)
		}
		if !bytes.Equal(got, foPattern("async", i, blockSize)) {
			missing = append(missing, i)
		}
	}
	conn.c.Close()
	if len(missing) == 0 {
		t.Logf("the new primary %s has all %d acknowledged writes (loss 0)", r.by.Name, len(acked))
	} else {
		first := times[missing[0]]
		span := times[len(times)-1].Sub(first)
		t.Logf("RECOVERY POINT (async, --max-lag %v): %d of %d acknowledged writes (%d MiB) lost; they were acknowledged within %v of the first of them, %v to %v before the kill",
			maxLag, len(missing), len(acked), len(missing)*blockSize>>20, span.Round(time.Millisecond),
			killAt.Sub(first).Round(time.Millisecond), killAt.Sub(times[len(times)-1]).Round(time.Millisecond))
		// 100 ms for the core's tick and the client's view of the times.
		if span > maxLag+100*time.Millisecond {
			t.Errorf("writes were acknowledged up to %v after the first write the new primary lacks: more than --max-lag %v", span.Round(time.Millisecond), maxLag)
		}
	}

	// The old primary returns with its usual command and rejoins; the
	// writes the new primary lacks are in its quarantine, not lost in
	// silence.
	px2.Heal(t)
	px3.Heal(t)
	c.Start(n1, true)
	if p := c.WaitPrimary(60 * time.Second); p != r.by {
		t.Fatalf("primary %s after n1's return, want %s", p.Name, r.by.Name)
	}
	c.waitRejoined(n1, r.by, 60*time.Second)
	reps := foQuarantine(t, n1.Data)
	t.Logf("n1 quarantined %d record sets", len(reps))
	for _, i := range missing {
		if !foCovered(reps, acked[i], blockSize) {
			t.Errorf("write %d at %d is neither on the new primary nor in n1's quarantine %+v", i, acked[i], reps)
		}
	}
}
