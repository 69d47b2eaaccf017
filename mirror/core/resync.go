package core

import "github.com/blockmirror/blockmirror/mirror/wire"

// ResyncInput is what a primary knows when a mirror needs a resync.
type ResyncInput struct {
	// MirrorLast and MirrorFlags are from the mirror's HelloReply.
	MirrorLast  uint64
	MirrorFlags uint32
	// JournalFirst and LastSeq: the records the primary's journal holds.
	JournalFirst, LastSeq uint64
	// Bitmap: a dirty bitmap of the mirror is saved (and readable).
	Bitmap bool
	// Tracked: the primary keeps per-mirror state for it, in which every
	// record from TrackedFrom on that the mirror lacks is in the journal
	// or marked in its bitmap.
	Tracked     bool
	TrackedFrom uint64
	// Resyncing: the primary began a resync of this mirror that has not
	// completed; its bitmap marks what that resync has still to copy.
	Resyncing bool
}

// ResyncPlan is how a resync starts.
type ResyncPlan struct {
	// From is the seq live records restart at (ResyncBegin.From).
	From uint64
	// Reset: the mirror empties its journal and continues at From.
	Reset bool
	// WholeDisk: every chunk is compared; otherwise only the bitmap's.
	WholeDisk bool
	// BitmapIgnored: a bitmap was saved but does not cover what the
	// mirror may lack, so the whole disk is compared (worth a warning).
	BitmapIgnored bool
}

// PlanResync decides how a mirror's resync starts. A mirror whose
// history agrees with ours and whose next seq the journal still holds
// resumes there with its bitmap (an interrupted resync, or dirty regions
// of a mirror that is otherwise current). Otherwise it resets its journal
// to the journal's first seq, and the bitmap is enough only if tracking
// (journal or bitmap) reaches back to its last seq; else the whole disk is
// compared. A mirror whose store is inconsistent (its resync was
// interrupted) lacks whatever that resync had not copied yet, which only
// the bitmap of the primary that began it marks: with any other primary
// (a failover since, or a primary that forgot the resync) it is compared
// in full, as a diverged one.
func PlanResync(in ResyncInput) ResyncPlan {
	agrees := in.MirrorFlags&wire.FlagNeedsResync == 0 &&
		(in.MirrorFlags&wire.FlagInconsistent == 0 || in.Resyncing)
	resumable := agrees && in.MirrorLast+1 >= in.JournalFirst && in.MirrorLast <= in.LastSeq
	if resumable && in.Bitmap {
		return ResyncPlan{From: in.MirrorLast + 1}
	}
	p := ResyncPlan{From: in.JournalFirst, Reset: true}
	covered := agrees && in.Tracked && in.MirrorLast+1 >= in.TrackedFrom
	switch {
	case !in.Bitmap:
		p.WholeDisk = true
	case !covered:
		p.WholeDisk, p.BitmapIgnored = true, true
	}
	return p
}

// TailRecordOverhead is what PlanTail counts per replayed record besides
// its data (framing and record header, rounded up).
const TailRecordOverhead = 64

// PlanTail decides, for a resync that copies only its bitmap's chunks (not
// WholeDisk), between replaying the journal's records From..through to the
// mirror (tailBytes: their data plus TailRecordOverhead each) and marking
// the chunks they touch in the bitmap instead (newChunkBytes: the bytes of
// those chunks the bitmap does not mark yet), so that live records restart
// at through+1 and each chunk goes over the wire once however often the
// tail rewrote it. It marks them when that is fewer bytes and reports
// whether it did; the returned plan then starts at through+1 with the
// mirror's journal reset. Correctness does not depend on the choice: every
// chunk is read reflecting every record up to its tag, which is at least
// the last seq assigned when it is read, and through must not exceed the
// last seq assigned when the plan is made. Durability does not depend on
// it either (StartResync does not let the mirror's acks complete a
// waiting request whose seq it lacks); the driver caps through at
// PrimaryCore.ResyncSkipLimit so that no such request is left waiting.
func (p ResyncPlan) PlanTail(through, tailBytes, newChunkBytes uint64) (ResyncPlan, bool) {
	if p.WholeDisk || through < p.From || newChunkBytes >= tailBytes {
		return p, false
	}
	p.From, p.Reset = through+1, true
	return p, true
}
