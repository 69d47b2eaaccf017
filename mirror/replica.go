package mirror

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/blockmirror/blockmirror/journal"
	"github.com/blockmirror/blockmirror/mirror/core"
	"github.com/blockmirror/blockmirror/mirror/resync"
	"github.com/blockmirror/blockmirror/mirror/wire"
	"github.com/blockmirror/blockmirror/transport"
)

// ReplicaOptions configure the mirror daemon.
type ReplicaOptions struct {
	// Listen is the QUIC address to accept primaries on, HOST:PORT.
	Listen string
	// Name is this node's name (sent in HelloReply).
	Name string
	// Node says where the volume lives. A data directory without a volume
	// adopts the UUID and size of the first primary that connects.
	Node NodeOptions
	// Transport is the QUIC configuration (identity, allowed primaries).
	Transport transport.Config
	// Tick is the core's clock period (default 10 ms).
	Tick time.Duration
	// CheckpointInterval bounds the time between store checkpoints
	// (default 2 s).
	CheckpointInterval time.Duration
	Logger             *slog.Logger
	// OnResyncChunk, when set, gets every resync chunk's data bytes
	// received and the disk bytes it wrote (0 for a stale chunk, which the
	// primary sends again); for metrics, must not block.
	OnResyncChunk func(received, applied int)

	// onApply (tests) sees every record the applier applies to the store,
	// in order, under the apply lock; onReset (tests, under d.mu) a
	// resync's reset of the journal to continue at from, with the store
	// holding every record ≤ applied.
	onApply func(rec journal.Record)
	onReset func(from, applied uint64)
	// onEmpty (tests, under the apply lock) is called when a resync's
	// reset is about to empty the journal: from then on its records may
	// be gone (a crash before the reset completes leaves them so).
	onEmpty func()
	// onQuarantine (tests, under d.mu) sees the fork point after which
	// the journal's records were quarantined.
	onQuarantine func(fork uint64)
	// onResyncBegin (tests) is called when a resync begins, before its
	// first file change.
	onResyncBegin func()
}

func (o ReplicaOptions) withDefaults() ReplicaOptions {
	if o.Tick <= 0 {
		o.Tick = 10 * time.Millisecond
	}
	if o.CheckpointInterval <= 0 {
		o.CheckpointInterval = 2 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return o
}

// Replica is the mirror daemon for one volume: it accepts a primary's
// session, journals the records it receives, acknowledges them, and
// applies them to the store in seq order (only durable ones, so the store
// is a write-order prefix of the primary's history even after a power
// loss).
//
// Goroutines: the accept loop, one per connection (one session at a time
// is active; a new primary session replaces the old one), a journal
// watcher, a syncer and an applier; all end when Run's ctx ends.
type Replica struct {
	opts ReplicaOptions
	log  *slog.Logger
	ln   streamListener // NewReplica only; a ReplicaHost's volume has none
	addr string         // the listener's address (the host's for a host volume)

	mu      sync.Mutex
	node    *Node
	core    *core.ReplicaCore
	active  *mirrorSession
	started bool
	applyTo uint64
	cpHint  uint64

	wake chan struct{} // applier
	// cpWant is the seq the journal, over its size bound, asked the
	// store to release (journalPressure): the applier checkpoints once it
	// has applied through it, or when it has caught up short of it (one
	// checkpoint per catch-up, not one per batch). cpNow wakes an idle
	// applier for it.
	cpWant atomic.Uint64
	cpNow  chan struct{}

	// applyMu serialises store changes by the applier and by resync, and
	// guards appliedSeq and recent.
	applyMu    sync.Mutex
	appliedSeq uint64
	recent     resync.RecentExtents
	syncReq    chan uint64
	wg         sync.WaitGroup

	resyncChunks atomic.Int64
	// unsynced: the resync chunks written to the store and not made
	// durable yet; a hash over them is answered only after they are.
	unsynced unsyncedChunks

	// failover state, guarded by mu. promoted is set while an online
	// promotion runs and after it succeeded; promoting is closed when the
	// last one ended (nil before any).
	promoted    bool
	promoting   chan struct{}
	splitBrain  string
	quarantined []QuarantineReport
	stopRun     context.CancelFunc

	// runCtx is the context of the running volume (set by start); stopping
	// is set before finish waits for the volume's goroutines, after which
	// no stream is admitted any more. Both guarded by mu. halted is closed
	// when stopping is set.
	runCtx   context.Context
	stopping bool
	halted   chan struct{}

	// contact is when the last heartbeat of a primary arrived (a session's
	// primary has an epoch at least this node's: CheckHello), or when the
	// daemon was made if none has; guarded by mu.
	contact time.Time
}

type mirrorSession struct {
	conn    streamConn
	st      frameStream
	writeMu sync.Mutex
	ctx     context.Context
	cancel  context.CancelFunc
	done    chan struct{}
	peer    string
	// ackCh (capacity 1) holds the newest ack to send; acks are
	// cumulative, so a newer one replaces an unsent older one.
	ackCh chan wire.Ack
	// ackBuf encodes the acks the session goroutine sends itself (ackNow).
	ackBuf []byte
	// replaced: a newer session ended this one; errorSent: we sent the
	// peer an Error (give it time to arrive before closing).
	replaced, errorSent atomic.Bool

	// side counts the session's resync and verify streams; sideEnded
	// (guarded by sideMu) refuses new ones once the session ends.
	sideMu    sync.Mutex
	sideEnded bool
	side      sync.WaitGroup

	// begun is closed once the session's ResyncBegin is handled: a
	// SyncComplete on the resync stream (another stream, which may
	// overtake it) waits for it, or beginResync would mark the store
	// inconsistent again after the resync completed.
	begun     chan struct{}
	beginOnce sync.Once
	// merge orders the records of the session's lanes (wire.MsgLanes).
	merge *laneMerge
}

// addSide counts a resync, verify or lane stream in s.side (the caller
// calls s.side.Done when it ends); false once the session ended.
func (s *mirrorSession) addSide() bool {
	s.sideMu.Lock()
	defer s.sideMu.Unlock()
	if s.sideEnded {
		return false
	}
	s.side.Add(1)
	return true
}

// endSide ends the session and waits for its resync and verify streams;
// no new one attaches afterwards. Idempotent.
func (s *mirrorSession) endSide() {
	s.sideMu.Lock()
	s.sideEnded = true
	s.sideMu.Unlock()
	s.cancel()
	s.side.Wait()
}

// NewReplica opens the volume (if the data directory has one) and listens
// on opts.Listen for primaries of this one volume (a session's volume name
// is not checked). See ReplicaHost for several volumes on one listener.
func NewReplica(ctx context.Context, opts ReplicaOptions) (*Replica, error) {
	d, err := newMirrorVolume(ctx, opts)
	if err != nil {
		return nil, err
	}
	ln, err := quicListen(d.opts.Listen, d.opts.Transport)
	if err != nil {
		if d.node != nil {
			d.node.Close()
		}
		return nil, fmt.Errorf("mirror: listen %s: %w", d.opts.Listen, err)
	}
	d.ln = ln
	d.addr = ln.Addr().String()
	return d, nil
}

// newReplicaOn is NewReplica on a listener of the caller's.
func newReplicaOn(ctx context.Context, ln streamListener, opts ReplicaOptions) (*Replica, error) {
	d, err := newMirrorVolume(ctx, opts)
	if err != nil {
		return nil, err
	}
	d.ln = ln
	d.addr = ln.Addr().String()
	return d, nil
}

// newMirrorVolume opens the volume (if the data directory has one).
func newMirrorVolume(ctx context.Context, opts ReplicaOptions) (*Replica, error) {
	opts = opts.withDefaults()
	d := &Replica{opts: opts, log: opts.Logger, wake: make(chan struct{}, 1), cpNow: make(chan struct{}, 1), syncReq: make(chan uint64, 1), halted: make(chan struct{}),
		contact: time.Now()}
	nopts := opts.Node
	nopts.Size = 0
	nopts.Logger = opts.Logger
	node, err := OpenNode(ctx, nopts)
	switch {
	case err == nil:
		if node.Meta().Role != RoleMirror {
			node.Close()
			return nil, fmt.Errorf("mirror: volume in %s is a primary; demote it before running it as a mirror", opts.Node.Dir)
		}
		if err := d.adopt(node); err != nil {
			node.Close()
			return nil, err
		}
	case errors.Is(err, ErrNoMeta) || isNoVolume(err):
		d.log.Info("no volume yet; the first primary that connects defines it", "dir", opts.Node.Dir)
	default:
		return nil, err
	}
	return d, nil
}

func isNoVolume(err error) bool {
	return err != nil && errors.Is(err, errNoVolume)
}

// adopt installs node and a core for it. d.mu must not be held.
func (d *Replica) adopt(node *Node) error {
	m := node.Meta()
	written, durable := node.Journal.Watermarks()
	var flags uint32
	if m.Inconsistent {
		flags |= wire.FlagInconsistent
	}
	if m.NeedsResync {
		flags |= wire.FlagNeedsResync
	}
	rc, err := core.NewReplicaCore(core.ReplicaConfig{
		Identity: core.VolumeIdentity{Volume: m.Volume, Size: uint64(m.Size), Epoch: m.Epoch, History: m.History},
		Node:     d.opts.Name, LastSeq: written, DurableSeq: durable, AppliedSeq: written, Flags: flags,
		AcceptDivergence: m.AcceptDivergence,
	})
	if err != nil {
		return err
	}
	d.mu.Lock()
	d.node, d.core = node, rc
	node.setCheckpointKick(d.checkpointPressure)
	d.applyTo = written
	d.mu.Unlock()
	d.applyMu.Lock()
	d.appliedSeq = written
	d.applyMu.Unlock()
	return nil
}

// Addr is the address the daemon listens on.
func (d *Replica) Addr() string { return d.addr }

// Run serves until ctx ends, then stops every goroutine, checkpoints and
// closes the volume. After an online promotion it returns ErrPromoted and
// leaves the volume open for the caller (see Node). Only for a Mirror made
// by NewReplica; a ReplicaHost runs its volumes itself.
func (d *Replica) Run(ctx context.Context) error {
	if d.ln == nil {
		return errors.New("mirror: Run on a volume of a ReplicaHost; run the host")
	}
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	d.log.Info("mirror listening", "addr", d.Addr())
	d.start(ctx, stop)
	acc := &acceptor{ln: d.ln, log: d.log, route: func(string) *Replica { return d }}
	aerr := make(chan error, 1)
	go func() {
		err := acc.run(ctx)
		stop() // a failed listener ends the volume too
		aerr <- err
	}()
	<-ctx.Done()
	err := <-aerr
	if ferr := d.finish(); ferr != nil {
		return ferr
	}
	return err
}

// start starts the volume's goroutines under ctx; stop ends ctx (an online
// promotion calls it).
func (d *Replica) start(ctx context.Context, stop context.CancelFunc) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.stopRun = stop
	d.runCtx = ctx
	d.wg.Add(1)
	go d.tickLoop(ctx)
	if d.node != nil {
		d.startWorkersLocked(ctx)
	}
}

// finish waits (after the ctx given to start ended) for every goroutine of
// the volume, then checkpoints and closes it; after a promotion it returns
// ErrPromoted and leaves the volume open.
func (d *Replica) finish() error {
	d.mu.Lock()
	if !d.stopping {
		d.stopping = true
		close(d.halted)
	}
	d.mu.Unlock()
	d.wg.Wait()
	// An online promotion still running decides whether the volume is
	// left to the caller (it stops too: the applier it waits for is gone).
	d.mu.Lock()
	promoting := d.promoting
	d.mu.Unlock()
	if promoting != nil {
		<-promoting
	}
	d.mu.Lock()
	node, promoted := d.node, d.promoted
	d.mu.Unlock()
	if promoted {
		return ErrPromoted
	}
	if node != nil {
		node.setCheckpointKick(nil)
		if cerr := node.Checkpoint(d.applied()); cerr != nil {
			d.log.Error("final checkpoint failed; the journal will be replayed at the next start", "err", cerr)
		}
		node.Close()
	}
	return nil
}

// dispatch serves a stream the acceptor routed to this volume: a log
// stream (first frame Hello, payload p) or a resync/verify stream (first
// frame StreamVolume). It returns when the stream is done.
func (d *Replica) dispatch(conn streamConn, st frameStream, typ wire.MsgType, p []byte, log *slog.Logger) {
	d.mu.Lock()
	if d.runCtx == nil || d.stopping || d.runCtx.Err() != nil {
		d.mu.Unlock()
		if typ == wire.MsgHello {
			d.refuse(st, wire.CodeRefused, "this volume is not running", log)
		}
		st.Cancel(0)
		return
	}
	ctx := d.runCtx
	d.wg.Add(1)
	d.mu.Unlock()
	defer d.wg.Done()
	switch typ {
	case wire.MsgHello:
		d.serveSession(ctx, conn, st, p, log)
	case wire.MsgStreamVolume:
		d.serveSide(conn, st, log)
	case wire.MsgLaneJoin:
		d.serveLane(conn, st, p, log)
	default:
		st.Cancel(0)
	}
}

// serveSide serves a resync or verify stream of the active session on the
// same connection.
func (d *Replica) serveSide(conn streamConn, st frameStream, log *slog.Logger) {
	defer st.Cancel(0)
	d.mu.Lock()
	s := d.active
	d.mu.Unlock()
	if s == nil || s.conn != conn {
		log.Warn("resync or verify stream without a session of its volume on its connection; refusing it")
		return
	}
	if !s.addSide() {
		return
	}
	defer s.side.Done()
	defer context.AfterFunc(s.ctx, func() { st.Cancel(0) })()
	if err := d.serveResync(s.ctx, st, s.begun); err != nil && s.ctx.Err() == nil {
		log.Warn("resync stream ended", "err", err)
		s.cancel()
	}
}

// Node returns the volume (nil before the first primary defined it).
func (d *Replica) Node() *Node {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.node
}

func (d *Replica) startWorkersLocked(ctx context.Context) {
	if d.started {
		return
	}
	d.started = true
	d.wg.Add(3)
	go d.watchJournal(ctx)
	go d.syncLoop(ctx)
	go d.applyLoop(ctx)
}

func (d *Replica) tickLoop(ctx context.Context) {
	defer d.wg.Done()
	t := time.NewTicker(d.opts.Tick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		d.mu.Lock()
		if d.core != nil {
			d.core.Tick()
			d.processLocked()
		}
		d.mu.Unlock()
	}
}

// processLocked acts on the core's outputs without blocking (d.mu held).
// Persist is handled by the session that received the records.
func (d *Replica) processLocked() (persist core.SeqRange) {
	return d.actLocked(d.core.Ready())
}

// actLocked acts on rd (d.mu held) and returns its Persist range.
func (d *Replica) actLocked(rd core.ReplicaReady) core.SeqRange {
	if rd.SyncLocal > 0 {
		offer(d.syncReq, rd.SyncLocal, maxSeq)
	}
	if rd.SendAck && d.active != nil {
		// Acks are cumulative: the newer one supersedes an unsent older one.
		offer(d.active.ackCh, rd.Ack, func(_, a wire.Ack) wire.Ack { return a })
	}
	if rd.ApplyThrough > d.applyTo {
		d.applyTo = rd.ApplyThrough
		select {
		case d.wake <- struct{}{}:
		default:
		}
	}
	if rd.Checkpoint > d.cpHint {
		d.cpHint = rd.Checkpoint
	}
	return rd.Persist
}

// sendAcks writes the session's acks as they come.
func (d *Replica) sendAcks(ctx context.Context, s *mirrorSession) {
	var buf []byte
	for {
		var a wire.Ack
		select {
		case <-ctx.Done():
			return
		case a = <-s.ackCh:
		}
		buf = wire.AppendAck(buf[:0], a)
		if err := sendFrame(&s.writeMu, s.st, wire.MsgAck, buf); err != nil {
			d.log.Warn("sending an ack failed; ending the session", "peer", s.peer, "err", err)
			s.cancel()
			return
		}
	}
}

// watchJournal feeds the journal's watermarks into the core at every
// change of the journal. Not only when they differ from the last ones it
// saw: a resync's reset moves the core's watermarks back, and the
// journal's may return to the old values before this goroutine runs. They
// are read under d.mu: the reset empties the journal before it restarts
// the core under d.mu, so a watermark of the old journal can never reach
// the new core (it would acknowledge records it does not have).
func (d *Replica) watchJournal(ctx context.Context) {
	defer d.wg.Done()
	j := d.node.Journal
	for {
		ch := j.Changed()
		d.mu.Lock()
		w, du := j.Watermarks()
		d.core.LocalProgress(w, du)
		d.processLocked()
		d.mu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-ch:
		}
	}
}

func (d *Replica) syncLoop(ctx context.Context) {
	defer d.wg.Done()
	j := d.node.Journal
	for {
		var seq uint64
		select {
		case <-ctx.Done():
			return
		case seq = <-d.syncReq:
		}
		if err := j.Wait(ctx, seq, journal.Durable); err != nil && ctx.Err() == nil {
			d.log.Error("journal sync failed", "seq", seq, "err", err)
		}
		// watchJournal reports the new durable watermark.
	}
}

// checkpointPressure is the node's checkpoint kick (see journalPressure).
func (d *Replica) checkpointPressure(through uint64) {
	for {
		old := d.cpWant.Load()
		if through <= old || d.cpWant.CompareAndSwap(old, through) {
			break
		}
	}
	kickChannel(d.cpNow)(through)
}

// applyLoop applies durable journal records to the store in seq order and
// checkpoints the store.
func (d *Replica) applyLoop(ctx context.Context) {
	defer d.wg.Done()
	n := d.node
	lastCP := d.applied()
	cpTimer := time.NewTicker(d.opts.CheckpointInterval)
	defer cpTimer.Stop()
	var rd *journal.Reader
	var readBackoff time.Duration
	defer func() {
		if rd != nil {
			rd.Close()
		}
	}()
	checkpoint := func() {
		a := d.applied()
		if a <= lastCP {
			return
		}
		if err := n.Checkpoint(a); err != nil {
			d.log.Error("checkpoint failed", "err", err)
			return
		}
		lastCP = a
	}
	for {
		d.mu.Lock()
		target := d.applyTo // never past a fork point (the core caps it)
		hint := d.cpHint
		d.mu.Unlock()
		applied := d.applied()
		if lastCP > applied {
			lastCP = applied // the journal was reset for a resync
		}
		if target <= applied {
			if d.cpWant.Load() > lastCP {
				checkpoint() // caught up short of what the journal asked
			}
			select {
			case <-ctx.Done():
				return
			case <-d.wake:
			case <-cpTimer.C:
				checkpoint()
			case <-d.cpNow:
				checkpoint()
			}
			continue
		}
		if rd == nil || rd.Position() != applied+1 {
			if rd != nil {
				rd.Close()
			}
			var err error
			rd, err = n.Journal.NewReader(applied + 1)
			if err != nil {
				d.log.Error("cannot read the journal to apply records", "from", applied+1, "err", err)
				rd = nil
				select {
				case <-ctx.Done():
					return
				case <-time.After(time.Second):
				}
				continue
			}
		}
		recs, err := rd.Next(ctx, int(min(target-applied, 4096)), 8<<20)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			rd.Close()
			rd = nil
			if errors.Is(err, journal.ErrTruncated) {
				continue // reset for a resync meanwhile: start again from the new position
			}
			// A journal that cannot be read now (a failing disk) is tried
			// again after a pause that doubles up to a second: retried at
			// once it would spin a core and log an error per attempt.
			readBackoff = min(max(2*readBackoff, 10*time.Millisecond), time.Second)
			d.log.Error("reading the journal to apply records failed; retrying", "from", applied+1, "retry_in", readBackoff, "err", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(readBackoff):
			}
			continue
		}
		readBackoff = 0
		d.applyMu.Lock()
		for _, rec := range recs {
			if rec.Seq != d.appliedSeq+1 || rec.Seq > target {
				break // reset meanwhile, or past what may be applied
			}
			if err := ApplyRecord(n.Store, rec); err != nil {
				d.applyMu.Unlock()
				d.log.Error("applying a record to the store failed; stopping the applier (the journal keeps it)", "seq", rec.Seq, "err", err)
				return
			}
			if d.opts.onApply != nil {
				d.opts.onApply(rec)
			}
			d.appliedSeq = rec.Seq
			d.recent.Add(rec.Seq, rec.Offset, rec.Length)
		}
		applied = d.appliedSeq
		d.applyMu.Unlock()
		if rd.Position() != applied+1 {
			rd.Close() // read past target; reposition next time
			rd = nil
		}
		d.mu.Lock()
		// Read again under d.mu: a resync's reset may have moved it back
		// since, and the core must not hear the old journal's seq.
		applied = d.applied()
		d.core.Applied(applied)
		d.processLocked()
		d.mu.Unlock()
		if want := d.cpWant.Load(); hint > lastCP && applied >= hint || want > lastCP && applied >= want {
			checkpoint()
		}
	}
}

// applied returns the seq through which the store holds every record.
func (d *Replica) applied() uint64 {
	d.applyMu.Lock()
	defer d.applyMu.Unlock()
	return d.appliedSeq
}

// serveSession runs one primary's session on its log stream st, whose
// first frame (a Hello) had payload p.
func (d *Replica) serveSession(ctx context.Context, conn streamConn, st frameStream, p []byte, log *slog.Logger) {
	defer st.Cancel(0)
	h, err := wire.DecodeHello(p)
	if err != nil {
		d.refuse(st, wire.CodeProtocol, "malformed hello: "+err.Error(), log)
		return
	}
	if err := d.ensureVolume(ctx, h, log); err != nil {
		d.refuse(st, wire.CodeInternal, err.Error(), log)
		return
	}

	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// Ending the session cancels its stream, so blocked reads return; the
	// connection may carry other volumes' sessions and stays up.
	defer context.AfterFunc(sctx, func() { st.Cancel(0) })()
	s := &mirrorSession{conn: conn, st: st, ctx: sctx, cancel: cancel, done: make(chan struct{}), peer: conn.PeerName(), ackCh: make(chan wire.Ack, 1),
		begun: make(chan struct{}), merge: newLaneMerge(laneMergeLimit)}
	defer close(s.done)
	// The session's resync and verify streams end with it.
	defer s.endSide()
	// One session at a time: a new one (e.g. a restarted primary) ends
	// the old one first.
	d.mu.Lock()
	old := d.active
	d.mu.Unlock()
	if old != nil {
		old.replaced.Store(true)
		old.cancel()
		old.st.Cancel(0)
		<-old.done
	}
	if d.isPromoted() {
		d.answerAsPrimary(st, h, log)
		return
	}
	d.mu.Lock()
	if d.active != nil && d.active != old {
		d.mu.Unlock()
		d.refuse(st, wire.CodeRefused, "another session is being set up", log)
		return
	}
	reply := d.core.Hello(h, d.node.Journal.LastSeq())
	rd := d.core.Ready()
	if err := d.persistHandshake(h, reply, &rd, log); err != nil {
		d.core.Disconnect()
		d.mu.Unlock()
		d.refuse(st, wire.CodeInternal, err.Error(), log)
		return
	}
	if reply.Code == wire.CodeOK {
		d.active = s
		// A demoted primary's records after the fork are quarantined
		// (checkDivergence): the journal need not keep them any more.
		if err := d.node.ReleasePeerGuards(); err != nil {
			log.Warn("releasing the journal records kept from the node's time as primary failed", "err", err)
		}
	}
	d.actLocked(rd)
	d.mu.Unlock()
	if reply.Code == wire.CodeOK {
		reply.Flags |= wire.FlagLanes // this mirror takes records on lanes
	}
	buf, err := wire.AppendHelloReply(nil, &reply)
	if err == nil {
		err = st.WriteFrame(uint8(wire.MsgHelloReply), buf)
	}
	if err == nil {
		err = st.Flush()
	}
	if reply.Code != wire.CodeOK {
		log.Warn("refused primary", "code", reply.Code, "reason", reply.Reason)
		linger(st)
		return
	}
	defer func() {
		d.mu.Lock()
		if d.active == s {
			d.active = nil
			d.core.Disconnect()
		}
		d.mu.Unlock()
	}()
	if err != nil {
		log.Warn("sending hello reply failed", "err", err)
		return
	}
	log.Info("primary session started", "primary", h.Node, "epoch", h.Epoch, "ack_level", h.AckLevel,
		"our_last_seq", reply.LastSeq, "flags", reply.Flags)
	ackDone := make(chan struct{})
	go func() { defer close(ackDone); d.sendAcks(sctx, s) }()
	// The log stream's reader ends once the stream is cancelled (cancel,
	// below, after a linger that lets an Error reach the primary).
	frames, readerDone := readFrames(sctx, st)
	defer func() { cancel(); <-ackDone; <-readerDone }()
	// Resync and verify streams end before the session is cleared.
	defer s.endSide()
	err = d.session(sctx, s, frames)
	switch {
	case s.replaced.Load():
		log.Info("primary session replaced by a newer one", "err", err)
	case ctx.Err() == nil:
		log.Warn("primary session ended", "err", err)
	default:
		log.Info("primary session ended")
	}
	if s.errorSent.Load() && sctx.Err() == nil {
		// Let the error reach the primary before the stream is cancelled.
		// The frame reader keeps reading the stream: it alone may (two
		// readers of one stream split its frames between them).
		st.CloseWrite()
		st.SetReadDeadline(time.Now().Add(2 * time.Second))
		drainFrames(frames, readerDone)
	}
}

// drainFrames discards frames until the reader reports the stream's end
// (the peer hung up, or the read deadline passed) or has stopped.
func drainFrames(frames <-chan inFrame, readerDone <-chan struct{}) {
	for {
		select {
		case f := <-frames:
			if f.err != nil {
				return
			}
		case <-readerDone:
			return
		}
	}
}

// persistHandshake carries out what the core decided about a primary's
// Hello before the reply leaves (d.mu held): a split brain is noted for
// status; records after a fork are copied to a quarantine file and the
// node's need for a resync (and, after a diverged history, the common
// history it now follows) is saved; an adopted epoch is saved. One
// metadata update holds all of it: a node whose journal holds records the
// new history does not must say so durably, or after a crash its stale
// records would pass for the new history's.
func (d *Replica) persistHandshake(h wire.Hello, reply wire.HelloReply, rd *core.ReplicaReady, log *slog.Logger) error {
	if rd.SplitBrain != "" {
		d.splitBrain = rd.SplitBrain
		log.Error("split brain detected", "primary", h.Node, "epoch", reply.Epoch, "detail", rd.SplitBrain)
	}
	q := rd.Quarantine
	if q != nil {
		// Never applied from now on, not even what was released already.
		d.applyTo = min(d.applyTo, q.After)
		rep, err := d.node.Quarantine(q.After, q.Reason)
		if err != nil {
			return err
		}
		if rep != nil {
			log.Warn("records after the fork point were quarantined, not discarded; the node will be resynced",
				"fork_seq", q.After, "records", rep.Records, "bytes", rep.DataBytes, "file", rep.File, "missing_before", rep.MissingBefore)
			d.quarantined = append(d.quarantined, *rep)
		}
		if q.Adopt != nil {
			d.splitBrain = "" // this node gave up its side
		}
		if d.opts.onQuarantine != nil {
			d.opts.onQuarantine(q.After)
		}
	}
	if q == nil && rd.NewEpoch == 0 {
		return nil
	}
	needs := reply.Flags&wire.FlagNeedsResync != 0
	err := d.node.UpdateMeta(func(m *Meta) error {
		if q != nil && q.Adopt != nil {
			m.History = append([]EpochStart(nil), q.Adopt...)
			if n := len(q.Adopt); n > 0 {
				m.Epoch = q.Adopt[n-1].Epoch
			}
			m.AcceptDivergence = false
		}
		if rd.NewEpoch > 0 {
			m.Epoch, m.History = rd.NewEpoch, append([]EpochStart(nil), rd.NewHistory...)
		}
		m.NeedsResync = m.NeedsResync || needs || q != nil
		return nil
	})
	if err != nil {
		return fmt.Errorf("cannot persist the handshake's outcome: %w", err)
	}
	if rd.NewEpoch > 0 {
		log.Info("adopted the primary's epoch history", "epoch", rd.NewEpoch, "entries", len(rd.NewHistory))
	}
	return nil
}

// inFrame is one frame read from a session's log stream.
type inFrame struct {
	typ wire.MsgType
	p   []byte
	err error
}

// readFrames reads st's frames into the returned channel, each with a
// fresh buffer (the records' data aliases it and the journal takes
// ownership), until a read fails (that error is the last frame) or ctx
// ends; done is closed when it returns. Reading on its own goroutine lets
// the session take the records the lanes bring while the log stream is
// quiet. Its owner cancels st (a read blocks until then) and waits on done.
func readFrames(ctx context.Context, st frameStream) (frames <-chan inFrame, done <-chan struct{}) {
	ch, dc := make(chan inFrame), make(chan struct{})
	go func() {
		defer close(dc)
		for {
			typ, p, err := st.ReadFrame(nil)
			select {
			case ch <- inFrame{wire.MsgType(typ), p, err}:
			case <-ctx.Done():
				return
			}
			if err != nil {
				return
			}
		}
	}()
	return ch, dc
}

// session handles the log stream's frames — records, flushes, heartbeats
// — until the stream ends; after a Lanes message the records come from
// the session's lanes (the merge releases them in seq order).
func (d *Replica) session(ctx context.Context, s *mirrorSession, frames <-chan inFrame) error {
	var recs []wire.Record
	var laneReady chan struct{} // set once the lanes are active
	for {
		var f inFrame
		select {
		case f = <-frames:
		case <-laneReady:
			for {
				lf, ok := s.merge.pop()
				if !ok {
					break
				}
				if err := d.receiveRecords(ctx, s, lf.recs); err != nil {
					return err
				}
			}
			continue
		case <-ctx.Done():
			return ctx.Err()
		}
		if f.err != nil {
			return fmt.Errorf("read: %w", f.err)
		}
		p := f.p
		switch f.typ {
		case wire.MsgRecords:
			if laneReady != nil {
				d.sendError(s, wire.CodeProtocol, "records on the log stream after a lanes message")
				return errors.New("records on the log stream after a lanes message")
			}
			var err error
			recs, err = wire.DecodeRecords(recs[:0], p)
			if err != nil {
				d.sendError(s, wire.CodeProtocol, err.Error())
				return fmt.Errorf("bad records frame: %w", err)
			}
			if err := d.receiveRecords(ctx, s, recs); err != nil {
				return err
			}
		case wire.MsgLanes:
			m, err := wire.DecodeLanes(p)
			if err == nil && laneReady != nil {
				err = errors.New("a second lanes message")
			}
			if err != nil {
				d.sendError(s, wire.CodeProtocol, err.Error())
				return fmt.Errorf("bad lanes message: %w", err)
			}
			s.merge.activate(m)
			laneReady = s.merge.ready
		case wire.MsgResyncBegin:
			m, err := wire.DecodeResyncBegin(p)
			if err == nil {
				err = d.beginResync(ctx, m)
			}
			if err == nil {
				s.beginOnce.Do(func() { close(s.begun) })
			}
			if err != nil {
				d.sendError(s, wire.CodeInternal, "resync begin: "+err.Error())
				return fmt.Errorf("resync begin: %w", err)
			}
		case wire.MsgFlush:
			f, err := wire.DecodeFlush(p)
			if err != nil {
				d.sendError(s, wire.CodeProtocol, err.Error())
				return err
			}
			d.mu.Lock()
			d.core.Flush(f.Through)
			d.processLocked()
			d.mu.Unlock()
		case wire.MsgHeartbeat:
			// A primary sends heartbeats only while it may complete writes
			// (coord's Node contract): only they count as contact.
			d.mu.Lock()
			d.contact = time.Now()
			d.mu.Unlock()
			if err := sendFrame(&s.writeMu, s.st, wire.MsgHeartbeatEcho, p); err != nil {
				return err
			}
		case wire.MsgError:
			e, err := wire.DecodeError(p)
			if err != nil {
				return fmt.Errorf("primary sent a malformed error: %w", err)
			}
			return e
		default:
			d.sendError(s, wire.CodeProtocol, fmt.Sprintf("unexpected %v", f.typ))
			return fmt.Errorf("unexpected %v from primary", f.typ)
		}
	}
}

// receiveRecords hands one frame's records, in seq order, to the core,
// writes them to the journal and acks them.
func (d *Replica) receiveRecords(ctx context.Context, s *mirrorSession, recs []wire.Record) error {
	j := d.node.Journal
	d.mu.Lock()
	if d.active != s {
		d.mu.Unlock()
		return errors.New("session replaced")
	}
	err := d.core.Receive(recs)
	var rd core.ReplicaReady
	if err == nil {
		// The ack for these records is sent from this goroutine: at once
		// when the core says so (the primary counts received records),
		// else once they are written.
		rd = d.core.Ready()
		sendAck := rd.SendAck
		rd.SendAck = false
		d.actLocked(rd)
		rd.SendAck = sendAck
	}
	d.mu.Unlock()
	if err != nil {
		d.sendError(s, wire.CodeProtocol, err.Error())
		return err
	}
	persist, ackDue := rd.Persist, rd.SendAck
	if rd.AckNow {
		if err := d.sendAck(s, rd.Ack); err != nil {
			return err
		}
		ackDue = false
	}
	var last uint64
	for i := range recs {
		rec := &recs[i]
		if rec.Seq < persist.From || rec.Seq > persist.Through {
			continue
		}
		// Deferred: WriteThrough writes the frame's records from here,
		// without waking the journal's flusher.
		if err := j.SubmitDeferred(ctx, journalRecord(rec)); err != nil {
			return fmt.Errorf("journal seq %d: %w", rec.Seq, err)
		}
		last = rec.Seq
	}
	if last > 0 {
		if err := j.WriteThrough(ctx, last); err != nil {
			return fmt.Errorf("journal through seq %d: %w", last, err)
		}
	}
	return d.ackNow(s, ackDue)
}

// serveLane reads one lane stream of the active session (first frame
// LaneJoin, payload p) into the session's merge until the session ends.
func (d *Replica) serveLane(conn streamConn, st frameStream, p []byte, log *slog.Logger) {
	defer st.Cancel(0)
	j, err := wire.DecodeLaneJoin(p)
	if err != nil {
		log.Warn("malformed lane join; refusing the stream", "err", err)
		return
	}
	d.mu.Lock()
	s := d.active
	d.mu.Unlock()
	if s == nil || conn.PeerName() != s.peer {
		log.Warn("lane stream without a session of its volume from its node; refusing it", "lane", j.Index)
		return
	}
	if !s.addSide() {
		return
	}
	defer s.side.Done()
	defer context.AfterFunc(s.ctx, func() { st.Cancel(0) })()
	t := time.NewTimer(handshakeTimeout)
	defer t.Stop()
	select {
	case <-s.merge.activated:
	case <-s.ctx.Done():
		return
	case <-t.C:
		log.Warn("lane stream joined a session that announced no lanes; refusing it", "lane", j.Index)
		return
	}
	// A lane that ends ends the session (the primary ends every lane
	// with its session; a lane it lost leaves a gap no other lane fills).
	fail := func(err error) {
		if s.ctx.Err() != nil {
			return
		}
		if errors.Is(err, errLaneProtocol) {
			d.sendError(s, wire.CodeProtocol, err.Error())
			log.Warn("lane stream broke the protocol; ending the session", "lane", j.Index, "err", err)
		} else {
			log.Info("lane stream ended; ending the session", "lane", j.Index, "err", err)
		}
		s.cancel()
	}
	if err := s.merge.join(j.Token, j.Index); err != nil {
		fail(err)
		return
	}
	var last uint64
	for {
		typ, p, err := st.ReadFrame(nil)
		if err != nil {
			fail(fmt.Errorf("read lane %d: %w", j.Index, err))
			return
		}
		if wire.MsgType(typ) != wire.MsgRecords {
			fail(fmt.Errorf("%w: %v on lane %d", errLaneProtocol, wire.MsgType(typ), j.Index))
			return
		}
		recs, err := wire.DecodeRecords(nil, p)
		if err != nil {
			fail(fmt.Errorf("%w: lane %d: %w", errLaneProtocol, j.Index, err))
			return
		}
		if recs[0].Seq <= last {
			fail(fmt.Errorf("%w: lane %d went back from seq %d to %d", errLaneProtocol, j.Index, last, recs[0].Seq))
			return
		}
		last = recs[len(recs)-1].Seq
		if err := s.merge.put(s.ctx, laneFrame{recs: recs, bytes: len(p)}); err != nil {
			fail(err)
			return
		}
	}
}

// ackNow feeds the journal's watermarks into the core and sends the
// resulting ack on s straight from the session's goroutine: the ack for a
// frame of records leaves as soon as they are written (or received, at
// that ack level), without the two hand-offs (journal watcher, ack sender)
// the general path takes. An ack carries the watermarks as they are, so
// sending one early never claims more than is true. due says an ack is
// owed even if the watermarks did not move (records received).
func (d *Replica) ackNow(s *mirrorSession, due bool) error {
	w, du := d.node.Journal.Watermarks()
	d.mu.Lock()
	if d.active != s {
		d.mu.Unlock()
		return errors.New("session replaced")
	}
	d.core.LocalProgress(w, du)
	rd := d.core.Ready()
	due = due || rd.SendAck
	rd.SendAck = false
	d.actLocked(rd)
	d.mu.Unlock()
	if !due {
		return nil
	}
	return d.sendAck(s, rd.Ack)
}

// sendAck sends a on s from the session's goroutine.
func (d *Replica) sendAck(s *mirrorSession, a wire.Ack) error {
	s.ackBuf = wire.AppendAck(s.ackBuf[:0], a)
	if err := sendFrame(&s.writeMu, s.st, wire.MsgAck, s.ackBuf); err != nil {
		return fmt.Errorf("send ack: %w", err)
	}
	return nil
}

func (d *Replica) sendError(s *mirrorSession, code wire.ErrCode, msg string) {
	buf := wire.AppendError(nil, wire.ErrorMsg{Code: code, Message: msg})
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	if s.st.WriteFrame(uint8(wire.MsgError), buf) == nil {
		s.st.Flush()
	}
	s.st.CloseWrite()
	s.errorSent.Store(true)
}

func (d *Replica) refuse(st frameStream, code wire.ErrCode, reason string, log *slog.Logger) {
	log.Warn("refusing primary", "code", code, "reason", reason)
	buf := wire.AppendError(nil, wire.ErrorMsg{Code: code, Message: reason})
	if st.WriteFrame(uint8(wire.MsgError), buf) == nil {
		st.Flush()
	}
	linger(st)
}

// linger ends our side of a stream after a last message and waits (up to
// 2 s) for the peer to read it and hang up, so closing the connection does
// not discard the message (a refusal's reason must reach the primary).
func linger(st frameStream) {
	st.CloseWrite()
	st.SetReadDeadline(time.Now().Add(2 * time.Second))
	for {
		if _, _, err := st.ReadFrame(nil); err != nil {
			return
		}
	}
}

// ensureVolume creates the volume from the first primary's hello when the
// data directory holds none.
func (d *Replica) ensureVolume(ctx context.Context, h wire.Hello, log *slog.Logger) error {
	d.mu.Lock()
	have := d.node != nil
	d.mu.Unlock()
	if have {
		return nil
	}
	if h.Role != wire.PeerRolePrimary || h.Size == 0 || h.Size%512 != 0 || h.Volume == (UUID{}) {
		return fmt.Errorf("hello does not describe a volume this mirror can create (size %d)", h.Size)
	}
	nopts := d.opts.Node
	nopts.Size = int64(h.Size)
	nopts.Volume = h.Volume
	nopts.Role = RoleMirror
	nopts.Logger = d.log
	// A new, empty mirror takes the primary's history: it holds no record
	// of its own that could differ. In the metadata write that creates
	// the volume: a crash between two writes would leave a mirror with a
	// history of its own, which would take its primary for a split brain.
	nopts.history = h.History
	node, err := OpenNode(ctx, nopts)
	if err != nil {
		return fmt.Errorf("create the volume: %w", err)
	}
	// A new mirror starts at seq 0 with a zeroed disk: it can catch up
	// from the journal only if the primary still has seq 1 and its disk
	// started zeroed; otherwise the primary sees a mirror that needs a
	// resync.
	if err := d.adopt(node); err != nil {
		node.Close()
		return err
	}
	log.Info("created the volume from the primary's description", "volume", h.Volume, "size", h.Size)
	d.mu.Lock()
	d.startWorkersLocked(ctx)
	d.mu.Unlock()
	return nil
}

// ReplicaStatus is the mirror's state, as JSON for status.
type ReplicaStatus struct {
	Role        string `json:"role"`
	Volume      string `json:"volume,omitempty"`
	Size        int64  `json:"size,omitempty"`
	Epoch       uint64 `json:"epoch"`
	Connected   bool   `json:"connected"`
	Primary     string `json:"primary,omitempty"`
	NeedsResync bool   `json:"needs_resync"`
	Received    uint64 `json:"received_seq"`
	Written     uint64 `json:"written_seq"`
	Durable     uint64 `json:"durable_seq"`
	Applied     uint64 `json:"applied_seq"`
	AckLevel    string `json:"ack_level"`
	// Inconsistent: a resync is in progress (or was interrupted); the
	// store is not a write-order prefix and the node must not be promoted.
	Inconsistent bool `json:"inconsistent"`
	// ResyncChunks counts chunks written by resync in this run.
	ResyncChunks int64 `json:"resync_chunks"`
	// SplitBrain, when set, says a primary of our epoch with another
	// history contacted us, and how to resolve it.
	SplitBrain string `json:"split_brain,omitempty"`
	// Quarantined lists records set aside in this run (see failover.go).
	Quarantined []QuarantineReport `json:"quarantined,omitempty"`
}

// Status returns a snapshot for `blockmirror status`.
func (d *Replica) Status() ReplicaStatus {
	d.mu.Lock()
	defer d.mu.Unlock()
	st := ReplicaStatus{Role: string(RoleMirror), SplitBrain: d.splitBrain, Quarantined: d.quarantined}
	if d.core == nil {
		return st
	}
	m := d.node.Meta()
	cs := d.core.Status()
	st.Volume, st.Size, st.Epoch = m.Volume.String(), m.Size, cs.Epoch
	st.Connected, st.NeedsResync = cs.Connected, cs.NeedsResync
	st.Received, st.Written, st.Durable, st.Applied = cs.Received, cs.Written, cs.Durable, cs.Applied
	st.AckLevel = cs.AckLevel.String()
	st.Inconsistent = m.Inconsistent
	st.ResyncChunks = d.resyncChunks.Load()
	if d.active != nil {
		st.Primary = d.active.peer
	}
	return st
}

// SincePrimaryContact is the time since the last heartbeat of a primary
// (of an epoch at least this node's), or since the daemon was made if no
// primary has sent one.
func (d *Replica) SincePrimaryContact() time.Duration {
	d.mu.Lock()
	defer d.mu.Unlock()
	return time.Since(d.contact)
}
