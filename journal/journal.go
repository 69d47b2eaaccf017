package journal

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/blockmirror/blockmirror/internal/vfs"
)

// Sentinel errors; test with errors.Is.
var (
	// ErrCorrupt: a segment holds bytes that are not a valid record or
	// header outside the torn tail of the last segment. The error names the
	// file and byte offset.
	ErrCorrupt = errors.New("journal: corrupt")
	// ErrVersion: a segment was written in an unknown format version.
	ErrVersion = errors.New("journal: unsupported format version")
	// ErrForeignVolume: a segment in Dir belongs to another volume UUID.
	ErrForeignVolume = errors.New("journal: segment belongs to another volume")
	// ErrInvalid: a record or argument violates the API's constraints.
	ErrInvalid = errors.New("journal: invalid record")
	// ErrSeq: a submitted record's seq is not LastSeq()+1.
	ErrSeq = errors.New("journal: out-of-order seq")
	// ErrGone: the requested records were removed by retention.
	ErrGone = errors.New("journal: records gone")
	// ErrTruncated: the records a reader or waiter was positioned on were
	// removed by TruncateAfter.
	ErrTruncated = errors.New("journal: records truncated")
	// ErrNotEmpty: SetStart on a journal that holds records.
	ErrNotEmpty = errors.New("journal: not empty")
	// ErrClosed: the journal (or reader) is closed.
	ErrClosed = errors.New("journal: closed")
	// ErrFailed: a write, fsync or file operation failed. The failure is
	// sticky: every later call and every waiter gets it, because after a
	// failed fsync the kernel may have dropped dirty pages and nothing
	// written since the last successful sync can be trusted. Close and
	// reopen (which re-verifies the files) to continue.
	ErrFailed = errors.New("journal: failed")
	// ErrConsumer: unknown or duplicate consumer name.
	ErrConsumer = errors.New("journal: consumer")
)

// Defaults for Options fields left zero.
const (
	DefaultSegmentBytes = 64 << 20
	DefaultMaxBytes     = 8 << 30
	DefaultTailBytes    = 64 << 20
	DefaultQueueBytes   = 64 << 20
	// DefaultWritebackBytes is the default dirty window (see
	// Options.WritebackBytes and docs/tuning.md for the measurements).
	DefaultWritebackBytes = 8 << 20

	// minSegmentBytes keeps segments large enough to hold a header and a
	// small record; tests use small segments to exercise rotation.
	minSegmentBytes = 1 << 10

	// indexStep is the spacing, in bytes, of the sparse in-memory index of
	// record offsets within a segment.
	indexStep = 64 << 10

	// scanChunk is the read size used when verifying segments at open.
	scanChunk = 1 << 20
)

// Options configures a Journal. Zero fields take the documented defaults.
type Options struct {
	// Dir holds the segment files; created if missing. Required.
	Dir string
	// Volume is the volume UUID written into every segment header.
	// Segments carrying another UUID make Open fail (ErrForeignVolume).
	// Must not be all zero.
	Volume [16]byte
	// SegmentBytes bounds a segment file's size (default 64 MiB, minimum
	// 1 KiB). A record larger than that gets a segment of its own.
	SegmentBytes int64
	// MaxBytes is the size bound of the journal (default 8 GiB). When the
	// segments exceed it (checked whenever a segment starts, and after
	// releases), the oldest segments whose removal brings the journal back
	// within it must go: droppable consumers that have not released them
	// are dropped past them at once (OnDrop), a non-droppable one is asked
	// to release them (OnPressure).
	MaxBytes int64
	// TailBytes bounds the in-memory tail of recent records served to
	// readers without touching the files (default 64 MiB). Records not yet
	// written are always kept in memory in addition to this bound.
	TailBytes int64
	// QueueBytes bounds the records submitted but not yet written; Submit
	// blocks while it is exceeded (default 64 MiB). A single record larger
	// than the bound is still accepted when the queue is empty.
	QueueBytes int64
	// WritebackBytes bounds the dirty window: the bytes of the active
	// segment that were written but neither handed to the disk's
	// writeback nor asked to be durable. Once more are waiting, their
	// writeback is started (sync_file_range WRITE, which does not wait and
	// promises nothing), and a segment's rest when rotation closes it, so
	// a sync never has more than about this much to write back; a window
	// much larger than that lets a FLUSH wait for everything written since
	// the previous one. Default 8 MiB; negative leaves writeback to the
	// kernel alone (the dirty pages then reach the disk at the next sync or
	// when the kernel's dirty limits say).
	WritebackBytes int64
	// NoSync skips fdatasync (for tests only): Durable then means Written.
	NoSync bool
	// Logger receives recovery notes and warnings; nil discards.
	Logger *slog.Logger
	// OnDrop is called when the size bound drops records a droppable
	// consumer had not released: regions are the coalesced disk ranges
	// those records touched (sorted by offset), through the highest seq
	// dropped. It is called before the records disappear; the consumer's
	// position then moves past through. It runs
	// on the journal's flush goroutine and must not call Wait, Append,
	// Sync, TruncateAfter, SetStart or Close (Release and the accessors are
	// fine).
	OnDrop func(consumer string, through uint64, regions []Region)
	// OnPressure is called when the journal is over MaxBytes and the
	// non-droppable consumer named (of several, the one furthest behind)
	// has not released records through through: releasing them (a
	// checkpoint, for a store) lets the journal shrink back within the
	// bound. Called once for each higher through, from the flush
	// goroutine, with the same restrictions as OnDrop: it must not block
	// (kick the checkpoint, do not take it).
	OnPressure func(consumer string, through uint64)
	// BeforeSync is called before a sync that makes indirect records
	// durable (written since the last sync), and must make the data they
	// describe durable (for a volume, fdatasync its disk image): an
	// indirect record may be durable only once its data is. It runs on the
	// sync goroutine (or a closing or truncating caller) with no journal
	// lock held; an error fails the journal like a failed fdatasync.
	// nil: a journal holding indirect records must not be synced — Submit
	// refuses them without it.
	BeforeSync func() error
	// OnSync, when set, is called from the sync goroutine with the duration
	// of each fdatasync of group commit (for metrics); it must not block.
	OnSync func(d time.Duration)
	// FS is the file system to use; nil means the operating system's
	// (vfs.OS).
	FS vfs.FS
	// TestWriteDelay (tests only) delays every write pass, so that readers
	// of the memory tail (a primary's senders) run ahead of the local
	// journal. Only a test build of the daemon can set it.
	TestWriteDelay time.Duration
}

func (o Options) withDefaults() Options {
	if o.SegmentBytes == 0 {
		o.SegmentBytes = DefaultSegmentBytes
	}
	if o.MaxBytes == 0 {
		o.MaxBytes = DefaultMaxBytes
	}
	if o.TailBytes == 0 {
		o.TailBytes = DefaultTailBytes
	}
	if o.QueueBytes == 0 {
		o.QueueBytes = DefaultQueueBytes
	}
	if o.WritebackBytes == 0 {
		o.WritebackBytes = DefaultWritebackBytes
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.FS == nil {
		o.FS = vfs.OS
	}
	return o
}

func (o Options) validate() error {
	switch {
	case o.Dir == "":
		return errors.New("journal: Options.Dir is required")
	case o.Volume == [16]byte{}:
		return errors.New("journal: Options.Volume (UUID) must not be all zero")
	case o.SegmentBytes < minSegmentBytes:
		return fmt.Errorf("journal: Options.SegmentBytes %d is below the minimum %d", o.SegmentBytes, minSegmentBytes)
	case o.MaxBytes < 0:
		return fmt.Errorf("journal: Options.MaxBytes %d is negative", o.MaxBytes)
	case o.TailBytes < 0:
		return fmt.Errorf("journal: Options.TailBytes %d is negative", o.TailBytes)
	case o.QueueBytes < 0:
		return fmt.Errorf("journal: Options.QueueBytes %d is negative", o.QueueBytes)
	}
	return nil
}

type idxEntry struct {
	seq uint64
	off int64
}

// segment is the in-memory description of one segment file. Fields are
// changed only by the goroutine holding ioMu, and only under mu.
type segment struct {
	path    string
	version uint16 // format version of the file (header)
	first   uint64 // seq of the first record (from the header)
	count   uint64 // records in the file
	size    int64  // bytes in the file, header included
	idx     []idxEntry
	// f is the still open file of a segment rotation closed (it is on the
	// unsynced list): the next sync fdatasyncs it if it holds records no
	// sync covered, unless its removal was made durable first (removed),
	// and closes it. nil otherwise. Set by rotate under mu, cleared under
	// syncMu.
	f vfs.File
	// removed: retention removed the file and synced the directory, so
	// its records cannot come back after a power loss and no sync needs
	// to cover them (mu).
	removed bool
	// kicked: the dirty window started writeback below this
	// offset (ioMu).
	kicked int64
	// olderDurable: the header carries FlagOlderDurable (on disk, or
	// about to be with the next fdatasync of the file; syncMu).
	olderDurable bool
}

func (s *segment) last() uint64 { return s.first + s.count - 1 } // first-1 when empty

func (s *segment) addIndex(seq uint64, off int64) {
	if n := len(s.idx); n == 0 || off-s.idx[n-1].off >= indexStep {
		s.idx = append(s.idx, idxEntry{seq, off})
	}
}

// lookup returns the offset of the indexed record closest at or below seq.
func (s *segment) lookup(seq uint64) (uint64, int64) {
	lo, hi := 0, len(s.idx)
	for lo < hi {
		m := (lo + hi) / 2
		if s.idx[m].seq <= seq {
			lo = m + 1
		} else {
			hi = m
		}
	}
	if lo == 0 {
		return s.first, SegmentHeaderSize
	}
	e := s.idx[lo-1]
	return e.seq, e.off
}

type consumer struct {
	released  uint64 // no longer needs records <= released
	droppable bool
}

// Stats is a snapshot of the journal's counters.
type Stats struct {
	FirstSeq, LastSeq uint64
	Written, Durable  uint64
	Segments          int
	Bytes             int64 // total size of the segment files
	TailRecords       int   // records held in memory
	TailBytes         int64
	QueuedBytes       int64  // submitted, not yet written
	Writes            uint64 // write(2) calls for records
	Syncs             uint64 // fdatasync calls
	Writebacks        uint64 // early writeback requests (WritebackBytes)
	Batches           uint64 // flush passes that wrote records
	RecordsWritten    uint64
	BytesWritten      uint64
	SegmentsRemoved   uint64 // released by every consumer
	SegmentsDropped   uint64 // dropped by the size bound
	Readers           int
	Consumers         int
}

// Journal is a segmented write-ahead journal. All methods are safe for
// concurrent use.
type Journal struct {
	opts Options
	fs   vfs.FS
	log  *slog.Logger

	done chan struct{} // closed when the flusher exits
	kick chan struct{} // wakes the flusher; capacity 1

	// ioMu serialises everything that changes files: the flusher's passes
	// (rotation included), TruncateAfter and SetStart. syncMu is held by
	// the syncer while it syncs the files of its snapshot (the active one
	// and the unsynced older ones), and by whoever closes those files or,
	// outside a pass, replaces the active one (TruncateAfter, SetStart).
	// Rotation replaces the active file under mu, without syncMu, and
	// leaves the old one open on the unsynced list. Lock order: ioMu,
	// syncMu, mu.
	ioMu     sync.Mutex
	syncMu   sync.Mutex
	syncKick chan struct{} // wakes the syncer; capacity 1
	syncDone chan struct{} // closed when the syncer exits
	rmKick   chan struct{} // wakes the remover; capacity 1
	rmDone   chan struct{} // closed when the remover exits
	active   vfs.File      // handle of the last segment (ioMu and mu to replace)
	buf      []byte        // encode buffer (ioMu)
	batch    []Record
	// bounded is the first seq of the active segment when bound last ran:
	// over the bound, it runs again once the next segment starts.
	// boundThrough is the highest seq bound asked to go, pressured the
	// highest it asked a non-droppable consumer to release (mu).
	bounded, boundThrough, pressured uint64

	mu       sync.Mutex
	sig      chan struct{} // closed and replaced when anything changes
	sigUsed  bool
	err      error // sticky failure
	closing  bool
	stopped  bool // flusher exited
	segs     []*segment
	unsynced []*segment // older segments whose f a sync must still cover, oldest first
	// removing: segments retention took out of segs, oldest first, whose
	// files the remover has yet to unlink (and the directory to sync);
	// they leave the list once that is done.
	removing  []*segment
	total     int64
	next      uint64 // seq the next Submit must carry
	written   uint64
	durable   uint64
	syncReq   uint64 // highest seq a Durable waiter wants
	retain    bool   // retention pass wanted
	tail      []Record
	tailFirst uint64 // tail[i].Seq == tailFirst+i
	tailBytes int64
	queued    int64 // bytes of records > written
	// lastIndirect is the highest seq written as an OpIndirect record
	// (mu); a sync covering it calls BeforeSync first.
	lastIndirect uint64
	gen          uint64
	consumers    map[string]*consumer
	readers      map[*Reader]struct{}
	waiters      []*waiter
	st           Stats
}

// Open opens (creating if needed) the journal in opts.Dir, verifying every
// segment. A torn or zeroed tail of the last segment is truncated; any other
// damage fails with an error wrapping ErrCorrupt that names the file and
// byte offset. The recovered records are made durable before Open returns.
func Open(opts Options) (*Journal, error) {
	opts = opts.withDefaults()
	if err := opts.validate(); err != nil {
		return nil, err
	}
	j := &Journal{
		opts:      opts,
		fs:        opts.FS,
		log:       opts.Logger,
		done:      make(chan struct{}),
		kick:      make(chan struct{}, 1),
		syncKick:  make(chan struct{}, 1),
		syncDone:  make(chan struct{}),
		rmKick:    make(chan struct{}, 1),
		rmDone:    make(chan struct{}),
		sig:       make(chan struct{}),
		consumers: map[string]*consumer{},
		readers:   map[*Reader]struct{}{},
	}
	if err := j.recover(); err != nil {
		if j.active != nil {
			j.active.Close()
		}
		return nil, err
	}
	go j.flusher()
	go j.syncer()
	go j.remover()
	return j, nil
}

// Close writes and syncs everything submitted, stops the flusher and
// closes the files. Waiters still pending afterwards get ErrClosed. Close
// returns the sticky failure if the journal failed. Calling Close again
// returns ErrClosed.
func (j *Journal) Close() error {
	j.mu.Lock()
	if j.closing {
		j.mu.Unlock()
		return ErrClosed
	}
	j.closing = true
	j.broadcastLocked()
	j.mu.Unlock()
	j.poke()
	<-j.done
	j.pokeSync()
	<-j.syncDone
	j.pokeRemove()
	<-j.rmDone
	j.ioMu.Lock()
	var cerr error
	if j.active != nil {
		cerr = j.active.Close()
		j.active = nil
	}
	j.syncMu.Lock()
	j.dropUnsynced(func(*segment) bool { return true }) // only left after a failure
	j.syncMu.Unlock()
	j.ioMu.Unlock()
	j.mu.Lock()
	defer j.mu.Unlock()
	j.tail, j.tailBytes = nil, 0
	j.broadcastLocked()
	if j.err != nil {
		return j.err
	}

	if cerr != nil {
		return fmt.Errorf("journal: close: %w", cerr)
	}
	return nil
}

// FirstSeq is the lowest seq still readable. For an empty journal it is
// LastSeq()+1 (the seq the next record must carry).
func (j *Journal) FirstSeq() uint64 {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.firstLocked()
}

func (j *Journal) firstLocked() uint64 { return j.segs[0].first }

// LastSeq is the highest seq submitted (FirstSeq()-1 when empty; 0 for a
// new journal).
func (j *Journal) LastSeq() uint64 {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.next - 1
}

// Watermarks returns the highest seqs such that every record at or below
// them is written, respectively durable.
func (j *Journal) Watermarks() (written, durable uint64) {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.written, j.durable
}

// Changed returns a channel that is closed at the next change of the
// journal's state: records submitted, watermarks advanced, truncation,
// retention, failure or close. Call it again after it fires. Spurious
// wake-ups are possible.
func (j *Journal) Changed() <-chan struct{} {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.sigLocked()
}

func (j *Journal) sigLocked() chan struct{} {
	j.sigUsed = true
	return j.sig
}

// notifyLocked fires the Changed channel (readers, blocked submitters).
func (j *Journal) notifyLocked() {
	if j.sigUsed {
		close(j.sig)
		j.sig = make(chan struct{})
		j.sigUsed = false
	}
}

// broadcastLocked fires the Changed channel and wakes the waiters whose
// condition now holds (or that must see a failure, close or truncation).
// Waking only those keeps group commit free of thundering herds.
func (j *Journal) broadcastLocked() {
	j.notifyLocked()
	kept := j.waiters[:0]
	for _, w := range j.waiters {
		if j.durable >= w.seq || (w.level == Written && j.written >= w.seq) ||
			j.err != nil || j.stopped || w.seq >= j.next {
			close(w.ch)
			continue
		}
		kept = append(kept, w)
	}
	clear(j.waiters[len(kept):])
	j.waiters = kept
}

// waiter is a Wait call blocked until seq reaches level.
type waiter struct {
	seq   uint64
	level Level
	ch    chan struct{} // closed when woken
}

func (j *Journal) removeWaiterLocked(w *waiter) {
	if i := slices.Index(j.waiters, w); i >= 0 {
		j.waiters = slices.Delete(j.waiters, i, i+1)
	}
}

func (j *Journal) poke() {
	select {
	case j.kick <- struct{}{}:
	default:
	}
}

func (j *Journal) pokeRemove() {
	select {
	case j.rmKick <- struct{}{}:
	default:
	}
}

func (j *Journal) pokeSync() {
	select {
	case j.syncKick <- struct{}{}:
	default:
	}
}

func (j *Journal) usableLocked() error {
	if j.err != nil {
		return j.err
	}
	if j.closing {
		return ErrClosed
	}
	return nil
}

// Submit queues rec for writing; rec.Seq must equal LastSeq()+1. The
// journal takes ownership of rec.Data. Submit returns once the record is
// queued (and visible to readers); it blocks only while more than
// QueueBytes are waiting to be written, until ctx ends.
func (j *Journal) Submit(ctx context.Context, rec Record) error {
	_, err := j.submit(ctx, rec, false, true)
	return err
}

// SubmitDeferred is Submit without waking the flusher: the caller is about
// to call WriteThrough (or Wait) for the record, which writes it in the
// caller's goroutine when no other write is under way. That saves two
// goroutine hand-offs per write when the caller waits for its record
// anyway, which at queue depth 1 is most of the journal's latency.
func (j *Journal) SubmitDeferred(ctx context.Context, rec Record) error {
	_, err := j.submit(ctx, rec, false, false)
	return err
}

// WriteThrough returns once every record through seq is written (the
// Written level). When no write is under way it does the write itself —
// every queued record, with one write(2) per segment touched, as the
// flusher would — so concurrent callers still share batches; otherwise it
// leaves the records to whoever is writing and waits.
func (j *Journal) WriteThrough(ctx context.Context, seq uint64) error {
	if j.ioMu.TryLock() {
		j.mu.Lock()
		need := j.err == nil && !j.closing && j.written < seq && seq < j.next
		j.mu.Unlock()
		if need {
			j.writeQueued()
		}
		j.ioMu.Unlock()
	}
	return j.Wait(ctx, seq, Written)
}

// SubmitNext is Submit with rec.Seq assigned as LastSeq()+1 atomically; it
// returns the seq given to the record. It lets concurrent writers share a
// journal without coordinating seqs themselves.
func (j *Journal) SubmitNext(ctx context.Context, rec Record) (uint64, error) {
	return j.submit(ctx, rec, true, true)
}

// submit queues rec; kick wakes the flusher for it.
func (j *Journal) submit(ctx context.Context, rec Record, assign, kick bool) (uint64, error) {
	if assign {
		rec.Seq = 1 // placeholder for validation; replaced under the lock
	}
	if err := checkRecord(&rec); err != nil {
		return 0, fmt.Errorf("journal: submit: %w: %v", ErrInvalid, err)
	}
	if rec.Op == OpIndirect || (rec.Sums != nil && j.opts.BeforeSync == nil) {
		return 0, fmt.Errorf("journal: submit %d: %w: an indirect write is submitted as an OpWrite with Sums, to a journal with Options.BeforeSync", rec.Seq, ErrInvalid)
	}
	size := int64(encodedSize(&rec))
	j.mu.Lock()
	defer j.mu.Unlock()
	for {
		if err := j.usableLocked(); err != nil {
			return 0, err
		}
		if assign {
			rec.Seq = j.next
		} else if rec.Seq != j.next {
			return 0, fmt.Errorf("%w: submitted %d, want %d", ErrSeq, rec.Seq, j.next)
		}
		if j.roomLocked(size) {
			break
		}
		if err := j.waitRoomLocked(ctx); err != nil {
			return 0, fmt.Errorf("journal: submit %d: %w", rec.Seq, err)
		}
	}
	if len(j.tail) == 0 {
		j.tailFirst = rec.Seq
	}
	j.tail = append(j.tail, rec)
	j.tailBytes += size
	j.queued += size
	j.next++
	j.notifyLocked()
	if kick {
		j.poke()
	}
	return rec.Seq, nil
}

// WaitRoom returns once a record like rec fits in the submission queue
// (QueueBytes), or with the journal's error once it failed or closed, or
// with ctx's error. A caller that serialises its own submissions, and so
// knows nobody else fills the queue meanwhile, waits with it (outside its
// lock), then checks HasRoom under its lock before it commits to a seq
// elsewhere: the Submit that follows then does not block, so the seq and
// the record cannot part.
func (j *Journal) WaitRoom(ctx context.Context, rec *Record) error {
	size := int64(encodedSize(rec))
	j.mu.Lock()
	defer j.mu.Unlock()
	for {
		if err := j.usableLocked(); err != nil {
			return err
		}
		if j.roomLocked(size) {
			return nil
		}
		if err := j.waitRoomLocked(ctx); err != nil {
			return fmt.Errorf("journal: wait for room in the queue: %w", err)
		}
	}
}

// HasRoom reports whether a record like rec fits in the submission queue
// now (false also once the journal failed or closed: WaitRoom then says
// why). See WaitRoom.
func (j *Journal) HasRoom(rec *Record) bool {
	size := int64(encodedSize(rec))
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.usableLocked() == nil && j.roomLocked(size)
}

// roomLocked reports whether a record of size encoded bytes may be queued.
func (j *Journal) roomLocked(size int64) bool {
	return j.queued == 0 || j.queued+size <= j.opts.QueueBytes
}

// waitRoomLocked waits (j.mu held, released meanwhile) for the queue to
// change, or for ctx to end.
func (j *Journal) waitRoomLocked(ctx context.Context) error {
	ch := j.sigLocked()
	j.mu.Unlock()
	j.poke() // deferred submissions may be what fills the queue
	select {
	case <-ch:
		j.mu.Lock()
		return nil
	case <-ctx.Done():
		j.mu.Lock()
		return ctx.Err()
	}
}

// evictLocked trims the memory tail to TailBytes, keeping every record not
// yet written.
func (j *Journal) evictLocked() {
	for len(j.tail) > 0 && j.tailBytes > j.opts.TailBytes && j.tail[0].Seq <= j.written {
		j.tailBytes -= int64(encodedSize(&j.tail[0]))
		j.tail[0] = Record{}
		j.tail = j.tail[1:]
		j.tailFirst++
	}
	if len(j.tail) == 0 {
		j.tail = nil
		j.tailFirst = j.next
	}
}

// Wait blocks until every record up to seq has reached level, ctx ends, or
// the journal fails (the sticky ErrFailed error). seq must have been
// submitted; a seq removed by TruncateAfter gives ErrTruncated.
func (j *Journal) Wait(ctx context.Context, seq uint64, level Level) error {
	if level != Written && level != Durable {
		return fmt.Errorf("journal: wait: %w: level %d", ErrInvalid, level)
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	for {
		if j.err != nil {
			return j.err
		}
		if seq >= j.next {
			return fmt.Errorf("journal: wait for %d: %w (last seq %d)", seq, ErrTruncated, j.next-1)
		}
		if j.durable >= seq || (level == Written && j.written >= seq) {
			return nil
		}
		if j.stopped {
			return ErrClosed
		}
		if level == Durable && j.syncReq < seq {
			j.syncReq = seq
			j.pokeSync()
		}
		w := &waiter{seq: seq, level: level, ch: make(chan struct{})}
		j.waiters = append(j.waiters, w)
		unwritten := j.written < seq
		j.mu.Unlock()
		if unwritten {
			j.poke() // the record may have been submitted deferred
		}
		select {
		case <-w.ch:
			j.mu.Lock()
		case <-ctx.Done():
			j.mu.Lock()
			j.removeWaiterLocked(w)
			return fmt.Errorf("journal: wait for %d: %w", seq, ctx.Err())
		}
	}
}

// Append is Submit followed by Wait(rec.Seq, level).
func (j *Journal) Append(ctx context.Context, rec Record, level Level) error {
	if err := j.Submit(ctx, rec); err != nil {
		return err
	}
	return j.Wait(ctx, rec.Seq, level)
}

// Sync makes every record submitted so far durable.
func (j *Journal) Sync(ctx context.Context) error {
	j.mu.Lock()
	last := j.next - 1
	j.mu.Unlock()
	if last == 0 {
		return nil
	}
	err := j.Wait(ctx, last, Durable)
	if errors.Is(err, ErrTruncated) {
		return nil // everything that is left is durable
	}
	return err
}

// beforeSync calls BeforeSync when records written since durable include
// an indirect one (see Options.BeforeSync).
func (j *Journal) beforeSync(durable uint64) error {
	j.mu.Lock()
	need := j.lastIndirect > durable
	j.mu.Unlock()
	if !need || j.opts.BeforeSync == nil {
		return nil
	}
	if err := j.opts.BeforeSync(); err != nil {
		return fmt.Errorf("make the data of indirect records durable before the journal: %w", err)
	}
	return nil
}

// fail records a sticky failure.
func (j *Journal) fail(err error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.err == nil {
		j.err = fmt.Errorf("%w: %w", ErrFailed, err)
		j.log.Error("journal failed; every later call will fail", "err", err)
	}
	j.broadcastLocked()
	j.poke()
	j.pokeSync()
}

// AddConsumer registers a named consumer that still needs every record >=
// from; segments are removed only once every consumer has released them.
// A droppable consumer may be dropped past by the size bound (OnDrop); a
// non-droppable one never is. Fails with ErrGone if from < FirstSeq().
func (j *Journal) AddConsumer(name string, from uint64, droppable bool) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if _, ok := j.consumers[name]; ok {
		return fmt.Errorf("%w: %q already exists", ErrConsumer, name)
	}
	if from < j.firstLocked() {
		return fmt.Errorf("journal: add consumer %q from %d: %w (first seq %d)", name, from, ErrGone, j.firstLocked())
	}
	if from == 0 {
		from = 1
	}
	j.consumers[name] = &consumer{released: from - 1, droppable: droppable}
	return nil
}

// Release tells the journal that consumer name no longer needs records <=
// through. Releasing backwards is ignored; unknown names are ignored.
func (j *Journal) Release(name string, through uint64) {
	j.mu.Lock()
	c, ok := j.consumers[name]
	if ok && through > c.released {
		c.released = through
		j.retain = true
	}
	j.mu.Unlock()
	if ok {
		j.poke()
	}
}

// RemoveConsumer forgets consumer name.
func (j *Journal) RemoveConsumer(name string) {
	j.mu.Lock()
	delete(j.consumers, name)
	j.retain = true
	j.mu.Unlock()
	j.poke()
}

// Consumer returns the release point of consumer name.
func (j *Journal) Consumer(name string) (released uint64, ok bool) {
	j.mu.Lock()
	defer j.mu.Unlock()
	c, ok := j.consumers[name]
	if !ok {
		return 0, false
	}
	return c.released, true
}

// Stats returns a snapshot of the journal's counters.
func (j *Journal) Stats() Stats {
	j.mu.Lock()
	defer j.mu.Unlock()
	s := j.st
	s.FirstSeq, s.LastSeq = j.firstLocked(), j.next-1
	s.Written, s.Durable = j.written, j.durable
	s.Segments, s.Bytes = len(j.segs), j.total
	s.TailRecords, s.TailBytes, s.QueuedBytes = len(j.tail), j.tailBytes, j.queued
	s.Readers, s.Consumers = len(j.readers), len(j.consumers)
	return s
}

// SetStart sets the seq the next record must carry. The journal must be
// empty (FirstSeq() > LastSeq()); otherwise ErrNotEmpty. The new start is
// durable when SetStart returns (a crash during SetStart may leave the
// previous start).
func (j *Journal) SetStart(seq uint64) error {
	if seq == 0 {
		return fmt.Errorf("journal: set start: %w: seq 0", ErrInvalid)
	}
	j.ioMu.Lock()
	defer j.ioMu.Unlock()
	j.syncMu.Lock()
	defer j.syncMu.Unlock()
	j.mu.Lock()
	if err := j.usableLocked(); err != nil {
		j.mu.Unlock()
		return err
	}
	if j.next-1 >= j.firstLocked() {
		j.mu.Unlock()
		return fmt.Errorf("journal: set start %d: %w (seqs %d..%d)", seq, ErrNotEmpty, j.firstLocked(), j.next-1)
	}
	if j.next == seq {
		j.mu.Unlock()
		return nil
	}
	old := j.segs
	j.mu.Unlock()
	// The new segment may take the name of one retention is removing.
	j.awaitRemovals()

	// The records of old segments left unsynced by rotation are about to
	// go with their files, but until the directory is synced below the
	// new header must not claim them durable.
	older := len(j.unsynced) == 0
	j.dropUnsynced(func(*segment) bool { return true })
	f, seg, err := j.createSegment(seq, true, older)
	if err != nil {
		j.fail(err)
		return j.err
	}
	j.active.Close()
	j.active = f
	j.mu.Lock()
	j.segs = []*segment{seg}
	j.total = seg.size
	j.next, j.written, j.durable, j.syncReq = seq, seq-1, seq-1, 0
	j.tail, j.tailFirst = nil, seq
	j.gen++
	j.broadcastLocked()
	j.mu.Unlock()
	for _, s := range old {
		if err := j.fs.Remove(s.path); err != nil {
			j.fail(fmt.Errorf("remove %s: %w", s.path, err))
			return j.err
		}
	}
	if !j.opts.NoSync {
		if err := j.fs.SyncDir(j.opts.Dir); err != nil {
			j.fail(fmt.Errorf("sync dir %s: %w", j.opts.Dir, err))
			return j.err
		}
	}
	return nil
}

// preallocator is implemented by files that can reserve blocks without
// changing their size (vfs.OS: fallocate KEEP_SIZE).
type preallocator interface{ Preallocate(n int64) error }

// createSegment creates the segment file whose first record is first and
// writes its header, with FlagOlderDurable if olderDurable; with sync it
// makes file and directory entry durable.
func (j *Journal) createSegment(first uint64, sync, olderDurable bool) (vfs.File, *segment, error) {
	path := filepath.Join(j.opts.Dir, segmentName(first))
	f, err := j.fs.Create(path, 0o644)
	if err != nil {
		return nil, nil, fmt.Errorf("create segment %s: %w", path, err)
	}
	if p, ok := f.(preallocator); ok {
		// Best effort: the segment works the same without it, and a full
		// disk shows up as a write error where it matters.
		_ = p.Preallocate(j.opts.SegmentBytes)
	}
	hdr := AppendSegmentHeader(nil, SegmentHeader{Volume: j.opts.Volume, FirstSeq: first, OlderDurable: olderDurable})
	if _, err := f.WriteAt(hdr, 0); err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("write segment header %s: %w", path, err)
	}
	if sync && !j.opts.NoSync {
		if err := f.Sync(); err != nil {
			f.Close()
			return nil, nil, fmt.Errorf("sync %s: %w", path, err)
		}
		if err := j.fs.SyncDir(j.opts.Dir); err != nil {
			f.Close()
			return nil, nil, fmt.Errorf("sync dir %s: %w", j.opts.Dir, err)
		}
	}
	return f, &segment{path: path, version: FormatVersion, first: first, size: SegmentHeaderSize, olderDurable: olderDurable}, nil
}

// TruncateAfter removes every record > seq, written or only queued, and
// makes the result durable before returning. Records <= seq are kept.
// seq must be >= FirstSeq()-1 (ErrGone otherwise). Readers positioned past
// seq+1 get ErrTruncated; waiters for removed seqs get ErrTruncated;
// consumers' release points are lowered to seq. The
// caller must not Submit concurrently. A crash during TruncateAfter leaves
// a gapless prefix at least as long as the requested one.
func (j *Journal) TruncateAfter(seq uint64) error {
	return j.truncate(func(uint64) uint64 { return seq })
}

// Empty removes every record, as TruncateAfter(FirstSeq()-1) does, but it
// reads the first seq under the lock retention holds, so segments that
// consumers released meanwhile cannot make it fail with ErrGone.
// Afterwards the journal is empty and LastSeq()+1 is the old FirstSeq().
func (j *Journal) Empty() error {
	return j.truncate(func(first uint64) uint64 { return first - 1 })
}

// truncate is TruncateAfter(after(FirstSeq())).
func (j *Journal) truncate(after func(first uint64) uint64) error {
	j.ioMu.Lock()
	defer j.ioMu.Unlock()
	j.syncMu.Lock()
	defer j.syncMu.Unlock()
	j.mu.Lock()
	if err := j.usableLocked(); err != nil {
		j.mu.Unlock()
		return err
	}
	seq := after(j.firstLocked())
	if seq >= j.next-1 {
		j.mu.Unlock()
		return nil
	}
	if seq+1 < j.firstLocked() {
		first := j.firstLocked()
		j.mu.Unlock()
		return fmt.Errorf("journal: truncate after %d: %w (first seq %d)", seq, ErrGone, first)
	}
	// Forget the records in memory first so the flusher cannot write them.
	for len(j.tail) > 0 && j.tail[len(j.tail)-1].Seq > seq {
		r := &j.tail[len(j.tail)-1]
		sz := int64(encodedSize(r))
		j.tailBytes -= sz
		if r.Seq > j.written {
			j.queued -= sz
		}
		*r = Record{}
		j.tail = j.tail[:len(j.tail)-1]
	}
	j.next = seq + 1
	if len(j.tail) == 0 {
		j.tail, j.tailFirst = nil, j.next
	}
	j.written = min(j.written, seq)
	j.durable = min(j.durable, seq)
	j.syncReq = min(j.syncReq, seq)
	j.gen++
	for _, c := range j.consumers {
		c.released = min(c.released, seq) // the new records are unseen
	}
	for r := range j.readers {
		if r.next > seq+1 {
			r.broken = true
		}
	}
	j.broadcastLocked()
	// The target segment is the last one starting at or below seq+1.
	k := len(j.segs) - 1
	for k > 0 && j.segs[k].first > seq+1 {
		k--
	}
	later := append([]*segment(nil), j.segs[k+1:]...)
	target := j.segs[k]
	j.mu.Unlock()

	// Remove later segments newest first, so a crash leaves a prefix.
	if len(later) > 0 {
		j.active.Close()
		j.active = nil
		for i := len(later) - 1; i >= 0; i-- {
			s := later[i]
			j.mu.Lock()
			j.segs = j.segs[:len(j.segs)-1]
			j.total -= s.size
			j.mu.Unlock()
			if err := j.fs.Remove(s.path); err != nil {
				j.fail(fmt.Errorf("truncate: remove %s: %w", s.path, err))
				return j.err
			}
		}
		if !j.opts.NoSync {
			if err := j.fs.SyncDir(j.opts.Dir); err != nil {
				j.fail(fmt.Errorf("truncate: sync dir %s: %w", j.opts.Dir, err))
				return j.err
			}
		}
		f, err := j.fs.OpenRW(target.path)
		if err != nil {
			j.fail(fmt.Errorf("truncate: open %s: %w", target.path, err))
			return j.err
		}
		j.active = f
	}
	end, err := j.offsetOf(target, j.active, seq+1)
	if err != nil {
		j.fail(fmt.Errorf("truncate: %w", err))
		return j.err
	}
	if end < target.size {
		if err := j.active.Truncate(end); err != nil {
			j.fail(fmt.Errorf("truncate %s to %d: %w", target.path, end, err))
			return j.err
		}
	}
	if err := j.beforeSync(0); err != nil {
		j.fail(fmt.Errorf("truncate: %w", err))
		return j.err
	}
	if !j.opts.NoSync {
		if err := j.active.Sync(); err != nil {
			j.fail(fmt.Errorf("truncate: sync %s: %w", target.path, err))
			return j.err
		}
	}
	// Every record kept becomes durable below, those of older segments
	// rotation left unsynced too; the removed segments are gone for good
	// (the directory was synced) and the target was just synced.
	j.dropUnsynced(func(s *segment) bool { return s == target || slices.Contains(later, s) })
	if err := j.syncUnsynced(); err != nil {
		j.fail(fmt.Errorf("truncate: %w", err))
		return j.err
	}
	j.mu.Lock()
	j.total -= target.size - end
	target.size = end
	target.kicked = min(target.kicked, end)              // the dirty window starts again from the cut
	target.count = min(target.count, seq+1-target.first) // records <= seq may still be queued
	for len(target.idx) > 0 && target.idx[len(target.idx)-1].seq > seq {
		target.idx = target.idx[:len(target.idx)-1]
	}
	// Records <= seq still queued (not yet written) stay queued.
	j.durable = j.written
	j.st.Syncs++
	j.broadcastLocked()
	pending := j.written < j.next-1
	j.mu.Unlock()
	if pending {
		j.poke()
	}
	j.log.Info("journal truncated", "after", seq)
	return nil
}

// offsetOf returns the byte offset of record seq in seg (seg.size when seq
// is one past its last record), reading through f.
func (j *Journal) offsetOf(seg *segment, f vfs.File, seq uint64) (int64, error) {
	j.mu.Lock()
	if seq >= seg.first+seg.count {
		size := seg.size
		j.mu.Unlock()
		return size, nil
	}
	s, off := seg.lookup(seq)
	size := seg.size
	j.mu.Unlock()
	it := segIter{f: f, path: seg.path, size: size, off: off, chunk: indexStep + RecordHeaderSize}
	for ; s < seq; s++ {
		if _, _, err := it.next(); err != nil {
			return 0, err
		}
	}
	return it.off, nil
}

// segIter walks the records of a segment file sequentially, reading in
// chunks. With fresh set, every chunk is a new buffer so returned records
// may be retained; otherwise the buffer is reused.
type segIter struct {
	f     vfs.File
	path  string
	size  int64 // bytes of the file to consider
	off   int64 // offset of the next record
	chunk int
	fresh bool
	// version is the segment's format version, for the checks that depend
	// on it (0: the current one).
	version uint16

	buf    []byte
	bufOff int64 // file offset of buf[0]
}

// ensure makes buf cover [it.off, it.off+n); false if the file ends first.
func (it *segIter) ensure(n int) (bool, error) {
	if it.off >= it.bufOff && it.off+int64(n) <= it.bufOff+int64(len(it.buf)) {
		return true, nil
	}
	if it.off+int64(n) > it.size {
		return false, nil
	}
	want := int64(max(n, it.chunk))
	want = min(want, it.size-it.off)
	var b []byte
	if !it.fresh && int64(cap(it.buf)) >= want {
		b = it.buf[:want]
	} else {
		b = make([]byte, want)
	}
	m, err := it.f.ReadAt(b, it.off)
	if int64(m) < want {
		if err == nil || err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return false, fmt.Errorf("read %s at %d: %w", it.path, it.off, err)
	}
	it.buf, it.bufOff = b, it.off
	return true, nil
}

// next decodes the record at it.off. It returns io.EOF at the end of the
// file; damage is reported as an error wrapping ErrCorrupt or (for a record
// cut short by the end of the file) io.ErrUnexpectedEOF, naming path and
// offset.
func (it *segIter) next() (Record, int64, error) {
	off := it.off
	if off >= it.size {
		return Record{}, off, io.EOF
	}
	ok, err := it.ensure(RecordHeaderSize)
	if err != nil {
		return Record{}, off, err
	}
	if !ok {
		return Record{}, off, fmt.Errorf("journal: %s at offset %d: %w", it.path, off, errShort)
	}
	n := recordDataLen(it.buf[off-it.bufOff:])
	if n > MaxRecordData {
		return Record{}, off, fmt.Errorf("journal: %s at offset %d: %w: data length %d exceeds the maximum", it.path, off, ErrCorrupt, n)
	}
	if ok, err = it.ensure(RecordHeaderSize + int(n)); err != nil {
		return Record{}, off, err
	} else if !ok {
		return Record{}, off, fmt.Errorf("journal: %s at offset %d: %w", it.path, off, errShort)
	}
	v := it.version
	if v == 0 {
		v = FormatVersion
	}
	rec, _, m, err := decodeRecord(it.buf[off-it.bufOff:], v)
	if err != nil {
		return Record{}, off, fmt.Errorf("journal: %s at offset %d: %w", it.path, off, err)
	}
	it.off += int64(m)
	return rec, off, nil
}
