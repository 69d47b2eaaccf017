package core

import (
	"errors"
	"fmt"

	"github.com/blockmirror/blockmirror/mirror/wire"
)

// ErrProtocol: a peer sent something the protocol does not allow (records
// out of order or from the wrong epoch, records before the handshake). The
// driver ends the session (sending an Error with CodeProtocol); nothing of
// the offending message has been accepted.
var ErrProtocol = errors.New("mirror: protocol violation")

// Defaults of ReplicaConfig.
const (
	DefaultSyncEveryTicks  = 10
	DefaultCheckpointEvery = 4096
)

// ReplicaConfig configures a ReplicaCore. The seqs describe the node's
// state after journal recovery.
type ReplicaConfig struct {
	// Identity is the local volume identity (UUID, size, epoch, history).
	Identity VolumeIdentity
	// Node is this node's name, sent in HelloReply.
	Node string
	// LastSeq is the last seq in the local journal.
	LastSeq uint64
	// DurableSeq is the seq through which the journal is durable (≤ LastSeq).
	DurableSeq uint64
	// AppliedSeq is the store's checkpoint: it holds every record ≤ it.
	// Records after it are applied again (ApplyThrough) on start.
	AppliedSeq uint64
	// Flags are reported in every HelloReply (FlagNeedsResync,
	// FlagInconsistent); while FlagNeedsResync is set records are refused.
	Flags uint32
	// SyncEveryTicks: below ack level durable, the journal is made durable
	// at least this often while it has non-durable records (default
	// DefaultSyncEveryTicks).
	SyncEveryTicks int
	// CheckpointEvery: a Checkpoint hint is emitted after this many
	// records were applied since the last one (default
	// DefaultCheckpointEvery).
	CheckpointEvery uint64
	// AcceptDivergence: an operator chose this node as the losing side of
	// a split brain; a primary of the same epoch with another history is
	// followed (after the records past the fork are quarantined) instead
	// of refused.
	AcceptDivergence bool
}

func (c *ReplicaConfig) withDefaults() ReplicaConfig {
	d := *c
	d.Identity.History = append([]wire.EpochStart(nil), c.Identity.History...)
	if d.SyncEveryTicks == 0 {
		d.SyncEveryTicks = DefaultSyncEveryTicks
	}
	if d.CheckpointEvery == 0 {
		d.CheckpointEvery = DefaultCheckpointEvery
	}
	return d
}

func (c *ReplicaConfig) validate() error {
	if c.Identity.Epoch == 0 {
		return errors.New("mirror: replica config: epoch must be at least 1")
	}
	if c.DurableSeq > c.LastSeq {
		return fmt.Errorf("mirror: replica config: durable seq %d is past the last seq %d", c.DurableSeq, c.LastSeq)
	}
	if c.AppliedSeq > c.DurableSeq {
		return fmt.Errorf("mirror: replica config: applied seq %d is past the durable seq %d", c.AppliedSeq, c.DurableSeq)
	}
	if err := ValidHistory(c.Identity.History, c.Identity.Epoch); err != nil {
		return fmt.Errorf("mirror: replica config: %w", err)
	}
	if c.SyncEveryTicks < 0 {
		return fmt.Errorf("mirror: replica config: negative sync interval %d", c.SyncEveryTicks)
	}
	return nil
}

// SeqRange is the inclusive range [From, Through]; From == 0 means empty.
type SeqRange struct {
	From, Through uint64
}

// Empty reports whether the range holds no seq.
func (r SeqRange) Empty() bool { return r.From == 0 || r.From > r.Through }

// ReplicaReady holds the outputs accumulated since the last call to Ready.
type ReplicaReady struct {
	// Persist: append the records of this range (accepted by Receive in
	// this session; the driver holds their data) to the local journal, in
	// order, and report progress with LocalProgress.
	Persist SeqRange
	// SyncLocal, if > 0: make the journal durable through this seq (it is
	// written already) and report it with LocalProgress. At most one sync
	// is requested at a time (group commit).
	SyncLocal uint64
	// SendAck: send Ack to the primary. Ack always holds the current
	// watermarks (a driver that owes an ack of its own sends it).
	SendAck bool
	Ack     wire.Ack
	// AckNow (with SendAck): the records just received count at the
	// session's ack level (received): send the ack at once, from the
	// goroutine that received them, before persisting them.
	AckNow bool
	// ApplyThrough, if > 0: apply the journal's records after the last
	// applied one through this seq to the store, in order, and report
	// with Applied. Only durable records are released for applying, so the
	// store stays a write-order prefix of the journal even after power loss.
	ApplyThrough uint64
	// Checkpoint, if > 0: a good moment to sync the store and record that
	// it holds every record ≤ Checkpoint (then the journal may drop them).
	Checkpoint uint64
	// NewEpoch, if > 0: the node adopted this epoch and NewHistory from
	// the primary's Hello; persist them (before sending the HelloReply).
	NewEpoch   uint64
	NewHistory []wire.EpochStart
	// Quarantine, if set (by Hello): the journal holds records after a
	// fork from the primary's history. Before sending the HelloReply,
	// copy the journal's records after Quarantine.After aside (never
	// discard them) and persist that the node needs a resync (and, with
	// Adopt, its new history); they are never applied from now on.
	Quarantine *Quarantine
	// SplitBrain, if set (by Hello): the primary is of our epoch with
	// another history; the reply refuses it and this says how an operator
	// resolves it (for status).
	SplitBrain string
}

// Quarantine says which of the journal's records must be set aside.
type Quarantine struct {
	// After is the fork point: records ≤ After are the primary's too.
	After uint64
	// Reason describes the fork (for the quarantine report).
	Reason string
	// Adopt, when not nil, is the common prefix of the two histories: the
	// node gives up its own branch after the fork (it was the loser of a
	// split brain, or its epoch was superseded) and persists this history
	// (and its last epoch); it no longer accepts divergence.
	Adopt []wire.EpochStart
}

// ReplicaStatus is a snapshot of a ReplicaCore.
type ReplicaStatus struct {
	Epoch       uint64
	Connected   bool
	NeedsResync bool
	Received    uint64
	Written     uint64
	Durable     uint64
	Applied     uint64
	AckLevel    wire.AckLevel // of the current (or last) session
}

// ReplicaCore is the I/O-free state machine of a mirror: it validates the
// primary's handshake and record stream, and says what to persist, sync,
// apply and acknowledge. It is not safe for concurrent use.
type ReplicaCore struct {
	cfg ReplicaConfig
	id  VolumeIdentity

	active       bool
	sessionEpoch uint64
	history      []wire.EpochStart // the session primary's history
	ackLevel     wire.AckLevel
	lastEpoch    uint64 // epoch of the record at received

	received uint64
	written  uint64
	durable  uint64
	applied  uint64

	syncAsked    uint64 // highest SyncLocal requested
	flushWant    uint64
	lastSyncTick int64
	now          int64
	applyAsked   uint64
	checkpointAt uint64
	// capped: records after applyCap were quarantined (a fork) and must
	// never reach the store; cleared when a resync resets the journal.
	capped   bool
	applyCap uint64

	ready ReplicaReady
}

// NewReplicaCore returns a core for cfg (defaults applied to a copy).
func NewReplicaCore(cfg ReplicaConfig) (*ReplicaCore, error) {
	c := cfg.withDefaults()
	if err := c.validate(); err != nil {
		return nil, err
	}
	r := &ReplicaCore{
		cfg: c, id: c.Identity,
		received: c.LastSeq, written: c.LastSeq, durable: c.DurableSeq,
		applied: c.AppliedSeq, applyAsked: c.AppliedSeq, checkpointAt: c.AppliedSeq,
		syncAsked: c.DurableSeq, ackLevel: wire.AckWritten,
	}
	r.lastEpoch, _ = EpochOfSeq(r.id.History, r.written)
	r.release()
	return r, nil
}

// Hello handles the primary's Hello and returns the reply to send. A
// refusal (Code != CodeOK) leaves the core without a session; the driver
// sends the reply and closes. journalLast is the last seq of the local
// journal (at least the written watermark: a record an earlier session
// submitted may still be on its way to the file). Before a new Hello the
// driver must have finished (and reported) or abandoned every Persist of
// the previous session.
//
// The answer, in order: refuse a peer that is not a primary, an unknown
// ack level or a Hello CheckHello rejects (CodeFenced for a stale epoch,
// CodeRefused otherwise, with the reason); a primary of our epoch whose
// history diverged from ours is a split brain (CodeSplitBrain, and
// Ready.SplitBrain), unless the node accepts divergence; if the journal
// holds records after the fork point of the two histories, Ready carries
// the Quarantine order and the reply asks for a resync; otherwise the
// session is accepted, the node adopting the primary's history once its
// journal is a prefix of it (Ready.NewEpoch), and the primary streams from
// the reply's LastSeq+1 or resyncs the node.
func (r *ReplicaCore) Hello(h wire.Hello, journalLast uint64) wire.HelloReply {
	r.Disconnect()
	last := max(journalLast, r.written)
	reply := wire.HelloReply{
		Version: wire.ProtoVersion, Code: wire.CodeOK, Role: wire.PeerRoleMirror,
		Volume: r.id.Volume, Size: r.id.Size, Node: r.cfg.Node,
	}
	fill := func() wire.HelloReply {
		reply.Epoch = r.id.Epoch
		reply.History = r.id.History
		reply.LastSeq, reply.DurableSeq, reply.AppliedSeq = r.written, r.durable, r.applied
		reply.Flags |= r.cfg.Flags
		return reply
	}
	if h.Role != wire.PeerRolePrimary {
		reply.Code, reply.Reason = wire.CodeRefused, fmt.Sprintf("peer announces role %d, not primary", h.Role)
		return fill()
	}
	if h.AckLevel < wire.AckReceived || h.AckLevel > wire.AckDurable {
		reply.Code, reply.Reason = wire.CodeRefused, fmt.Sprintf("unknown ack level %d", h.AckLevel)
		return fill()
	}
	herr := CheckHello(r.id, h)
	diverged := errors.Is(herr, ErrHistoryDiverged)
	if herr != nil && !diverged {
		reply.Code, reply.Reason = wire.CodeRefused, herr.Error()
		if errors.Is(herr, ErrStaleEpoch) {
			reply.Code = wire.CodeFenced
		}
		return fill()
	}
	if diverged && h.Epoch == r.id.Epoch && !r.cfg.AcceptDivergence {
		reply.Code, reply.Reason = wire.CodeSplitBrain, SplitBrainAdvice(r.cfg.Node, h.Node, r.id.Epoch)
		r.ready.SplitBrain = reply.Reason
		return fill()
	}
	// Records after the fork point are set aside, never applied, and the
	// node waits for a resync; with a diverged history it takes the common
	// prefix, which the primary's history extends.
	if fork := ForkPoint(r.id.History, h.History, last, h.LastSeq); last > fork || diverged {
		q := &Quarantine{After: fork, Reason: fmt.Sprintf("primary %s (epoch %d) has a history that forks from ours after seq %d", h.Node, h.Epoch, fork)}
		if diverged {
			q.Adopt = HistoryPrefix(r.id.History, fork)
			r.id.History = append([]wire.EpochStart(nil), q.Adopt...)
			if n := len(q.Adopt); n > 0 {
				r.id.Epoch = q.Adopt[n-1].Epoch
			}
			r.cfg.AcceptDivergence = false
		}
		// Never raised before Restart: after adopting the primary's
		// history the quarantined records pass for its own, and a later
		// Hello would put the fork past them.
		if !r.capped || fork < r.applyCap {
			r.capped, r.applyCap = true, fork
		}
		r.cfg.Flags |= wire.FlagNeedsResync
		r.ready.Quarantine = q
	}
	reply.Flags = r.cfg.Flags
	// Records we hold under an epoch branch the primary does not assign to
	// that seq, or records beyond the primary's last: our journal diverged.
	if r.written > h.LastSeq {
		reply.Flags |= wire.FlagNeedsResync
	} else if len(h.History) > 0 && r.written > 0 {
		le, lok := EntryOfSeq(r.id.History, r.written)
		re, rok := EntryOfSeq(h.History, r.written)
		if lok && (!rok || le != re) {
			reply.Flags |= wire.FlagNeedsResync
		}
	}
	// Follow the primary's history once our journal is a prefix of it (a
	// higher epoch, or a new branch of ours): only then do our records'
	// seqs mean what the history says. A node that needs a resync takes
	// it when its journal is reset (Restart).
	if reply.Flags&wire.FlagNeedsResync == 0 && h.Epoch >= r.id.Epoch && len(h.History) > 0 &&
		ExtendsHistory(r.id.History, h.History) && len(h.History) > len(r.id.History) || h.Epoch > r.id.Epoch {
		r.adopt(h.Epoch, h.History)
	}
	r.active = true
	r.sessionEpoch = h.Epoch
	r.history = append(r.history[:0], h.History...)
	r.ackLevel = h.AckLevel
	r.cfg.Flags = reply.Flags
	return fill()
}

// adopt takes epoch and history as the node's own and asks the driver to
// persist them (NewEpoch, NewHistory).
func (r *ReplicaCore) adopt(epoch uint64, h []wire.EpochStart) {
	r.id.Epoch = epoch
	r.id.History = append([]wire.EpochStart(nil), h...)
	r.ready.NewEpoch = epoch
	r.ready.NewHistory = r.id.History
}

// SessionHistory is the history of the session's primary (from its Hello).
func (r *ReplicaCore) SessionHistory() []wire.EpochStart {
	return append([]wire.EpochStart(nil), r.history...)
}

// Restart continues the node at seq from after its journal was reset for a
// resync (the driver applied what the journal held, emptied it and set its
// start to from, and persisted the session primary's history, which the
// node now follows): every watermark moves to from-1, the needs-resync flag
// clears and the inconsistent flag is set until SetConsistent.
func (r *ReplicaCore) Restart(from uint64) {
	if n := len(r.history); n > 0 {
		r.id.History = append([]wire.EpochStart(nil), r.history...)
		r.id.Epoch = r.history[n-1].Epoch
	}
	s := from - 1
	r.received, r.written, r.durable, r.applied = s, s, s, s
	r.applyAsked, r.checkpointAt, r.syncAsked, r.flushWant = s, s, s, 0
	r.lastEpoch, _ = EpochOfSeq(r.history, s)
	r.cfg.Flags = r.cfg.Flags&^wire.FlagNeedsResync | wire.FlagInconsistent
	r.capped, r.applyCap = false, 0
}

// ApplyLimit is the highest seq the store may ever hold from the current
// journal (false: no limit), i.e. the fork point of quarantined records.
func (r *ReplicaCore) ApplyLimit() (uint64, bool) { return r.applyCap, r.capped }

// BeginResync handles the primary's ResyncBegin: the store is
// inconsistent until the resync completes. A resumed resync (no Reset)
// must continue at the node's own next seq; with Reset, the driver
// applies what the journal holds (never past ApplyLimit), empties it,
// persists the session's history and calls Restart(m.From).
func (r *ReplicaCore) BeginResync(m wire.ResyncBegin) (reset bool, err error) {
	if m.Reset {
		return true, nil
	}
	if next := r.received + 1; m.From != next {
		return false, fmt.Errorf("resumed resync starts at seq %d but our next seq is %d", m.From, next)
	}
	r.SetInconsistent()
	return false, nil
}

// SetInconsistent marks the store inconsistent (a resync resumed).
func (r *ReplicaCore) SetInconsistent() {
	r.cfg.Flags = r.cfg.Flags&^wire.FlagNeedsResync | wire.FlagInconsistent
}

// SetConsistent clears the inconsistent flag after a completed resync.
func (r *ReplicaCore) SetConsistent() { r.cfg.Flags &^= wire.FlagInconsistent }

// Flags returns the flags the node reports.
func (r *ReplicaCore) Flags() uint32 { return r.cfg.Flags }

// Disconnect ends the session: records received but not handed out for
// persisting are forgotten (the primary resends them after the next
// handshake).
func (r *ReplicaCore) Disconnect() {
	r.active = false
	r.ready.Persist = SeqRange{}
	r.ready.SendAck, r.ready.AckNow = false, false
	if r.received > r.written {
		r.received = r.written
		r.lastEpoch, _ = EpochOfSeq(r.id.History, r.written)
	}
}

// Receive checks a batch of records (only Epoch, Seq and Op are read)
// from the session's primary and accepts all of them, or none: seqs must
// continue the received ones without a gap; epochs must not decrease,
// must not exceed the session epoch and must match the primary's history.
// A rejection wraps ErrProtocol.
func (r *ReplicaCore) Receive(recs []wire.Record) error {
	if !r.active {
		return fmt.Errorf("%w: records outside a session", ErrProtocol)
	}
	if r.cfg.Flags&wire.FlagNeedsResync != 0 {
		return fmt.Errorf("%w: records sent to a mirror that needs a resync", ErrProtocol)
	}
	next, epoch := r.received+1, r.lastEpoch
	for i := range recs {
		rec := &recs[i]
		if rec.Seq != next {
			return fmt.Errorf("%w: record %d of the batch has seq %d, expected %d", ErrProtocol, i, rec.Seq, next)
		}
		if !rec.Op.Valid() {
			return fmt.Errorf("%w: record seq %d has unknown op %d", ErrProtocol, rec.Seq, uint8(rec.Op))
		}
		if rec.Epoch < epoch {
			return fmt.Errorf("%w: record seq %d has epoch %d, lower than the previous record's %d", ErrProtocol, rec.Seq, rec.Epoch, epoch)
		}
		if rec.Epoch > r.sessionEpoch {
			return fmt.Errorf("%w: record seq %d has epoch %d, higher than the session's %d", ErrProtocol, rec.Seq, rec.Epoch, r.sessionEpoch)
		}
		if want, ok := EpochOfSeq(r.history, rec.Seq); ok && want != rec.Epoch {
			return fmt.Errorf("%w: record seq %d has epoch %d but the primary's history puts it in epoch %d", ErrProtocol, rec.Seq, rec.Epoch, want)
		}
		next++
		epoch = rec.Epoch
	}
	if len(recs) == 0 {
		return nil
	}
	if r.ready.Persist.Empty() {
		r.ready.Persist.From = r.received + 1
	}
	r.received = next - 1
	r.lastEpoch = epoch
	r.ready.Persist.Through = r.received
	r.ready.SendAck = true
	r.ready.AckNow = r.ready.AckNow || r.ackLevel == wire.AckReceived
	return nil
}

// LocalProgress reports the journal's watermarks: written through
// written, durable through durable (cumulative; regressions are ignored).
func (r *ReplicaCore) LocalProgress(written, durable uint64) {
	if durable > written {
		durable = written
	}
	if written > r.written {
		r.written = written
		if r.received < written {
			r.received = written
		}
		r.ready.SendAck = r.acking()
	}
	if durable > r.durable {
		r.durable = durable
		r.ready.SendAck = r.acking()
		r.release()
	}
	r.maybeSync()
}

// Applied reports that the store holds every record ≤ seq.
func (r *ReplicaCore) Applied(seq uint64) {
	if seq <= r.applied {
		return
	}
	r.applied = seq
	r.ready.SendAck = r.acking()
	if r.applied-r.checkpointAt >= r.cfg.CheckpointEvery {
		r.checkpointAt = r.applied
		r.ready.Checkpoint = r.applied
	}
}

// Flush asks for the journal to be durable through seq (a Flush message).
// Records not yet written are synced once they are.
func (r *ReplicaCore) Flush(through uint64) {
	if through > r.flushWant {
		r.flushWant = through
	}
	r.maybeSync()
}

// Tick advances the core's clock by one tick.
func (r *ReplicaCore) Tick() {
	r.now++
	r.maybeSync()
}

// Ready returns the outputs accumulated since the previous call and
// clears them.
func (r *ReplicaCore) Ready() ReplicaReady {
	out := r.ready
	out.Ack = r.ack()
	out.AckNow = out.AckNow && out.SendAck
	r.ready = ReplicaReady{}
	return out
}

// Status returns a snapshot of the core.
func (r *ReplicaCore) Status() ReplicaStatus {
	return ReplicaStatus{
		Epoch: r.id.Epoch, Connected: r.active, NeedsResync: r.cfg.Flags&wire.FlagNeedsResync != 0,
		Received: r.received, Written: r.written, Durable: r.durable, Applied: r.applied, AckLevel: r.ackLevel,
	}
}

// AckLevel is the level the primary counts acks at (from its Hello).
func (r *ReplicaCore) AckLevel() wire.AckLevel { return r.ackLevel }

// acking reports whether the node's watermarks may be acknowledged: in a
// session, and not while it waits for a resync. Then its journal holds
// records after a fork from the primary's history, and a watermark of
// them (a sync of one of them completing) would make the primary count
// records of its own at those seqs as held here.
func (r *ReplicaCore) acking() bool {
	return r.active && r.cfg.Flags&wire.FlagNeedsResync == 0
}

func (r *ReplicaCore) ack() wire.Ack {
	return wire.Ack{Received: r.received, Written: r.written, Durable: r.durable, Applied: r.applied}
}

// release lets the store apply every durable record (never one after a
// fork point).
func (r *ReplicaCore) release() {
	through := r.durable
	if r.capped {
		through = min(through, r.applyCap)
	}
	if through > r.applyAsked {
		r.applyAsked = through
		r.ready.ApplyThrough = through
	}
}

// maybeSync requests a journal sync when one is due and none is running.
func (r *ReplicaCore) maybeSync() {
	if r.written <= r.durable || r.syncAsked > r.durable {
		return // nothing to sync, or a sync is in flight
	}
	due := r.ackLevel == wire.AckDurable || r.flushWant > r.durable ||
		r.now-r.lastSyncTick >= int64(r.cfg.SyncEveryTicks)
	if !due {
		return
	}
	r.syncAsked = r.written
	r.lastSyncTick = r.now
	r.ready.SyncLocal = r.written
}
