package mirror

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/blockmirror/blockmirror/internal/atomicfile"
	"github.com/blockmirror/blockmirror/internal/vfs"
	"github.com/blockmirror/blockmirror/journal"
	"github.com/blockmirror/blockmirror/mirror/wire"
)

// Failover and failback.
//
// Promote makes a mirror the primary of epoch E+1, recording in the epoch
// history that E+1 starts at the seq after the last record the node holds
// (with a random epoch ID). Every handshake carries the history; a node
// never accepts records from a lower epoch, and a primary that meets a
// higher epoch is fenced (its writes fail). An old primary that rejoins as
// a mirror finds the fork point (ForkPoint) between its history and the new
// primary's; its records after the fork are copied to a quarantine file
// with a report, never discarded in silence, and the node is resynced
// (a hash compare: only differing chunks are copied). Two nodes promoted
// to the same epoch while partitioned have different epoch IDs: on contact
// both report a split brain and neither discards anything, until an
// operator demotes one with --split-brain-loser; that node then
// quarantines its writes after the fork and resyncs from the other.

// ErrInconsistent: the node's store is not a consistent image (a resync
// has not completed), so promoting it needs force.
var ErrInconsistent = errors.New("the store is inconsistent (a resync has not completed)")

// ErrDiverged: the node's journal holds records after a fork point from
// its primary's history (they are quarantined); it waits for a resync.
var ErrDiverged = errors.New("the node holds records after a fork from its primary's history (quarantined) and waits for a resync")

// ErrDemoted: the primary was demoted; it no longer accepts writes.
var ErrDemoted = errors.New("mirror: this node was demoted to mirror; it no longer accepts writes")

// ErrNotMirror / ErrNotPrimary: the node does not have the role the
// operation needs.
var (
	ErrNotMirror  = errors.New("not a mirror")
	ErrNotPrimary = errors.New("not a primary")
)

// Promote makes the mirror node the primary of the next epoch. The node's
// journal has been replayed into its store (OpenNode does that). It
// returns the new metadata; promoting a primary is a no-op that returns
// ErrNotMirror.
func Promote(n *Node, force bool) (*Meta, error) {
	m := n.Meta()
	if m.Role != RoleMirror {
		return m, fmt.Errorf("mirror: promote %s: already %s in epoch %d: %w", n.Dir, m.Role, m.Epoch, ErrNotMirror)
	}
	if m.Inconsistent && !force {
		return m, fmt.Errorf("mirror: promote %s: %w; promoting it would serve a disk that is not a consistent image — wait for the resync or use --force", n.Dir, ErrInconsistent)
	}
	if m.NeedsResync && !force {
		return m, fmt.Errorf("mirror: promote %s: %w; promoting it would serve writes its last primary does not have — let it resync from that primary, or use --force", n.Dir, ErrDiverged)
	}
	if err := n.Journal.Sync(context.Background()); err != nil {
		return m, fmt.Errorf("mirror: promote: sync journal: %w", err)
	}
	last := n.Journal.LastSeq()
	if err := n.Checkpoint(last); err != nil {
		return m, err
	}
	if err := n.ReleasePeerGuards(); err != nil {
		return m, err
	}
	err := n.UpdateMeta(func(m *Meta) error {
		m.Role = RolePrimary
		// Never an epoch some node is known to hold already.
		m.Epoch = max(m.Epoch, m.FencedBy) + 1
		m.FencedBy = 0
		m.History = append(m.History, EpochStart{Epoch: m.Epoch, FirstSeq: last + 1, ID: randomID()})
		m.Peers = nil
		m.Inconsistent = false
		m.NeedsResync = false
		m.AcceptDivergence = false
		m.WritesOpen = false
		return nil
	})
	if err != nil {
		return m, err
	}
	m = n.Meta()
	n.log.Info("promoted to primary", "epoch", m.Epoch, "first_seq", last+1, "forced", force)
	return m, nil
}

// Demote turns a primary into a mirror. With splitBrainLoser the node gives
// up its side of a split brain: on contact with the other primary it
// quarantines its records after the fork and resyncs.
func Demote(n *Node, splitBrainLoser bool) error {
	m := n.Meta()
	if m.Role != RolePrimary && !splitBrainLoser {
		return fmt.Errorf("mirror: demote %s: already a %s: %w", n.Dir, m.Role, ErrNotPrimary)
	}
	if err := n.Journal.Sync(context.Background()); err != nil {
		return fmt.Errorf("mirror: demote: sync journal: %w", err)
	}
	if err := n.Checkpoint(n.Journal.LastSeq()); err != nil {
		return err
	}
	// After an unclean stop the image may hold writes no journal has (see
	// activity.go): as a mirror the node is compared in full.
	n.mu.Lock()
	unclean := m.WritesOpen && !n.writing
	n.mu.Unlock()
	if unclean {
		n.log.Warn("demoting a primary that did not stop cleanly: its image may hold writes its journal lost; as a mirror it will be resynced")
	}
	// PeerMeta stays: its journal consumers keep the records no mirror
	// acknowledged until the node, as a mirror, has quarantined those after
	// the fork (ReleasePeerGuards).
	return n.UpdateMeta(func(m *Meta) error {
		m.Role = RoleMirror
		m.NeedsResync = m.NeedsResync || unclean
		m.AcceptDivergence = m.AcceptDivergence || splitBrainLoser
		m.WritesOpen = false // the journal is synced and checkpointed
		m.FencedBy = 0
		return nil
	})
}

// QuarantineReport describes records set aside because another history
// won: they are in File (journal record format) and listed here.
type QuarantineReport struct {
	File      string           `json:"file"`
	Time      time.Time        `json:"time"`
	Reason    string           `json:"reason"`
	ForkSeq   uint64           `json:"fork_seq"`
	FirstSeq  uint64           `json:"first_seq"`
	LastSeq   uint64           `json:"last_seq"`
	Records   int              `json:"records"`
	DataBytes int64            `json:"data_bytes"`
	Regions   []journal.Region `json:"regions"`
	// MissingBefore, when set, says records fork+1 .. MissingBefore-1 were
	// no longer in the journal (checkpointed and dropped): their data is in
	// the store only, and the resync overwrites it.
	MissingBefore uint64 `json:"missing_before,omitempty"`
}

// quarantineMagic opens a quarantine file (format): magic, format version
// u16, volume UUID, record count u64; then the records in the journal's
// record encoding (journal.AppendRecord: CRC32C per record).
const quarantineMagic = "BMQ1"

// Quarantine copies the node's journal records after fork into a file in
// DIR/quarantine and writes a JSON report beside it. It changes nothing
// else.
func (n *Node) Quarantine(fork uint64, reason string) (*QuarantineReport, error) {
	j := n.Journal
	last := j.LastSeq()
	if last <= fork {
		return nil, nil
	}
	from := fork + 1
	rep := &QuarantineReport{Time: time.Now().UTC(), Reason: reason, ForkSeq: fork, FirstSeq: from, LastSeq: last}
	if first := j.FirstSeq(); first > from {
		rep.MissingBefore = first
		from = first
	}
	dir := filepath.Join(n.Dir, "quarantine")
	if err := vfs.MkdirAllSynced(n.fs, dir, 0o700); err != nil {
		return nil, fmt.Errorf("mirror: quarantine: %w", err)
	}
	base := fmt.Sprintf("q-%s-seq%d-%d", rep.Time.Format("20060102T150405Z"), fork+1, last)
	rep.File = filepath.Join(dir, base+".rec")
	m := n.Meta()
	buf := append([]byte(quarantineMagic), 0, 1)
	buf = append(buf, m.Volume[:]...)
	countAt := len(buf)
	buf = binary.LittleEndian.AppendUint64(buf, 0)
	var regions []journal.Region
	err := j.Scan(from, func(r journal.Record) error {
		if r.Seq > last {
			return nil
		}
		var err error
		if buf, err = journal.AppendRecord(buf, r); err != nil {
			return err
		}
		rep.Records++
		rep.DataBytes += int64(len(r.Data))
		if r.Op != journal.OpEpoch {
			regions = append(regions, journal.Region{Offset: r.Offset, Length: uint64(r.Length)})
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("mirror: quarantine: read journal: %w", err)
	}
	binary.LittleEndian.PutUint64(buf[countAt:], uint64(rep.Records))
	rep.Regions = journal.CoalesceRegions(regions)
	if err := atomicfile.WriteFS(n.fs, rep.File, buf, 0o600); err != nil {
		return nil, fmt.Errorf("mirror: quarantine: %w", err)
	}
	js, _ := json.MarshalIndent(rep, "", "  ")
	if err := atomicfile.WriteFS(n.fs, filepath.Join(dir, base+".json"), append(js, '\n'), 0o600); err != nil {
		return nil, fmt.Errorf("mirror: quarantine report: %w", err)
	}
	return rep, nil
}

// primaryAnswer is how a primary answers another primary's Hello (on the
// listener a promoted node keeps at its mirror address): a lower epoch is
// fenced; the same epoch with another history is a split brain; a higher
// epoch means this node is stale.
func primaryAnswer(m *Meta, name string, last uint64, h wire.Hello) (reply wire.HelloReply, stale bool) {
	reply = wire.HelloReply{Version: wire.ProtoVersion, Role: wire.PeerRolePrimary, Volume: m.Volume, Size: uint64(m.Size),
		Epoch: m.Epoch, LastSeq: last, Node: name, History: m.History}
	switch {
	case h.Volume != m.Volume || h.Size != uint64(m.Size):
		reply.Code = wire.CodeRefused
		reply.Reason = fmt.Sprintf("this node serves volume %v of %d bytes, not %v of %d bytes", m.Volume, m.Size, h.Volume, h.Size)
	case h.Epoch < m.Epoch:
		reply.Code = wire.CodeFenced
		reply.Reason = fmt.Sprintf("node %s was promoted to primary in epoch %d; you are in epoch %d and fenced: stop writing, "+
			"then rejoin as its mirror (blockmirror demote --data DIR; blockmirror mirror ...) — writes you took after the fork are quarantined, not lost",
			name, m.Epoch, h.Epoch)
	case h.Epoch == m.Epoch:
		reply.Code = wire.CodeSplitBrain
		reply.Reason = splitBrainAdvice(name, h.Node, m.Epoch)
	default:
		reply.Code = wire.CodeNotMirror
		reply.Reason = fmt.Sprintf("node %s is a primary in epoch %d, older than yours (%d)", name, m.Epoch, h.Epoch)
		stale = true
	}
	return reply, stale
}

func splitBrainAdvice(a, b string, epoch uint64) string {
	return fmt.Sprintf("split brain: %s and %s are both primary in epoch %d with different histories; nothing was discarded. "+
		"Choose the node whose writes to keep; on the other run `blockmirror demote --data DIR --split-brain-loser` "+
		"and start it as a mirror of the first: its writes since the fork are kept in DIR/quarantine and it is resynced", a, b, epoch)
}
