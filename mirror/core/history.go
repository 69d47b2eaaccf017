package core

import (
	"errors"
	"fmt"
	"slices"

	"github.com/blockmirror/blockmirror/mirror/wire"
)

// ---- handshake checks ----

// VolumeIdentity is what a node knows about its copy of the volume, as
// compared against a peer's Hello.
type VolumeIdentity struct {
	Volume  wire.UUID
	Size    uint64
	Epoch   uint64
	History []wire.EpochStart
}

// Handshake check errors; CheckHello wraps one of them with the details.
var (
	ErrVersion         = errors.New("protocol version differs")
	ErrVolumeMismatch  = errors.New("volume UUID differs")
	ErrSizeMismatch    = errors.New("size differs")
	ErrStaleEpoch      = errors.New("peer epoch is stale")
	ErrHistoryDiverged = errors.New("epoch history diverged")
	ErrBadHistory      = errors.New("malformed epoch history")
)

// CheckHello compares a peer's Hello against the local identity and returns
// nil if records from that peer may be accepted, or an error wrapping one
// of ErrVersion, ErrVolumeMismatch, ErrSizeMismatch, ErrStaleEpoch,
// ErrBadHistory or ErrHistoryDiverged that says exactly what differs. A
// remote epoch higher than ours is accepted (the caller adopts it).
//
// History rules: the remote history must have strictly increasing epochs
// and non-decreasing first seqs, ending at most at the remote epoch; every
// epoch of the local history must appear in the remote history with the
// same first seq (otherwise the two nodes wrote different records under
// the same seqs). An empty history on either side skips the comparison.
func CheckHello(local VolumeIdentity, remote wire.Hello) error {
	if remote.Version != wire.ProtoVersion {
		return fmt.Errorf("%w: local %d remote %d", ErrVersion, wire.ProtoVersion, remote.Version)
	}
	if remote.Volume != local.Volume {
		return fmt.Errorf("%w: local %v remote %v", ErrVolumeMismatch, local.Volume, remote.Volume)
	}
	if remote.Size != local.Size {
		return fmt.Errorf("%w: local %d remote %d", ErrSizeMismatch, local.Size, remote.Size)
	}
	if remote.Epoch < local.Epoch {
		return fmt.Errorf("%w: peer epoch %d is lower than ours %d: refusing records", ErrStaleEpoch, remote.Epoch, local.Epoch)
	}
	if err := ValidHistory(remote.History, remote.Epoch); err != nil {
		return fmt.Errorf("%w: peer's %v", ErrBadHistory, err)
	}
	if len(local.History) == 0 || len(remote.History) == 0 {
		return nil
	}
	// Our history must be a prefix of the peer's: the peer went on from
	// where we are (a later epoch, or a new branch of ours after an
	// unclean restart), never elsewhere.
	for i, l := range local.History {
		if i == len(remote.History) {
			return fmt.Errorf("%w: our history goes on after the peer's: epoch %d from seq %d (id %x) is not in the peer's history",
				ErrHistoryDiverged, l.Epoch, l.FirstSeq, l.ID)
		}
		r := remote.History[i]
		switch {
		case r.Epoch != l.Epoch:
			return fmt.Errorf("%w: our epoch %d (from seq %d) is not in the peer's history", ErrHistoryDiverged, l.Epoch, l.FirstSeq)
		case r.FirstSeq != l.FirstSeq:
			return fmt.Errorf("%w: epoch %d starts at seq %d here but at seq %d at the peer",
				ErrHistoryDiverged, l.Epoch, l.FirstSeq, r.FirstSeq)
		case r.ID != l.ID:
			return fmt.Errorf("%w: epoch %d from seq %d was started by another node or restart here (id %x) than at the peer (id %x): split brain",
				ErrHistoryDiverged, l.Epoch, l.FirstSeq, l.ID, r.ID)
		}
	}
	return nil
}

// ExtendsHistory reports whether b is a (not necessarily proper) extension
// of a: every entry of a is b's entry at the same place.
func ExtendsHistory(a, b []wire.EpochStart) bool {
	if len(b) < len(a) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// ValidHistory checks a history: epochs never decrease and each entry
// starts no earlier than the one before. An epoch may have several
// entries: every unclean restart of its primary starts a new branch of the
// epoch (a new ID at the seq after the last one it holds), so that records
// a mirror received from before the restart are told apart from the new
// ones with the same seqs.
func ValidHistory(h []wire.EpochStart, epoch uint64) error {
	for i := 1; i < len(h); i++ {
		if h[i].Epoch < h[i-1].Epoch {
			return fmt.Errorf("history entry %d: epoch %d does not follow epoch %d", i, h[i].Epoch, h[i-1].Epoch)
		}
		if h[i].Epoch == h[i-1].Epoch && h[i].ID == h[i-1].ID {
			return fmt.Errorf("history entry %d: epoch %d has two entries with id %x", i, h[i].Epoch, h[i].ID)
		}
		if h[i].FirstSeq < h[i-1].FirstSeq {
			return fmt.Errorf("history entry %d: epoch %d starts at seq %d, before epoch %d (seq %d)",
				i, h[i].Epoch, h[i].FirstSeq, h[i-1].Epoch, h[i-1].FirstSeq)
		}
	}
	if n := len(h); n > 0 && h[n-1].Epoch > epoch {
		return fmt.Errorf("history ends at epoch %d, after the current epoch %d", h[n-1].Epoch, epoch)
	}
	return nil
}

// EntryOfSeq returns the history entry (epoch branch) seq was written in,
// and false if the history is empty or seq precedes it.
func EntryOfSeq(h []wire.EpochStart, seq uint64) (wire.EpochStart, bool) {
	for i := len(h) - 1; i >= 0; i-- {
		if h[i].FirstSeq <= seq {
			return h[i], true
		}
	}
	return wire.EpochStart{}, false
}

// ForkPoint returns the highest seq through which two histories agree:
// every seq ≤ it was written in the same epoch (number and ID) by both,
// so two journals holding records ≤ it hold the same records. Seqs after
// min(lastA, lastB) are not compared.
func ForkPoint(a, b []wire.EpochStart, lastA, lastB uint64) uint64 {
	limit := min(lastA, lastB)
	var bounds []uint64
	for _, e := range a {
		bounds = append(bounds, e.FirstSeq)
	}
	for _, e := range b {
		bounds = append(bounds, e.FirstSeq)
	}
	slices.Sort(bounds)
	for _, s := range bounds {
		if s == 0 || s > limit {
			continue
		}
		ea, oka := EntryOfSeq(a, s)
		eb, okb := EntryOfSeq(b, s)
		if oka != okb || ea.Epoch != eb.Epoch || ea.ID != eb.ID {
			return s - 1
		}
	}
	return limit
}

// EpochOfSeq returns the epoch the history assigns to seq, and false if
// the history is empty or seq precedes it.
func EpochOfSeq(h []wire.EpochStart, seq uint64) (uint64, bool) {
	var e uint64
	ok := false
	for i := len(h) - 1; i >= 0; i-- {
		if h[i].FirstSeq <= seq {
			e, ok = h[i].Epoch, true
			break
		}
	}
	return e, ok
}

// HistoryPrefix returns the entries of h that start at or before fork.
func HistoryPrefix(h []wire.EpochStart, fork uint64) []wire.EpochStart {
	var out []wire.EpochStart
	for _, e := range h {
		if e.FirstSeq <= fork || len(out) == 0 && e.FirstSeq == 1 {
			out = append(out, e)
		}
	}
	return out
}
