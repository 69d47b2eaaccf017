package mirror

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/blockmirror/blockmirror/internal/atomicfile"
	"github.com/blockmirror/blockmirror/internal/vfs"
	"github.com/blockmirror/blockmirror/journal"
	"github.com/blockmirror/blockmirror/mirror/core"
	"github.com/blockmirror/blockmirror/mirror/resync"
	"github.com/blockmirror/blockmirror/store"
)

// DiskFile is the default name of the disk image inside the data directory.
const DiskFile = "disk.img"

// JournalDir is the journal's directory inside the data directory.
const JournalDir = "journal"

// storeConsumer is the journal consumer name of the store checkpoint.
const storeConsumer = "store"

// NodeOptions say where a node's state lives and how to create it.
type NodeOptions struct {
	// Dir is the data directory (metadata, journal, default disk image).
	Dir string
	// Disk is the disk image or block device; default Dir/disk.img.
	Disk string
	// Size creates a new volume of this many bytes when Dir holds none.
	// Zero means: the volume must exist already.
	Size int64
	// Volume, when not zero, is the identity a newly created volume takes
	// (a mirror adopts its primary's); otherwise a random one is made.
	Volume UUID
	// Role for a newly created volume.
	Role Role
	// JournalMax bounds the journal's size on disk (0: journal default).
	JournalMax int64
	// JournalSegment is the journal segment size (0: journal default).
	JournalSegment int64
	// OnSync is passed to the journal (fdatasync durations, for metrics).
	OnSync func(d time.Duration)
	// FS holds everything the node keeps on disk: meta.json, the journal,
	// the disk image (a block device only on vfs.OS), dirty bitmaps and
	// quarantine files. Nil means the operating system's (vfs.OS); tests
	// use a crashable in-memory one.
	FS vfs.FS
	// JournalTestWriteDelay: see journal.Options.TestWriteDelay.
	JournalTestWriteDelay time.Duration
	Logger                *slog.Logger

	// journalQueueBytes (tests): journal.Options.QueueBytes.
	journalQueueBytes int64
	// journalTailBytes (tests): journal.Options.TailBytes.
	journalTailBytes int64
	// activityExtent (tests): the activity log's extent size (0:
	// ActivityExtent); the simulation's small disks need small extents for
	// an unclean start to mark less than the whole disk.
	activityExtent uint64
	// history, when not empty, is the epoch history a newly created volume
	// starts with (a new mirror takes its first primary's, in the same
	// metadata write that creates the volume).
	history []EpochStart
}

// errNoVolume: the data directory holds no volume and none was asked for.
var errNoVolume = errors.New("holds no volume")

// Node is one volume's local state: metadata, store and journal, opened
// and recovered. Its methods are safe for concurrent use.
type Node struct {
	Dir     string
	Store   *store.File
	Journal *journal.Journal
	fs      vfs.FS
	log     *slog.Logger
	// activityExtent: the activity log's extent size for this run's log.
	activityExtent uint64

	mu      sync.Mutex
	meta    *Meta
	writing bool         // BeginWrites done, EndWrites not yet
	al      *activityLog // this run's write intent (BeginWrites)
	beginMu sync.Mutex   // serialises BeginWrites

	// bmMu guards the dirty bitmap files and marks (see peerstate.go).
	bmMu  sync.Mutex
	marks map[string]*resync.Bitmap

	// splitMu guards splitBrain: per peer, the split brain its last
	// contact showed (in memory; contact shows it again after a restart).
	splitMu    sync.Mutex
	splitBrain map[string]string

	cpKick atomic.Pointer[func(through uint64)] // see journalPressure
}

// NoteSplitBrain records that contact with peer showed a split brain;
// reason says how to resolve it.
func (n *Node) NoteSplitBrain(peer, reason string) {
	n.splitMu.Lock()
	defer n.splitMu.Unlock()
	if n.splitBrain == nil {
		n.splitBrain = make(map[string]string)
	}
	n.splitBrain[peer] = reason
}

// ClearSplitBrain records that peer and this node agree again (a session
// with it was accepted).
func (n *Node) ClearSplitBrain(peer string) {
	n.splitMu.Lock()
	defer n.splitMu.Unlock()
	delete(n.splitBrain, peer)
}

// SplitBrain describes an unresolved split brain with any peer ("" if
// none), naming the command that resolves it.
func (n *Node) SplitBrain() string {
	n.splitMu.Lock()
	defer n.splitMu.Unlock()
	peers := make([]string, 0, len(n.splitBrain))
	for p := range n.splitBrain {
		peers = append(peers, p)
	}
	slices.Sort(peers)
	if len(peers) == 0 {
		return ""
	}
	return n.splitBrain[peers[0]]
}

// OpenNode opens (or, with opts.Size, creates) the volume in opts.Dir and
// replays journal records after the last checkpoint into the store, so the
// store holds every record in the journal when it returns.
func OpenNode(ctx context.Context, opts NodeOptions) (*Node, error) {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if opts.Dir == "" {
		return nil, errors.New("mirror: no data directory given (--data)")
	}
	fsys := opts.FS
	if fsys == nil {
		fsys = vfs.OS
	}
	if err := vfs.MkdirAllSynced(fsys, opts.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("mirror: create data directory: %w", err)
	}
	disk := opts.Disk
	if disk == "" {
		disk = filepath.Join(opts.Dir, DiskFile)
	}
	meta, err := LoadMetaFS(fsys, opts.Dir)
	var st *store.File
	switch {
	case errors.Is(err, ErrNoMeta):
		if opts.Size == 0 {
			if _, serr := fsys.Stat(disk); serr == nil && opts.Disk != "" {
				// An existing image or device adopted as a new volume.
				st, err = store.OpenFS(fsys, disk)
				if err != nil {
					return nil, err
				}
				break
			}
			return nil, fmt.Errorf("mirror: %s: %w: give --size to create one", opts.Dir, errNoVolume)
		}
		if _, serr := fsys.Stat(disk); serr == nil {
			if opts.Disk != "" {
				return nil, fmt.Errorf("mirror: %s exists; not creating a volume over it (drop --size to adopt it)", disk)
			}
			// The data directory's own image without metadata is what a
			// crash in the middle of creating the volume leaves (the image
			// comes first, meta.json last): nothing uses it yet.
			log.Warn("replacing the disk image of a volume whose creation did not finish", "disk", disk)
			if err := fsys.Remove(disk); err != nil {
				return nil, fmt.Errorf("mirror: remove the unfinished %s: %w", disk, err)
			}
		}
		st, err = store.CreateFS(fsys, disk, opts.Size)
		if err != nil {
			return nil, err
		}
	case err != nil:
		return nil, err
	default:
		st, err = store.OpenFS(fsys, disk)
		if err != nil {
			return nil, err
		}
		if st.Size() != meta.Size {
			st.Close()
			return nil, fmt.Errorf("mirror: %s is %d bytes but the volume is %d bytes", disk, st.Size(), meta.Size)
		}
		if opts.Size != 0 && opts.Size != meta.Size {
			st.Close()
			return nil, fmt.Errorf("mirror: --size %d differs from the existing volume's %d bytes in %s", opts.Size, meta.Size, opts.Dir)
		}
	}
	if meta == nil {
		id := opts.Volume
		if id == (UUID{}) {
			if id, err = NewUUID(); err != nil {
				st.Close()
				return nil, err
			}
		}
		role := opts.Role
		if role == "" {
			role = RolePrimary
		}
		meta = &Meta{Volume: id, Size: st.Size(), Role: role, Epoch: 1,
			History: []EpochStart{{Epoch: 1, FirstSeq: 1, ID: randomID()}}}
		if n := len(opts.history); n > 0 {
			meta.History = append([]EpochStart(nil), opts.history...)
			meta.Epoch = opts.history[n-1].Epoch
		}
		if err := meta.Save(fsys, opts.Dir); err != nil {
			st.Close()
			return nil, err
		}
		log.Info("created volume", "volume", id, "size", st.Size(), "disk", disk)
	}
	n := &Node{Dir: opts.Dir, Store: st, fs: fsys, meta: meta, log: log, marks: make(map[string]*resync.Bitmap),
		activityExtent: cmp.Or(opts.activityExtent, ActivityExtent)}
	j, err := journal.Open(journal.Options{
		FS:           fsys,
		Dir:          filepath.Join(opts.Dir, JournalDir),
		Volume:       meta.Volume,
		MaxBytes:     opts.JournalMax,
		SegmentBytes: opts.JournalSegment,
		Logger:       log,
		OnDrop:       n.recordDrop,
		OnPressure:   n.journalPressure,
		OnSync:       opts.OnSync,
		// An indirect record may be durable only once its data is.
		BeforeSync: st.Sync,

		TestWriteDelay: opts.JournalTestWriteDelay,
		QueueBytes:     opts.journalQueueBytes,
		TailBytes:      opts.journalTailBytes,
	})
	if err != nil {
		st.Close()
		return nil, fmt.Errorf("mirror: open journal: %w", err)
	}
	n.Journal = j
	// Before the replay: its checkpoint releases records, and the mirrors
	// still need theirs.
	if err := n.registerPeerConsumers(); err != nil {
		n.Close()
		return nil, err
	}
	if err := n.recover(ctx); err != nil {
		n.Close()
		return nil, err
	}
	return n, nil
}

// recover replays records after the checkpoint into the store.
func (n *Node) recover(ctx context.Context) error {
	j := n.Journal
	cp := n.meta.CheckpointSeq
	last := j.LastSeq()
	if last == 0 || last <= cp {
		if last < cp {
			if err := n.continueAfterCheckpoint(cp); err != nil {
				return err
			}
		}
		return j.AddConsumer(storeConsumer, cp+1, false)
	}
	if first := j.FirstSeq(); first > cp+1 {
		return fmt.Errorf("mirror: journal starts at seq %d but the store is checkpointed only through %d: records are missing; resync this node", first, cp)
	}
	later, err := n.verifyIndirect(ctx, cp+1)
	if err != nil {
		return err
	}
	if last = j.LastSeq(); last <= cp {
		return j.AddConsumer(storeConsumer, cp+1, false)
	}
	var replayed int
	err = j.Scan(cp+1, func(r journal.Record) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		replayed++
		// What a later indirect record wrote is in the store already (and
		// only there): replaying an earlier record over it would undo it.
		return later.apply(n.Store, r)
	})
	if err != nil {
		return fmt.Errorf("mirror: replay journal from %d: %w", cp+1, err)
	}
	if err := j.AddConsumer(storeConsumer, cp+1, false); err != nil {
		return err
	}
	if err := n.Checkpoint(last); err != nil {
		return err
	}
	n.log.Info("replayed journal into store", "from", cp+1, "through", last, "records", replayed)
	return nil
}

// continueAfterCheckpoint handles a journal that ends before the
// checkpoint cp: it lost records the store already holds (deleted, or the
// unsynced tail dropped by a power loss after a checkpoint saved by a
// build that did not wait for the journal). Every record it still has is
// covered by the checkpoint, so it is emptied and numbering continues at
// cp+1; a seq the store holds is never handed out again.
func (n *Node) continueAfterCheckpoint(cp uint64) error {
	j := n.Journal
	first, last := j.FirstSeq(), j.LastSeq()
	n.log.Warn("journal ends before the store's checkpoint: every record it holds is already in the store; emptying it and continuing after the checkpoint (on a primary, a mirror that lacks seqs up to the checkpoint needs a resync)",
		"journal_first", first, "journal_last", last, "checkpoint", cp, "next_seq", cp+1)
	if err := j.Empty(); err != nil {
		return fmt.Errorf("mirror: empty journal %d..%d below checkpoint %d: %w", first, last, cp, err)
	}
	if err := j.SetStart(cp + 1); err != nil {
		return fmt.Errorf("mirror: journal start at %d: %w", cp+1, err)
	}
	return nil
}

// ApplyRecord applies one record to a store.
func ApplyRecord(st *store.File, r journal.Record) error {
	switch r.Op {
	case journal.OpWrite:
		_, err := st.WriteAt(r.Data, int64(r.Offset))
		return err
	case journal.OpTrim:
		return st.Trim(int64(r.Offset), int64(r.Length))
	case journal.OpZero:
		return st.Zero(int64(r.Offset), int64(r.Length), false)
	case journal.OpEpoch:
		return nil
	case journal.OpIndirect:
		// Its data was written to this store before the record (and
		// replay verified it, Node.recover).
		return nil
	}
	return fmt.Errorf("mirror: record %d has unknown op %v", r.Seq, r.Op)
}

// Meta returns a copy of the node's metadata.
func (n *Node) Meta() *Meta {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.meta.Clone()
}

// UpdateMeta applies fn to a copy of the metadata and saves it; the new
// metadata is in force only once it is durable.
func (n *Node) UpdateMeta(fn func(m *Meta) error) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	m := n.meta.Clone()
	if err := fn(m); err != nil {
		return err
	}
	if err := m.Save(n.fs, n.Dir); err != nil {
		return err
	}
	n.meta = m
	return nil
}

// BeginWrites prepares a primary node for its first write of this run; it
// is idempotent (StartReplication and NewVolume both call it). It marks
// the node as serving writes (Meta.WritesOpen) durably. A node that finds
// that mark already set did not stop cleanly — a crash, kill -9 or power
// loss — and cannot know what its mirrors received from it: the sender
// streams records from the journal's memory tail before they are written
// locally, and records nobody asked to be durable are not synced, so a
// mirror may hold seqs after the node's last. The node then starts a new
// branch of its epoch: a history entry with a fresh ID at last+1 (same
// epoch number, so fencing by a promoted node is unchanged). On contact
// the fork point is found below any such record, the mirror's records
// after it are quarantined and it is resynced. A mirror's durable ack
// point past last was for the old branch: it drops to last, and the
// mirror's journal consumer keeps the new branch's records from last+1.
//
// The image, too, may hold sectors of writes whose records the journal
// lost (see activity.go): every extent the activity log lists is marked in
// the dirty bitmap of every mirror the node knows, so their resync
// compares those extents.
func (n *Node) BeginWrites() error {
	n.beginMu.Lock()
	defer n.beginMu.Unlock()
	m := n.Meta()
	n.mu.Lock()
	writing := n.writing
	n.mu.Unlock()
	if writing {
		return nil
	}
	if m.Role != RolePrimary {
		return fmt.Errorf("mirror: %s is a %s, not a primary: it does not take writes", n.Dir, m.Role)
	}
	if m.WritesOpen {
		if err := n.markActivity(m); err != nil {
			return err
		}
	}
	last := n.Journal.LastSeq()
	var ahead []string // mirrors whose durable ack point is past last
	err := n.UpdateMeta(func(m *Meta) error {
		var branched bool
		if m.History, branched = core.RestartBranch(m.nodeState(), last, randomID()); branched {
			n.log.Warn("the last run did not stop cleanly; its mirrors may hold records this journal lost, so new writes start a new branch of the epoch (mirrors ahead of it are quarantined and resynced)",
				"epoch", m.Epoch, "first_seq", last+1)
			// What a mirror acknowledged past last belongs to the old
			// branch: the new branch's records at those seqs are not on
			// it, and its journal consumer must keep them (for it, and for
			// this node's quarantine should it be demoted before it meets
			// that mirror again).
			ahead = ahead[:0]
			for name, p := range m.Peers {
				if p.DurableSeq > last {
					p.DurableSeq = last
					m.Peers[name] = p
					ahead = append(ahead, name)
				}
			}
		}
		m.WritesOpen = true
		return nil
	})
	if err != nil {
		return fmt.Errorf("mirror: mark the volume as serving writes: %w", err)
	}
	for _, name := range ahead {
		if err := n.guardPeerFrom(name, last+1); err != nil {
			return err
		}
	}
	n.mu.Lock()
	n.writing = true
	n.al = newActivityLog(n.fs, n.Dir, n.Journal, n.activityExtent)
	n.mu.Unlock()
	return nil
}

// markActivity marks the extents the last (unclean) run's activity log
// lists as dirty for every mirror the node knows, and empties the log.
func (n *Node) markActivity(m *Meta) error {
	extent, ext, err := loadActivity(n.fs, n.Dir)
	if err != nil {
		// Nothing says where unsynced writes may have landed: every mirror
		// is compared over the whole disk.
		n.log.Error("the activity log is unreadable; every mirror will be compared over the whole disk", "err", err)
		return n.UpdateMeta(func(m *Meta) error {
			for name, p := range m.Peers {
				p.TrackedFrom, p.NeedsResync = ^uint64(0), true
				m.Peers[name] = p
			}
			return nil
		})
	}
	if len(ext) > 0 && len(m.Peers) > 0 {
		n.log.Warn("the image may hold writes whose journal records were lost; their extents will be compared with every mirror",
			"extents", len(ext), "extent_bytes", extent)
		for name := range m.Peers {
			err := n.MarkDirty(name, func(b *resync.Bitmap) {
				for _, e := range ext {
					b.SetRange(int64(e)*int64(extent), int64(extent))
				}
			})
			if err != nil {
				return fmt.Errorf("mirror: mark the last run's active extents for mirror %s: %w", name, err)
			}
		}
		err := n.UpdateMeta(func(m *Meta) error {
			for name, p := range m.Peers {
				p.NeedsResync = true
				m.Peers[name] = p
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	if err := atomicfile.WriteFS(n.fs, filepath.Join(n.Dir, activityFile), encodeActivity(n.activityExtent, nil), 0o600); err != nil {
		return fmt.Errorf("mirror: reset the activity log: %w", err)
	}
	return nil
}

// activity returns the activity log of this run's writes (nil before
// BeginWrites).
func (n *Node) activity() *activityLog {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.al
}

// Fence records durably that a node is primary in epoch, higher than
// ours: this node must never complete writes again (also after a restart)
// until it is demoted. Lower or known epochs are ignored.
func (n *Node) Fence(epoch uint64) error {
	m := n.Meta()
	if epoch <= m.Epoch || epoch <= m.FencedBy {
		return nil
	}
	n.log.Error("fenced: a node is primary in a higher epoch; this node no longer completes writes (demote it and run it as a mirror)",
		"our_epoch", m.Epoch, "their_epoch", epoch)
	return n.UpdateMeta(func(m *Meta) error {
		m.FencedBy = max(m.FencedBy, epoch)
		return nil
	})
}

// EndWrites records a clean stop of a primary node's writes: every record
// is in the journal, durable, and the store is checkpointed through it.
// The caller must have stopped every write and synced the journal.
func (n *Node) EndWrites() error {
	err := n.UpdateMeta(func(m *Meta) error {
		m.WritesOpen = false
		return nil
	})
	if err == nil {
		n.mu.Lock()
		n.writing = false
		n.mu.Unlock()
	}
	return err
}

// Checkpoint records that the store holds every record ≤ seq: it makes the
// journal durable through seq, syncs the store, saves the checkpoint, and
// lets the journal drop those records. The journal comes first: a
// checkpoint ahead of the durable journal would, after a power loss that
// drops the journal's unsynced tail, claim seqs the journal no longer has,
// and new writes would reuse them. Blocks for an fdatasync of each at most.
func (n *Node) Checkpoint(seq uint64) error {
	err := n.Journal.Wait(context.Background(), seq, journal.Durable)
	if errors.Is(err, journal.ErrTruncated) {
		err = n.Journal.Sync(context.Background()) // seq is past the journal's end
	}
	if err != nil {
		return fmt.Errorf("mirror: checkpoint %d: make the journal durable: %w", seq, err)
	}
	if err := n.Store.Sync(); err != nil {
		return fmt.Errorf("mirror: checkpoint: %w", err)
	}
	err = n.UpdateMeta(func(m *Meta) error {
		if seq > m.CheckpointSeq {
			m.CheckpointSeq = seq
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("mirror: checkpoint %d: %w", seq, err)
	}
	n.Journal.Release(storeConsumer, seq)
	return nil
}

// Close closes the journal and the store (without a checkpoint).
func (n *Node) Close() error {
	err := n.Journal.Close()
	if serr := n.Store.Close(); err == nil {
		err = serr
	}
	return err
}
