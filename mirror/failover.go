package mirror

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"time"

	"github.com/blockmirror/blockmirror/internal/atomicfile"
	"github.com/blockmirror/blockmirror/internal/vfs"
	"github.com/blockmirror/blockmirror/journal"
	"github.com/blockmirror/blockmirror/mirror/core"
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

// Failover errors (see mirror/core).
var (
	ErrInconsistent = core.ErrInconsistent
	ErrDiverged     = core.ErrDiverged
	ErrNotMirror    = core.ErrNotMirror
	ErrNotPrimary   = core.ErrNotPrimary
)

// ErrDemoted: the primary was demoted; it no longer accepts writes.
var ErrDemoted = errors.New("mirror: this node was demoted to mirror; it no longer accepts writes")

// Promote makes the mirror node the primary of the next epoch. The node's
// journal has been replayed into its store (OpenNode does that). It
// returns the new metadata; promoting a primary is a no-op that returns
// ErrNotMirror.
func Promote(n *Node, force bool) (*Meta, error) { return promoteTo(n, 0, force) }

// promoteTo is Promote to exactly epoch (0: the next).
func promoteTo(n *Node, epoch uint64, force bool) (*Meta, error) {
	m := n.Meta()
	if _, _, err := core.PromotionTo(m.nodeState(), n.Journal.LastSeq(), 1, epoch, force); err != nil {
		switch {
		case errors.Is(err, ErrInconsistent):
			return m, fmt.Errorf("mirror: promote %s: %w; promoting it would serve a disk that is not a consistent image — wait for the resync or use --force", n.Dir, err)
		case errors.Is(err, ErrDiverged):
			return m, fmt.Errorf("mirror: promote %s: %w; promoting it would serve writes its last primary does not have — let it resync from that primary, or use --force", n.Dir, err)
		}
		return m, fmt.Errorf("mirror: promote %s: %w", n.Dir, err)
	}
	if err := n.Journal.Sync(context.Background()); err != nil {
		return m, fmt.Errorf("mirror: promote: sync journal: %w", err)
	}
	last := n.Journal.LastSeq()
	if err := n.Checkpoint(last); err != nil {
		return m, err
	}
	// A demoted primary that has not compared histories with a primary yet
	// still guards the records none of its mirrors acknowledged (see
	// peerstate.go): as primary again it keeps guarding them for its
	// mirrors (StartReplication keeps the consumers of the mirrors it is
	// configured with). Released now, they would be in the store only, and
	// lost if this node later gives up its side of a split brain.
	err := n.UpdateMeta(func(m *Meta) error {
		e, history, err := core.PromotionTo(m.nodeState(), last, randomID(), epoch, force)
		if err != nil {
			return err
		}
		m.Role = RolePrimary
		m.Epoch, m.History = e, history
		m.FencedBy = 0
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
	return demote(n, splitBrainLoser, false)
}

// demote is Demote; imageAhead says this run's image may hold a write no
// journal record has (an indirect write that reached the store and then
// failed): as a mirror the node must then be resynced, as after an
// unclean stop.
func demote(n *Node, splitBrainLoser, imageAhead bool) error {
	m := n.Meta()
	n.mu.Lock()
	writing := n.writing
	n.mu.Unlock()
	needsResync, accept, err := core.Demotion(m.nodeState(), writing && !imageAhead, splitBrainLoser)
	if err != nil {
		return fmt.Errorf("mirror: demote %s: already a %s: %w", n.Dir, m.Role, err)
	}
	if err := n.Journal.Sync(context.Background()); err != nil {
		return fmt.Errorf("mirror: demote: sync journal: %w", err)
	}
	if err := n.Checkpoint(n.Journal.LastSeq()); err != nil {
		return err
	}
	// After an unclean stop the image may hold writes no journal has (see
	// activity.go): as a mirror the node is compared in full.
	switch {
	case needsResync && !m.NeedsResync && imageAhead && writing:
		n.log.Warn("demoting a primary whose image holds an indirect write that never reached its journal (it failed after writing the image); as a mirror it will be resynced")
	case needsResync && !m.NeedsResync:
		n.log.Warn("demoting a primary that did not stop cleanly: its image may hold writes its journal lost; as a mirror it will be resynced")
	}
	// PeerMeta stays: its journal consumers keep the records no mirror
	// acknowledged until the node, as a mirror, has quarantined those after
	// the fork (ReleasePeerGuards).
	return n.UpdateMeta(func(m *Meta) error {
		m.Role = RoleMirror
		m.NeedsResync = needsResync
		m.AcceptDivergence = m.AcceptDivergence || accept
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
	// IndirectOverwritten lists the indirect records (large writes whose
	// data was written to the image only) that a later record of this node
	// overwrote in the image before the quarantine: the file holds them as
	// OpIndirect records (range and checksums, no data); what the range
	// ended as on this node is in the later records. Every other indirect
	// record is in the file as a write with its data, read back from the
	// image and checked against its checksums.
	IndirectOverwritten []uint64 `json:"indirect_overwritten,omitempty"`
}

// quarantineMagic opens a quarantine file (format): magic, format version
// u16, volume UUID, record count u64; then the records in the journal's
// record encoding (journal.AppendRecord: CRC32C per record; journal
// format 4, so an OpIndirect record may appear, see IndirectOverwritten).
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
	// A name no earlier quarantine has: two quarantines of the same range
	// within a second (a node meeting its primary again before its resync)
	// must not replace each other (the first may hold records the journal
	// has released since).
	base := fmt.Sprintf("q-%s-seq%d-%d", rep.Time.Format("20060102T150405Z"), fork+1, last)
	for i := 2; ; i++ {
		if _, err := n.fs.Stat(filepath.Join(dir, base+".rec")); errors.Is(err, fs.ErrNotExist) {
			break
		}
		base = fmt.Sprintf("q-%s-seq%d-%d-%d", rep.Time.Format("20060102T150405Z"), fork+1, last, i)
	}
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
		if r.Op == journal.OpIndirect {
			r = n.indirectWrite(r, rep)
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

// primaryAnswer is how this primary answers another primary's Hello (see
// core.PrimaryAnswer).
func primaryAnswer(m *Meta, name string, last uint64, h wire.Hello) (wire.HelloReply, bool) {
	return core.PrimaryAnswer(core.PrimaryIdentity{Name: name, Volume: m.Volume, Size: uint64(m.Size),
		Epoch: m.Epoch, History: m.History, LastSeq: last}, h)
}
