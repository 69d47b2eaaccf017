package journal_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/blockmirror/blockmirror/journal"
)

// zeroRecord overwrites the header of the record with seq in the last
// segment with zeroes, as a write lost at a power loss leaves it.
func zeroRecord(t *testing.T, dir string, seq uint64) {
	t.Helper()
	segs := segFiles(t, dir)
	last := segs[len(segs)-1]
	b, err := os.ReadFile(last)
	if err != nil {
		t.Fatal(err)
	}
	for off := journal.SegmentHeaderSize; off < len(b); {
		r, n, err := journal.DecodeRecord(b[off:])
		if err != nil {
			t.Fatalf("%s at %d: %v", last, off, err)
		}
		if r.Seq == seq {
			f, err := os.OpenFile(last, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if _, err := f.WriteAt(make([]byte, journal.RecordHeaderSize), int64(off)); err != nil {
				t.Fatal(err)
			}
			return
		}
		off += n
	}
	t.Fatalf("seq %d not in %s", seq, last)
}

// TestTornTailOutOfOrder: after a power loss, the unsynced tail of the
// last segment may have reached the disk out of order — a lost record
// followed by intact ones. Those intact records were never durable (a sync
// covering them would have covered the lost one), so recovery treats it
// all as a torn tail and opens; but when an intact record after the damage
// was written once the damaged one was durable, the damage hit durable
// data and Open fails with ErrCorrupt. Invariant: a power loss never stops
// the journal from opening, and damage to durable records is never
// mistaken for it.
func TestTornTailOutOfOrder(t *testing.T) {
	ctx := context.Background()
	build := func(t *testing.T, syncAfter bool) string {
		dir := t.TempDir()
		o := opts(dir)
		o.SegmentBytes = 1 << 20
		j := mustOpen(t, o)
		appendN(t, j, 1, 10, func(uint64) int { return 300 }) // durable
		for s := uint64(11); s <= 30; s++ {                   // written in several batches, never synced
			if err := j.Submit(ctx, rec(s, 300)); err != nil {
				t.Fatal(err)
			}
			if err := j.Wait(ctx, s, journal.Written); err != nil {
				t.Fatal(err)
			}
		}
		if syncAfter { // 31..35 are written once 30 (and so 15) is durable
			if err := j.Sync(ctx); err != nil {
				t.Fatal(err)
			}
			appendN(t, j, 31, 35, func(uint64) int { return 300 })
		}
		j.Close() // NoSync: Close does not add a proof of durability
		return dir
	}
	o := func(dir string) journal.Options { x := opts(dir); x.SegmentBytes = 1 << 20; return x }

	t.Run("unsynced", func(t *testing.T) {
		dir := build(t, false)
		zeroRecord(t, dir, 15)
		j, err := journal.Open(o(dir))
		if err != nil {
			t.Fatalf("open after an out-of-order torn tail: %v", err)
		}
		defer j.Close()
		if j.LastSeq() != 14 {
			t.Fatalf("last seq %d, want 14 (the tail from the lost record on is dropped)", j.LastSeq())
		}
		if got := scanAll(t, j, 1); len(got) != 14 {
			t.Fatalf("scan found %d records, want 14", len(got))
		}
		appendN(t, j, 15, 16, sizeMix) // the journal continues after the truncation
	})
	t.Run("durable", func(t *testing.T) {
		dir := build(t, true)
		zeroRecord(t, dir, 15)
		_, err := journal.Open(o(dir))
		if !errors.Is(err, journal.ErrCorrupt) || !strings.Contains(err.Error(), "already durable") {
			t.Fatalf("damage to a durable record: %v, want ErrCorrupt", err)
		}
	})
}

// TestVersion1Segment: a segment written in format version 1 (no sync lag)
// is still read, keeps the version-1 rule (a damaged record followed by an
// intact one with the next seq is corruption), and records appended to it
// carry no sync lag, so it stays a valid version-1 file.
func TestVersion1Segment(t *testing.T) {
	dir := t.TempDir()
	b := journal.AppendSegmentHeader(nil, journal.SegmentHeader{Version: 1, Volume: testVolume, FirstSeq: 1})
	for s := uint64(1); s <= 5; s++ {
		var err error
		if b, err = journal.AppendRecord(b, rec(s, 100)); err != nil {
			t.Fatal(err)
		}
	}
	seg := filepath.Join(dir, "00000000000000000001.seg")
	if err := os.WriteFile(seg, b, 0o644); err != nil {
		t.Fatal(err)
	}
	j := mustOpen(t, opts(dir))
	if j.LastSeq() != 5 {
		t.Fatalf("last seq %d, want 5", j.LastSeq())
	}
	appendN(t, j, 6, 8, func(uint64) int { return 100 })
	j.Close()
	raw, _ := os.ReadFile(seg)
	if h, err := journal.DecodeSegmentHeader(raw); err != nil || h.Version != 1 {
		t.Fatalf("header after appending: %+v, %v", h, err)
	}
	for off := journal.SegmentHeaderSize; off < len(raw); {
		if lag := journal.SyncLag(raw[off:]); lag != 0 {
			t.Fatalf("record at %d of a version-1 segment has sync lag %d", off, lag)
		}
		_, n, err := journal.DecodeRecord(raw[off:])
		if err != nil {
			t.Fatal(err)
		}
		off += n
	}
	zeroRecord(t, dir, 3)
	if _, err := journal.Open(opts(dir)); !errors.Is(err, journal.ErrCorrupt) {
		t.Fatalf("version 1, damaged record followed by the next seq: %v, want ErrCorrupt", err)
	}
}

// TestEmptyWhileRetentionRuns: Empty removes every record even while a
// consumer's release lets retention remove segments at the same moment
// (reading FirstSeq and then calling TruncateAfter(first-1) can fail with
// ErrGone in between, which made a mirror's resync reset fail).
// Invariant: emptying the journal cannot race with retention.
func TestEmptyWhileRetentionRuns(t *testing.T) {
	ctx := context.Background()
	for i := range 50 {
		dir := t.TempDir()
		j := mustOpen(t, opts(dir))
		if err := j.AddConsumer("c", 1, false); err != nil {
			t.Fatal(err)
		}
		appendN(t, j, 1, 60, func(uint64) int { return 1000 }) // about 4 segments
		done := make(chan struct{})
		go func() {
			defer close(done)
			j.Release("c", uint64(20+i%40))
		}()
		if err := j.Empty(); err != nil {
			t.Fatalf("iteration %d: Empty: %v", i, err)
		}
		<-done
		if first, last := j.FirstSeq(), j.LastSeq(); first != last+1 {
			t.Fatalf("iteration %d: journal %d..%d after Empty", i, first, last)
		}
		if err := j.Submit(ctx, rec(j.LastSeq()+1, 100)); err != nil {
			t.Fatalf("iteration %d: the journal does not continue after Empty: %v", i, err)
		}
		j.Close()
	}
}
