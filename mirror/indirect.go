package mirror

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/blockmirror/blockmirror/journal"
	"github.com/blockmirror/blockmirror/store"
)

// Indirect writes (docs/design.md, "Indirect writes"): a write of at least
// VolumeOptions.IndirectMin bytes is written once, to the image, and the
// journal gets an OpIndirect record holding the CRC-32C of each
// journal.IndirectPiece-aligned piece instead of the data. The rules that
// keep "every copy is the same disk" are:
//
//   - Image first: the store write happens before the seq is taken and the
//     record submitted, so a record in the journal file (even one written
//     back by the kernel before any sync) never precedes its data in the
//     page cache, and a sync covering it syncs the image first
//     (journal.Options.BeforeSync). Overlapping writes and stable reads
//     wait for a pending indirect write to take its seq.
//   - No overwrite before a checkpoint: while an indirect record may still
//     be replayed (seq above the last checkpoint), a write touching one of
//     its chunks waits, before it takes a seq, for a checkpoint covering it
//     (kicked at once). So the store range of every indirect record the
//     next start replays holds its data or what a power loss left of it,
//     never a later write's, and replay verifies every piece
//     (Node.verifyIndirect).
//   - Catch-up from the image only while intact: a mirror that needs an
//     indirect record from the journal files gets the data read from the
//     image only if no later write touched its chunks (indirectChunk) and
//     the data matches the sums; otherwise it is resynced (sendRecords).

// indirectAlign is the alignment (offset and length) a write needs to take
// the indirect path.
const indirectAlign = 4 << 10

// maxIndirectChunks bounds the chunk map (about 40 MiB, 64 GiB of disk):
// past it, a checkpoint forgets the chunks of checkpointed records, whose
// data a lagging mirror then gets by a resync instead of from the image.
const maxIndirectChunks = 1 << 20

// indirectSize reports whether rec is a write the indirect path may take
// (size and alignment; the overlap rule is checked under v.mu).
func (v *Volume) indirectSize(rec *journal.Record) bool {
	return v.opts.IndirectMin > 0 && rec.Op == journal.OpWrite && int(rec.Length) >= v.opts.IndirectMin &&
		rec.Offset%indirectAlign == 0 && rec.Length%indirectAlign == 0
}

// chunkRange is the range of IndirectPiece chunks [off, end) touches.
func chunkRange(off, end uint64) (first, last uint64) {
	return off / journal.IndirectPiece, (end - 1) / journal.IndirectPiece
}

// pendingOverlapLocked returns the done channel of a pending indirect write
// overlapping [off, end), or nil.
func (v *Volume) pendingOverlapLocked(off, end uint64) chan struct{} {
	for e := range v.pending {
		if e.overlaps(off, end) {
			return e.done
		}
	}
	return nil
}

// overlapsLocked returns the done channels of the writes in flight and the
// stable reads overlapping [off, end).
func (v *Volume) overlapsLocked(off, end uint64) []chan struct{} {
	var waits []chan struct{}
	for _, e := range v.inflight {
		if e.overlaps(off, end) {
			waits = append(waits, e.done)
		}
	}
	for e := range v.readers {
		if e.overlaps(off, end) {
			waits = append(waits, e.done)
		}
	}
	return waits
}

// replayableLocked returns the highest seq of an indirect record above the
// last checkpoint (one the next start may verify against the image) whose
// chunks [off, end) touches, or 0.
func (v *Volume) replayableLocked(off, end uint64) uint64 {
	if len(v.chunks) == 0 || end <= off {
		return 0
	}
	var seq uint64
	first, last := chunkRange(off, end)
	for c := first; c <= last; c++ {
		if x, ok := v.chunks[c]; ok && x.seq > v.cpSeq {
			seq = max(seq, x.seq)
		}
	}
	return seq
}

// overwriteWaitLocked applies, before a write may take a seq for
// [off, end) (v.mu held), the two rules for a write over an indirect
// record s (see the top of this file): it waits for a checkpoint covering
// s (the crash rule), and, while s is intact in the image and a mirror may
// still need it from there, until no write with a seq ≤ s and no flush
// covering no more than s is open — so that when a mirror behind s must
// be resynced instead (resolveIndirect), no request still waits for an
// ack that the resync's start (which credits the mirror with s) would
// give falsely. It reports whether it
// waited (v.mu held again: check everything again), or fails (v.mu
// released).
func (v *Volume) overwriteWaitLocked(ctx context.Context, off, end uint64) (bool, error) {
	if len(v.chunks) == 0 || end <= off {
		return false, nil
	}
	if s := v.replayableLocked(off, end); s > 0 {
		return true, v.waitCheckpointLocked(ctx, s)
	}
	if v.repl == nil {
		return false, nil
	}
	var seq uint64
	first, last := chunkRange(off, end)
	for c := first; c <= last; c++ {
		if x, ok := v.chunks[c]; ok && x.over == 0 {
			seq = max(seq, x.seq)
		}
	}
	if seq == 0 || !v.openBeforeLocked(seq) {
		return false, nil
	}
	if h, ok := v.repl.(interface{ allHave(seq uint64) bool }); ok && h.allHave(seq) {
		return false, nil // every mirror has it: none will need it from the image
	}
	for v.openBeforeLocked(seq) {
		if v.openWait == nil {
			v.openWait = make(chan struct{})
		}
		ch := v.openWait
		v.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return true, ctx.Err()
		}
		v.mu.Lock()
	}
	return true, nil
}

// newIDLocked admits a request: its id, open until closeID (the caller
// sets what it covers in v.open).
func (v *Volume) newIDLocked() uint64 {
	v.nextID++
	v.open[v.nextID] = ^uint64(0)
	return v.nextID
}

// closeID ends request id (completed, failed or withdrawn).
func (v *Volume) closeID(id uint64) {
	v.mu.Lock()
	delete(v.open, id)
	if v.openWait != nil {
		close(v.openWait)
		v.openWait = nil
	}
	v.mu.Unlock()
}

// openBeforeLocked reports whether a write with a seq ≤ seq, or a flush
// covering no more than seq, is open.
func (v *Volume) openBeforeLocked(seq uint64) bool {
	for _, s := range v.open {
		if s <= seq {
			return true
		}
	}
	return false
}

// waitCheckpointLocked kicks a checkpoint and waits until one covers seq
// (v.mu held; unlocked on error, held again otherwise).
func (v *Volume) waitCheckpointLocked(ctx context.Context, seq uint64) error {
	for v.cpSeq < seq {
		if v.cpWait == nil {
			v.cpWait = make(chan struct{})
		}
		ch := v.cpWait
		v.mu.Unlock()
		select {
		case v.cpKick <- struct{}{}:
		default:
		}
		select {
		case <-ch:
		case <-v.done:
			return fmt.Errorf("mirror: a write over indirect seq %d waited for a checkpoint, but the volume closed", seq)
		case <-ctx.Done():
			return ctx.Err()
		}
		v.mu.Lock()
		if err := v.writableLocked(); err != nil {
			v.mu.Unlock()
			return err
		}
	}
	return nil
}

// overwriteLocked notes that record seq touches [off, end).
func (v *Volume) overwriteLocked(seq, off, end uint64) {
	if len(v.chunks) == 0 || end <= off {
		return
	}
	first, last := chunkRange(off, end)
	for c := first; c <= last; c++ {
		if x, ok := v.chunks[c]; ok && x.seq < seq && x.over == 0 {
			x.over = seq
		}
	}
}

// coverLocked notes that the indirect record seq covers [off, end): older
// records there can no longer be read back from the image.
func (v *Volume) coverLocked(seq, off, end uint64) {
	first, last := chunkRange(off, end)
	for c := first; c <= last; c++ {
		if x, ok := v.chunks[c]; ok {
			*x = indirectChunk{seq: seq}
		} else {
			v.chunks[c] = &indirectChunk{seq: seq}
		}
	}
}

// intactLocked reports whether the image still holds the data of the
// indirect record seq on [off, end).
func (v *Volume) intactLocked(seq, off, end uint64) bool {
	first, last := chunkRange(off, end)
	for c := first; c <= last; c++ {
		if x, ok := v.chunks[c]; !ok || x.seq != seq || x.over != 0 {
			return false
		}
	}
	return true
}

// checkpointed notes a checkpoint through seq and forgets the chunks of
// records the journal no longer holds (all checkpointed ones past
// maxIndirectChunks).
func (v *Volume) checkpointed(seq uint64) {
	first := v.j.FirstSeq()
	v.mu.Lock()
	defer v.mu.Unlock()
	v.cpSeq = max(v.cpSeq, seq)
	if v.cpWait != nil {
		close(v.cpWait)
		v.cpWait = nil
	}
	over := len(v.chunks) > maxIndirectChunks
	for c, x := range v.chunks {
		if x.seq < first || (over && x.seq <= v.cpSeq) {
			delete(v.chunks, c)
		}
	}
}

// loadIndirect rebuilds the chunk map from the records the journal holds
// (after a restart), so that mirrors behind an indirect record from the
// previous run can still be caught up from the image.
func (v *Volume) loadIndirect() error {
	if v.opts.IndirectMin <= 0 {
		return nil // no indirect records are written, and older ones are not served: resync
	}
	first, last := v.j.FirstSeq(), v.j.LastSeq()
	if last < first {
		return nil
	}
	start := time.Now()
	n := 0
	err := v.j.Scan(first, func(r journal.Record) error {
		end := r.Offset + uint64(r.Length)
		if isIndirect(&r) {
			v.coverLocked(r.Seq, r.Offset, end)
			n++
		} else if r.Op != journal.OpEpoch {
			v.overwriteLocked(r.Seq, r.Offset, end)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("mirror: read the journal's indirect records: %w", err)
	}
	if n > 0 {
		v.log.Info("indirect records in the journal", "records", n, "chunks", len(v.chunks), "took", time.Since(start))
	}
	return nil
}

// changeIndirect is change for a write taking the indirect path; called
// with v.mu held (it unlocks it), the write checked writable and with no
// pending write overlapping it.
func (v *Volume) changeIndirect(ctx context.Context, rec journal.Record, fua bool) error {
	end := rec.Offset + uint64(rec.Length)
	// A fenced primary's write would fail at Admit, after its data reached
	// the image: refuse it before touching the image (the race with a
	// fence arriving during the write is covered by imageAhead below).
	if f, ok := v.repl.(interface{ fencedErr() error }); ok {
		if err := f.fencedErr(); err != nil {
			v.mu.Unlock()
			return err
		}
	}
	waits := v.overlapsLocked(rec.Offset, end)
	me := &extent{off: rec.Offset, end: end, done: make(chan struct{})}
	v.pending[me] = struct{}{}
	v.mu.Unlock()
	rec.Sums = journal.IndirectSums(make([]byte, 0, 4*journal.IndirectPieces(rec.Offset, uint64(rec.Length))), rec.Offset, rec.Data)
	for _, w := range waits {
		<-w // earlier overlapping writes reach the store first
	}
	// From here the store may hold the write although no record does: the
	// activity log covers it (its extents stay until the seq is known),
	// and a failure fails the volume, so that the next start is unclean
	// and compares those extents with the mirrors.
	start := time.Now()
	settle, err := v.al.Pin(context.Background(), rec.Offset, uint64(rec.Length))
	if err == nil {
		if _, err = v.st.WriteAt(rec.Data, int64(rec.Offset)); err != nil {
			err = fmt.Errorf("mirror: indirect write [%d, +%d) to the store: %w", rec.Offset, rec.Length, err)
		}
	}
	v.mu.Lock()
	for err == nil && !v.j.HasRoom(&rec) {
		v.mu.Unlock()
		err = v.j.WaitRoom(context.Background(), &rec)
		v.mu.Lock()
	}
	var id uint64
	if err == nil {
		err = v.failed
	}
	if err == nil {
		rec.Epoch = v.epoch
		id = v.newIDLocked()
		defer v.closeID(id)
		rec.Seq = v.lastSeq + 1
		if v.repl != nil {
			rec.Seq, err = v.repl.Admit(id, int(rec.Length), fua)
		}
		v.open[id] = rec.Seq
	}
	if err == nil {
		if err = v.j.SubmitDeferred(context.Background(), rec); err != nil {
			err = fmt.Errorf("mirror: journal seq %d: %w", rec.Seq, err)
			v.forgetLocked(id)
		}
	}
	if err != nil {
		// The image may now hold bytes no record has (the activity log
		// covers them for a restart as primary); a demotion must resync.
		v.imageAhead = true
		v.failLocked(fmt.Errorf("mirror: an indirect write reached the store but not the journal: %w", err))
		delete(v.pending, me)
		v.idleLocked()
		v.mu.Unlock()
		close(me.done)
		if settle != nil {
			settle(0)
		}
		return err
	}
	v.lastSeq = rec.Seq
	if v.opts.onSubmit != nil {
		v.opts.onSubmit(ctx, rec)
	}
	v.coverLocked(rec.Seq, rec.Offset, end)
	v.sinceCP += int64(rec.Length)
	kick := v.sinceCP >= v.opts.CheckpointBytes
	delete(v.pending, me)
	v.idleLocked()
	v.mu.Unlock()
	close(me.done)
	settle(rec.Seq)
	if kick {
		select {
		case v.cpKick <- struct{}{}:
		default:
		}
	}
	if err := v.j.WriteThrough(context.Background(), rec.Seq); err != nil {
		err = fmt.Errorf("mirror: journal seq %d: %w", rec.Seq, err)
		v.mu.Lock()
		v.failLocked(err)
		v.mu.Unlock()
		v.forget(id)
		return err
	}
	if v.opts.OnAppend != nil {
		v.opts.OnAppend(false, time.Since(start))
	}
	return v.finish(ctx, id, rec.Seq, fua, start)
}

// forgetLocked is forget for a request admitted under v.mu.
func (v *Volume) forgetLocked(id uint64) {
	if v.repl != nil && id != 0 {
		v.repl.Forget(id)
	}
}

// errNotIntact: an indirect record's data is no longer in the image.
var errNotIntact = errors.New("the image no longer holds the data of this indirect record (a later write overlapped it)")

// IndirectData returns the data of the indirect record rec (read from the
// journal's files) for a mirror that needs it: read from the image as a
// stable read, and only if no later write touched its chunks and the data
// matches the record's sums; errNotIntact otherwise.
func (v *Volume) IndirectData(ctx context.Context, rec journal.Record) ([]byte, error) {
	end := rec.Offset + uint64(rec.Length)
	v.mu.Lock()
	ok := v.intactLocked(rec.Seq, rec.Offset, end)
	v.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("seq %d [%d, +%d): %w", rec.Seq, rec.Offset, rec.Length, errNotIntact)
	}
	p := make([]byte, rec.Length)
	if _, err := v.ReadStable(ctx, p, int64(rec.Offset)); err != nil {
		return nil, fmt.Errorf("read indirect seq %d from the store: %w", rec.Seq, err)
	}
	// Checked again after the read: a write admitted meanwhile marked the
	// chunks before its store write, which waited for the read.
	v.mu.Lock()
	ok = v.intactLocked(rec.Seq, rec.Offset, end)
	v.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("seq %d [%d, +%d): %w", rec.Seq, rec.Offset, rec.Length, errNotIntact)
	}
	if at := journal.VerifyIndirect(&rec, p); at >= 0 {
		v.log.Error("the image does not match the checksums of an indirect record no later write touched; the mirror is resynced instead",
			"seq", rec.Seq, "piece_offset", at)
		return nil, fmt.Errorf("seq %d: piece at %d does not match its checksum: %w", rec.Seq, at, errNotIntact)
	}
	return p, nil
}

// verifyIndirect checks, at open, the indirect records from seq from on
// against the store, and cuts the journal before the first one whose data
// is not there. No later record touches the chunks of such a record (the
// volume waits for a checkpoint first), so every piece is checked. A
// piece that does not match means that no sync covered the record (a sync
// makes the image durable first) and its journal page reached the disk by
// writeback alone: neither it nor any later record was acknowledged as
// durable. The node's start is then unclean (as after any power loss), so
// a mirror holding the records cut is given a new branch and quarantines
// them, and the activity log covers what they left in the store. It
// returns the indirect records kept, for the replay.
func (n *Node) verifyIndirect(ctx context.Context, from uint64) (indirectSet, error) {
	var recs []journal.Record
	err := n.Journal.Scan(from, func(r journal.Record) error {
		if isIndirect(&r) {
			sums := r.Sums
			if sums == nil {
				sums = journal.IndirectSums(nil, r.Offset, r.Data)
			}
			recs = append(recs, journal.Record{Seq: r.Seq, Op: journal.OpIndirect, Offset: r.Offset, Length: r.Length, Sums: bytes.Clone(sums)})
		}
		return ctx.Err()
	})
	if err != nil {
		return indirectSet{}, fmt.Errorf("mirror: verify indirect records from %d: %w", from, err)
	}
	var buf []byte
	for i := range recs {
		rec := &recs[i]
		if cap(buf) < int(rec.Length) {
			buf = make([]byte, rec.Length)
		}
		p := buf[:rec.Length]
		if _, err := n.Store.ReadAt(p, int64(rec.Offset)); err != nil {
			return indirectSet{}, fmt.Errorf("mirror: verify indirect seq %d: read the store: %w", rec.Seq, err)
		}
		at := journal.VerifyIndirect(rec, p)
		if at < 0 {
			continue
		}
		last := n.Journal.LastSeq()
		n.log.Warn("the store lacks the data of an indirect record (a power loss before any sync covered it); cutting the journal before it: no record from it on was acknowledged as durable",
			"seq", rec.Seq, "piece_offset", at, "records_cut", last-rec.Seq+1)
		if err := n.Journal.TruncateAfter(rec.Seq - 1); err != nil {
			return indirectSet{}, fmt.Errorf("mirror: cut the journal before indirect seq %d: %w", rec.Seq, err)
		}
		recs = recs[:i]
		break
	}
	return newIndirectSet(recs), nil
}

// isIndirect reports whether r is an indirect record (from the files) or
// an indirect write (from the memory tail).
func isIndirect(r *journal.Record) bool {
	return r.Op == journal.OpIndirect || (r.Op == journal.OpWrite && r.Sums != nil)
}

// indirectSet is the indirect records of a replay, found by chunk.
type indirectSet struct {
	recs    []journal.Record
	byChunk map[uint64][]int // chunk → indexes into recs
}

func newIndirectSet(recs []journal.Record) indirectSet {
	s := indirectSet{recs: recs, byChunk: make(map[uint64][]int)}
	for i, r := range recs {
		first, last := chunkRange(r.Offset, r.Offset+uint64(r.Length))
		for c := first; c <= last; c++ {
			s.byChunk[c] = append(s.byChunk[c], i)
		}
	}
	return s
}

// apply replays r onto st, except the bytes a later indirect record of the
// set covers (its data is in st already).
func (s indirectSet) apply(st *store.File, r journal.Record) error {
	if isIndirect(&r) || r.Op == journal.OpEpoch || len(s.recs) == 0 || r.Length == 0 {
		return ApplyRecord(st, r)
	}
	off, end := r.Offset, r.Offset+uint64(r.Length)
	var covered []journal.Region
	first, last := chunkRange(off, end)
	for c := first; c <= last; c++ {
		for _, i := range s.byChunk[c] {
			u := &s.recs[i]
			if u.Seq > r.Seq && u.Offset < end && off < u.Offset+uint64(u.Length) {
				covered = append(covered, journal.Region{Offset: u.Offset, Length: uint64(u.Length)})
			}
		}
	}
	if len(covered) == 0 {
		return ApplyRecord(st, r)
	}
	at := off
	for _, g := range journal.CoalesceRegions(covered) {
		if g.Offset > at {
			if err := applyPart(st, r, at, min(g.Offset, end)); err != nil {
				return err
			}
		}
		at = max(at, g.Offset+g.Length)
	}
	if at < end {
		return applyPart(st, r, at, end)
	}
	return nil
}

// applyPart applies the part [off, end) of r.
func applyPart(st *store.File, r journal.Record, off, end uint64) error {
	p := r
	p.Offset, p.Length = off, uint32(end-off)
	if r.Op == journal.OpWrite {
		p.Data = r.Data[off-r.Offset : end-r.Offset]
	}
	return ApplyRecord(st, p)
}

// indirectSource is what a primary's senders need from its volume to turn
// an indirect record read from the journal's files back into data.
type indirectSource interface {
	IndirectData(ctx context.Context, rec journal.Record) ([]byte, error)
}

// journalFirstLocked is the lowest seq a mirror can be streamed from, given
// the journal's first seq (r.mu held): past the last indirect record whose
// data is gone from the image.
func (r *Replication) journalFirstLocked(first uint64) uint64 {
	return max(first, r.indirectFloor+1)
}

// resolveIndirect turns the indirect records of recs (read from the
// journal's files) into writes carrying their data, read back from the
// image (Volume.IndirectData). When that data is gone — a later write
// overlapped it — every mirror behind the record is treated as one the
// journal dropped: the regions of its records through it go into its dirty
// bitmap, the core sees the journal start after it (journalFirstLocked),
// and the session ends, so that the next handshake resyncs the mirror
// (the bitmap resync that "fell behind the journal" takes).
func (r *Replication) resolveIndirect(ctx context.Context, recs []journal.Record) ([]journal.Record, error) {
	var out []journal.Record // a copy: recs may share the journal's memory
	for i := range recs {
		rec := &recs[i]
		if rec.Op != journal.OpIndirect {
			continue
		}
		if out == nil {
			out = append([]journal.Record(nil), recs...)
		}
		src, _ := r.source().(indirectSource)
		err := fmt.Errorf("seq %d: %w", rec.Seq, errNotIntact)
		var data []byte
		if src != nil {
			data, err = src.IndirectData(ctx, *rec)
		}
		if err != nil {
			if errors.Is(err, errNotIntact) {
				r.behindIndirect(rec.Seq)
			}
			return nil, fmt.Errorf("catch up from the image: %w", err)
		}
		out[i] = journal.Record{Epoch: rec.Epoch, Seq: rec.Seq, Op: journal.OpWrite, Offset: rec.Offset, Length: rec.Length, Data: data}
	}
	if out == nil {
		return recs, nil
	}
	return out, nil
}

// behindIndirect handles the indirect record seq whose data is gone from
// the image (see resolveIndirect).
func (r *Replication) behindIndirect(seq uint64) {
	r.mu.Lock()
	if seq <= r.indirectFloor {
		r.mu.Unlock()
		return
	}
	r.indirectFloor = seq
	names := make([]string, 0, len(r.links))
	for name := range r.links {
		names = append(names, name)
	}
	r.core.JournalFirst(r.journalFirstLocked(r.j.FirstSeq()))
	r.mu.Unlock()
	for _, name := range names {
		released, ok := r.j.Consumer(peerConsumer(name))
		if !ok || released >= seq {
			continue
		}
		var regions []journal.Region
		err := r.j.Scan(released+1, func(rec journal.Record) error {
			if rec.Seq > seq {
				return errScanDone
			}
			if rec.Op != journal.OpEpoch && rec.Length > 0 {
				regions = append(regions, journal.Region{Offset: rec.Offset, Length: uint64(rec.Length)})
			}
			return nil
		})
		if err != nil && !errors.Is(err, errScanDone) {
			// Without the regions the bitmap would not cover what the
			// mirror lacks: compare the whole disk.
			r.log.Error("reading the journal for a mirror behind an overwritten indirect record failed; it needs a full resync", "peer", name, "err", err)
			regions = []journal.Region{{Offset: 0, Length: uint64(r.node.Store.Size())}}
		}
		r.log.Warn("a mirror is behind an indirect record whose data a later write overwrote in the image; it is resynced instead of streamed to",
			"peer", name, "seq", seq, "mirror_durable", released)
		r.node.recordDrop(peerConsumer(name), seq, journal.CoalesceRegions(regions))
	}
}

// allHave reports whether every mirror's journal consumer released seq
// (it is durable on each of them).
func (r *Replication) allHave(seq uint64) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for name := range r.links {
		if released, ok := r.j.Consumer(peerConsumer(name)); !ok || released < seq {
			return false
		}
	}
	return true
}

// errScanDone stops a journal scan early.
var errScanDone = errors.New("scan done")

// indirectWrite returns the indirect record r as a write with its data,
// read from the store, when the data there matches r's checksums; else r
// itself, noted in rep (QuarantineReport.IndirectOverwritten).
func (n *Node) indirectWrite(r journal.Record, rep *QuarantineReport) journal.Record {
	p := make([]byte, r.Length)
	if _, err := n.Store.ReadAt(p, int64(r.Offset)); err == nil && journal.VerifyIndirect(&r, p) < 0 {
		return journal.Record{Epoch: r.Epoch, Seq: r.Seq, Op: journal.OpWrite, Offset: r.Offset, Length: r.Length, Data: p}
	}
	rep.IndirectOverwritten = append(rep.IndirectOverwritten, r.Seq)
	return r
}
