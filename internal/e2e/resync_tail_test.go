package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/blockmirror/blockmirror/internal/testutil"
)

// TestResyncBitmapSkipsJournalTail (issue 18 item 3): a mirror is down
// while 1% of a 1 GiB disk is rewritten 8 times with --journal-max 32M, so
// the journal drops the older records (their regions go into the mirror's
// dirty bitmap) and keeps a tail that rewrites the same regions several
// times. Brought back, the mirror is resynced from the bitmap; what goes
// over the wire to it (counted by a relay; --allow-degraded lets the
// writes complete without it) must stay within 1.2 × the
// changed bytes (in 64 KiB chunks) plus 2 MiB of protocol traffic: the
// tail's regions are copied once as chunks, not replayed record by record.
// The images are identical afterwards.
func TestResyncBitmapSkipsJournalTail(t *testing.T) {
	seed := rand.Uint64()
	t.Logf("seed %d", seed)
	c := newReplCluster(t, "1G", "m1")
	m := c.StartMirror("m1")
	relay := testutil.StartProxy(t, testutil.FreeUDPAddr(t), m.Listen)
	c.StartPrimary(primaryOpts{Via: map[string]string{"m1": relay.Addr().String()}, Args: []string{"--journal-max", "32M", "--allow-degraded", "--indirect-min", "0"}})
	c.WaitPeerState(30*time.Second, "in-sync", "m1")
	stopProc(t, m.Proc)

	// 10 extents of 1 MiB (4 KiB aligned: most touch 17 chunks), each
	// written 8 times with new data.
	const extents, rounds = 10, 8
	rng := rand.New(rand.NewPCG(seed, 1))
	offs := make([]int64, extents)
	changed := map[int64]bool{}
	for i := range offs {
		offs[i] = rng.Int64N((resyncDiskSize-resyncExtent)/4096+1) * 4096
		for ch := offs[i] / resyncChunk; ch <= (offs[i]+resyncExtent-1)/resyncChunk; ch++ {
			changed[ch] = true
		}
	}
	changedBytes := int64(len(changed)) * resyncChunk
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	conn, err := rawDial(ctx, c.Primary.NBD, defaultExport)
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, resyncExtent)
	for r := range rounds {
		for i, off := range offs {
			fillRandom(buf, seed, uint64(r*extents+i+2))
			if err := conn.pwrite(buf, uint64(off), 0); err != nil {
				t.Fatalf("write round %d extent %d: %v", r, i, err)
			}
		}
		if err := conn.flush(); err != nil {
			t.Fatal(err)
		}
	}
	conn.disconnect()
	st, err := c.PrimaryStatus()
	if err != nil {
		t.Fatal(err)
	}
	mirrorLast := replPeer(st, "m1").Received
	testutil.WaitFor(t, 30*time.Second, "the journal dropped records m1 lacks", func() (bool, string) {
		st, err := c.PrimaryStatus()
		if err != nil {
			return false, err.Error()
		}
		return st.JournalFirst > mirrorLast+1, fmt.Sprintf("journal from %d, m1 has through %d", st.JournalFirst, mirrorLast)
	})
	st, _ = c.PrimaryStatus()
	tail := (int64(st.LastSeq) - int64(st.JournalFirst) + 1) * resyncExtent
	before := relay.Stats()

	c.StartMirror("m1")
	c.WaitPeerState(2*time.Minute, "in-sync", "m1")
	c.WaitApplied(30*time.Second, "m1")
	after := relay.Stats()
	wire := int64(after.Up.Bytes - before.Up.Bytes)
	runs := resyncRuns(t, c.Primary.Proc.Log(), "m1")
	if len(runs) != 1 || !runs[0].Complete {
		t.Fatalf("want one complete resync, got %+v\n%s", runs, resyncLines(c.Primary.Proc, m.Proc))
	}
	t.Logf("changed %s (%d chunks); journal tail %s (seq %d..%d); resync sent %s; to the mirror on the wire %s = %.2f × changed",
		mib(changedBytes), len(changed), mib(tail), st.JournalFirst, st.LastSeq, mib(runs[0].Sent), mib(wire),
		float64(wire)/float64(changedBytes))
	if lim := changedBytes*12/10 + 2<<20; wire > lim {
		t.Errorf("%s went to the mirror for %s of changed chunks: more than 1.2 × + 2 MiB (%s)", mib(wire), mib(changedBytes), mib(lim))
	}
	c.StopAll()
	c.RequireIdentical("m1")
}
