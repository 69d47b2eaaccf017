package mirror

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"runtime"
	"sync"
	"syscall"
	"time"

	"github.com/blockmirror/blockmirror/internal/vfs"
	"github.com/blockmirror/blockmirror/journal"
	"github.com/blockmirror/blockmirror/mirror/core"
	"github.com/blockmirror/blockmirror/store"
)

// VolumeOptions tune a primary volume.
type VolumeOptions struct {
	// CheckpointInterval is how often the store is synced and the journal
	// released up to the applied seq (default 5 s).
	CheckpointInterval time.Duration
	// CheckpointBytes forces a checkpoint once this many bytes were
	// journaled since the last one (default 1 GiB; it bounds the replay
	// after a crash).
	CheckpointBytes int64
	// OnAppend, when set, gets how long each write waited for the local
	// journal (durable: FUA writes waiting for fdatasync); for metrics.
	OnAppend func(durable bool, d time.Duration)
	// IndirectMin: writes of at least this many bytes (4 KiB-aligned)
	// take the indirect path — their data is written once, to the image,
	// and the journal holds their piece checksums (docs/design.md,
	// "Indirect writes"). 0 disables it (every write is journaled with its
	// data). The daemon's default is config.DefaultIndirectMin.
	IndirectMin int
	// Lease, when set, gates every completion of a write, trim, zero or
	// flush on a coordinator's write lease (see WriteLease); nil: none.
	Lease  *WriteLease
	Logger *slog.Logger

	// onSubmit (tests) sees every record submitted to the journal, under
	// the volume's ordering lock, with its request's context.
	onSubmit func(ctx context.Context, rec journal.Record)
}

func (o VolumeOptions) withDefaults() VolumeOptions {
	if o.CheckpointInterval <= 0 {
		o.CheckpointInterval = 5 * time.Second
	}
	if o.CheckpointBytes <= 0 {
		o.CheckpointBytes = 1 << 30
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return o
}

// Replicator is the replication side of a primary volume. The volume calls
// Admit under its ordering lock, so seqs are assigned in journal order; the
// other methods are called without it.
type Replicator interface {
	// Admit assigns the seq of a new write-like request (id is unique per
	// request), or fails (fenced).
	// bytes is the request's length, for lag accounting.
	Admit(id uint64, bytes int, fua bool) (seq uint64, err error)
	// AdmitFlush registers a flush covering every seq admitted so far.
	AdmitFlush(id uint64) error
	// LocalDone reports that the local part of request id is done and
	// waits until the request may be acknowledged to the client.
	LocalDone(ctx context.Context, id uint64) error
	// WaitsForMirrors reports whether a write (FUA or not) is acknowledged
	// only after mirrors acked it, i.e. whether sending its record comes
	// before its local writes in importance.
	WaitsForMirrors(fua bool) bool
	// Forget withdraws request id (admitted, but the volume will not call
	// LocalDone for it, or no longer waits for it): it must not stay
	// pending.
	Forget(id uint64)
}

// Volume is a primary's volume: the nbd.Device that journals every change
// before applying it to the store, and replicates it through a Replicator.
//
// Ordering: seqs are assigned and records submitted to the journal under
// v.mu, so journal order is seq order. Store writes happen after the
// record is written to the journal; two overlapping writes in flight are
// applied to the store in seq order (the later waits for the earlier), so
// the primary's store ends as a mirror's does, which applies in seq order.
type Volume struct {
	node *Node
	st   *store.File
	j    *journal.Journal
	al   *activityLog
	repl Replicator
	opts VolumeOptions
	log  *slog.Logger

	fastZero bool
	epoch    uint64

	mu       sync.Mutex
	nextID   uint64
	lastSeq  uint64
	inflight map[uint64]*extent   // by seq
	readers  map[*extent]struct{} // stable reads in progress
	// pending: indirect writes writing the image before they take a seq;
	// a write or stable read overlapping one waits until it has its seq.
	pending map[*extent]struct{}
	// chunks: for each IndirectPiece chunk of the disk that an indirect
	// record still in the journal covers, that record's seq and the
	// first later write that touched the chunk (see indirectChunk).
	chunks map[uint64]*indirectChunk
	// cpSeq is the last checkpoint saved (records ≤ it are never
	// replayed).
	cpSeq uint64
	// cpWait is closed (and replaced by nil) at the next checkpoint.
	cpWait chan struct{}
	// open holds the ids of the requests admitted and not yet completed
	// (or failed); openWait is closed (and replaced by nil) when one ends.
	open     map[uint64]uint64 // id → seq (a write) or the last seq it covers (a flush)
	openWait chan struct{}
	sinceCP  int64
	cpKick   chan struct{}
	readOnly error // non-nil: writes fail with it (fenced, demoted)
	// failed is sticky: the journal or the store failed under a record that
	// was already submitted. Every later write fails with it, and no
	// checkpoint passes the record (it stays in inflight), so the journal
	// keeps it for the replay at the next start.
	failed error
	// imageAhead: an indirect write reached the store but no journal
	// record (changeIndirect); a demotion then resyncs this node.
	imageAhead bool
	// idle is closed (and replaced by nil) when inflight becomes empty;
	// Quiesce waits for it.
	idle chan struct{}

	stop context.CancelFunc
	done chan struct{}
	// unheld is closed when the volume is demoted or closed: requests held
	// for a write lease fail at once.
	unheld     chan struct{}
	unheldOnce sync.Once
}

type extent struct {
	off, end uint64
	done     chan struct{}
}

func (e *extent) overlaps(off, end uint64) bool { return e.off < end && off < e.end }

// indirectChunk is the state of one IndirectPiece-sized chunk of the disk
// covered by an indirect record: seq, the latest such record, and over,
// the seq of the first later record (any op) that touched the chunk, 0
// while none did. An indirect record's data can be read back from the
// image only from chunks where it is still seq with over 0.
type indirectChunk struct{ seq, over uint64 }

// NewVolume serves node as a primary. repl may be nil (no mirrors). The
// volume starts a checkpoint goroutine that Close stops.
func NewVolume(node *Node, repl Replicator, opts VolumeOptions) (*Volume, error) {
	opts = opts.withDefaults()
	m := node.Meta()
	if m.Role != RolePrimary {
		return nil, fmt.Errorf("mirror: volume %s in %s is a %s; promote it before serving writes", m.Volume, node.Dir, m.Role)
	}
	if err := node.BeginWrites(); err != nil {
		return nil, err
	}
	m = node.Meta()
	ctx, cancel := context.WithCancel(context.Background())
	v := &Volume{
		node: node, st: node.Store, j: node.Journal, repl: repl, opts: opts, log: opts.Logger,
		inflight: make(map[uint64]*extent),
		readers:  make(map[*extent]struct{}),
		pending:  make(map[*extent]struct{}),
		chunks:   make(map[uint64]*indirectChunk),
		open:     make(map[uint64]uint64),
		cpSeq:    m.CheckpointSeq,
		lastSeq:  node.Journal.LastSeq(),
		epoch:    m.Epoch,
		cpKick:   make(chan struct{}, 1),
		stop:     cancel,
		done:     make(chan struct{}),
		unheld:   make(chan struct{}),
		al:       node.activity(),
	}
	if m.FencedBy > m.Epoch {
		v.readOnly = fmt.Errorf("%w (a node is primary in epoch %d, this node was in epoch %d): demote it and run it as a mirror", core.ErrFenced, m.FencedBy, m.Epoch)
		v.log.Error("this primary was fenced in an earlier run; every write fails", "epoch", m.Epoch, "fenced_by", m.FencedBy)
	}
	if err := v.loadIndirect(); err != nil {
		return nil, err
	}
	v.fastZero = probeFastZero(node.fs, node.Dir)
	if s, ok := repl.(interface{ setSource(stableReader) }); ok {
		s.setSource(v)
	}
	go v.checkpointLoop(ctx)
	node.setCheckpointKick(kickChannel(v.cpKick))
	return v, nil
}

// probeFastZero tells whether the filesystem holding dir zeroes ranges
// without writing them (FALLOC_FL_ZERO_RANGE), using a scratch file.
func probeFastZero(fsys vfs.FS, dir string) bool {
	p := filepath.Join(dir, ".zeroprobe")
	s, err := store.CreateFS(fsys, p, 1<<20)
	if err != nil {
		return false
	}
	defer fsys.Remove(p)
	defer s.Close()
	return s.ZeroFast(0, 1<<20, false) == nil
}

// Size implements nbd.Device.
func (v *Volume) Size() int64 { return v.st.Size() }

// ReadAt implements nbd.Device.
func (v *Volume) ReadAt(ctx context.Context, p []byte, off int64) error {
	_, err := v.st.ReadAt(p, off)
	return err
}

// WriteAt implements nbd.Device.
func (v *Volume) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	data := make([]byte, len(p))
	copy(data, p)
	return v.WriteOwned(ctx, data, off, fua)
}

// WriteOwned is WriteAt for a caller that never touches p again (the NBD
// server's nbd.OwningWriter): the journal keeps p itself, without the
// copy WriteAt makes — for a 1 MiB write one memmove of 1 MiB less. A
// p whose capacity exceeds its length (the server's buffers are sized
// in powers of two) is copied all the same, so the journal's memory
// bound counts what it holds.
func (v *Volume) WriteOwned(ctx context.Context, p []byte, off int64, fua bool) error {
	if cap(p) != len(p) {
		p = bytes.Clone(p)
	}
	return v.change(ctx, journal.Record{Op: journal.OpWrite, Offset: uint64(off), Length: uint32(len(p)), Data: p}, fua)
}

// Trim implements nbd.Device.
func (v *Volume) Trim(ctx context.Context, off, length int64, fua bool) error {
	return v.changeRange(ctx, journal.OpTrim, off, length, fua)
}

// WriteZeroes implements nbd.Device.
func (v *Volume) WriteZeroes(ctx context.Context, off, length int64, f ZeroFlagsView) error {
	if f.FastZero && !v.fastZero {
		return fmt.Errorf("mirror: fast zero: %w", syscall.ENOTSUP)
	}
	return v.changeRange(ctx, journal.OpZero, off, length, f.FUA)
}

// ZeroFlagsView mirrors nbd.ZeroFlags; mirror does not import nbd, and the
// nbd adapter in cmd converts.
type ZeroFlagsView struct{ FUA, NoHole, FastZero bool }

// changeRange journals a trim or zero, splitting ranges longer than a
// record can describe.
func (v *Volume) changeRange(ctx context.Context, op journal.Op, off, length int64, fua bool) error {
	const maxLen = 1 << 30
	for length > 0 {
		n := min(length, maxLen)
		if err := v.change(ctx, journal.Record{Op: op, Offset: uint64(off), Length: uint32(n)}, fua); err != nil {
			return err
		}
		off += n
		length -= n
	}
	return nil
}

func (v *Volume) change(ctx context.Context, rec journal.Record, fua bool) error {
	if rec.Offset+uint64(rec.Length) > uint64(v.st.Size()) {
		return fmt.Errorf("mirror: %v [%d, +%d) beyond the end of the volume: %w", rec.Op, rec.Offset, rec.Length, syscall.ENOSPC)
	}
	end := rec.Offset + uint64(rec.Length)
	indirect := v.indirectSize(&rec)
	v.mu.Lock()
	// Room in the journal's queue first, while nothing is committed: once
	// a seq is assigned its record must be submitted, so the submission
	// below must not block. All submissions happen under v.mu, so room
	// seen under it cannot fill before the submission; the wait for room
	// happens outside it, so that it can be cancelled. An overlapping
	// indirect write that has not taken its seq yet comes first: this
	// write's seq must follow it, as its store write does.
	for {
		if err := v.writableLocked(); err != nil {
			v.mu.Unlock()
			return err
		}
		if w := v.pendingOverlapLocked(rec.Offset, end); w != nil {
			v.mu.Unlock()
			select {
			case <-w:
			case <-ctx.Done():
				return ctx.Err()
			}
			v.mu.Lock()
			continue
		}
		if waited, err := v.overwriteWaitLocked(ctx, rec.Offset, end); err != nil {
			return err // unlocked
		} else if waited {
			continue
		}
		if indirect {
			return v.changeIndirect(ctx, rec, fua) // unlocks v.mu
		}
		if v.j.HasRoom(&rec) {
			break
		}
		v.mu.Unlock()
		if err := v.j.WaitRoom(ctx, &rec); err != nil {
			return fmt.Errorf("mirror: %v [%d, +%d): %w", rec.Op, rec.Offset, rec.Length, err)
		}
		v.mu.Lock()
	}
	rec.Epoch = v.epoch
	id := v.newIDLocked()
	defer v.closeID(id)
	if v.repl != nil {
		seq, err := v.repl.Admit(id, int(rec.Length), fua)
		if err != nil {
			v.mu.Unlock()
			return err
		}
		rec.Seq = seq
	} else {
		rec.Seq = v.lastSeq + 1
	}
	v.open[id] = rec.Seq
	// Deferred: this goroutine writes the record itself (WriteThrough
	// below) unless a write is already under way. Not cancellable: the seq
	// is taken.
	if err := v.j.SubmitDeferred(context.Background(), rec); err != nil {
		// The journal failed or closed (it refuses every later record too):
		// the seq can never be journaled, so the volume fails.
		err = fmt.Errorf("mirror: journal seq %d: %w", rec.Seq, err)
		v.failLocked(err)
		v.mu.Unlock()
		v.forget(id)
		return err
	}
	v.lastSeq = rec.Seq
	if v.opts.onSubmit != nil {
		v.opts.onSubmit(ctx, rec)
	}
	v.overwriteLocked(rec.Seq, rec.Offset, end)
	waits := v.overlapsLocked(rec.Offset, end)
	me := &extent{off: rec.Offset, end: end, done: make(chan struct{})}
	v.inflight[rec.Seq] = me
	v.sinceCP += int64(rec.Length)
	kick := v.sinceCP >= v.opts.CheckpointBytes
	alone := len(v.inflight) == 1
	v.mu.Unlock()
	if alone && v.repl != nil && v.repl.WaitsForMirrors(fua) {
		// The only write in flight, and one that waits for mirrors: the
		// record is queued and the sender runnable; let it put the record
		// on the wire before this goroutine spends its time slice on the
		// local journal and image writes (with one P the sender would
		// otherwise wait for them). With more writes in flight the sender
		// is busy anyway; in async mode the local writes come first.
		runtime.Gosched()
	}
	if kick {
		select {
		case v.cpKick <- struct{}{}:
		default:
		}
	}

	// The record is submitted and may already be on its way to the
	// mirrors: the local part (journal write, then store) completes
	// whatever happens to ctx, so the primary's image holds every record
	// it shipped.
	start := time.Now()
	err := v.j.WriteThrough(context.Background(), rec.Seq)
	if v.opts.OnAppend != nil && err == nil {
		v.opts.OnAppend(false, time.Since(start))
	}
	for _, w := range waits {
		<-w // earlier overlapping writes reach the store first
	}
	if err == nil {
		// Write intent first: after a power loss the image may keep this
		// write although its journal record is lost (activity.go).
		if err = v.al.Ensure(context.Background(), rec.Offset, uint64(rec.Length), rec.Seq); err == nil {
			if err = ApplyRecord(v.st, rec); err != nil {
				err = fmt.Errorf("mirror: apply seq %d to the store: %w", rec.Seq, err)
			}
		}
	} else {
		err = fmt.Errorf("mirror: journal seq %d: %w", rec.Seq, err)
	}
	v.mu.Lock()
	if err != nil {
		// The record stays in inflight: no checkpoint passes it, so the
		// journal keeps it and the next start replays it.
		v.failLocked(err)
	} else {
		v.doneLocked(rec.Seq)
	}
	v.mu.Unlock()
	close(me.done)
	if err != nil {
		v.forget(id)
		return err
	}
	return v.finish(ctx, id, rec.Seq, fua, start)
}

// finish completes request id once its local part is done: with fua, its
// record seq must be durable first; start is when the local part began.
func (v *Volume) finish(ctx context.Context, id, seq uint64, fua bool, start time.Time) error {
	if fua {
		if err := v.j.Wait(ctx, seq, journal.Durable); err != nil {
			v.forget(id)
			return err
		}
		if v.opts.OnAppend != nil {
			v.opts.OnAppend(true, time.Since(start))
		}
	}
	return v.completed(ctx, id)
}

// completed waits until request id may be acknowledged: its mirrors (the
// replicator's rule), then the write lease, read at this last moment.
func (v *Volume) completed(ctx context.Context, id uint64) error {
	if v.repl != nil {
		if err := v.repl.LocalDone(ctx, id); err != nil {
			return err
		}
	}
	return v.opts.Lease.complete(ctx, v.unheld)
}

// releaseHeld fails every request held for a write lease, now and later.
func (v *Volume) releaseHeld() { v.unheldOnce.Do(func() { close(v.unheld) }) }

// writableLocked is the error writes fail with now, or nil.
func (v *Volume) writableLocked() error {
	if v.failed != nil {
		return v.failed
	}
	return v.readOnly
}

// failLocked makes the volume fail every later write with err (the first
// failure is kept).
func (v *Volume) failLocked(err error) {
	if v.failed == nil {
		v.failed = fmt.Errorf("%w; the volume stopped accepting writes — restart it (the journal replays every record it holds)", err)
		v.log.Error("volume failed: the journal or the disk image returned an error under a submitted record", "err", err)
	}
}

// doneLocked removes a completed write from inflight.
func (v *Volume) doneLocked(seq uint64) {
	delete(v.inflight, seq)
	v.idleLocked()
}

// idleLocked wakes Quiesce once no write is in flight or pending.
func (v *Volume) idleLocked() {
	if len(v.inflight) == 0 && len(v.pending) == 0 && v.idle != nil {
		close(v.idle)
		v.idle = nil
	}
}

// forget tells the replicator that request id will not complete through
// LocalDone.
func (v *Volume) forget(id uint64) {
	if v.repl != nil {
		v.repl.Forget(id)
	}
}

// Flush implements nbd.Device: every write completed before it is durable
// in the journal (and, with replication, on the mirrors the mode asks for).
func (v *Volume) Flush(ctx context.Context) error {
	var id uint64
	if v.repl != nil {
		v.mu.Lock()
		id = v.newIDLocked()
		v.open[id] = v.lastSeq // what it covers
		err := v.repl.AdmitFlush(id)
		v.mu.Unlock()
		defer v.closeID(id)
		if err != nil {
			return err
		}
	}
	if err := v.j.Sync(ctx); err != nil {
		v.forget(id)
		return err
	}
	return v.completed(ctx, id)
}

// ReadStable reads [off, off+len(p)) as it is after every record ≤ tag
// that touches it and before any later one: overlapping writes in flight
// finish first, and overlapping writes admitted meanwhile wait for the
// read. Resync and verify use it to tag the chunks they read. A failed
// volume fails it: its store may lack records ≤ tag (the write that
// failed is not in flight any more, nor in the store).
func (v *Volume) ReadStable(ctx context.Context, p []byte, off int64) (tag uint64, err error) {
	end := uint64(off) + uint64(len(p))
	me := &extent{off: uint64(off), end: end, done: make(chan struct{})}
	v.mu.Lock()
	for {
		w := v.pendingOverlapLocked(uint64(off), end)
		if w == nil {
			break
		}
		v.mu.Unlock()
		select {
		case <-w:
		case <-ctx.Done():
			return 0, ctx.Err()
		}
		v.mu.Lock()
	}
	tag = v.lastSeq
	var waits []chan struct{}
	for _, e := range v.inflight {
		if e.overlaps(uint64(off), end) {
			waits = append(waits, e.done)
		}
	}
	v.readers[me] = struct{}{}
	v.mu.Unlock()
	defer func() {
		v.mu.Lock()
		delete(v.readers, me)
		v.mu.Unlock()
		close(me.done)
	}()
	for _, w := range waits {
		select {
		case <-w:
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
	v.mu.Lock()
	failed := v.failed
	v.mu.Unlock()
	if failed != nil {
		return 0, failed
	}
	_, err = v.st.ReadAt(p, off)
	return tag, err
}

// SetReadOnly makes every later write fail with err (nil allows writes
// again). Used when the volume is fenced or demoted.
func (v *Volume) SetReadOnly(err error) {
	v.mu.Lock()
	v.readOnly = err
	v.mu.Unlock()
}

// Quiesce makes every later write fail with err and waits until the
// writes in flight have reached the store (or ctx ends, or the volume
// failed). After it, every journaled record is in the store.
func (v *Volume) Quiesce(ctx context.Context, err error) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.readOnly = err
	for len(v.inflight) > 0 || len(v.pending) > 0 {
		if v.failed != nil {
			return v.failed
		}
		if v.idle == nil {
			v.idle = make(chan struct{})
		}
		ch := v.idle
		v.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			v.mu.Lock()
			return ctx.Err()
		}
		v.mu.Lock()
	}
	return nil
}

// Demote stops the volume taking writes, waits for the writes in flight,
// makes everything durable (locally and, as the mode asks, on mirrors) and
// turns the node into a mirror (see Demote). On failure the volume takes
// writes again.
func (v *Volume) Demote(ctx context.Context, splitBrainLoser bool) error {
	if v.opts.Lease != nil {
		// Under a coordinator the demotion completes nothing from now on
		// (the lease is revoked already): held requests fail.
		v.releaseHeld()
	}
	if err := v.Quiesce(ctx, ErrDemoted); err != nil {
		v.SetReadOnly(nil)
		return fmt.Errorf("mirror: demote: waiting for the writes in flight: %w", err)
	}
	if err := v.Flush(ctx); err != nil {
		v.log.Warn("flush before demotion failed; demoting anyway (the journal is synced by the demotion)", "err", err)
	}
	v.mu.Lock()
	ahead := v.imageAhead
	v.mu.Unlock()
	if err := demote(v.node, splitBrainLoser, ahead); err != nil {
		v.SetReadOnly(nil)
		return err
	}
	return nil
}

// appliedThrough is the highest seq such that every record ≤ it is in the
// store.
func (v *Volume) appliedThrough() uint64 {
	v.mu.Lock()
	defer v.mu.Unlock()
	through := v.lastSeq
	for seq := range v.inflight {
		if seq <= through {
			through = seq - 1
		}
	}
	v.sinceCP = 0
	return through
}

func (v *Volume) checkpointLoop(ctx context.Context) {
	defer close(v.done)
	t := time.NewTicker(v.opts.CheckpointInterval)
	defer t.Stop()
	var last uint64
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-v.cpKick:
		}
		seq := v.appliedThrough()
		if seq == last {
			continue
		}
		if err := v.node.Checkpoint(seq); err != nil {
			v.log.Error("checkpoint failed; the journal keeps the records until it succeeds", "seq", seq, "err", err)
			continue
		}
		v.checkpointed(seq)
		if err := v.al.Checkpointed(seq, false); err != nil {
			v.log.Warn("trimming the activity log failed; a crash now would compare more extents with the mirrors", "err", err)
		}
		last = seq
	}
}

// Close stops the checkpoint loop and takes a final checkpoint; when
// every record is then durable and in the store it records a clean stop
// (see Node.BeginWrites). It does not close the node. Writes still in
// flight must have ended (the NBD server waits for them).
func (v *Volume) Close() error {
	v.node.setCheckpointKick(nil)
	v.releaseHeld()
	v.stop()
	<-v.done
	if err := v.j.Sync(context.Background()); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	through := v.appliedThrough()
	if err := v.node.Checkpoint(through); err != nil {
		return err
	}
	v.mu.Lock()
	clean := v.failed == nil && len(v.inflight) == 0 && through == v.lastSeq
	v.mu.Unlock()
	if !clean {
		return nil // the next start treats this run as unclean
	}
	if err := v.al.Checkpointed(through, true); err != nil {
		return err
	}
	return v.node.EndWrites()
}
