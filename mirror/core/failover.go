package core

import (
	"errors"
	"fmt"

	"github.com/blockmirror/blockmirror/mirror/wire"
)

// The failover rules: what a node's epoch and history become when it is
// promoted, demoted or restarted, and how a primary answers another
// primary. The drivers read the node's metadata into a NodeState, call
// these, and persist what they return.

// Errors of the failover rules.
var (
	// ErrInconsistent: the node's store is not a consistent image (a
	// resync has not completed), so promoting it needs force.
	ErrInconsistent = errors.New("the store is inconsistent (a resync has not completed)")
	// ErrDiverged: the node's journal holds records after a fork point
	// from its primary's history (they are quarantined); it waits for a
	// resync.
	ErrDiverged = errors.New("the node holds records after a fork from its primary's history (quarantined) and waits for a resync")
	// ErrNotMirror / ErrNotPrimary: the node does not have the role the
	// operation needs.
	ErrNotMirror  = errors.New("not a mirror")
	ErrNotPrimary = errors.New("not a primary")
)

// NodeState is what the failover rules read of a node's metadata.
type NodeState struct {
	Primary bool
	Epoch   uint64
	History []wire.EpochStart
	// FencedBy: a node is known to be primary in this higher epoch.
	FencedBy     uint64
	Inconsistent bool
	NeedsResync  bool
	// WritesOpen (a primary): the node served writes and has not stopped
	// cleanly since.
	WritesOpen bool
}

// Promotion returns the epoch and history of a mirror promoted to primary:
// the next epoch no node is known to hold, starting after its journal's
// last seq with the fresh epoch ID id. Without force it refuses a node
// whose store is inconsistent (ErrInconsistent) or that holds records
// after a fork (ErrDiverged); a primary is refused with ErrNotMirror.
func Promotion(s NodeState, last, id uint64, force bool) (epoch uint64, history []wire.EpochStart, err error) {
	return PromotionTo(s, last, id, 0, force)
}

// PromotionTo is Promotion to exactly epoch want (0: the next one), as a
// coordinator decided it by compare-and-swap: want must be above the
// node's epoch and above any epoch that fenced it, or the promotion fails
// (the node knows of a primary the coordinator did not count).
func PromotionTo(s NodeState, last, id, want uint64, force bool) (epoch uint64, history []wire.EpochStart, err error) {
	switch {
	case s.Primary:
		return 0, nil, fmt.Errorf("already primary in epoch %d: %w", s.Epoch, ErrNotMirror)
	case s.Inconsistent && !force:
		return 0, nil, ErrInconsistent
	case s.NeedsResync && !force:
		return 0, nil, ErrDiverged
	}
	epoch = max(s.Epoch, s.FencedBy) + 1
	if want != 0 {
		if want < epoch {
			return 0, nil, fmt.Errorf("promotion to epoch %d: this node knows of epoch %d already (its own: %d)", want, max(s.Epoch, s.FencedBy), s.Epoch)
		}
		epoch = want
	}
	history = append(append([]wire.EpochStart(nil), s.History...), wire.EpochStart{Epoch: epoch, FirstSeq: last + 1, ID: id})
	return epoch, history, nil
}

// Demotion returns the flags a primary takes when it becomes a mirror.
// writing says whether this process is serving its writes (BeginWrites
// done): a node marked as serving writes that this process does not serve
// stopped uncleanly, its image may hold writes its journal lost, and as a
// mirror it needs a resync. A split brain's loser accepts divergence: on
// contact with the winner it quarantines its records after the fork. A
// mirror can only be demoted as a split brain's loser (ErrNotPrimary).
func Demotion(s NodeState, writing, splitBrainLoser bool) (needsResync, acceptDivergence bool, err error) {
	if !s.Primary && !splitBrainLoser {
		return false, false, ErrNotPrimary
	}
	unclean := s.WritesOpen && !writing
	return s.NeedsResync || unclean, splitBrainLoser, nil
}

// RestartBranch returns the history a primary writes under when it opens
// for writes: after an unclean stop (s.WritesOpen found set) a new branch
// of its current epoch starts at last+1 with the fresh ID id, because its
// mirrors may hold records after last that its journal lost; the fork
// point then falls below them. Otherwise the history is unchanged.
func RestartBranch(s NodeState, last, id uint64) (history []wire.EpochStart, branched bool) {
	if !s.WritesOpen {
		return s.History, false
	}
	return append(append([]wire.EpochStart(nil), s.History...), wire.EpochStart{Epoch: s.Epoch, FirstSeq: last + 1, ID: id}), true
}

// PrimaryIdentity is a primary answering another primary's Hello.
type PrimaryIdentity struct {
	Name    string
	Volume  wire.UUID
	Size    uint64
	Epoch   uint64
	History []wire.EpochStart
	LastSeq uint64
}

// PrimaryAnswer is how a primary answers another primary's Hello (at the
// address it kept after a promotion): a lower epoch is fenced; the same
// epoch with another history is a split brain; a higher epoch means this
// node is stale (it must fence itself).
func PrimaryAnswer(p PrimaryIdentity, h wire.Hello) (reply wire.HelloReply, stale bool) {
	reply = wire.HelloReply{Version: wire.ProtoVersion, Role: wire.PeerRolePrimary, Volume: p.Volume, Size: p.Size,
		Epoch: p.Epoch, LastSeq: p.LastSeq, Node: p.Name, History: p.History}
	switch {
	case h.Volume != p.Volume || h.Size != p.Size:
		reply.Code = wire.CodeRefused
		reply.Reason = fmt.Sprintf("this node serves volume %v of %d bytes, not %v of %d bytes", p.Volume, p.Size, h.Volume, h.Size)
	case h.Epoch < p.Epoch:
		reply.Code = wire.CodeFenced
		reply.Reason = fmt.Sprintf("node %s was promoted to primary in epoch %d; you are in epoch %d and fenced: stop writing, "+
			"then rejoin as its mirror (blockmirror demote --data DIR; blockmirror mirror ...) — writes you took after the fork are quarantined, not lost",
			p.Name, p.Epoch, h.Epoch)
	case h.Epoch == p.Epoch:
		reply.Code = wire.CodeSplitBrain
		reply.Reason = SplitBrainAdvice(p.Name, h.Node, p.Epoch)
	default:
		reply.Code = wire.CodeNotMirror
		reply.Reason = fmt.Sprintf("node %s is a primary in epoch %d, older than yours (%d)", p.Name, p.Epoch, h.Epoch)
		stale = true
	}
	return reply, stale
}

// SplitBrainAdvice says that nodes a and b are both primary in epoch with
// different histories, and how an operator resolves it.
func SplitBrainAdvice(a, b string, epoch uint64) string {
	return fmt.Sprintf("split brain: %s and %s are both primary in epoch %d with different histories; nothing was discarded. "+
		"Choose the node whose writes to keep; on the other run `blockmirror demote --data DIR --split-brain-loser` "+
		"and start it as a mirror of the first: its writes since the fork are kept in DIR/quarantine and it is resynced", a, b, epoch)
}
