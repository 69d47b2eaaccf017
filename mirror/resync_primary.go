package mirror

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/blockmirror/blockmirror/journal"
	"github.com/blockmirror/blockmirror/mirror/core"
	"github.com/blockmirror/blockmirror/mirror/resync"
	"github.com/blockmirror/blockmirror/mirror/wire"
)

// Resync, primary side.
//
// A mirror that cannot be caught up from the journal (new, too far behind,
// diverged, or interrupted in an earlier resync) is resynced while live
// writes go on:
//
//  1. The chunks to compare are the peer's dirty bitmap (DIR/peers/NAME.dirty:
//     regions whose records were dropped before the peer had them, or the
//     rest of an interrupted resync), or the whole disk when there is none.
//     The bitmap is made durable first.
//  2. ResyncBegin on the log stream tells the mirror where live records
//     restart (its own next seq when the journal still has it, else the
//     journal's first seq, and then the mirror resets its journal) and
//     that its store is inconsistent until the resync completes.
//  3. On a separate stream, the primary compares chunk hashes (a two-level
//     tree: a summary per 1024-chunk segment, then per-chunk hashes) and
//     sends each differing chunk, read with Volume.ReadStable and tagged
//     with the seq it reflects.
//
// The race rule, on the mirror: a chunk tagged T reflects every record ≤ T
// that touches it and none after. The mirror writes it once it applied
// every record ≤ T, unless a record > T that overlaps it was already
// applied there (then it answers not-OK and the primary sends the chunk
// again, read anew). It waits because the primary's image is not always
// what its records make: after a power loss of the primary it may hold
// sectors of records its journal lost, which a record ≤ T applied after
// the chunk would overwrite on the mirror only. For the same reason a
// reset does not apply again the records before From that the mirror's
// store holds already. Hence no write that races with the copy of its
// chunk leaves the mirror stale.
//
// The mirror acks chunks twice: once written (freeing the window) and once
// its store is synced (at least every 250 ms); only the second clears
// them in the primary's bitmap, which it saves at least every second,
// so a restart of either side resumes where the resync stopped and never
// re-sends a confirmed chunk (at most the last second's confirmations).
// Once the bitmap is empty the primary sends SyncComplete{max tag}; the
// mirror marks itself consistent once it applied every record ≤ that tag.

// ResyncOptions tune resync.
type ResyncOptions struct {
	// Rate caps the chunk data sent per second (0: as fast as the link
	// allows; the window below keeps live records flowing).
	Rate int64
	// Window bounds the chunk bytes sent and not yet confirmed (default
	// 16 MiB).
	Window int64
}

func (o ResyncOptions) withDefaults() ResyncOptions {
	if o.Window <= 0 {
		o.Window = 16 << 20
	}
	return o
}

// ResyncProgress is a peer's resync state for status.
type ResyncProgress struct {
	Active     bool    `json:"active"`
	TotalBytes int64   `json:"total_bytes"`
	DoneBytes  int64   `json:"done_bytes"`
	SentBytes  int64   `json:"sent_bytes"`
	Rate       float64 `json:"rate_bytes_per_second"`
	ETASeconds float64 `json:"eta_seconds"`
	Pass       int     `json:"pass"`
}

// resyncer runs one resync session with a peer.
type resyncer struct {
	l    *peerLink
	st   frameStream
	vol  stableReader
	opts ResyncOptions

	mu    sync.Mutex
	cond  *sync.Cond
	bm    *resync.Bitmap
	win   resync.Window // chunks in flight and unconfirmed
	err   error
	dirty bool // bitmap changed since the last save
	prog  ResyncProgress
	start time.Time

	hashes   chan wire.SyncHashes
	complete chan struct{}
}

type stableReader interface {
	ReadStable(ctx context.Context, p []byte, off int64) (uint64, error)
	Size() int64
}

// prepareResync decides where live records restart for a peer that needs
// a resync and makes its bitmap durable. It returns the ResyncBegin to send.
func (l *peerLink) prepareResync(reply wire.HelloReply) (wire.ResyncBegin, *resync.Bitmap, error) {
	r := l.r
	b, err := r.node.LoadBitmap(l.addr.Name)
	if err != nil {
		l.log.Warn("dirty bitmap unreadable; resyncing the whole disk", "err", err)
		b = nil
	}
	first := r.j.FirstSeq()
	r.mu.Lock()
	first = r.journalFirstLocked(first) // records a mirror can be streamed
	last := r.core.LastSeq()
	r.mu.Unlock()
	pm, known := r.node.Meta().Peers[l.addr.Name]
	plan := core.PlanResync(core.ResyncInput{
		MirrorLast: reply.LastSeq, MirrorFlags: reply.Flags, JournalFirst: first, LastSeq: last,
		Bitmap: b != nil, Tracked: known, TrackedFrom: pm.TrackedFrom, Resyncing: pm.Resyncing,
	})
	begin := wire.ResyncBegin{Chunk: resync.DefaultSyncChunk, From: plan.From, Reset: plan.Reset}
	if plan.BitmapIgnored {
		l.log.Warn("the dirty bitmap does not cover what the mirror may lack (its journal diverged, it is behind what the bitmap tracks, or it is inconsistent from a resync this node did not begin); comparing the whole disk",
			"mirror_last_seq", reply.LastSeq, "tracked_from", pm.TrackedFrom, "diverged", reply.Flags&wire.FlagNeedsResync != 0,
			"inconsistent", reply.Flags&wire.FlagInconsistent != 0)
	}
	if plan.WholeDisk {
		b = resync.NewBitmap(r.node.Store.Size(), resync.DefaultSyncChunk)
		b.SetAll()
	} else {
		plan = l.planTail(plan, b)
		begin.From, begin.Reset = plan.From, plan.Reset
	}
	if err := r.node.SaveBitmap(l.addr.Name, b); err != nil {
		return begin, nil, err
	}
	err = r.node.UpdateMeta(func(m *Meta) error {
		if m.Peers == nil {
			m.Peers = make(map[string]PeerMeta)
		}
		p := m.Peers[l.addr.Name]
		p.NeedsResync, p.Resyncing = true, true
		m.Peers[l.addr.Name] = p
		return nil
	})
	return begin, b, err
}

// planTail weighs replaying the journal tail from plan.From against
// copying the chunks it touches (core.PlanTail) and, if copying is
// cheaper, marks them in b and returns the plan that skips the tail.
func (l *peerLink) planTail(plan core.ResyncPlan, b *resync.Bitmap) core.ResyncPlan {
	j := l.r.j
	// through ≤ the volume's last seq: every chunk read later reflects it.
	// It is capped below the first write still waiting for mirror acks
	// (core.PrimaryCore.ResyncSkipLimit): the mirror lacks the skipped
	// records until its resync completes, so the core would not count its
	// acks for such a write (StartResync), which would wait for the other
	// mirrors or the whole resync. Records above the cap are streamed.
	l.r.mu.Lock()
	limit := l.r.core.ResyncSkipLimit(l.addr.Name)
	l.r.mu.Unlock()
	through := min(j.LastSeq(), limit)
	if through < plan.From {
		return plan
	}
	tail := resync.NewBitmap(b.Size(), b.ChunkSize())
	var tailBytes uint64
	errEnd := errors.New("end of the tail")
	err := j.Scan(plan.From, func(rec journal.Record) error {
		if rec.Seq > through {
			return errEnd
		}
		tailBytes += uint64(len(rec.Data)) + core.TailRecordOverhead
		tail.SetRange(int64(rec.Offset), int64(rec.Length))
		return nil
	})
	if err != nil && !errors.Is(err, errEnd) {
		l.log.Warn("reading the journal tail to plan the resync failed; replaying it", "from_seq", plan.From, "err", err)
		return plan
	}
	var fresh int64
	for i := tail.Next(0); i >= 0; i = tail.Next(i + 1) {
		if !b.Test(i) {
			fresh++
		}
	}
	chunkBytes := uint64(fresh * b.ChunkSize())
	next, mark := plan.PlanTail(through, tailBytes, chunkBytes)
	if !mark {
		return plan
	}
	b.Or(tail)
	l.log.Info("resync copies the chunks the journal tail touches instead of replaying it",
		"tail_from_seq", plan.From, "tail_through_seq", through, "journal_last_seq", j.LastSeq(), "tail_bytes", tailBytes, "added_chunk_bytes", chunkBytes)
	return next
}

// runResync opens the resync stream and copies until the bitmap is empty.
func (l *peerLink) runResync(ctx context.Context, conn streamConn, bm *resync.Bitmap, from uint64) error {
	r := l.r
	if r.source() == nil {
		return errors.New("resync: no volume to read from")
	}
	st, done, err := l.openSideStream(ctx, conn)
	if err != nil {
		return fmt.Errorf("resync: %w", err)
	}
	defer done()
	rs := &resyncer{
		l: l, st: st, vol: r.source(), opts: r.resyncOpts, bm: bm, win: resync.Window{Limit: r.resyncOpts.Window},
		hashes: make(chan wire.SyncHashes, 4), complete: make(chan struct{}), start: time.Now(),
	}
	rs.cond = sync.NewCond(&rs.mu)
	rs.prog = ResyncProgress{Active: true, TotalBytes: bm.Bytes()}
	// Marks made while this resync runs (records dropped for the mirror,
	// verify) are kept apart: clearing a copied chunk must not clear them.
	finishMarks := r.node.TrackMarks(l.addr.Name)
	defer func() {
		if finishMarks != nil {
			finishMarks()
		}
	}()
	r.mu.Lock()
	l.resync = rs
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		l.lastResync = rs.progress()
		l.lastResync.Active = false
		l.resync = nil
		r.mu.Unlock()
	}()
	l.log.Info("resync started", "bytes_to_compare", bm.Bytes(), "chunks", bm.Count())

	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	readErr := make(chan error, 1)
	go func() { readErr <- rs.readLoop(rctx); cancel() }()
	saveDone := make(chan struct{})
	go func() { defer close(saveDone); rs.saveLoop(rctx) }()
	err = rs.copy(rctx)
	if err == nil {
		err = rs.finish(rctx)
	}
	if err == nil {
		st.CloseWrite() // a clean end: the mirror reads EOF
	}
	cancel()
	st.Cancel(0)
	<-readErr
	<-saveDone
	rs.save()
	if err != nil {
		return err
	}
	l.log.Info("resync complete", "compared_bytes", rs.prog.TotalBytes, "sent_bytes", rs.prog.SentBytes,
		"seconds", time.Since(rs.start).Seconds())
	// Every chunk of the bitmap is copied: drop it and the needs-resync
	// mark, unless marks were made meanwhile.
	extra := finishMarks()
	finishMarks = nil
	clean, err := r.node.FinishBitmap(l.addr.Name, extra)
	if err != nil {
		return err
	}
	if !clean {
		return fmt.Errorf("resync: %d chunks were marked dirty while it ran (records dropped for the mirror); resyncing them", extra.Count())
	}
	err = r.node.UpdateMeta(func(m *Meta) error {
		if m.Peers == nil {
			m.Peers = make(map[string]PeerMeta)
		}
		p := m.Peers[l.addr.Name]
		p.NeedsResync, p.Resyncing = false, false
		p.Dirty = nil
		// The mirror now holds everything before the resync's start; from
		// there on the journal (or the bitmap) tracks what it lacks.
		p.TrackedFrom = from
		m.Peers[l.addr.Name] = p
		return nil
	})
	if err != nil {
		return err
	}
	r.mu.Lock()
	l.needsResync = false
	err = r.core.ResyncDone(l.addr.Name)
	r.processLocked()
	r.mu.Unlock()
	return err
}

func (rs *resyncer) fail(err error) {
	rs.mu.Lock()
	if rs.err == nil {
		rs.err = err
	}
	rs.cond.Broadcast()
	rs.mu.Unlock()
}

func (rs *resyncer) progress() ResyncProgress {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	p := rs.prog
	if el := time.Since(rs.start).Seconds(); el > 0 {
		p.Rate = float64(p.DoneBytes) / el
		if p.Rate > 0 {
			p.ETASeconds = float64(p.TotalBytes-p.DoneBytes) / p.Rate
		}
	}
	return p
}

// readLoop handles the mirror's answers.
func (rs *resyncer) readLoop(ctx context.Context) error {
	buf := make([]byte, 64<<10)
	for {
		typ, p, err := rs.st.ReadFrame(buf)
		if err != nil {
			if ctx.Err() == nil {
				rs.fail(fmt.Errorf("resync: read: %w", err))
			}
			return err
		}
		switch wire.MsgType(typ) {
		case wire.MsgSyncHashes:
			m, err := wire.DecodeSyncHashes(p)
			if err != nil {
				rs.fail(err)
				return err
			}
			select {
			case rs.hashes <- m:
			case <-ctx.Done():
				return ctx.Err()
			}
		case wire.MsgSyncChunkAck:
			m, err := wire.DecodeSyncChunkAck(p)
			if err != nil {
				rs.fail(err)
				return err
			}
			rs.mu.Lock()
			rs.win.Answered(&m, rs.bm, func(_ uint64, n uint32) {
				rs.prog.DoneBytes += int64(n)
				rs.dirty = true
			})
			rs.cond.Broadcast()
			rs.mu.Unlock()
		case wire.MsgSyncCompleteAck:
			close(rs.complete)
		case wire.MsgError:
			e, derr := wire.DecodeError(p)
			if derr != nil {
				e = wire.ErrorMsg{Code: wire.CodeProtocol, Message: derr.Error()}
			}
			rs.fail(e)
			return e
		default:
			err := fmt.Errorf("resync: unexpected %v from mirror", wire.MsgType(typ))
			rs.fail(err)
			return err
		}
	}
}

// saveLoop persists the bitmap every second while it changes.
func (rs *resyncer) saveLoop(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			rs.save()
		}
	}
}

func (rs *resyncer) save() {
	rs.mu.Lock()
	if !rs.dirty {
		rs.mu.Unlock()
		return
	}
	snap := rs.bm.Clone()
	rs.dirty = false
	rs.mu.Unlock()
	err := rs.l.r.node.SaveBitmap(rs.l.addr.Name, snap)
	if err != nil {
		rs.l.log.Error("saving resync progress failed", "err", err)
	}
}

func (rs *resyncer) send(typ wire.MsgType, payload []byte) error {
	if err := rs.st.WriteFrame(uint8(typ), payload); err != nil {
		return fmt.Errorf("resync: send %v: %w", typ, err)
	}
	return rs.st.Flush()
}

// copy runs passes over the bitmap until it is empty.
func (rs *resyncer) copy(ctx context.Context) (err error) {
	chunk := rs.bm.ChunkSize()
	size := rs.vol.Size()
	seg := chunk * resync.ChunksPerSegment
	// Two hashers: while one segment's chunks are sent, the next marked
	// segment is hashed in the background (hash-ahead).
	hashers := [2]*resync.Hasher{resync.NewHasher(rs.l.r.node.Store, chunk), resync.NewHasher(rs.l.r.node.Store, chunk)}
	var ahead *hashJob
	defer func() {
		if ahead != nil {
			<-ahead.done
		}
	}()
	data := make([]byte, chunk)
	var leaves []resync.Hash
	bucket := newTokenBucket(rs.opts.Rate)
	// Frames leave through a sender goroutine: the next chunk is read and
	// encoded while the previous ones are handed to QUIC, and the stream
	// is flushed only when nothing more is ready.
	fs := newFrameSender(rs.st, resyncSendBuffers)
	defer func() {
		if err != nil {
			rs.st.Cancel(0) // unblocks a write waiting for flow control
		}
		if werr := fs.close(); werr != nil && err == nil {
			err = fmt.Errorf("resync: send: %w", werr)
		}
	}()
	send := func(typ wire.MsgType, p []byte) error {
		if err := fs.send(ctx, typ, p); err != nil {
			return fmt.Errorf("resync: send %v: %w", typ, err)
		}
		return nil
	}
	for pass := 1; ; pass++ {
		rs.mu.Lock()
		rs.prog.Pass = pass
		remaining := rs.bm.Count()
		rs.mu.Unlock()
		if remaining == 0 {
			break
		}
		// The hash request of the next marked segment is sent before this
		// segment's chunks (one segment ahead), so the mirror hashes it
		// while they cross the link and are written, instead of the link
		// idling for a round trip and the mirror's hashing per segment.
		// One ahead at most: the mirror keeps the leaves of the last range
		// it hashed, which a leaves request after a differing summary uses.
		var sent *wire.SyncHashReq
		for segOff := int64(0); segOff < size; segOff += seg {
			segLen := min(seg, size-segOff)
			first, lastChunk := segOff/chunk, (segOff+segLen-1)/chunk
			var q wire.SyncHashReq
			switch {
			case sent != nil && sent.Off == uint64(segOff):
				q, sent = *sent, nil
			case sent != nil:
				// Marked after the request ahead was sent: left to the
				// next pass, the answers must stay in request order.
				continue
			default:
				var ok bool
				if q, ok = rs.hashReq(segOff, segLen); !ok {
					continue
				}
				if err := send(wire.MsgSyncHashReq, wire.AppendSyncHashReq(nil, q)); err != nil {
					return err
				}
			}
			// Upper level: one summary when the whole segment is marked.
			// The mirror hashes while we do.
			whole := !q.Leaves
			var job *hashJob
			if ahead != nil && ahead.off == segOff {
				job = ahead
			} else {
				if ahead != nil {
					<-ahead.done
				}
				job = startHash(hashers[0], segOff, segLen)
			}
			ahead = nil
			// Start hashing the next segment that has marked chunks.
			rs.mu.Lock()
			nc := rs.bm.Next(lastChunk + 1)
			rs.mu.Unlock()
			if nc >= 0 {
				noff := nc / resync.ChunksPerSegment * seg
				h := hashers[0]
				if job.h == h {
					h = hashers[1]
				}
				ahead = startHash(h, noff, min(seg, size-noff))
			}
			<-job.done
			leaves = job.leaves
			if job.err != nil {
				return job.err
			}
			theirs, err := rs.wait(ctx, q)
			if err != nil {
				return err
			}
			if whole {
				if len(theirs.Hashes) == 1 && theirs.Hashes[0] == resync.Summary(leaves) {
					rs.clearRange(first, lastChunk)
					continue
				}
				q.Leaves = true
				if err := send(wire.MsgSyncHashReq, wire.AppendSyncHashReq(nil, q)); err != nil {
					return err
				}
				if theirs, err = rs.wait(ctx, q); err != nil {
					return err
				}
			}
			if len(theirs.Hashes) != len(leaves) {
				return fmt.Errorf("resync: mirror sent %d hashes for %d chunks", len(theirs.Hashes), len(leaves))
			}
			if nc >= 0 {
				noff := nc / resync.ChunksPerSegment * seg
				if nq, ok := rs.hashReq(noff, min(seg, size-noff)); ok {
					if err := send(wire.MsgSyncHashReq, wire.AppendSyncHashReq(nil, nq)); err != nil {
						return err
					}
					sent = &nq
				}
			}
			for i := range leaves {
				c := first + int64(i)
				rs.mu.Lock()
				m := rs.bm.Test(c)
				rs.mu.Unlock()
				if !m {
					continue
				}
				if leaves[i] == theirs.Hashes[i] {
					rs.clearRange(c, c)
					continue
				}
				off := c * chunk
				n := min(chunk, size-off)
				if err := rs.waitWindow(ctx, n); err != nil {
					return err
				}
				bucket.take(ctx, n)
				p := data[:n]
				tag, err := rs.vol.ReadStable(ctx, p, off)
				if err != nil {
					return fmt.Errorf("resync: read chunk at %d: %w", off, err)
				}
				msg := wire.SyncChunk{Off: uint64(off), Len: uint32(n), Tag: tag}
				if resync.IsZero(p) {
					msg.Zero = true
				} else {
					msg.Data = p
				}
				out, err := fs.buffer(ctx)
				if err != nil {
					return fmt.Errorf("resync: send chunk: %w", err)
				}
				if out, err = wire.AppendSyncChunk(out, &msg); err != nil {
					return err
				}
				rs.mu.Lock()
				rs.win.Sent(n, tag)
				rs.prog.SentBytes += int64(len(msg.Data))
				rs.mu.Unlock()
				if f := rs.l.r.opts.OnResyncSent; f != nil {
					f(rs.l.addr.Name, len(msg.Data))
				}
				if err := fs.sendPooled(ctx, wire.MsgSyncChunk, out); err != nil {
					return fmt.Errorf("resync: send %v: %w", wire.MsgSyncChunk, err)
				}
			}
		}
		// Wait for every answer of this pass; chunks answered not-OK stay
		// marked for the next pass.
		if err := rs.waitWindow(ctx, -1); err != nil {
			return err
		}
	}
	return nil
}

// resyncSendBuffers is how many encoded chunk frames may wait for the
// resync stream's sender goroutine (memory: this many chunk frames).
const resyncSendBuffers = 8

// frameSender writes frames on a stream from its own goroutine, in the
// order they were queued, flushing when the queue is empty; its owner
// queues with send (a payload copied) or sendPooled (a buffer from
// buffer, given back once written) and ends it with close. After a write
// failed, every later call fails with that error.
type frameSender struct {
	st     frameStream
	q      chan queuedFrame
	free   chan []byte
	done   chan struct{}
	failed chan struct{} // closed at the first write error (err set)
	err    error
}

type queuedFrame struct {
	typ    wire.MsgType
	p      []byte
	pooled bool
}

func newFrameSender(st frameStream, bufs int) *frameSender {
	fs := &frameSender{st: st, q: make(chan queuedFrame, bufs), free: make(chan []byte, bufs),
		done: make(chan struct{}), failed: make(chan struct{})}
	for range bufs {
		fs.free <- nil
	}
	go fs.run()
	return fs
}

func (fs *frameSender) run() {
	defer close(fs.done)
	for f := range fs.q {
		if fs.err == nil {
			err := fs.st.WriteFrame(uint8(f.typ), f.p)
			if err == nil && len(fs.q) == 0 {
				err = fs.st.Flush()
			}
			if err != nil {
				fs.err = err
				close(fs.failed)
			}
		}
		if f.pooled {
			fs.free <- f.p[:0]
		}
	}
}

// buffer returns an empty buffer for sendPooled, waiting for one to be
// written if all are queued.
func (fs *frameSender) buffer(ctx context.Context) ([]byte, error) {
	select {
	case b := <-fs.free:
		return b, nil
	case <-fs.failed:
		return nil, fs.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// send queues a copy of p.
func (fs *frameSender) send(ctx context.Context, typ wire.MsgType, p []byte) error {
	return fs.queue(ctx, queuedFrame{typ: typ, p: append([]byte(nil), p...)})
}

// sendPooled queues p, a buffer from buffer; the caller must not touch it
// any more.
func (fs *frameSender) sendPooled(ctx context.Context, typ wire.MsgType, p []byte) error {
	return fs.queue(ctx, queuedFrame{typ: typ, p: p, pooled: true})
}

func (fs *frameSender) queue(ctx context.Context, f queuedFrame) error {
	select {
	case <-fs.failed:
		return fs.err
	default:
	}
	select {
	case fs.q <- f:
		return nil
	case <-fs.failed:
		return fs.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// close waits until every queued frame is written (or the stream failed)
// and returns the first write error. A write blocked on flow control
// returns once the stream is cancelled.
func (fs *frameSender) close() error {
	close(fs.q)
	<-fs.done
	return fs.err
}

// hashJob hashes one segment in the background.
type hashJob struct {
	off    int64
	h      *resync.Hasher
	leaves []resync.Hash
	err    error
	done   chan struct{}
}

func startHash(h *resync.Hasher, off, n int64) *hashJob {
	j := &hashJob{off: off, h: h, done: make(chan struct{})}
	go func() {
		defer close(j.done)
		j.leaves, j.err = h.HashRange(off, n, nil)
	}()
	return j
}

func (rs *resyncer) clearRange(from, to int64) {
	rs.mu.Lock()
	for c := from; c <= to; c++ {
		if rs.bm.Test(c) {
			rs.bm.ClearChunk(c)
			n := min(rs.bm.ChunkSize(), rs.bm.Size()-c*rs.bm.ChunkSize())
			rs.prog.DoneBytes += n
			rs.dirty = true
		}
	}
	rs.mu.Unlock()
}

// hashReq is the hash request for the segment at off: one summary when
// every chunk of it is marked, its leaves when some are; ok is false when
// none is marked.
func (rs *resyncer) hashReq(off, n int64) (q wire.SyncHashReq, ok bool) {
	chunk := rs.bm.ChunkSize()
	first, last := off/chunk, (off+n-1)/chunk
	rs.mu.Lock()
	next := rs.bm.Next(first)
	marked := int64(0)
	for c := next; c >= 0 && c <= last; c = rs.bm.Next(c + 1) {
		marked++
	}
	rs.mu.Unlock()
	if next < 0 || next > last {
		return q, false
	}
	return wire.SyncHashReq{Off: uint64(off), Len: uint64(n), Leaves: marked != last-first+1}, true
}

// waitWindow waits until n more bytes fit the window (n < 0: until
// nothing is in flight or unconfirmed).
func (rs *resyncer) waitWindow(ctx context.Context, n int64) error {
	stop := context.AfterFunc(ctx, func() { rs.fail(ctx.Err()) })
	defer stop()
	rs.mu.Lock()
	defer rs.mu.Unlock()
	for rs.err == nil && (n < 0 && !rs.win.Drained() || n >= 0 && !rs.win.Fits(n)) {
		rs.cond.Wait()
	}
	return rs.err
}

// hashAnswerTimeout bounds the wait for one hash answer (hashing a 64 MiB
// segment takes well under a second even from disk).
const hashAnswerTimeout = time.Minute

// wait returns the mirror's answer to hash request q.
func (rs *resyncer) wait(ctx context.Context, q wire.SyncHashReq) (wire.SyncHashes, error) {
	t := time.NewTimer(hashAnswerTimeout)
	defer t.Stop()
	select {
	case <-t.C:
		return wire.SyncHashes{}, fmt.Errorf("resync: no hashes for [%d,+%d) from the mirror in %v", q.Off, q.Len, hashAnswerTimeout)
	case m := <-rs.hashes:
		if m.Off != q.Off || m.Len != q.Len || m.Leaves != q.Leaves {
			return m, fmt.Errorf("resync: mirror answered hashes for [%d,+%d) leaves=%v, asked [%d,+%d) leaves=%v",
				m.Off, m.Len, m.Leaves, q.Off, q.Len, q.Leaves)
		}
		return m, nil
	case <-ctx.Done():
		rs.mu.Lock()
		err := rs.err
		rs.mu.Unlock()
		if err != nil {
			return wire.SyncHashes{}, err
		}
		return wire.SyncHashes{}, ctx.Err()
	}
}

// finish tells the mirror the copy is complete and waits for it to be
// consistent.
func (rs *resyncer) finish(ctx context.Context) error {
	rs.mu.Lock()
	tag := rs.win.MaxTag
	rs.mu.Unlock()
	if err := rs.send(wire.MsgSyncComplete, wire.AppendSyncComplete(nil, wire.SyncComplete{Tag: tag})); err != nil {
		return err
	}
	select {
	case <-rs.complete:
		return nil
	case <-ctx.Done():
		rs.mu.Lock()
		defer rs.mu.Unlock()
		if rs.err != nil {
			return rs.err
		}
		return ctx.Err()
	}
}

// tokenBucket limits a byte rate (rate 0: unlimited).
type tokenBucket struct {
	rate   int64
	tokens float64
	last   time.Time
}

func newTokenBucket(rate int64) *tokenBucket {
	return &tokenBucket{rate: rate, tokens: float64(rate) / 10, last: time.Now()}
}

func (b *tokenBucket) take(ctx context.Context, n int64) {
	if b.rate <= 0 {
		return
	}
	for {
		now := time.Now()
		b.tokens = min(b.tokens+now.Sub(b.last).Seconds()*float64(b.rate), float64(b.rate)/4+float64(n))
		b.last = now
		if b.tokens >= float64(n) {
			b.tokens -= float64(n)
			return
		}
		wait := time.Duration((float64(n) - b.tokens) / float64(b.rate) * float64(time.Second))
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}
