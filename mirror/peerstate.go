package mirror

import (
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"strings"

	"github.com/blockmirror/blockmirror/internal/vfs"
	"github.com/blockmirror/blockmirror/journal"
	"github.com/blockmirror/blockmirror/mirror/resync"
)

// What a node keeps per mirror, and who owns it.
//
// A primary keeps, per mirror, a journal consumer "peer:NAME" (the records
// the mirror has not acknowledged as durable), PeerMeta in meta.json (the
// durable ack point, whether a resync is needed, and TrackedFrom) and a
// dirty bitmap file peers/NAME.dirty (the regions of records the journal
// dropped before the mirror had them, or that verify found different).
// The invariant, for every mirror with PeerMeta: every record after
// TrackedFrom-1 that the mirror lacks is in the journal, or its region is
// in the bitmap. So a mirror whose last seq is ≥ TrackedFrom-1 and whose
// history agrees with ours is brought back by the journal plus the bitmap;
// anything else needs the whole disk compared.
//
// To keep it across restarts, OpenNode registers the consumers of every
// mirror in PeerMeta before it replays the journal (the replay checkpoints
// the store, which releases records), and a drop reported by the journal
// is recorded here, by the node, whoever runs it (marked in the bitmap file
// and PeerMeta.NeedsResync). While a resync of a mirror runs, its resyncer
// holds the bitmap in memory and clears chunks as they are copied; marks
// made meanwhile also go into an overlay that the resyncer's saves include
// and its chunk acks cannot clear.
//
// A demoted primary keeps its PeerMeta, and so its consumers: the records
// none of its mirrors acknowledged may be divergent, and must still be in
// the journal when, as a mirror, it meets the new primary and quarantines
// those after the fork (ReleasePeerGuards then drops them).

// peerConsumerPrefix prefixes the journal consumer names of mirrors.
const peerConsumerPrefix = "peer:"

func peerConsumer(name string) string { return peerConsumerPrefix + name }

func (n *Node) bitmapPath(peer string) string {
	return filepath.Join(n.Dir, "peers", peer+".dirty")
}

// LoadBitmap returns the peer's saved dirty bitmap, or nil if it has none.
func (n *Node) LoadBitmap(peer string) (*resync.Bitmap, error) {
	n.bmMu.Lock()
	defer n.bmMu.Unlock()
	return n.loadBitmapLocked(peer)
}

func (n *Node) loadBitmapLocked(peer string) (*resync.Bitmap, error) {
	return resync.LoadBitmapFS(n.fs, n.bitmapPath(peer), n.Store.Size(), resync.DefaultSyncChunk)
}

func (n *Node) saveBitmapLocked(peer string, b *resync.Bitmap) error {
	if err := vfs.MkdirAllSynced(n.fs, filepath.Dir(n.bitmapPath(peer)), 0o700); err != nil {
		return fmt.Errorf("mirror: save bitmap: %w", err)
	}
	return b.Save(n.fs, n.bitmapPath(peer))
}

// SaveBitmap replaces the peer's bitmap file with b, adding the marks made
// since a resync started tracking them (TrackMarks).
func (n *Node) SaveBitmap(peer string, b *resync.Bitmap) error {
	n.bmMu.Lock()
	defer n.bmMu.Unlock()
	if extra := n.marks[peer]; extra != nil {
		b.Or(extra)
	}
	return n.saveBitmapLocked(peer, b)
}

// adoptedPath is the bitmap of the chunks this node took as resync chunks
// while a mirror (AdoptChunks).
func (n *Node) adoptedPath() string { return filepath.Join(n.Dir, "adopted.dirty") }

// AdoptChunks adds the chunks mark sets to the node's adopted bitmap, the
// chunks it took as resync chunks while a mirror. Such a chunk is the
// primary's image, which may hold data no journal record explains (sectors
// of writes whose records a power loss took, found by the primary's
// activity log): another mirror at the same seq may lack it, so a node
// promoted later has every mirror compare these chunks (handOverAdopted).
// Durable before the primary is told the chunks are.
func (n *Node) AdoptChunks(mark func(b *resync.Bitmap)) error {
	n.bmMu.Lock()
	defer n.bmMu.Unlock()
	b, err := resync.LoadBitmapFS(n.fs, n.adoptedPath(), n.Store.Size(), resync.DefaultSyncChunk)
	if err != nil {
		return fmt.Errorf("mirror: load the adopted-chunks bitmap: %w", err)
	}
	if b == nil {
		b = resync.NewBitmap(n.Store.Size(), resync.DefaultSyncChunk)
	}
	before := b.Count()
	mark(b)
	if b.Count() == before {
		return nil
	}
	if err := b.Save(n.fs, n.adoptedPath()); err != nil {
		return fmt.Errorf("mirror: save the adopted-chunks bitmap: %w", err)
	}
	return nil
}

// handOverAdopted, on a primary, marks the chunks it adopted as a mirror
// in the bitmap of every mirror named (they are compared, and copied where
// they differ, at the mirror's next session), then drops the adopted
// bitmap. Run again after a crash midway, it marks them again.
func (n *Node) handOverAdopted(peers []string) error {
	n.bmMu.Lock()
	b, err := resync.LoadBitmapFS(n.fs, n.adoptedPath(), n.Store.Size(), resync.DefaultSyncChunk)
	n.bmMu.Unlock()
	if err != nil {
		return fmt.Errorf("mirror: load the adopted-chunks bitmap: %w", err)
	}
	if b == nil {
		return nil
	}
	if b.Count() > 0 && len(peers) > 0 {
		n.log.Warn("this node took resync chunks while it was a mirror: they may hold data no journal record explains, so every mirror compares them",
			"chunks", b.Count(), "bytes", b.Bytes(), "mirrors", len(peers))
		for _, name := range peers {
			if err := n.MarkDirty(name, func(d *resync.Bitmap) { d.Or(b) }); err != nil {
				return fmt.Errorf("mirror: mark the adopted chunks for mirror %s: %w", name, err)
			}
		}
		err := n.UpdateMeta(func(m *Meta) error {
			for _, name := range peers {
				p := m.Peers[name]
				p.NeedsResync = true
				m.Peers[name] = p
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	n.bmMu.Lock()
	defer n.bmMu.Unlock()
	if err := n.fs.Remove(n.adoptedPath()); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("mirror: remove the adopted-chunks bitmap: %w", err)
	}
	return nil
}

// MarkDirty adds regions to the peer's bitmap file (creating it), and to
// the overlay of a resync that tracks marks.
func (n *Node) MarkDirty(peer string, mark func(b *resync.Bitmap)) error {
	n.bmMu.Lock()
	defer n.bmMu.Unlock()
	if extra := n.marks[peer]; extra != nil {
		mark(extra)
	}
	b, err := n.loadBitmapLocked(peer)
	if err != nil {
		return err
	}
	if b == nil {
		b = resync.NewBitmap(n.Store.Size(), resync.DefaultSyncChunk)
	}
	mark(b)
	return n.saveBitmapLocked(peer, b)
}

// TrackMarks starts collecting the peer's marks (MarkDirty) in an overlay
// for a resync that holds the bitmap in memory; the returned finish stops
// it and reports the marks made meanwhile (nil if none). One resync per
// peer at a time.
func (n *Node) TrackMarks(peer string) (finish func() *resync.Bitmap) {
	n.bmMu.Lock()
	defer n.bmMu.Unlock()
	extra := resync.NewBitmap(n.Store.Size(), resync.DefaultSyncChunk)
	n.marks[peer] = extra
	return func() *resync.Bitmap {
		n.bmMu.Lock()
		defer n.bmMu.Unlock()
		if n.marks[peer] == extra {
			delete(n.marks, peer)
		}
		if extra.Count() == 0 {
			return nil
		}
		return extra
	}
}

// FinishBitmap ends a resync that copied every chunk of its bitmap: the
// file is removed, unless marks were made meanwhile (extra, from
// TrackMarks), which it then holds. It reports whether the peer is clean.
func (n *Node) FinishBitmap(peer string, extra *resync.Bitmap) (clean bool, err error) {
	n.bmMu.Lock()
	defer n.bmMu.Unlock()
	if extra != nil && extra.Count() > 0 {
		return false, n.saveBitmapLocked(peer, extra)
	}
	if err := n.fs.Remove(n.bitmapPath(peer)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return false, fmt.Errorf("mirror: remove bitmap: %w", err)
	}
	return true, nil
}

// registerPeerConsumers registers the journal consumer of every mirror the
// metadata knows, from the seq after its durable ack point (or the
// journal's first), before anything releases records (see the top of this
// file).
func (n *Node) registerPeerConsumers() error {
	m := n.Meta()
	if len(m.Peers) == 0 {
		return nil
	}
	for name, pm := range m.Peers {
		if err := n.addPeerConsumer(name, pm.DurableSeq+1); err != nil {
			return err
		}
	}
	return nil
}

// addPeerConsumer registers peer's consumer from seq from (at least the
// journal's first) unless it exists, and raises PeerMeta.TrackedFrom to
// where tracking now starts.
func (n *Node) addPeerConsumer(peer string, from uint64) error {
	j := n.Journal
	if _, ok := j.Consumer(peerConsumer(peer)); ok {
		return nil
	}
	from = max(from, j.FirstSeq())
	if err := j.AddConsumer(peerConsumer(peer), from, true); err != nil {
		return fmt.Errorf("mirror: register mirror %s with the journal: %w", peer, err)
	}
	return n.UpdateMeta(func(m *Meta) error {
		if m.Peers == nil {
			m.Peers = make(map[string]PeerMeta)
		}
		p := m.Peers[peer]
		p.TrackedFrom = max(p.TrackedFrom, from)
		m.Peers[peer] = p
		return nil
	})
}

// guardPeerFrom makes peer's journal consumer (registered at open from
// its durable ack point) keep every record from seq from on: a consumer
// that released more is registered again from there. Called before this
// run's first write, when no record from from on exists yet.
func (n *Node) guardPeerFrom(peer string, from uint64) error {
	j := n.Journal
	released, ok := j.Consumer(peerConsumer(peer))
	if !ok || released < from {
		return nil
	}
	j.RemoveConsumer(peerConsumer(peer))
	if err := j.AddConsumer(peerConsumer(peer), max(from, j.FirstSeq()), true); err != nil {
		return fmt.Errorf("mirror: register mirror %s with the journal from seq %d: %w", peer, from, err)
	}
	return nil
}

// forgetPeers removes the consumers, metadata and bitmaps of the mirrors
// the metadata knows but keep does not name: nothing tracks what they
// miss any more, so if they come back they are compared in full.
func (n *Node) forgetPeers(keep map[string]bool) error {
	m := n.Meta()
	var gone []string
	for name := range m.Peers {
		if !keep[name] {
			gone = append(gone, name)
		}
	}
	if len(gone) == 0 {
		return nil
	}
	for _, name := range gone {
		n.Journal.RemoveConsumer(peerConsumer(name))
		n.bmMu.Lock()
		n.fs.Remove(n.bitmapPath(name))
		n.bmMu.Unlock()
		n.log.Info("mirror no longer configured: its journal records and dirty bitmap are released; if it returns it is resynced in full", "peer", name)
	}
	return n.UpdateMeta(func(m *Meta) error {
		for _, name := range gone {
			delete(m.Peers, name)
		}
		return nil
	})
}

// ReleasePeerGuards drops the journal consumers a demoted primary kept
// for the mirrors it had (see the top of this file), once it has compared
// histories with its new primary.
func (n *Node) ReleasePeerGuards() error {
	if len(n.Meta().Peers) == 0 {
		return nil
	}
	return n.forgetPeers(nil)
}

// recordDrop handles the journal's report that the size bound dropped
// records a consumer had not released: for a mirror, their regions go into
// its bitmap and it is marked as needing a resync.
func (n *Node) recordDrop(consumer string, through uint64, regions []journal.Region) {
	name, ok := strings.CutPrefix(consumer, peerConsumerPrefix)
	if !ok || name == "" {
		return
	}
	n.log.Warn("journal size bound dropped records a mirror had not acknowledged; it will need a resync of the regions they touched",
		"peer", name, "through", through, "regions", len(regions))
	err := n.MarkDirty(name, func(b *resync.Bitmap) {
		for _, g := range regions {
			b.SetRange(int64(g.Offset), int64(g.Length))
		}
	})
	if err == nil {
		err = n.UpdateMeta(func(m *Meta) error {
			if m.Peers == nil {
				m.Peers = make(map[string]PeerMeta)
			}
			p := m.Peers[name]
			p.NeedsResync = true
			m.Peers[name] = p
			return nil
		})
	}
	if err != nil {
		// Without the marks the bitmap no longer covers what the mirror
		// misses: make sure it is compared in full.
		n.log.Error("recording dirty regions failed; the mirror will need a full resync", "peer", name, "err", err)
		n.UpdateMeta(func(m *Meta) error {
			if p, ok := m.Peers[name]; ok {
				p.TrackedFrom = ^uint64(0)
				p.NeedsResync = true
				m.Peers[name] = p
			}
			return nil
		})
	}
}
