package journal_test

import (
	"context"
	"sync"
	"testing"

	"github.com/blockmirror/blockmirror/journal"
)

// The size bound holds when a segment starts (issue 18, item 2): a
// non-droppable consumer (the store's checkpoint) that has not released
// the oldest records used to stop the bound altogether, so a lagging
// mirror (a droppable consumer) was never dropped and the journal grew to
// several times MaxBytes, until the next checkpoint — and the mirror was
// then caught up from all of it instead of resynced.

const (
	boundSeg = 8 << 10
	boundMax = 32 << 10
)

// boundRec is record s of these tests: 1000 bytes at one of ten blocks.
func boundRec(s uint64) journal.Record {
	return journal.Record{Seq: s, Op: journal.OpWrite, Offset: (s % 10) * 4096, Length: 1000, Data: payload(s, 1000)}
}

// TestBoundDropsBehindNonDroppable: with the store holding everything, a
// mirror that has not released the records the bound asks to go is
// dropped past them as soon as a segment starts over the bound (OnDrop,
// its position moved), although the segments stay until the store
// releases them; then they go at once.
func TestBoundDropsBehindNonDroppable(t *testing.T) {
	ctx := context.Background()
	o := opts(t.TempDir())
	o.SegmentBytes, o.MaxBytes = boundSeg, boundMax
	var mu sync.Mutex
	var through uint64
	o.OnDrop = func(c string, th uint64, regs []journal.Region) {
		mu.Lock()
		defer mu.Unlock()
		if c == "peer:a" {
			through = th
		}
	}
	j := mustOpen(t, o)
	defer j.Close()
	if err := j.AddConsumer("store", 1, false); err != nil {
		t.Fatal(err)
	}
	if err := j.AddConsumer("peer:a", 1, true); err != nil {
		t.Fatal(err)
	}
	for s := uint64(1); s <= 100; s++ { // ~12 segments, 3 times the bound
		if err := j.Append(ctx, boundRec(s), journal.Written); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, func() bool { mu.Lock(); defer mu.Unlock(); return through > 0 })
	st := j.Stats()
	if st.FirstSeq != 1 {
		t.Fatalf("first seq %d: the store's records went", st.FirstSeq)
	}
	// The mirror is now at most one bound behind: the journal after its
	// position fits in MaxBytes (plus the active segment).
	waitFor(t, func() bool {
		rel, _ := j.Consumer("peer:a")
		return bytesAfter(t, j, rel) <= boundMax+boundSeg
	})
	// The store's checkpoint releases: the journal shrinks to the bound.
	j.Release("store", j.LastSeq())
	waitFor(t, func() bool { return j.Stats().Bytes <= boundMax+boundSeg })
	if st := j.Stats(); st.SegmentsDropped == 0 {
		t.Fatalf("no segment counted as dropped by the bound: %+v", st)
	}
}

// TestBoundAsksNonDroppable: over the bound, the non-droppable consumer
// that holds the oldest records is asked to release them (OnPressure,
// once for each higher seq); a consumer that releases from the callback,
// as a checkpoint kicked by it eventually does, keeps the journal within
// MaxBytes plus the active segment at every step.
func TestBoundAsksNonDroppable(t *testing.T) {
	ctx := context.Background()
	o := opts(t.TempDir())
	o.SegmentBytes, o.MaxBytes = boundSeg, boundMax
	var j *journal.Journal
	var mu sync.Mutex
	var asked []uint64
	o.OnPressure = func(c string, through uint64) {
		mu.Lock()
		asked = append(asked, through)
		mu.Unlock()
		if c != "store" {
			t.Errorf("OnPressure for %q, want store", c)
		}
		j.Release(c, through) // an instant checkpoint
	}
	j = mustOpen(t, o)
	defer j.Close()
	if err := j.AddConsumer("store", 1, false); err != nil {
		t.Fatal(err)
	}
	worst := int64(0)
	for s := uint64(1); s <= 300; s++ {
		if err := j.Append(ctx, boundRec(s), journal.Written); err != nil {
			t.Fatal(err)
		}
		waitFor(t, func() bool { return j.Stats().Bytes <= boundMax+boundSeg })
		worst = max(worst, j.Stats().Bytes)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(asked) == 0 {
		t.Fatal("OnPressure never called")
	}
	for i := 1; i < len(asked); i++ {
		if asked[i] <= asked[i-1] {
			t.Fatalf("OnPressure asked for %d after %d", asked[i], asked[i-1])
		}
	}
	t.Logf("%d requests to release; largest journal %d bytes (bound %d, segment %d)", len(asked), worst, boundMax, boundSeg)
}

// bytesAfter is the size of the records after seq (headers included).
func bytesAfter(t *testing.T, j *journal.Journal, seq uint64) int64 {
	t.Helper()
	var n int64
	if err := j.Scan(seq+1, func(r journal.Record) error {
		n += int64(journal.RecordHeaderSize + len(r.Data))
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return n
}
