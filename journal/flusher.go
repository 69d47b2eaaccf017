package journal

import (
	"cmp"
	"fmt"
	"slices"
	"time"
)

// flusher is the journal's single writer goroutine, owned by the Journal
// and stopped by Close.
func (j *Journal) flusher() {
	defer func() {
		j.mu.Lock()
		j.stopped = true
		j.broadcastLocked()
		j.mu.Unlock()
		close(j.done)
	}()
	for {
		j.mu.Lock()
		for !j.closing && (j.err != nil || !j.workLocked()) {
			j.mu.Unlock()
			<-j.kick
			j.mu.Lock()
		}
		closing, failed := j.closing, j.err != nil
		j.mu.Unlock()
		if failed {
			return
		}
		j.ioMu.Lock()
		j.pass(closing)
		j.ioMu.Unlock()
		if closing {
			j.mu.Lock()
			finished := j.err != nil || (j.written == j.next-1 && j.durable == j.written)
			j.mu.Unlock()
			if finished {
				return
			}
		}
	}
}

func (j *Journal) workLocked() bool {
	return j.written < j.next-1 ||
		j.retain || (j.total > j.opts.MaxBytes && len(j.segs) > 1 && j.bounded != j.segs[len(j.segs)-1].first)
}

// pass writes every queued record with one write per segment touched,
// syncs if a waiter asked for durability, then applies retention. Called
// with ioMu held.
func (j *Journal) pass(closing bool) {
	j.mu.Lock()
	j.retain = false
	j.mu.Unlock()
	if !j.writeQueued() {
		return
	}

	if closing {
		if err := j.syncActive(); err != nil {
			j.fail(err)
			return
		}
	}
	if err := j.retention(); err != nil {
		j.fail(err)
	}
}

// writeQueued writes every queued record; false if that failed (the
// failure is recorded). Called with ioMu held, by the flusher or by a
// WriteThrough caller.
func (j *Journal) writeQueued() bool {
	j.mu.Lock()
	j.batch = j.batch[:0]
	if j.written < j.next-1 {
		j.batch = append(j.batch, j.tail[j.written+1-j.tailFirst:]...)
	}
	durable := j.durable
	j.mu.Unlock()
	if len(j.batch) == 0 {
		return true
	}
	if d := j.opts.TestWriteDelay; d > 0 {
		time.Sleep(d)
	}
	err := j.writeBatch(j.batch, durable)
	clear(j.batch)
	if err != nil {
		j.fail(err)
		return false
	}
	return true
}

// writeBatch appends batch (consecutive seqs following j.written) to the
// active segment, rotating when the segment would exceed SegmentBytes.
// durable is the durable seq when the batch was taken: each record of a
// version-2 segment carries its distance from it (the sync lag), which is
// what lets recovery tell an unsynced tail torn by a power loss from
// damage to durable records.
func (j *Journal) writeBatch(batch []Record, durable uint64) error {
	for i := 0; i < len(batch); {
		seg := j.segs[len(j.segs)-1] // segs change only under ioMu, which we hold
		base := seg.size
		hasRecords := seg.count > 0
		j.buf = j.buf[:0]
		var idx []idxEntry
		lastIdx := int64(-indexStep)
		if n := len(seg.idx); n > 0 {
			lastIdx = seg.idx[n-1].off
		}
		start := i
		var mem int64 // the queue's bytes of the records written
		indirect := uint64(0)
		for i < len(batch) {
			r := &batch[i]
			sz := int64(fileSize(r, seg.version))
			if (hasRecords || i > start) && base+int64(len(j.buf))+sz > j.opts.SegmentBytes {
				break
			}
			off := base + int64(len(j.buf))
			if off-lastIdx >= indexStep {
				idx = append(idx, idxEntry{r.Seq, off})
				lastIdx = off
			}
			var lag uint32
			if seg.version >= 2 {
				lag = uint32(min(r.Seq-durable, MaxSyncLag))
			}
			ind := indirectIn(r, seg.version)
			if ind {
				indirect = r.Seq
			}
			j.buf = appendRecord(j.buf, r, lag, ind)
			mem += int64(encodedSize(r))
			i++
		}
		if i > start {
			// Only written: nothing is synced until a waiter asks for
			// durability. The dirty window (startWriteback) keeps what such
			// a sync must then write back bounded.
			if _, err := j.active.WriteAt(j.buf, base); err != nil {
				return fmt.Errorf("write %s at %d: %w", seg.path, base, err)
			}
			j.startWriteback(seg, base+int64(len(j.buf)), false)
			j.mu.Lock()
			seg.idx = append(seg.idx, idx...)
			seg.count += uint64(i - start)
			seg.size += int64(len(j.buf))
			j.total += int64(len(j.buf))
			j.written = batch[i-1].Seq
			j.queued -= mem
			j.lastIndirect = max(j.lastIndirect, indirect)
			j.st.Writes++
			j.st.RecordsWritten += uint64(i - start)
			j.st.BytesWritten += uint64(len(j.buf))
			if start == 0 {
				j.st.Batches++
			}
			j.evictLocked()
			j.broadcastLocked()
			wantSync := j.syncReq > j.durable
			j.mu.Unlock()
			if wantSync {
				j.pokeSync()
			}
		}
		if cap(j.buf) > 4*DefaultQueueBytes {
			j.buf = nil // do not pin a buffer grown by a burst of huge records
		}
		if i < len(batch) {
			if err := j.rotate(batch[i].Seq); err != nil {
				return err
			}
		}
	}
	return nil
}

// writebacker is implemented by files that can start writeback early
// (vfs.OS: sync_file_range).
type writebacker interface{ StartWriteback(off, n int64) error }

// writebackPage is the page size the dirty window's ranges are aligned to.
const writebackPage = 4096

// startWriteback starts the writeback of the active segment seg's bytes
// from seg.kicked to end once they exceed the dirty window
// (Options.WritebackBytes), or whatever is left with closing (rotation
// hands the file to the syncer, so this is the last chance to). It only
// moves the time the kernel writes the pages: no durability claim
// depends on it, and a power loss may keep or tear them as before. A
// failure is ignored here: a real I/O error shows at the next sync.
// Short of closing, the range stops at a page boundary: the next append
// goes on filling the last page, which would otherwise be under
// writeback already (and written twice). Called with ioMu held
// (j.active is seg's file).
func (j *Journal) startWriteback(seg *segment, end int64, closing bool) {
	if !closing {
		end &^= writebackPage - 1
	}
	n := end - seg.kicked
	if j.opts.WritebackBytes < 0 || n <= 0 || (!closing && n < j.opts.WritebackBytes) {
		return
	}
	wb, ok := j.active.(writebacker)
	if !ok {
		return
	}
	_ = wb.StartWriteback(seg.kicked, n)
	seg.kicked = end
	j.mu.Lock()
	j.st.Writebacks++
	j.mu.Unlock()
}

// syncer is the goroutine that makes written records durable: while the
// flusher writes the next batch, it runs fdatasync for everything written
// so far whenever a waiter wants durability. Owned by the Journal, stopped
// by Close after the flusher.
func (j *Journal) syncer() {
	defer close(j.syncDone)
	for {
		j.mu.Lock()
		for !j.stopped && (j.err != nil || !(j.syncReq > j.durable && j.written > j.durable)) {
			j.mu.Unlock()
			<-j.syncKick
			j.mu.Lock()
		}
		stop := j.stopped
		j.mu.Unlock()
		if stop {
			return
		}
		if err := j.syncActive(); err != nil {
			j.fail(err)
		}
	}
}

// syncActive makes every written record durable: one fdatasync of the
// active segment, preceded by one of each older segment that rotation
// left unsynced (durability is per segment: a segment is synced when a
// waiter needs one of its records durable, not when it is closed). It
// holds syncMu but not ioMu: writes and rotations go on meanwhile, and
// what they add after its snapshot waits for the next sync.
func (j *Journal) syncActive() error {
	j.syncMu.Lock()
	defer j.syncMu.Unlock()
	j.mu.Lock()
	target, durable := j.written, j.durable
	seg, active := j.segs[len(j.segs)-1], j.active
	older := slices.Clone(j.unsynced)
	j.mu.Unlock()
	if target <= durable {
		return nil
	}
	if err := j.beforeSync(durable); err != nil {
		return err
	}
	start := time.Now()
	if !j.opts.NoSync {
		for _, s := range older {
			j.mu.Lock()
			skip := s.removed || s.last() <= durable
			j.mu.Unlock()
			if skip {
				continue
			}
			if err := s.f.Sync(); err != nil {
				return fmt.Errorf("sync %s: %w", s.path, err)
			}
			j.mu.Lock()
			j.st.Syncs++
			j.mu.Unlock()
		}
	}
	// Every record before seg is durable now: its header says so (made
	// durable by the fdatasync below, with the records), which is what
	// lets recovery tell damage in an older segment from a torn tail once
	// nothing is written after this sync. (seg may have been rotated
	// meanwhile; the claim holds all the same.)
	if !seg.olderDurable && seg.version >= 3 {
		hdr := AppendSegmentHeader(nil, SegmentHeader{Version: seg.version, Volume: j.opts.Volume, FirstSeq: seg.first, OlderDurable: true})
		if _, err := active.WriteAt(hdr, 0); err != nil {
			return fmt.Errorf("write segment header %s: %w", seg.path, err)
		}
		seg.olderDurable = true
	}
	if !j.opts.NoSync {
		if err := active.Sync(); err != nil {
			return fmt.Errorf("sync %s: %w", seg.path, err)
		}
		if j.opts.OnSync != nil {
			j.opts.OnSync(time.Since(start))
		}
	}
	j.mu.Lock()
	j.st.Syncs++
	j.durable = max(j.durable, target)
	j.broadcastLocked()
	j.mu.Unlock()
	j.dropUnsynced(j.syncedLocked)
	return nil
}

// syncedLocked reports whether an unsynced older segment no longer needs
// a sync (j.mu held).
func (j *Journal) syncedLocked(s *segment) bool { return s.removed || s.last() <= j.durable }

// rotate closes the active segment and starts a new one whose first
// record is first. The old segment is not synced (its writeback is
// started, see startWriteback): it goes on the unsynced list with its
// file open, and the next sync covers it (syncActive), or
// only closes it if nothing in it still needs one; retention may remove
// it before that, and its pages then die in the page cache. (A segment of
// an older format, appended to after an upgrade, is synced as its format
// promises.) It holds ioMu; a sync in progress does not block it.
func (j *Journal) rotate(first uint64) error {
	j.mu.Lock()
	old := j.segs[len(j.segs)-1]
	j.mu.Unlock()
	j.startWriteback(old, old.size, true)
	if old.version < 3 && !j.opts.NoSync {
		if err := j.active.Sync(); err != nil {
			return fmt.Errorf("sync %s: %w", old.path, err)
		}
		j.mu.Lock()
		j.st.Syncs++
		j.durable = max(j.durable, j.written) // the older segments were synced at rotation too
		j.broadcastLocked()
		j.mu.Unlock()
	}
	j.mu.Lock()
	olderDurable := j.durable >= old.last() && !slices.ContainsFunc(j.unsynced, func(s *segment) bool { return !j.syncedLocked(s) })
	j.mu.Unlock()
	// The header and the directory entry are made durable before any
	// record goes in: a power loss can then tear only records, never the
	// header in front of records that survived it.
	f, seg, err := j.createSegment(first, true, olderDurable)
	if err != nil {
		return err
	}
	j.mu.Lock()
	old.f = j.active
	j.unsynced = append(j.unsynced, old)
	j.active = f
	j.segs = append(j.segs, seg)
	j.total += seg.size
	j.broadcastLocked()
	j.mu.Unlock()
	if j.syncMu.TryLock() {
		// Close what needs no sync now, rather than at the next sync.
		j.dropUnsynced(j.syncedLocked)
		j.syncMu.Unlock()
	}
	j.poke() // the size bound may now apply (the flusher runs retention)
	return nil
}

type drop struct {
	name string
	from uint64 // first seq the consumer had not released
}

// retention enforces the size bound (bound) and then takes the oldest
// segments that every consumer has released (with no consumers, those
// the bound asks to go) out of the journal; the remover unlinks their
// files. Called with ioMu held.
func (j *Journal) retention() error {
	if err := j.bound(); err != nil {
		return err
	}
	queued := false
	defer func() {
		if queued {
			j.pokeRemove()
		}
	}()
	j.mu.Lock()
	defer j.mu.Unlock()
	for len(j.segs) > 1 {
		s := j.segs[0]
		last := s.last()
		released := len(j.consumers) > 0 || j.total > j.opts.MaxBytes
		for _, c := range j.consumers {
			if c.released < last {
				released = false
			}
		}
		if !released {
			break
		}
		j.segs = j.segs[1:]
		j.total -= s.size
		if s.first <= j.boundThrough {
			j.st.SegmentsDropped++
		} else {
			j.st.SegmentsRemoved++
		}
		j.removing = append(j.removing, s)
		queued = true
		j.broadcastLocked()
	}
	return nil
}

// remover is the goroutine, owned by the Journal and stopped by Close
// once nothing is left to remove, that unlinks the files of the segments
// retention took out (oldest first) and then syncs the directory. It runs
// outside ioMu: unlinking a large file can take tens of milliseconds
// (ext4 mounted with discard: 40–60 ms for 64 MiB), which writes no
// longer wait for. Nobody reads those files any more (they left segs
// first); a crash before the unlink or the directory sync leaves old
// segments in front of the chain, which recovery reads as it did when
// the crash came between retention and its unlink.
func (j *Journal) remover() {
	defer close(j.rmDone)
	for {
		j.mu.Lock()
		batch := slices.Clone(j.removing)
		failed := j.err != nil
		// Close pokes once the flusher exited: retention queues no more.
		stop := j.closing && j.stopped && (len(batch) == 0 || failed)
		j.mu.Unlock()
		if stop {
			return
		}
		if len(batch) == 0 || failed {
			<-j.rmKick
			continue
		}
		if err := j.removeFiles(batch); err != nil {
			j.fail(err)
		}
		j.mu.Lock()
		j.removing = j.removing[len(batch):]
		if len(j.removing) == 0 {
			j.removing = nil
		}
		j.broadcastLocked()
		j.mu.Unlock()
	}
}

// removeFiles unlinks the files of batch and syncs the directory; the
// segments are then gone for good, and a sync no longer needs to cover
// their records (removed).
func (j *Journal) removeFiles(batch []*segment) error {
	for _, s := range batch {
		if err := j.fs.Remove(s.path); err != nil {
			return fmt.Errorf("remove %s: %w", s.path, err)
		}
	}
	if j.opts.NoSync {
		return nil
	}
	if err := j.fs.SyncDir(j.opts.Dir); err != nil {
		return fmt.Errorf("sync dir %s: %w", j.opts.Dir, err)
	}
	j.mu.Lock()
	for _, s := range batch {
		s.removed = true
	}
	j.mu.Unlock()
	return nil
}

// awaitRemovals returns once the remover has unlinked every segment
// retention took out so far (or the journal failed). Called with ioMu
// held, so that retention queues no more meanwhile; the remover does not
// take ioMu.
func (j *Journal) awaitRemovals() {
	j.mu.Lock()
	defer j.mu.Unlock()
	for len(j.removing) > 0 && j.err == nil {
		ch := j.sigLocked()
		j.mu.Unlock()
		<-ch
		j.mu.Lock()
	}
}

// bound enforces MaxBytes when the segments exceed it: the oldest
// segments whose removal brings the journal back within the bound (never
// the active one) must go, so every droppable consumer that has not
// released them is dropped past them at once — OnDrop with the regions
// of the records it had not released, its position moved to the last
// seq of those segments — and a non-droppable consumer that holds them
// is asked to release them (OnPressure), which it does by checkpointing;
// until then the journal stays over the bound. It runs once per rotation
// while the journal is over the bound (see workLocked) and after every
// release. Called with ioMu held.
func (j *Journal) bound() error {
	j.mu.Lock()
	j.bounded = j.segs[len(j.segs)-1].first
	if j.total <= j.opts.MaxBytes || len(j.segs) <= 1 {
		j.mu.Unlock()
		return nil
	}
	k, freed := 0, int64(0)
	for k < len(j.segs)-1 && j.total-freed > j.opts.MaxBytes {
		freed += j.segs[k].size
		k++
	}
	through := j.segs[k-1].last()
	segs := slices.Clone(j.segs[:k])
	var drops []drop
	var blocker string
	var blockerAt uint64
	for name, c := range j.consumers {
		switch {
		case c.released >= through:
		case c.droppable:
			drops = append(drops, drop{name, c.released + 1})
		case blocker == "" || c.released < blockerAt:
			blocker, blockerAt = name, c.released
		}
	}
	slices.SortFunc(drops, func(a, b drop) int { return cmp.Compare(a.name, b.name) })
	j.boundThrough = max(j.boundThrough, through)
	ask := blocker != "" && j.pressured < through
	if ask {
		j.pressured = through
	}
	total := j.total
	j.mu.Unlock()

	if len(drops) > 0 {
		regs := make(map[string][]Region, len(drops))
		for _, s := range segs {
			r, err := j.dropRegions(s, drops)
			if err != nil {
				return err
			}
			for name, rs := range r {
				regs[name] = append(regs[name], rs...)
			}
		}
		// Consumers hear about a drop before the records can disappear.
		for _, d := range drops {
			rs := CoalesceRegions(regs[d.name])
			j.log.Warn("journal: size bound drops records a consumer has not released",
				"consumer", d.name, "from", d.from, "through", through, "regions", len(rs), "bytes", total, "max", j.opts.MaxBytes)
			if j.opts.OnDrop != nil {
				j.opts.OnDrop(d.name, through, rs)
			}
		}
		j.mu.Lock()
		for _, d := range drops {
			if c, ok := j.consumers[d.name]; ok && c.released < through {
				c.released = through
			}
		}
		j.broadcastLocked()
		j.mu.Unlock()
	}
	if ask {
		j.log.Warn("journal: over its size bound and a non-droppable consumer holds the oldest records; asking it to release them",
			"consumer", blocker, "released", blockerAt, "through", through, "bytes", total, "max", j.opts.MaxBytes)
		if j.opts.OnPressure != nil {
			j.opts.OnPressure(blocker, through)
		}
	}
	return nil
}

// syncUnsynced makes the records of every older segment that rotation
// left unsynced durable, and closes them all (TruncateAfter, which makes
// everything it keeps durable). Called with syncMu held.
func (j *Journal) syncUnsynced() error {
	j.mu.Lock()
	list := slices.Clone(j.unsynced)
	j.mu.Unlock()
	for _, s := range list {
		j.mu.Lock()
		skip := j.syncedLocked(s)
		j.mu.Unlock()
		if !skip && !j.opts.NoSync {
			if err := s.f.Sync(); err != nil {
				return fmt.Errorf("sync %s: %w", s.path, err)
			}
			j.mu.Lock()
			j.st.Syncs++
			j.mu.Unlock()
		}
		j.dropUnsynced(func(x *segment) bool { return x == s })
	}
	return nil
}

// dropUnsynced closes and forgets the unsynced older segments for which
// drop (called with j.mu held) reports true: synced since, or removed.
// Called with syncMu held: nobody else uses those files then.
func (j *Journal) dropUnsynced(drop func(*segment) bool) {
	j.mu.Lock()
	var gone []*segment
	kept := j.unsynced[:0]
	for _, s := range j.unsynced {
		if drop(s) {
			gone = append(gone, s)
		} else {
			kept = append(kept, s)
		}
	}
	clear(j.unsynced[len(kept):])
	j.unsynced = kept
	j.mu.Unlock()
	for _, s := range gone {
		// Nothing is lost by a failed close: the data was synced, or the
		// file is gone.
		_ = s.f.Close()
		s.f = nil
	}
}

// dropRegions reads segment s and returns, for every drop, the coalesced
// disk regions touched by the records from d.from to the segment's end.
func (j *Journal) dropRegions(s *segment, drops []drop) (map[string][]Region, error) {
	f, err := j.fs.Open(s.path)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", s.path, err)
	}
	defer f.Close()
	type touch struct {
		seq uint64
		r   Region
	}
	var touched []touch
	it := segIter{f: f, path: s.path, size: s.size, off: SegmentHeaderSize, chunk: scanChunk}
	for n := uint64(0); n < s.count; n++ {
		rec, _, err := it.next()
		if err != nil {
			return nil, err
		}
		if rec.Op != OpEpoch && rec.Length > 0 {
			touched = append(touched, touch{rec.Seq, Region{rec.Offset, uint64(rec.Length)}})
		}
	}
	out := make(map[string][]Region, len(drops))
	for _, d := range drops {
		var rs []Region
		for _, t := range touched {
			if t.seq >= d.from {
				rs = append(rs, t.r)
			}
		}
		out[d.name] = CoalesceRegions(rs)
	}
	return out, nil
}

// CoalesceRegions sorts rs by offset and merges overlapping and adjacent
// regions. It reorders rs in place and returns the merged prefix.
func CoalesceRegions(rs []Region) []Region {
	if len(rs) == 0 {
		return nil
	}
	slices.SortFunc(rs, func(a, b Region) int { return cmp.Compare(a.Offset, b.Offset) })
	out := rs[:1]
	for _, r := range rs[1:] {
		p := &out[len(out)-1]
		if r.Offset <= p.Offset+p.Length {
			p.Length = max(p.Length, r.Offset+r.Length-p.Offset)
			continue
		}
		out = append(out, r)
	}
	return out
}
