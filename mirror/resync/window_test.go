package resync

import (
	"testing"

	"github.com/blockmirror/blockmirror/mirror/wire"
)

// The window: chunks leave the bitmap only when confirmed durable and OK;
// a written answer frees the window; a stale (not-OK) chunk stays marked.
func TestWindow(t *testing.T) {
	const c = 64 << 10
	bm := NewBitmap(4*c, c)
	bm.SetAll()
	w := Window{Limit: 2 * c}
	steps := []struct {
		name             string
		sent             int64 // chunk index sent (-1: none)
		tag              uint64
		ack              *wire.SyncChunkAck
		fits             bool // Fits(c) afterwards
		drained          bool
		inflight, unconf int64
		marked           int64
		maxTag           uint64
		cleared          int
	}{
		{name: "empty", sent: -1, fits: true, drained: true, marked: 4},
		{name: "send 0", sent: 0, tag: 7, fits: true, inflight: c, marked: 4, maxTag: 7},
		{name: "send 1", sent: 1, tag: 5, fits: false, inflight: 2 * c, marked: 4, maxTag: 7},
		{name: "0 written, 1 stale", sent: -1, ack: &wire.SyncChunkAck{Results: []wire.SyncChunkResult{{Off: 0, Len: c, OK: true}, {Off: c, Len: c}}},
			fits: true, unconf: c, marked: 4, maxTag: 7},
		{name: "0 durable", sent: -1, ack: &wire.SyncChunkAck{Durable: true, Results: []wire.SyncChunkResult{{Off: 0, Len: c, OK: true}}},
			fits: true, drained: true, marked: 3, maxTag: 7, cleared: 1},
		{name: "0 durable again: already clear", sent: -1, ack: &wire.SyncChunkAck{Durable: true, Results: []wire.SyncChunkResult{{Off: 0, Len: 0, OK: true}}},
			fits: true, drained: true, marked: 3, maxTag: 7},
	}
	for _, s := range steps {
		cleared := 0
		if s.sent >= 0 {
			if !w.Fits(c) {
				t.Fatalf("%s: a chunk does not fit", s.name)
			}
			w.Sent(c, s.tag)
		}
		if s.ack != nil {
			w.Answered(s.ack, bm, func(uint64, uint32) { cleared++ })
		}
		if w.Fits(c) != s.fits || w.Drained() != s.drained || w.Inflight != s.inflight || w.Unconfirmed != s.unconf ||
			bm.Count() != s.marked || w.MaxTag != s.maxTag || cleared != s.cleared {
			t.Fatalf("%s: fits %v drained %v inflight %d unconfirmed %d marked %d maxtag %d cleared %d, want %+v",
				s.name, w.Fits(c), w.Drained(), w.Inflight, w.Unconfirmed, bm.Count(), w.MaxTag, cleared, s)
		}
	}
	if !bm.Test(1) {
		t.Fatal("the stale chunk was cleared")
	}
}

// The race rule: a chunk read at tag T is stale on the mirror iff a record
// after T overlapping it was applied already.
func TestStale(t *testing.T) {
	var r RecentExtents
	for s := uint64(11); s <= 20; s++ {
		r.Add(s, s*100, 10) // record s touches [100s, 100s+10)
	}
	for _, c := range []struct {
		tag, applied, off, end uint64
		stale                  bool
	}{
		{20, 20, 0, 1 << 20, false}, // nothing applied after the tag
		{25, 20, 0, 1 << 20, false}, // tag ahead of the applier
		{14, 20, 1500, 1510, true},  // record 15 overlaps, applied after 14
		{15, 20, 1500, 1510, false}, // record 15 is in the chunk already
		{14, 20, 1510, 1600, false}, // no overlap
		{14, 16, 1700, 1710, false}, // record 17 not applied yet
		{5, 20, 0, 10, true},        // the ring does not reach back to 6: maybe
	} {
		if got := Stale(c.tag, c.applied, &r, c.off, c.end); got != c.stale {
			t.Errorf("Stale(tag %d, applied %d, [%d,%d)) = %v, want %v", c.tag, c.applied, c.off, c.end, got, c.stale)
		}
	}
}
