package mirror

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/blockmirror/blockmirror/journal"
	"github.com/blockmirror/blockmirror/mirror/resync"
	"github.com/blockmirror/blockmirror/mirror/wire"
	"github.com/blockmirror/blockmirror/transport"
)

// Resync, mirror side (see resync_primary.go for the protocol and the race
// rule).

// beginResync handles ResyncBegin from the log stream.
func (d *Replica) beginResync(ctx context.Context, m wire.ResyncBegin) error {
	n := d.node
	j := n.Journal
	if d.opts.onResyncBegin != nil {
		d.opts.onResyncBegin()
	}
	if err := n.UpdateMeta(func(meta *Meta) error { meta.Inconsistent = true; return nil }); err != nil {
		return err
	}
	d.mu.Lock()
	reset, err := d.core.BeginResync(m)
	d.mu.Unlock()
	if err != nil {
		return err
	}
	if !reset {
		d.log.Info("resync resumed", "from_seq", m.From)
		return nil
	}
	// Apply what the journal holds (harmless: resync rewrites whatever
	// differs), then empty it and continue at From.
	if err := j.Sync(ctx); err != nil {
		return err
	}
	d.mu.Lock()
	limit, capped := d.core.ApplyLimit()
	diverged := d.core.Flags()&wire.FlagNeedsResync != 0
	d.mu.Unlock()
	d.applyMu.Lock()
	last := j.LastSeq()
	if capped {
		last = min(last, limit) // never the records after a fork
	}
	if first := d.appliedSeq + 1; first <= last {
		err := j.Scan(first, func(r journal.Record) error {
			if r.Seq > last {
				return nil
			}
			if err := ApplyRecord(n.Store, r); err != nil {
				return err
			}
			if d.opts.onApply != nil {
				d.opts.onApply(r)
			}
			return nil
		})
		if err != nil {
			d.applyMu.Unlock()
			return fmt.Errorf("apply journal before reset: %w", err)
		}
	}
	if err := n.Store.Sync(); err != nil {
		d.applyMu.Unlock()
		return err
	}
	// The checkpoint moves before the journal changes: the store holds
	// everything through last, and the history continues at From. A power
	// loss at any later step then leaves a journal ending at or below the
	// checkpoint, which recovery continues after, on a node marked
	// inconsistent; SetStart first would leave a journal starting above
	// the checkpoint, a node that cannot open. It never moves down here:
	// last stops at a fork point, below records a demoted primary's store
	// holds and its checkpoint counts, and the emptied journal still
	// starts at its old first seq, which only the old checkpoint covers.
	if err := n.UpdateMeta(func(meta *Meta) error {
		meta.CheckpointSeq = max(meta.CheckpointSeq, last, m.From-1)
		return nil
	}); err != nil {
		d.applyMu.Unlock()
		return err
	}
	// The records from From on that the store holds already (the primary's
	// too: up to the fork point, or all of them when the journal agrees with
	// the primary's history) are not applied again: applied over chunks the
	// resync copies meanwhile, an older record would rewrite bytes that the
	// primary's image may hold differently (after its power loss, sectors of
	// a record its journal lost). A diverged journal whose fork point is not
	// known any more (a restart since) holds nothing sure.
	held := m.From - 1
	if capped || !diverged {
		held = max(held, last)
	}
	if d.opts.onEmpty != nil {
		d.opts.onEmpty()
	}
	if err := j.Empty(); err != nil { // (retention may release segments meanwhile)
		d.applyMu.Unlock()
		return fmt.Errorf("empty journal: %w", err)
	}
	if err := j.SetStart(m.From); err != nil {
		d.applyMu.Unlock()
		return fmt.Errorf("journal start at %d: %w", m.From, err)
	}
	// The store's release point belongs to the old journal: kept, it would
	// count the records from From on as released (when From is below where
	// the old journal had got to), and retention would delete them before
	// the applier has them.
	j.RemoveConsumer(storeConsumer)
	if err := j.AddConsumer(storeConsumer, m.From, false); err != nil {
		d.applyMu.Unlock()
		return fmt.Errorf("journal start at %d: %w", m.From, err)
	}
	d.appliedSeq = held
	d.recent.Reset()
	d.applyMu.Unlock()
	d.mu.Lock()
	hist := d.core.SessionHistory()
	d.mu.Unlock()
	// The journal is empty: the node now follows the session primary's
	// history, and its store (inconsistent until the resync completes)
	// will be made equal to the primary's.
	err = n.UpdateMeta(func(meta *Meta) error {
		meta.CheckpointSeq = held
		meta.NeedsResync = false
		if len(hist) > 0 {
			meta.History, meta.Epoch = hist, hist[len(hist)-1].Epoch
		}
		return nil
	})
	if err != nil {
		return err
	}
	d.mu.Lock()
	d.core.Restart(m.From)
	d.core.Applied(held)
	if d.opts.onReset != nil {
		d.opts.onReset(m.From, held)
	}
	d.applyTo = m.From - 1
	d.cpHint = 0
	d.processLocked()
	d.mu.Unlock()
	d.log.Info("resync started: journal reset, store inconsistent until the resync completes", "from_seq", m.From)
	return nil
}

// serveResync answers a primary's resync stream; begun is closed once
// the session's ResyncBegin is handled.
func (d *Replica) serveResync(ctx context.Context, st frameStream, begun <-chan struct{}) error {
	defer st.Cancel(0)
	h := resync.NewHasher(d.node.Store, resync.DefaultSyncChunk)
	var cacheOff, cacheLen uint64
	var leaves []resync.Hash
	var out []byte
	results := make(chan wire.SyncChunkResult, 4096)
	ackErr := make(chan error, 1)
	actx, cancel := context.WithCancel(ctx)
	defer cancel()
	sw := &streamWriter{st: st}
	go func() { ackErr <- d.ackChunks(actx, sw, results) }()
	// One frame buffer for the stream: every message is handled (a chunk
	// written) before the next frame is read, and nothing kept aliases it.
	var in []byte
	for {
		typ, p, err := st.ReadFrame(in)
		var se *transport.StreamError
		if errors.Is(err, io.EOF) || (errors.As(err, &se) && se.Remote) {
			return nil // the primary finished or abandoned this stream
		}
		if err != nil {
			return err
		}
		in = p[:0]
		switch wire.MsgType(typ) {
		case wire.MsgSyncHashReq:
			q, err := wire.DecodeSyncHashReq(p)
			if err != nil {
				return err
			}
			// A primary that finds a chunk equal clears it without a
			// durable ack: the hash must be of what a power loss keeps.
			if d.unsynced.overlaps(q.Off, q.Off+q.Len) {
				if err := d.checkpointChunks(); err != nil {
					return err
				}
			}
			if q.Off != cacheOff || q.Len != cacheLen || leaves == nil {
				leaves, err = h.HashRange(int64(q.Off), int64(q.Len), leaves[:0])
				if err != nil {
					return err
				}
				cacheOff, cacheLen = q.Off, q.Len
			}
			ans := wire.SyncHashes{Off: q.Off, Len: q.Len, Leaves: q.Leaves, Hashes: leaves}
			if !q.Leaves {
				ans.Hashes = []resync.Hash{resync.Summary(leaves)}
			} else {
				cacheOff, cacheLen = 0, 0 // answered in full; do not reuse
			}
			if out, err = wire.AppendSyncHashes(out[:0], &ans); err != nil {
				return err
			}
			if err := sw.send(wire.MsgSyncHashes, out); err != nil {
				return err
			}
		case wire.MsgSyncChunk:
			m, err := wire.DecodeSyncChunk(p)
			if err != nil {
				return err
			}
			// Written only once every record ≤ its tag is applied: an older
			// record applied after the chunk would rewrite bytes of it, and
			// the primary's image is not always what its records make (a
			// power loss can keep sectors of a record its journal lost).
			if err := d.waitApplied(ctx, m.Tag); err != nil {
				return err
			}
			ok, err := d.writeChunk(m)
			if err != nil {
				return err
			}
			if f := d.opts.OnResyncChunk; f != nil {
				applied := 0
				if ok {
					applied = int(m.Len)
				}
				f(len(m.Data), applied)
			}
			select {
			case results <- wire.SyncChunkResult{Off: m.Off, Len: m.Len, OK: ok}:
			case err := <-ackErr:
				return err
			}
		case wire.MsgSyncComplete:
			m, err := wire.DecodeSyncComplete(p)
			if err != nil {
				return err
			}
			select { // see mirrorSession.begun
			case <-begun:
			case <-ctx.Done():
				return ctx.Err()
			}
			if err := d.completeResync(ctx, m.Tag); err != nil {
				return err
			}
			if err := sw.send(wire.MsgSyncCompleteAck, wire.AppendSyncComplete(nil, wire.SyncComplete{Tag: m.Tag})); err != nil {
				return err
			}
		default:
			return fmt.Errorf("unexpected %v on the resync stream", wire.MsgType(typ))
		}
	}
}

// streamWriter serialises frames on a resync stream (hash answers from
// the reader, chunk acks from the acker).
type streamWriter struct {
	mu sync.Mutex
	st frameStream
}

func (w *streamWriter) send(typ wire.MsgType, p []byte) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.st.WriteFrame(uint8(typ), p); err != nil {
		return err
	}
	return w.st.Flush()
}

// writeChunk writes a resync chunk unless a later overlapping record was
// applied already (then it reports false).
func (d *Replica) writeChunk(m wire.SyncChunk) (bool, error) {
	d.applyMu.Lock()
	defer d.applyMu.Unlock()
	end := m.Off + uint64(m.Len)
	if resync.Stale(m.Tag, d.appliedSeq, &d.recent, m.Off, end) {
		return false, nil
	}
	d.unsynced.wrote(m.Off, end)
	var err error
	if m.Zero {
		err = d.node.Store.Zero(int64(m.Off), int64(m.Len), false)
	} else {
		_, err = d.node.Store.WriteAt(m.Data, int64(m.Off))
	}
	if err != nil {
		return false, fmt.Errorf("write resync chunk at %d: %w", m.Off, err)
	}
	d.resyncChunks.Add(1)
	return true, nil
}

// ackChunks answers chunk results in two steps: a non-durable ack per
// batch (frees the primary's window at once), and, after a sync of the
// store, a durable ack confirming the OK chunks written so far (at least
// every 250 ms, after 64 MiB, or when the stream goes quiet), which is
// what lets the primary clear them from its bitmap. Transfer and the
// store's write-back overlap instead of alternating.
func (d *Replica) ackChunks(ctx context.Context, w *streamWriter, results <-chan wire.SyncChunkResult) error {
	var batch, unconfirmed []wire.SyncChunkResult
	var unconfirmedBytes int64
	var out []byte
	send := func(durable bool, rs []wire.SyncChunkResult) error {
		var err error
		if out, err = wire.AppendSyncChunkAck(out[:0], &wire.SyncChunkAck{Durable: durable, Results: rs}); err != nil {
			return err
		}
		return w.send(wire.MsgSyncChunkAck, out)
	}
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		if err := send(false, batch); err != nil {
			return err
		}
		for _, r := range batch {
			if r.OK {
				unconfirmed = append(unconfirmed, r)
				unconfirmedBytes += int64(r.Len)
			}
		}
		batch = batch[:0]
		return nil
	}
	confirm := func() error {
		if err := flush(); err != nil || len(unconfirmed) == 0 {
			return err
		}
		if err := d.checkpointChunks(); err != nil {
			return err
		}
		for len(unconfirmed) > 0 {
			n := min(len(unconfirmed), wire.MaxSyncAcks)
			if err := send(true, unconfirmed[:n]); err != nil {
				return err
			}
			unconfirmed = unconfirmed[n:]
		}
		unconfirmed, unconfirmedBytes = nil, 0
		return nil
	}
	batchTimer := time.NewTimer(time.Hour)
	defer batchTimer.Stop()
	quiet := time.NewTimer(time.Hour)
	defer quiet.Stop()
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case r := <-results:
			if len(batch) == 0 {
				batchTimer.Reset(2 * time.Millisecond)
			}
			quiet.Reset(20 * time.Millisecond)
			batch = append(batch, r)
			if len(batch) >= 256 {
				if err := flush(); err != nil {
					return err
				}
			}
			if unconfirmedBytes >= 64<<20 {
				if err := confirm(); err != nil {
					return err
				}
			}
		case <-batchTimer.C:
			if err := flush(); err != nil {
				return err
			}
		case <-quiet.C:
			if err := confirm(); err != nil {
				return err
			}
		case <-tick.C:
			if err := confirm(); err != nil {
				return err
			}
		}
	}
}

// waitApplied waits until the store holds every record ≤ seq.
func (d *Replica) waitApplied(ctx context.Context, seq uint64) error {
	for d.applied() < seq {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
	return nil
}

// checkpointChunks makes the resync chunks written so far durable and
// checkpoints the store through every record applied, which covers every
// record those chunks reflect (a chunk is written only once each record ≤
// its tag is applied). A chunk may hold what no record explains (the
// primary's image after its power loss keeps sectors of a record its
// journal lost; the activity log has them compared and copied): the
// records of the journal below the checkpoint, replayed over the chunk at
// a restart after a power loss, would undo that while the primary counts
// the chunk as copied, and the node's image would differ from the
// primary's with both in sync.
//
// The chunks go into the node's adopted bitmap first (Node.AdoptChunks),
// durably before the primary hears they are.
func (d *Replica) checkpointChunks() error {
	mark := d.unsynced.syncing()
	if spans := d.unsynced.before(mark); len(spans) > 0 {
		err := d.node.AdoptChunks(func(b *resync.Bitmap) {
			for _, s := range spans {
				b.SetRange(int64(s.off), int64(s.end-s.off))
			}
		})
		if err != nil {
			return fmt.Errorf("make the resync chunks durable: %w", err)
		}
	}
	if err := d.node.Checkpoint(d.applied()); err != nil {
		return fmt.Errorf("make the resync chunks durable: %w", err)
	}
	d.unsynced.synced(mark)
	return nil
}

// unsyncedChunks tracks the resync chunks written to the store since the
// last checkpoint: in the page cache only, they are not what a power loss
// keeps. A chunk written in an interrupted session is still there when
// the primary reconnects and compares it; if it is answered from the page
// cache, the primary finds it equal and clears it from its bitmap, and a
// power loss then leaves the mirror in sync without it. Until the first
// checkpoint of this process anything may be in the page cache (a killed
// process's writes stay there), so every range counts as unsynced.
type unsyncedChunks struct {
	mu    sync.Mutex
	once  bool // a checkpoint completed in this process
	next  uint64
	spans []unsyncedSpan // written since the last checkpoint began, in order
}

type unsyncedSpan struct{ n, off, end uint64 }

// wrote records a chunk about to be written at [off, end).
func (u *unsyncedChunks) wrote(off, end uint64) {
	u.mu.Lock()
	u.spans = append(u.spans, unsyncedSpan{u.next, off, end})
	u.next++
	u.mu.Unlock()
}

// overlaps reports whether [off, end) may hold chunk bytes not yet durable.
func (u *unsyncedChunks) overlaps(off, end uint64) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	if !u.once {
		return true
	}
	for _, s := range u.spans {
		if s.off < end && off < s.end {
			return true
		}
	}
	return false
}

// syncing is called before a checkpoint begins; synced(mark) after it
// completed forgets the spans written before it began (checkpoints may
// overlap: each forgets only what it covers).
func (u *unsyncedChunks) syncing() (mark uint64) {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.next
}

// before returns the spans written before mark.
func (u *unsyncedChunks) before(mark uint64) []unsyncedSpan {
	u.mu.Lock()
	defer u.mu.Unlock()
	var out []unsyncedSpan
	for _, s := range u.spans {
		if s.n < mark {
			out = append(out, s)
		}
	}
	return out
}

func (u *unsyncedChunks) synced(mark uint64) {
	u.mu.Lock()
	defer u.mu.Unlock()
	i := 0
	for i < len(u.spans) && u.spans[i].n < mark {
		i++
	}
	u.spans = append(u.spans[:0], u.spans[i:]...)
	u.once = true
}

// completeResync waits until every record ≤ tag is applied, checkpoints
// the store, then marks it consistent.
func (d *Replica) completeResync(ctx context.Context, tag uint64) error {
	if err := d.waitApplied(ctx, tag); err != nil {
		return err
	}
	if err := d.checkpointChunks(); err != nil {
		return err
	}
	if err := d.node.UpdateMeta(func(m *Meta) error { m.Inconsistent = false; return nil }); err != nil {
		return err
	}
	d.mu.Lock()
	d.core.SetConsistent()
	d.mu.Unlock()
	d.log.Info("resync complete: store consistent", "through_seq", tag)
	return nil
}
