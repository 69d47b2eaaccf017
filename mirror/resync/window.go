package resync

import "github.com/blockmirror/blockmirror/mirror/wire"

// The rules of the resync walk that involve no I/O: the window of chunk
// bytes in flight, what a chunk answer clears from the dirty bitmap, the
// tag the completion carries, and (on the mirror) the race rule. The
// drivers move the chunks and call these under their own locks; none of
// them is safe for concurrent use.

// Window accounts for the chunks a resync sent and the mirror has not
// answered: Inflight chunk bytes are sent and not yet written on the
// mirror, Unconfirmed are written there but not yet synced. A chunk
// leaves the dirty bitmap only once the mirror confirms it durable.
type Window struct {
	// Limit bounds Inflight (one chunk is always allowed).
	Limit       int64
	Inflight    int64
	Unconfirmed int64
	// MaxTag is the highest tag of a chunk sent: once every chunk is
	// confirmed, the mirror is consistent when it has applied every
	// record ≤ MaxTag (SyncComplete).
	MaxTag uint64
}

// Fits reports whether a chunk of n more bytes may be sent now.
func (w *Window) Fits(n int64) bool { return w.Inflight == 0 || w.Inflight+n <= w.Limit }

// Drained reports whether every chunk sent is answered and confirmed (the
// end of a pass: chunks answered not-OK are still marked, for the next).
func (w *Window) Drained() bool { return w.Inflight == 0 && w.Unconfirmed == 0 }

// Sent records a chunk of n bytes read at tag.
func (w *Window) Sent(n int64, tag uint64) {
	w.Inflight += n
	w.MaxTag = max(w.MaxTag, tag)
}

// Answered applies a SyncChunkAck. A written answer frees the window; an
// OK one then waits for its confirmation, a not-OK one (stale: a later
// record overlapping it was applied on the mirror first) stays marked to
// be sent again. A durable answer confirms OK chunks: each still marked
// in bm is cleared and reported to cleared (its offset and length).
func (w *Window) Answered(a *wire.SyncChunkAck, bm *Bitmap, cleared func(off uint64, n uint32)) {
	for _, x := range a.Results {
		if !a.Durable {
			w.Inflight -= int64(x.Len)
			if x.OK {
				w.Unconfirmed += int64(x.Len)
			}
			continue
		}
		w.Unconfirmed -= int64(x.Len)
		if c := int64(x.Off) / bm.ChunkSize(); x.OK && bm.Test(c) {
			bm.ClearChunk(c)
			if cleared != nil {
				cleared(x.Off, x.Len)
			}
		}
	}
}

// Stale is the race rule, on the mirror: a chunk tagged tag reflects every
// record ≤ tag that touches [off, end) and none after. It must not be
// written if a record after tag that overlaps it was applied already
// (applied is the mirror's applied seq; recent its applied extents): the
// mirror answers not-OK and the primary reads and sends the chunk again.
// The caller writes a chunk only once applied ≥ tag (see resync_primary.go
// in package mirror for why: the primary's image is not always what its
// records make).
func Stale(tag, applied uint64, recent *RecentExtents, off, end uint64) bool {
	return tag < applied && recent.Overlaps(tag, applied, off, end)
}
