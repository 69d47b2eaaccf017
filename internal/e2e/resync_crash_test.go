package e2e

// kill -9 of either side in the middle of a rate-limited resync: the next
// session resumes from the primary's saved dirty bitmap and does not send
// again what the mirror confirmed.
//
// Bounds (R is --resync-rate, D the set of 64 KiB chunks the mirror
// lacks, |·| in bytes):
//
//   - The bitmap the primary saved loses at most the confirmations of the
//     last save interval (1 s): |marked ∩ D| ≤ |D| − written₁ + R·1.25 s,
//     where written₁ are the chunks the mirror wrote before the crash
//     (exact when the mirror survives; a status sample taken just before
//     the kill otherwise).
//   - Resend bound: all resync chunk data sent over both sessions ≤ |D| +
//     R·1.25 s + what was in flight, unconfirmed, when a side died (the
//     primary's 16 MiB window at most, only when the mirror died: the
//     primary's session-1 count then includes data sent to a dead peer
//     until the connection timed out).
//   - When the primary survives (mirror killed) the bitmap it saves is
//     exact: marked bytes = total − done of the failed session.

import (
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/blockmirror/blockmirror/internal/testutil"
	"github.com/blockmirror/blockmirror/mirror"
	"github.com/blockmirror/blockmirror/mirror/resync"
)

const (
	crashRate     = 20 << 20
	crashRateFlag = "20M"
	// crashSlack is R·1.25 s: one bitmap save interval plus tick jitter
	// and the rate limiter's burst.
	crashSlack = crashRate * 5 / 4
	// resyncWindow is the primary's default bound on unconfirmed chunk
	// bytes (mirror.ResyncOptions.Window).
	resyncWindow = 16 << 20
)

// dirtyBitmap loads the primary's saved bitmap for m1 and returns the
// bytes it marks in total and within the chunks in data.
func dirtyBitmap(t *testing.T, c *replCluster, data []int64) (marked, markedData int64, ok bool) {
	t.Helper()
	path := filepath.Join(c.Primary.Data, "peers", "m1.dirty")
	b, err := resync.LoadBitmap(path, resyncDiskSize, resyncChunk)
	if err != nil {
		t.Fatal(err)
	}
	if b == nil {
		return 0, 0, false
	}
	for _, ch := range data {
		if b.Test(ch) {
			markedData += resyncChunk
		}
	}
	return b.Bytes(), markedData, true
}

// waitSent waits until the running resync sent at least n bytes.
func waitSent(t *testing.T, c *replCluster, n int64) mirror.ResyncProgress {
	t.Helper()
	var prog mirror.ResyncProgress
	testutil.WaitFor(t, time.Minute, fmt.Sprintf("the resync sent %s", mib(n)), func() (bool, string) {
		p, state, err := peerResync(c, "m1")
		if err != nil {
			return false, err.Error()
		}
		prog = p
		if !p.Active && state == "in-sync" {
			t.Fatalf("the resync finished before the test could interrupt it: %+v", p)
		}
		return p.Active && p.SentBytes >= n, fmt.Sprintf("state %s, progress %+v", state, p)
	})
	return prog
}

// TestResyncKillMirror: kill -9 of the mirror in the middle of a resync;
// the primary saves exactly what is left; the restarted mirror's resync
// compares only that and completes; bytes sent over both sessions stay
// within the resend bound.
func TestResyncKillMirror(t *testing.T) {
	s := newResyncSetup(t, 103)
	c := s.c
	data := s.data.Chunks(resyncChunk)
	D := s.DiffChunkBytes()
	c.StartMirror("m1")
	c.StartPrimary(primaryOpts{Args: []string{"--resync-rate", crashRateFlag}})
	waitSent(t, c, D*2/5)
	ms, err := c.MirrorStatus("m1")
	if err != nil {
		t.Fatal(err)
	}
	c.M("m1").Proc.Kill()
	killed := time.Now()
	written1 := ms.ResyncChunks * resyncChunk // a sample just before the kill

	// The primary notices (QUIC idle timeout) and ends the session.
	var prog1 mirror.ResyncProgress
	testutil.WaitFor(t, 30*time.Second, "the primary ended the resync session", func() (bool, string) {
		p, state, err := peerResync(c, "m1")
		if err != nil {
			return false, err.Error()
		}
		prog1 = p
		return !p.Active, fmt.Sprintf("state %s, progress %+v", state, p)
	})
	noticed := time.Since(killed)
	marked, markedData, ok := dirtyBitmap(t, c, data)
	if !ok {
		t.Fatal("no saved dirty bitmap after an interrupted resync")
	}
	t.Logf("killed the mirror after it wrote ≥ %s; the primary noticed after %v: session 1 %+v; bitmap marks %s (%s of data chunks)",
		mib(written1), noticed.Round(time.Millisecond), prog1, mib(marked), mib(markedData))
	if want := prog1.TotalBytes - prog1.DoneBytes; marked != want {
		t.Errorf("saved bitmap marks %s; the failed session had %s left (total %d − done %d)", mib(marked), mib(want), prog1.TotalBytes, prog1.DoneBytes)
	}
	if lim := D - written1 + crashSlack; markedData > lim {
		t.Errorf("saved bitmap marks %s of data chunks; the mirror had written %s of %s, so at most %s should be left",
			mib(markedData), mib(written1), mib(D), mib(lim))
	}

	c.StartMirror("m1")
	c.WaitPeerState(2*time.Minute, "in-sync", "m1")
	c.WaitApplied(30*time.Second, "m1")
	runs := resyncRuns(t, c.Primary.Proc.Log(), "m1")
	if len(runs) != 2 || runs[0].Complete || !runs[1].Complete {
		t.Fatalf("want an interrupted and a complete resync, got %+v\n%s", runs, resyncLines(c.Primary.Proc, c.M("m1").Proc))
	}
	if runs[1].Compare != marked {
		t.Errorf("second resync compared %s, want the %s the saved bitmap marks", mib(runs[1].Compare), mib(marked))
	}
	ms2, err := c.MirrorStatus("m1")
	if err != nil {
		t.Fatal(err)
	}
	total := prog1.SentBytes + runs[1].Sent
	t.Logf("resync data sent: %s + %s = %s for %s of differing chunks; restarted mirror wrote %d chunks (%s)",
		mib(prog1.SentBytes), mib(runs[1].Sent), mib(total), mib(D), ms2.ResyncChunks, mib(ms2.ResyncChunks*resyncChunk))
	if lim := D + crashSlack + resyncWindow; total > lim {
		t.Errorf("resync sent %s over both sessions; bound |D| + R·1.25 s + window = %s", mib(total), mib(lim))
	}
	if lim := markedData + crashSlack; runs[1].Sent > lim {
		t.Errorf("second resync sent %s; only %s of data chunks were left", mib(runs[1].Sent), mib(markedData))
	}
	if ms2.Inconsistent {
		t.Error("mirror still inconsistent after the resync")
	}
	c.StopAll()
	c.RequireIdentical("m1")
}

// TestResyncKillPrimary: kill -9 of the primary in the middle of a
// resync; the restarted primary resumes from its saved bitmap, which lost
// at most the last second's confirmations; the mirror (which keeps
// running) writes each differing chunk about once over both sessions.
func TestResyncKillPrimary(t *testing.T) {
	s := newResyncSetup(t, 103)
	c := s.c
	data := s.data.Chunks(resyncChunk)
	D := s.DiffChunkBytes()
	c.StartMirror("m1")
	args := []string{"--resync-rate", crashRateFlag}
	c.StartPrimary(primaryOpts{Args: args})
	prog1 := waitSent(t, c, D*2/5)
	c.Primary.Proc.Kill()

	// The mirror keeps running: once it is quiet its resync_chunks is
	// exactly what session 1 wrote.
	var written1 int64
	var stable int
	testutil.WaitFor(t, 30*time.Second, "the mirror stopped writing resync chunks", func() (bool, string) {
		ms, err := c.MirrorStatus("m1")
		if err != nil {
			return false, err.Error()
		}
		if w := ms.ResyncChunks * resyncChunk; w != written1 {
			written1, stable = w, 0
		} else {
			stable++
		}
		if !ms.Inconsistent {
			t.Fatal("mirror reports consistent in the middle of a resync")
		}
		time.Sleep(100 * time.Millisecond)
		return stable >= 5, fmt.Sprintf("resync_chunks %d", ms.ResyncChunks)
	})
	marked, markedData, ok := dirtyBitmap(t, c, data)
	if !ok {
		t.Fatal("no saved dirty bitmap after kill -9 in the middle of a resync")
	}
	t.Logf("killed the primary after sending ≥ %s; the mirror wrote %s; bitmap marks %s (%s of data chunks; %s of %s data confirmed but still marked)",
		mib(prog1.SentBytes), mib(written1), mib(marked), mib(markedData), mib(max(0, markedData-(D-written1))), mib(D))
	if lim := D - written1 + crashSlack; markedData > lim {
		t.Errorf("saved bitmap marks %s of data chunks; the mirror had written %s of %s, so at most %s should be left (R·1.25 s)",
			mib(markedData), mib(written1), mib(D), mib(lim))
	}
	if markedData < D-written1 {
		t.Errorf("saved bitmap marks %s of data chunks, fewer than the %s the mirror lacks", mib(markedData), mib(D-written1))
	}

	c.StartPrimary(primaryOpts{Args: args})
	c.WaitPeerState(2*time.Minute, "in-sync", "m1")
	c.WaitApplied(30*time.Second, "m1")
	runs := resyncRuns(t, c.Primary.Proc.Log(), "m1") // the restarted primary's log only
	if len(runs) != 1 || !runs[0].Complete {
		t.Fatalf("restarted primary: want one complete resync, got %+v\n%s", runs, resyncLines(c.Primary.Proc, c.M("m1").Proc))
	}
	if runs[0].Compare != marked {
		t.Errorf("resumed resync compared %s, want the %s the saved bitmap marks", mib(runs[0].Compare), mib(marked))
	}
	ms, err := c.MirrorStatus("m1")
	if err != nil {
		t.Fatal(err)
	}
	writtenAll := ms.ResyncChunks * resyncChunk
	t.Logf("resumed resync sent %s; the mirror wrote %s of resync chunks over both sessions for %s of differing chunks",
		mib(runs[0].Sent), mib(writtenAll), mib(D))
	if lim := D + crashSlack; writtenAll > lim {
		t.Errorf("the mirror wrote %s of resync chunks over both sessions; bound |D| + R·1.25 s = %s", mib(writtenAll), mib(lim))
	}
	if lim := D + crashSlack; prog1.SentBytes+runs[0].Sent > lim+crashRate/10 {
		t.Errorf("resync sent %s + %s over both sessions; bound |D| + R·1.25 s = %s", mib(prog1.SentBytes), mib(runs[0].Sent), mib(lim))
	}
	if ms.Inconsistent {
		t.Error("mirror still inconsistent after the resync")
	}
	c.StopAll()
	c.RequireIdentical("m1")
}
