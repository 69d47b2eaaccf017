package core

import (
	"errors"
	"fmt"
	"github.com/blockmirror/blockmirror/mirror/wire"
	"math"
)

// Errors a request can complete with (Completion.Err). Callers branch on
// them with errors.Is.
var (
	// ErrNoQuorum: in sync mode, fewer than SyncAcks mirrors acknowledged
	// the request within AckTimeoutTicks. The data may already be in the
	// local journal and store and may still reach mirrors later: like EIO
	// from a disk, it means the content of the range is undefined.
	ErrNoQuorum = errors.New("mirror: not enough mirrors acknowledged in time")
	// ErrFenced: a node with a higher epoch exists; this primary must not
	// acknowledge writes any more.
	ErrFenced = errors.New("mirror: fenced by a higher epoch")
	// ErrDuplicateID: a request id was proposed while a request with the
	// same id is still pending.
	ErrDuplicateID = errors.New("mirror: duplicate request id")
	// ErrSplitBrain: a mirror answered that it is (or follows) a primary of
	// our epoch with another history; nothing is discarded until an
	// operator resolves it.
	ErrSplitBrain = errors.New("mirror: split brain")
	// ErrRefused: a mirror refused the session (the error says why).
	ErrRefused = errors.New("mirror: session refused")
)

// Defaults of PrimaryConfig, in ticks (the driver chooses the tick length;
// the values assume about 10ms).
const (
	DefaultAckTimeoutTicks = 500
)

// PrimaryConfig configures a PrimaryCore.
type PrimaryConfig struct {
	// Peers names the mirrors (unique, non-empty). The order is the order
	// of PrimaryStatus.Peers.
	Peers []string
	// Mode is ModeSync (default) or ModeAsync.
	Mode wire.Mode
	// SyncAcks is K: in sync mode the number of mirrors that must
	// acknowledge a write (1..len(Peers), default 1); in async mode the
	// K-th best mirror is the one whose lag MaxLagTicks bounds.
	SyncAcks int
	// AckLevel is the level at which mirror acks count (default AckWritten).
	AckLevel wire.AckLevel
	// AllowDegraded (sync mode): with fewer than SyncAcks in-sync mirrors a
	// request needs the acks of every in-sync mirror only (none in sync:
	// local alone), and a mirror that does not ack within AckTimeoutTicks
	// is demoted to catching-up, so the request completes without it.
	// Without it such requests fail with ErrNoQuorum after AckTimeoutTicks.
	AllowDegraded bool
	// Coordinated: a coordinator (internal/coord) owns the ack set. The
	// core never changes it by itself: AllowDegraded no longer demotes a
	// mirror that does not ack (a request that waits AckTimeoutTicks fails
	// with ErrNoQuorum), and SetAckSet says whose acks count toward which K.
	// AllowDegraded is kept only as a setting the coordinator reads.
	Coordinated bool
	// AckTimeoutTicks (sync mode) bounds how long a request waits for mirror
	// acks (default DefaultAckTimeoutTicks).
	AckTimeoutTicks int
	// MaxLagTicks (async mode) bounds how long ago the oldest seq that the
	// K-th best mirror has not acknowledged may have been proposed; at it,
	// completions of writes are held. 0 disables the throttle. The bound is
	// on the span of acknowledgements a failure can lose: a write completes
	// only while that oldest seq was proposed fewer than MaxLagTicks ticks
	// ago (measured by the tick counter, so within MaxLagTicks tick periods
	// of real time, whatever part of a tick has passed).
	MaxLagTicks int
	// InSyncLagTicks bounds how far behind a mirror reported in-sync may
	// be: it must have acknowledged, at the ack level, every record proposed
	// more than InSyncLagTicks ticks ago (default AckTimeoutTicks/10, at
	// least 1). See PeerInSync.
	InSyncLagTicks int
	// Epoch is this primary's epoch (≥ 1).
	Epoch uint64
	// NextSeq is the first seq to assign (default 1): the local journal's
	// last seq + 1.
	NextSeq uint64
	// JournalFirst is the lowest seq still in the local journal (default
	// NextSeq); see PrimaryCore.JournalFirst.
	JournalFirst uint64
	// LocalDurable is the seq through which the local journal is durable
	// (default NextSeq-1).
	LocalDurable uint64
	// FencedBy, if above Epoch: the node was fenced by this epoch in an
	// earlier run (the metadata keeps it); the core starts fenced.
	FencedBy uint64
	// Node, Volume and Size identify the primary's volume: a mirror's
	// HelloReply must name the same volume and size (Size 0: not checked).
	Node   string
	Volume wire.UUID
	Size   uint64
}

func (c *PrimaryConfig) withDefaults() PrimaryConfig {
	d := *c
	d.Peers = append([]string(nil), c.Peers...)
	if d.Mode == 0 {
		d.Mode = wire.ModeSync
	}
	if d.AckLevel == 0 {
		d.AckLevel = wire.AckWritten
	}
	if d.SyncAcks == 0 && len(d.Peers) > 0 {
		d.SyncAcks = 1
	}
	if d.AckTimeoutTicks == 0 {
		d.AckTimeoutTicks = DefaultAckTimeoutTicks
	}
	if d.InSyncLagTicks == 0 {
		d.InSyncLagTicks = max(1, d.AckTimeoutTicks/10)
	}
	if d.NextSeq == 0 {
		d.NextSeq = 1
	}
	if d.JournalFirst == 0 {
		d.JournalFirst = d.NextSeq
	}
	if d.LocalDurable == 0 {
		d.LocalDurable = d.NextSeq - 1
	}
	return d
}

func (c *PrimaryConfig) validate() error {
	seen := make(map[string]bool, len(c.Peers))
	for _, p := range c.Peers {
		if p == "" {
			return errors.New("mirror: primary config: empty peer name")
		}
		if seen[p] {
			return fmt.Errorf("mirror: primary config: peer %q listed twice", p)
		}
		seen[p] = true
	}
	switch c.Mode {
	case wire.ModeSync:
		if len(c.Peers) == 0 {
			return errors.New("mirror: primary config: sync mode needs at least one mirror")
		}
	case wire.ModeAsync:
	default:
		return fmt.Errorf("mirror: primary config: unknown mode %d", c.Mode)
	}
	if c.SyncAcks < 0 || c.SyncAcks > len(c.Peers) {
		return fmt.Errorf("mirror: primary config: sync acks %d must be between 1 and the number of mirrors (%d)", c.SyncAcks, len(c.Peers))
	}
	if c.AckLevel < wire.AckReceived || c.AckLevel > wire.AckDurable {
		return fmt.Errorf("mirror: primary config: unknown ack level %d", c.AckLevel)
	}
	if c.AckTimeoutTicks < 0 {
		return fmt.Errorf("mirror: primary config: negative ack timeout %d", c.AckTimeoutTicks)
	}
	if c.MaxLagTicks < 0 {
		return fmt.Errorf("mirror: primary config: negative max lag %d", c.MaxLagTicks)
	}
	if c.InSyncLagTicks < 0 {
		return fmt.Errorf("mirror: primary config: negative in-sync lag %d", c.InSyncLagTicks)
	}
	if c.Epoch == 0 {
		return errors.New("mirror: primary config: epoch must be at least 1")
	}
	if c.LocalDurable >= c.NextSeq || c.JournalFirst > c.NextSeq {
		return fmt.Errorf("mirror: primary config: local durable %d and journal first %d must not pass next seq %d",
			c.LocalDurable, c.JournalFirst, c.NextSeq)
	}
	return nil
}

// PeerState is the replication state of one mirror as the primary sees it.
type PeerState uint8

const (
	// PeerDisconnected: no session.
	PeerDisconnected PeerState = iota
	// PeerCatchingUp: a session streams records the mirror lacks. After a
	// handshake (or a resync, or a demotion for a missed ack) it joins the
	// mirrors the degraded and async-throttle rules count once it
	// acknowledges (at the ack level) the last seq assigned when it started
	// catching up; it is reported catching-up, not in-sync, until it also
	// is within InSyncLagTicks (see PeerInSync).
	PeerCatchingUp
	// PeerInSync: connected, caught up once in this session, and it has
	// acknowledged (at the ack level) every record proposed more than
	// InSyncLagTicks ago: if every other mirror went away now, the writes
	// waiting for it are younger than that bound. A mirror that falls
	// further behind (a partition the session survives, a slow disk) is
	// reported PeerCatchingUp again until it is back within the bound;
	// it still counts for the degraded and throttle rules until it misses
	// an ack timeout (AllowDegraded) or its session ends.
	PeerInSync
	// PeerNeedsResync: the mirror cannot be served from the journal (the
	// records it needs were dropped, it is ahead of us, or it says so).
	PeerNeedsResync
	// PeerResyncing: connected, receiving live records from the resync's
	// start seq while a resync copies the chunks it lacks. Its acks count
	// toward the quorum (it holds every write since the start), but its
	// store is inconsistent: it is not in sync and must not be promoted.
	PeerResyncing
)

func (s PeerState) String() string {
	switch s {
	case PeerDisconnected:
		return "disconnected"
	case PeerCatchingUp:
		return "catching-up"
	case PeerInSync:
		return "in-sync"
	case PeerNeedsResync:
		return "needs-resync"
	case PeerResyncing:
		return "resyncing"
	}
	return fmt.Sprintf("peerstate(%d)", uint8(s))
}

// PeerInfo is what a mirror reported in its HelloReply.
type PeerInfo struct {
	Epoch      uint64
	LastSeq    uint64
	DurableSeq uint64
	AppliedSeq uint64
	Flags      uint32
}

// Completion says that NBD request ID may now be replied to, with Err
// (nil, ErrNoQuorum or ErrFenced).
type Completion struct {
	ID  uint64
	Err error
}

// StreamStart asks the driver to (re)start the sender for Peer at seq From.
type StreamStart struct {
	Peer string
	From uint64
}

// PeerFlush asks the driver to send Flush{Through} to Peer.
type PeerFlush struct {
	Peer    string
	Through uint64
}

// Release says that Peer is durable through Through: the local journal
// need not keep records ≤ Through for it.
type Release struct {
	Peer    string
	Through uint64
}

// PrimaryReady holds the outputs accumulated since the last call to Ready.
// Its slices belong to the core and are valid until the next call to Ready.
type PrimaryReady struct {
	// Completions: NBD requests that may now be replied to; each request
	// appears exactly once.
	Completions []Completion
	// StartStreams: (re)start Peer's sender at From (after PeerUp).
	StartStreams []StreamStart
	// PeerFlushes: send a Flush to Peer (sync mode FUA/FLUSH; not sent at
	// ack level durable, where mirrors sync every batch).
	PeerFlushes []PeerFlush
	// SyncLocal, if > 0: make the local journal durable through this seq
	// (once the records are written) and report it with LocalDurable.
	SyncLocal uint64
	// Releases: per peer, the new durable watermark.
	Releases []Release
	// NeedResync: peers that cannot catch up from the journal.
	NeedResync []string
	// Fenced, if > 0: the core was fenced by this epoch (or a higher one
	// became known); record it durably, so a restart stays fenced.
	Fenced uint64
	// SplitBrain: per peer, a split brain its last handshake showed and
	// how to resolve it; an empty Reason says an accepted handshake
	// cleared it.
	SplitBrain []SplitBrainNote
}

// SplitBrainNote says what a handshake with Peer showed.
type SplitBrainNote struct {
	Peer   string
	Reason string
}

// Empty reports whether r carries nothing to do.
func (r *PrimaryReady) Empty() bool {
	return len(r.Completions) == 0 && len(r.StartStreams) == 0 && len(r.PeerFlushes) == 0 &&
		r.SyncLocal == 0 && len(r.Releases) == 0 && len(r.NeedResync) == 0 && r.Fenced == 0 && len(r.SplitBrain) == 0
}

func (r *PrimaryReady) reset() {
	for i := range r.Completions {
		r.Completions[i] = Completion{}
	}
	r.Completions = r.Completions[:0]
	r.StartStreams = r.StartStreams[:0]
	r.PeerFlushes = r.PeerFlushes[:0]
	r.SyncLocal = 0
	r.Releases = r.Releases[:0]
	r.NeedResync = r.NeedResync[:0]
	r.Fenced = 0
	r.SplitBrain = r.SplitBrain[:0]
}

// PeerStatus describes one mirror.
type PeerStatus struct {
	Name  string
	State PeerState
	// Acks are the mirror's latest cumulative watermarks.
	Acks wire.Ack
	// LagRecords is the number of assigned seqs the mirror has not
	// acknowledged at the ack level.
	LagRecords uint64
	// LagTicks is how long ago the oldest of those was proposed (a lower
	// bound for a mirror far behind; 0 when LagRecords is 0). A mirror is
	// in-sync only while LagTicks ≤ InSyncLagTicks.
	LagTicks int64
	// AckRate is the recent rate (records per tick, averaged over about
	// rateTicks ticks) at which the mirror's ack at the ack level advances.
	AckRate float64
	// ETATicks estimates when a catching-up mirror has no lag left: its
	// LagRecords over the rate at which it gains on the primary (AckRate
	// minus the recent rate of new seqs); -1 when it does not gain (or is
	// not connected), 0 with no lag.
	ETATicks int64
	// AgeTicks is how long ago the primary acknowledged (completed without
	// error) the oldest write the mirror has not applied: what a failover
	// to it now would lose reaches back that far. 0 when it applied every
	// acknowledged write; a lower bound for a mirror without a session.
	AgeTicks int64
}

// PrimaryStatus is a snapshot of a PrimaryCore.
type PrimaryStatus struct {
	Epoch        uint64
	LastSeq      uint64 // last assigned seq
	LocalDurable uint64
	JournalFirst uint64
	// QuorumSeq: the K-th best ack at the ack level; QuorumDurable: the
	// same at the durable level (sync mode: with the degraded rule).
	QuorumSeq     uint64
	QuorumDurable uint64
	// InSyncLagTicks is the bound of PeerInSync (the configured value).
	InSyncLagTicks int
	// Degraded: fewer than SyncAcks mirrors count for the degraded rules.
	Degraded bool
	// Throttled (async): completions are being held for lag.
	Throttled bool
	Fenced    bool
	Pending   int // requests not yet completed
	Peers     []PeerStatus
}

type reqKind uint8

const (
	kindWrite reqKind = iota
	kindFUA
	kindFlush
)

type request struct {
	id        uint64
	seq       uint64 // write: its seq; flush: its barrier
	tick      int64
	kind      reqKind
	localDone bool // local journal + store written (flush: always)
	remoteOK  bool // mirror part satisfied
	durOK     bool // local durability satisfied (FUA, flush)
	held      bool // in the async throttle queue
	queued    bool // in one of the core's queues
	forgotten bool // the driver gave up on it (Forget): complete silently
}

// reqQueue is a FIFO of requests ordered by seq.
type reqQueue struct {
	buf  []*request
	head int
}

func (q *reqQueue) len() int { return len(q.buf) - q.head }

func (q *reqQueue) push(r *request) {
	r.queued = true
	if q.head > 0 && q.head == len(q.buf) {
		q.buf = q.buf[:0]
		q.head = 0
	} else if q.head > 64 && q.head > len(q.buf)/2 {
		n := copy(q.buf, q.buf[q.head:])
		clear(q.buf[n:])
		q.buf = q.buf[:n]
		q.head = 0
	}
	q.buf = append(q.buf, r)
}

func (q *reqQueue) front() *request {
	if q.head == len(q.buf) {
		return nil
	}
	return q.buf[q.head]
}

func (q *reqQueue) pop() *request {
	r := q.buf[q.head]
	q.buf[q.head] = nil
	q.head++
	r.queued = false
	return r
}

func (q *reqQueue) clear() {
	for _, r := range q.buf[q.head:] {
		r.queued = false
	}
	clear(q.buf)
	q.buf = q.buf[:0]
	q.head = 0
}

type peerState struct {
	name      string
	state     PeerState
	rate      float64 // AckRate
	rateAck   uint64  // ack at the level at the previous tick
	ack       wire.Ack
	target    uint64 // catching-up: in sync once acked at the level through it
	flushSent uint64 // highest Flush.Through sent in this session
	released  uint64 // highest durable watermark reported in Releases
	// out: not in the ack set (sync mode: its acks do not count toward K).
	out bool
	// resyncFrom: the seq live records restarted at in the peer's resync
	// (0: none since its last handshake). Until ResyncDone the peer holds
	// the records from it on and none before it (those are only in the
	// chunks still to copy), whatever its acks say: see credit.
	resyncFrom uint64
	// hold, while holding: the highest seq released to the journal for the
	// peer until ResyncDone. A resync that starts past records the journal
	// still keeps for the peer (it copies their chunks instead) credits
	// the peer with them; releasing them would let a checkpoint drop the
	// only journal copy of writes no mirror has yet, and a quarantine after
	// a failover to that mirror could no longer keep them.
	hold    uint64
	holding bool
}

// lagSeg says that seqs from firstSeq on (to the next segment) were
// proposed (lag) or first covered by an acknowledgement (acked) at tick.
type lagSeg struct {
	firstSeq uint64
	tick     int64
}

// segList is a seq → tick map of lagSegs in seq and tick order.
type segList struct {
	segs []lagSeg
	head int
}

// add records that seqs from first on belong to tick (now).
func (l *segList) add(first uint64, now int64) {
	if n := len(l.segs); n == l.head || l.segs[n-1].tick != now {
		l.segs = append(l.segs, lagSeg{firstSeq: first, tick: now})
	}
}

// tickOf returns the tick of seq (the oldest kept tick for seqs already
// pruned; now for an empty list).
func (l *segList) tickOf(seq uint64, now int64) int64 {
	segs := l.segs[l.head:]
	if len(segs) == 0 {
		return now
	}
	lo, hi := 0, len(segs) // find last segment with firstSeq ≤ seq
	for lo+1 < hi {
		m := (lo + hi) / 2
		if segs[m].firstSeq <= seq {
			lo = m
		} else {
			hi = m
		}
	}
	return segs[lo].tick
}

// prune drops the segments that only hold seqs ≤ keep.
func (l *segList) prune(keep uint64) {
	for l.head+1 < len(l.segs) && l.segs[l.head+1].firstSeq <= keep+1 {
		l.head++
	}
	if l.head > 64 && l.head > len(l.segs)/2 {
		n := copy(l.segs, l.segs[l.head:])
		l.segs = l.segs[:n]
		l.head = 0
	}
}

// rateTicks is the time constant, in ticks, of the rates behind ETATicks.
const rateTicks = 50

// PrimaryCore is the I/O-free replication state machine of a primary: it
// assigns seqs, tracks mirror acks and decides when NBD requests complete.
// It is not safe for concurrent use.
type PrimaryCore struct {
	cfg          PrimaryConfig
	now          int64
	nextSeq      uint64
	localDurable uint64
	journalFirst uint64
	fenced       bool
	fencedBy     uint64 // the higher epoch that fenced the core
	flushWant    uint64 // highest FUA/flush seq asked of mirrors
	syncWant     uint64 // highest seq SyncLocal was asked for

	peers   []*peerState
	byName  map[string]*peerState
	inSync  int
	scratch []uint64
	// ackK is K of the sync rule: SyncAcks until SetAckSet changes it.
	ackK int

	wLevel uint64 // quorum watermark at the ack level (sync rule)
	wDur   uint64 // quorum watermark at the durable level (sync rule)

	pending map[uint64]*request
	free    []*request
	qLevel  reqQueue // sync writes waiting for wLevel
	qDur    reqQueue // sync FUA/flush waiting for wDur
	qLocal  reqQueue // FUA/flush waiting for localDurable
	held    reqQueue // async writes held by the throttle
	lag     segList  // seq → tick it was proposed
	acked   segList  // seq → tick of the first acknowledgement covering it
	ackedHi uint64   // highest seq acknowledged to a client
	seqRate float64  // recent rate of new seqs per tick
	rateSeq uint64   // last seq at the previous tick

	ready [2]PrimaryReady
	cur   int
}

// NewPrimaryCore returns a core for cfg (defaults applied to a copy).
func NewPrimaryCore(cfg PrimaryConfig) (*PrimaryCore, error) {
	c := cfg.withDefaults()
	if err := c.validate(); err != nil {
		return nil, err
	}
	p := &PrimaryCore{
		cfg:          c,
		nextSeq:      c.NextSeq,
		localDurable: c.LocalDurable,
		journalFirst: c.JournalFirst,
		byName:       make(map[string]*peerState, len(c.Peers)),
		scratch:      make([]uint64, len(c.Peers)),
		pending:      make(map[uint64]*request),
		rateSeq:      c.NextSeq - 1,
		ackedHi:      c.NextSeq - 1,
		ackK:         c.SyncAcks,
	}
	// An earlier run's writes count as acknowledged at the start: their
	// age is a lower bound.
	p.acked.add(1, 0)
	for _, name := range c.Peers {
		ps := &peerState{name: name}
		p.peers = append(p.peers, ps)
		p.byName[name] = ps
	}
	p.recompute()
	if c.FencedBy > c.Epoch {
		p.Fence(c.FencedBy)
		p.rd().Fenced = 0 // recorded already
	}
	return p, nil
}

func (p *PrimaryCore) rd() *PrimaryReady { return &p.ready[p.cur] }

func (p *PrimaryCore) lastSeq() uint64 { return p.nextSeq - 1 }

// ProposeWrite registers write request id (a write, trim or zero; fua if
// it carries FUA) and returns the seq assigned to it. It fails with
// ErrFenced once fenced, or ErrDuplicateID.
func (p *PrimaryCore) ProposeWrite(id uint64, fua bool) (uint64, error) {
	if p.fenced {
		return 0, ErrFenced
	}
	if _, dup := p.pending[id]; dup {
		return 0, fmt.Errorf("%w %d", ErrDuplicateID, id)
	}
	seq := p.nextSeq
	p.nextSeq++
	p.lag.add(seq, p.now)
	kind := kindWrite
	if fua {
		kind = kindFUA
	}
	r := p.newRequest(id, seq, kind)
	p.enqueue(r)
	p.drain()
	return seq, nil
}

// ProposeFlush registers flush request id. Its barrier is the last seq
// assigned so far: it completes once the local journal is durable through
// the barrier and (sync mode) K mirrors acknowledged it as durable. Once
// fenced it completes at once with ErrFenced. A duplicate id fails.
func (p *PrimaryCore) ProposeFlush(id uint64) error {
	if _, dup := p.pending[id]; dup {
		return fmt.Errorf("%w %d", ErrDuplicateID, id)
	}
	if p.fenced {
		p.rd().Completions = append(p.rd().Completions, Completion{ID: id, Err: ErrFenced})
		return nil
	}
	r := p.newRequest(id, p.lastSeq(), kindFlush)
	r.localDone = true
	p.enqueue(r)
	p.drain()
	return nil
}

func (p *PrimaryCore) newRequest(id, seq uint64, kind reqKind) *request {
	var r *request
	if n := len(p.free); n > 0 {
		r = p.free[n-1]
		p.free = p.free[:n-1]
	} else {
		r = new(request)
	}
	*r = request{id: id, seq: seq, tick: p.now, kind: kind}
	p.pending[id] = r
	return r
}

// enqueue puts a new request into its first waiting stage.
func (p *PrimaryCore) enqueue(r *request) {
	sync := p.cfg.Mode == wire.ModeSync
	switch {
	case r.kind == kindWrite && sync:
		r.durOK = true
		p.qLevel.push(r)
	case r.kind == kindWrite:
		r.durOK, r.remoteOK = true, true
	case sync:
		p.qDur.push(r)
		p.askDurable(r.seq, true)
	default:
		r.remoteOK = true
		p.qLocal.push(r)
		p.askDurable(r.seq, false)
	}
}

// askDurable requests local (and, for mirrors, remote) durability through seq.
func (p *PrimaryCore) askDurable(seq uint64, mirrors bool) {
	if seq > p.localDurable && seq > p.syncWant {
		p.syncWant = seq
		p.rd().SyncLocal = seq
	}
	if !mirrors || seq <= p.flushWant {
		return
	}
	p.flushWant = seq
	if p.cfg.AckLevel == wire.AckDurable {
		return
	}
	for _, ps := range p.peers {
		p.sendFlush(ps)
	}
}

func (p *PrimaryCore) sendFlush(ps *peerState) {
	if ps.state != PeerCatchingUp && ps.state != PeerInSync && ps.state != PeerResyncing {
		return
	}
	if p.flushWant > ps.flushSent && p.flushWant > ps.ack.Durable {
		ps.flushSent = p.flushWant
		p.rd().PeerFlushes = append(p.rd().PeerFlushes, PeerFlush{Peer: ps.name, Through: p.flushWant})
	}
}

// LocalDone reports that the local part of request id (journal and store
// written) is done. Unknown ids (already failed) are ignored.
func (p *PrimaryCore) LocalDone(id uint64) {
	r := p.pending[id]
	if r == nil || r.localDone {
		return
	}
	r.localDone = true
	p.tryComplete(r)
}

// Forget withdraws request id: the driver will not wait for it any more
// (its local part failed, or its client went away before it was admitted
// to the local journal's wait). It leaves the core without a trace: it is
// never reported in Completions. Its seq, if it has one, stays assigned
// (seqs are never reused). Unknown ids are ignored.
func (p *PrimaryCore) Forget(id uint64) {
	r := p.pending[id]
	if r == nil {
		return
	}
	r.forgotten = true
	if !r.queued {
		p.complete(r, nil)
	}
	// A queued request leaves when its queue reaches it (drain, expire,
	// fence), without a completion.
}

// LocalDurable reports that the local journal is durable through seq
// (cumulative; lower values are ignored).
func (p *PrimaryCore) LocalDurable(seq uint64) {
	if seq > p.lastSeq() {
		seq = p.lastSeq()
	}
	if seq <= p.localDurable {
		return
	}
	p.localDurable = seq
	p.drain()
}

// JournalFirst reports the lowest seq still in the local journal. It is
// consulted when a mirror connects: a mirror whose next seq is below it
// needs a resync. (A sender that finds its records gone while streaming
// should end the session; the reconnect then decides.)
func (p *PrimaryCore) JournalFirst(seq uint64) {
	p.journalFirst = seq
}

// PeerUp reports a successful handshake with peer. It returns ErrFenced
// if the peer's epoch is higher than ours (the core is then fenced), and
// an error for an unknown peer.
func (p *PrimaryCore) PeerUp(peer string, info PeerInfo) error {
	ps := p.byName[peer]
	if ps == nil {
		return fmt.Errorf("mirror: unknown peer %q", peer)
	}
	if info.Epoch > p.cfg.Epoch {
		p.Fence(info.Epoch)
		return fmt.Errorf("%w: peer %s has epoch %d, ours is %d", ErrFenced, peer, info.Epoch, p.cfg.Epoch)
	}
	if p.fenced {
		return ErrFenced
	}
	if info.DurableSeq > info.LastSeq {
		info.DurableSeq = info.LastSeq
	}
	ps.flushSent = 0
	ps.resyncFrom = 0 // ack is set below from what the peer holds now
	last := p.lastSeq()
	switch {
	case info.Flags&(wire.FlagNeedsResync|wire.FlagInconsistent) != 0, info.LastSeq > last, info.LastSeq+1 < p.journalFirst:
		p.setState(ps, PeerNeedsResync)
		ps.ack = wire.Ack{}
		p.rd().NeedResync = append(p.rd().NeedResync, peer)
	default:
		ps.ack = wire.Ack{Received: info.LastSeq, Written: info.LastSeq, Durable: info.DurableSeq, Applied: info.AppliedSeq}
		if ps.ack.Applied > ps.ack.Written {
			ps.ack.Applied = ps.ack.Written
		}
		p.rd().StartStreams = append(p.rd().StartStreams, StreamStart{Peer: peer, From: info.LastSeq + 1})
		if info.LastSeq >= last {
			p.setState(ps, PeerInSync)
		} else {
			ps.target = last
			p.setState(ps, PeerCatchingUp)
		}
		if p.cfg.Mode == wire.ModeSync && p.cfg.AckLevel != wire.AckDurable {
			p.sendFlush(ps)
		}
	}
	if ps.released > ps.ack.Durable {
		ps.released = ps.ack.Durable
	}
	ps.rate, ps.rateAck = 0, ps.ack.Level(p.cfg.AckLevel)
	p.recompute()
	p.drain()
	return nil
}

// PeerDown reports that the session with peer ended.
func (p *PrimaryCore) PeerDown(peer string) {
	ps := p.byName[peer]
	if ps == nil || ps.state == PeerDisconnected {
		return
	}
	p.setState(ps, PeerDisconnected)
	p.recompute()
	p.drain()
}

// PeerAck reports peer's cumulative watermarks. Regressions of single
// fields are ignored; acks from a peer without a session are ignored; an
// ack beyond the last assigned seq is an error (the driver should end the
// session).
func (p *PrimaryCore) PeerAck(peer string, a wire.Ack) error {
	ps := p.byName[peer]
	if ps == nil {
		return fmt.Errorf("mirror: unknown peer %q", peer)
	}
	if ps.state != PeerCatchingUp && ps.state != PeerInSync && ps.state != PeerResyncing {
		return nil
	}
	if a.Received > p.lastSeq() {
		return fmt.Errorf("mirror: peer %s acknowledged seq %d but the last assigned seq is %d", peer, a.Received, p.lastSeq())
	}
	old := ps.ack
	ps.ack.Received = max(old.Received, a.Received)
	ps.ack.Written = max(old.Written, a.Written)
	ps.ack.Durable = max(old.Durable, a.Durable)
	ps.ack.Applied = max(old.Applied, a.Applied)
	if ps.ack == old {
		return nil
	}
	if ps.state == PeerCatchingUp && ps.ack.Level(p.cfg.AckLevel) >= ps.target {
		p.setState(ps, PeerInSync)
	}
	p.recompute()
	p.drain()
	return nil
}

// StartResync starts streaming live records to a connected peer that
// needs a resync, from seq from (its next seq if still in the journal,
// else any seq from the journal's first to the last assigned + 1): the
// peer becomes PeerResyncing and its acks count from from-1 on. The
// invariant: no request is completed by a mirror's acks for a seq the
// mirror has only in a chunk not yet copied. So until ResyncDone a
// request at or below from-1 (one waiting now, from > ResyncSkipLimit +
// 1, or a flush proposed before any new write) does not count the peer
// unless the other peers' acks hold every seq below from (see quorum):
// it waits for the others or the resync. The driver copies the rest
// (chunks) itself and calls ResyncDone when the peer's store is
// consistent. kept is the lowest seq the journal still holds for the
// peer (its consumer's release + 1, at least the journal's first seq):
// the records from kept to from-1 stay in the journal until ResyncDone
// (peerState.hold), although the peer's acks count from from-1 on.
func (p *PrimaryCore) StartResync(peer string, from, kept uint64) error {
	ps := p.byName[peer]
	if ps == nil {
		return fmt.Errorf("mirror: unknown peer %q", peer)
	}
	if ps.state != PeerNeedsResync {
		return fmt.Errorf("mirror: peer %s is %v, not needing a resync", peer, ps.state)
	}
	if from < p.journalFirst || from > p.lastSeq()+1 {
		return fmt.Errorf("mirror: resync of %s from seq %d: the journal holds %d..%d", peer, from, p.journalFirst, p.lastSeq())
	}
	ps.resyncFrom = from // it holds only what it acks from from on (see quorum)
	if kept > 0 && kept < from {
		h := kept - 1
		if ps.holding {
			h = min(h, ps.hold)
		}
		ps.hold, ps.holding = h, true
	}
	ps.ack = wire.Ack{Received: from - 1, Written: from - 1, Durable: from - 1, Applied: from - 1}
	ps.flushSent = 0
	ps.rate, ps.rateAck = 0, from-1
	if ps.released > ps.ack.Durable {
		ps.released = ps.ack.Durable
	}
	p.setState(ps, PeerResyncing)
	p.rd().StartStreams = append(p.rd().StartStreams, StreamStart{Peer: peer, From: from})
	if p.cfg.Mode == wire.ModeSync && p.cfg.AckLevel != wire.AckDurable {
		p.sendFlush(ps)
	}
	p.recompute()
	p.drain()
	return nil
}

// RequireResync marks a connected peer as needing a resync (e.g. verify
// found differences, or a dirty bitmap is pending): it stops counting as in
// sync until StartResync and ResyncDone.
func (p *PrimaryCore) RequireResync(peer string) error {
	ps := p.byName[peer]
	if ps == nil {
		return fmt.Errorf("mirror: unknown peer %q", peer)
	}
	switch ps.state {
	case PeerCatchingUp, PeerInSync:
	case PeerNeedsResync:
		return nil
	default:
		return fmt.Errorf("mirror: peer %s is %v", peer, ps.state)
	}
	p.setState(ps, PeerNeedsResync)
	p.rd().NeedResync = append(p.rd().NeedResync, peer)
	p.recompute()
	p.drain()
	return nil
}

// ResyncDone reports that a resyncing peer's store is consistent again: it
// catches up like any other peer and is in sync once it acked the last seq.
func (p *PrimaryCore) ResyncDone(peer string) error {
	ps := p.byName[peer]
	if ps == nil {
		return fmt.Errorf("mirror: unknown peer %q", peer)
	}
	if ps.state != PeerResyncing {
		return fmt.Errorf("mirror: peer %s is %v, not resyncing", peer, ps.state)
	}
	ps.resyncFrom = 0 // its store now reflects every record below from
	ps.holding = false
	last := p.lastSeq()
	if ps.ack.Level(p.cfg.AckLevel) >= last {
		p.setState(ps, PeerInSync)
	} else {
		ps.target = last
		p.setState(ps, PeerCatchingUp)
	}
	if p.cfg.Mode == wire.ModeSync && p.cfg.AckLevel != wire.AckDurable {
		p.sendFlush(ps) // flushes asked while it resynced
	}
	p.recompute()
	p.drain()
	return nil
}

// PeerState returns peer's state as Status reports it.
func (p *PrimaryCore) PeerState(peer string) PeerState {
	if ps := p.byName[peer]; ps != nil {
		return p.reported(ps)
	}
	return PeerDisconnected
}

// PeerEpoch reports an epoch seen from a peer (in a reply or error). A
// higher epoch than ours fences the core.
func (p *PrimaryCore) PeerEpoch(epoch uint64) {
	if epoch > p.cfg.Epoch {
		p.Fence(epoch)
	}
}

// Fence reports that a node is primary in epoch, higher than ours (0: a
// higher epoch whose number we were not told, e.g. a peer's CodeFenced
// error): every pending and later request fails with ErrFenced, and
// Ready.Fenced asks the driver to record it. Epochs not above ours are
// ignored.
func (p *PrimaryCore) Fence(epoch uint64) {
	if epoch == 0 {
		epoch = p.cfg.Epoch + 1
	}
	if epoch <= p.cfg.Epoch || epoch <= p.fencedBy {
		return
	}
	p.fence(epoch)
	p.rd().Fenced = epoch
}

// Session is what a mirror's session does after its handshake.
type Session uint8

const (
	// SessionRefused: no session (PeerReply's error says why).
	SessionRefused Session = iota
	// SessionStream: the mirror catches up from the journal
	// (Ready.StartStreams).
	SessionStream
	// SessionResync: the mirror needs a resync (Ready.NeedResync): plan
	// it (PlanResync) and call StartResync.
	SessionResync
)

func (s Session) String() string {
	switch s {
	case SessionRefused:
		return "refused"
	case SessionStream:
		return "stream"
	case SessionResync:
		return "resync"
	}
	return fmt.Sprintf("session(%d)", uint8(s))
}

// PeerReply handles peer's HelloReply to our Hello (sent with the core's
// LastSeq) and decides the session: refused, with an error wrapping
// ErrSplitBrain (a mirror of our epoch with another history, or a primary
// of our epoch: Ready.SplitBrain says how to resolve it), ErrFenced (the
// mirror knows a higher epoch: the core is fenced), ErrRefused (the reason
// the mirror gave) or naming a volume mismatch; or accepted (PeerUp):
// streaming from the mirror's next seq, or a resync when the mirror cannot
// catch up from the journal or dirty says a dirty bitmap is pending for it
// (regions the journal no longer has, or that verify found different).
func (p *PrimaryCore) PeerReply(peer string, r wire.HelloReply, dirty bool) (Session, error) {
	ps := p.byName[peer]
	if ps == nil {
		return SessionRefused, fmt.Errorf("mirror: unknown peer %q", peer)
	}
	if r.Code == wire.CodeSplitBrain || (r.Code == wire.CodeNotMirror && r.Epoch == p.cfg.Epoch) {
		reason := r.Reason
		if r.Code == wire.CodeNotMirror {
			reason = SplitBrainAdvice(p.cfg.Node, peer, p.cfg.Epoch)
		}
		p.rd().SplitBrain = append(p.rd().SplitBrain, SplitBrainNote{Peer: peer, Reason: reason})
		return SessionRefused, fmt.Errorf("%w: mirror %s: %s", ErrSplitBrain, peer, reason)
	}
	if r.Code != wire.CodeOK {
		if r.Code == wire.CodeFenced {
			if r.Epoch <= p.cfg.Epoch {
				r.Epoch = 0 // a higher epoch, number unknown
			}
			p.Fence(r.Epoch)
		} else {
			p.PeerEpoch(r.Epoch)
		}
		err := fmt.Errorf("%w: mirror %s refused the session (%v): %s", ErrRefused, peer, r.Code, r.Reason)
		if p.fenced {
			err = fmt.Errorf("%w: %w", ErrFenced, err)
		}
		return SessionRefused, err
	}
	if p.cfg.Size != 0 && (r.Volume != p.cfg.Volume || r.Size != p.cfg.Size) {
		return SessionRefused, fmt.Errorf("mirror %s holds volume %v of %d bytes, we serve %v of %d bytes",
			peer, r.Volume, r.Size, p.cfg.Volume, p.cfg.Size)
	}
	p.rd().SplitBrain = append(p.rd().SplitBrain, SplitBrainNote{Peer: peer})
	info := PeerInfo{Epoch: r.Epoch, LastSeq: r.LastSeq, DurableSeq: r.DurableSeq, AppliedSeq: r.AppliedSeq, Flags: r.Flags}
	if dirty {
		info.Flags |= wire.FlagNeedsResync
	}
	if err := p.PeerUp(peer, info); err != nil {
		return SessionRefused, err
	}
	if ps.state == PeerNeedsResync {
		return SessionResync, nil
	}
	return SessionStream, nil
}

// PeerError handles an Error message from peer (in answer to our Hello or
// during the session): CodeFenced fences the core. It returns the error.
func (p *PrimaryCore) PeerError(peer string, e wire.ErrorMsg) error {
	if e.Code == wire.CodeFenced {
		p.Fence(0)
		return fmt.Errorf("%w: %w", ErrFenced, e)
	}
	return e
}

// FencedBy returns the higher epoch that fenced the core (0: not fenced).
func (p *PrimaryCore) FencedBy() uint64 { return p.fencedBy }

// Tick advances the core's clock by one tick: timeouts and the lag bound
// are measured in ticks.
func (p *PrimaryCore) Tick() {
	p.now++
	p.updateRates()
	if p.cfg.Mode == wire.ModeSync {
		p.expire(&p.qLevel, p.cfg.AckLevel)
		p.expire(&p.qDur, wire.AckDurable)
	}
	p.pruneLag()
	p.drain()
}

// Ready returns the outputs accumulated since the previous call and
// clears them. The returned slices are valid until the next call.
func (p *PrimaryCore) Ready() PrimaryReady {
	r := p.rd()
	for _, ps := range p.peers {
		through := ps.ack.Durable
		if ps.holding {
			through = min(through, ps.hold)
		}
		if through > ps.released {
			ps.released = through
			r.Releases = append(r.Releases, Release{Peer: ps.name, Through: ps.released})
		}
	}
	out := *r
	p.cur ^= 1
	p.rd().reset()
	return out
}

// Status returns a snapshot of the core's state.
func (p *PrimaryCore) Status() PrimaryStatus {
	s := PrimaryStatus{
		Epoch: p.cfg.Epoch, LastSeq: p.lastSeq(), LocalDurable: p.localDurable, JournalFirst: p.journalFirst,
		QuorumSeq: p.wLevel, QuorumDurable: p.wDur, Degraded: p.degraded(), Throttled: p.throttled(),
		Fenced: p.fenced, Pending: len(p.pending), InSyncLagTicks: p.cfg.InSyncLagTicks,
	}
	// The true K-th best acks (not the degraded rule's watermark, which
	// is "everything" with no mirror in sync).
	s.QuorumSeq = p.kth(p.cfg.AckLevel, p.cfg.SyncAcks)
	s.QuorumDurable = p.kth(wire.AckDurable, p.cfg.SyncAcks)
	if s.QuorumSeq == math.MaxUint64 { // no mirrors (async)
		s.QuorumSeq, s.QuorumDurable = 0, 0
	}
	for _, ps := range p.peers {
		st := PeerStatus{Name: ps.name, State: p.reported(ps), Acks: ps.ack, AckRate: ps.rate, ETATicks: -1}
		st.LagRecords, st.LagTicks = p.lagOf(ps)
		if st.LagRecords == 0 {
			st.ETATicks = 0
		} else if gain := ps.rate - p.seqRate; ps.state != PeerDisconnected && gain > 1e-9 {
			st.ETATicks = int64(math.Ceil(float64(st.LagRecords) / gain))
		}
		if a := ps.ack.Applied; a < p.ackedHi {
			st.AgeTicks = p.now - p.acked.tickOf(a+1, p.now)
		}
		s.Peers = append(s.Peers, st)
	}
	return s
}

// lagOf returns how many assigned seqs ps has not acknowledged at the ack
// level and how many ticks ago the oldest of them was proposed.
func (p *PrimaryCore) lagOf(ps *peerState) (records uint64, ticks int64) {
	a, last := ps.ack.Level(p.cfg.AckLevel), p.lastSeq()
	if a >= last {
		return 0, 0
	}
	return last - a, p.now - p.lag.tickOf(a+1, p.now)
}

// reported is ps's state as Status and PeerState show it: in-sync only
// within InSyncLagTicks (see PeerInSync).
func (p *PrimaryCore) reported(ps *peerState) PeerState {
	if ps.state == PeerInSync {
		if _, ticks := p.lagOf(ps); ticks > int64(p.cfg.InSyncLagTicks) {
			return PeerCatchingUp
		}
	}
	return ps.state
}

// LastSeq returns the last assigned seq (cheaper than Status).
func (p *PrimaryCore) LastSeq() uint64 { return p.lastSeq() }

// Fenced reports whether the core is fenced (cheaper than Status).
func (p *PrimaryCore) Fenced() bool { return p.fenced }

// ---- internals ----

func (p *PrimaryCore) setState(ps *peerState, s PeerState) {
	if ps.state == PeerInSync {
		p.inSync--
	}
	if s == PeerInSync {
		p.inSync++
	}
	ps.state = s
}

func (p *PrimaryCore) degraded() bool {
	if p.cfg.Mode == wire.ModeSync {
		return p.inSync < p.ackK
	}
	return p.inSync < p.cfg.SyncAcks
}

// kth returns the k-th largest ack at level over all peers (k ≥ 1), or
// MaxUint64 for k == 0 (QuorumSeq over the peers' acks, without allocating).
func (p *PrimaryCore) kth(level wire.AckLevel, k int) uint64 {
	return p.quorum(level, k, false, nil, 0)
}

// kthAckSet is kth over the peers of the ack set only, for the requests
// of q: the seqs below its first request need no holders.
func (p *PrimaryCore) kthAckSet(level wire.AckLevel, k int, q *reqQueue) uint64 {
	floor := p.lastSeq()
	if r := q.front(); r != nil {
		floor = min(floor, max(r.seq, 1)-1)
	}
	return p.quorum(level, k, true, nil, floor)
}

// resyncing reports whether a peer's acks are credited only above its
// resync's start (see quorum).
func (p *PrimaryCore) resyncing() bool {
	for _, ps := range p.peers {
		if ps.resyncFrom > 1 {
			return true
		}
	}
	return false
}

// quorum returns the highest seq W such that k peers (of the ack set
// only, if ackSet; never exclude) hold every seq ≤ W at level, where
// the seqs ≤ floor count as held (no request waits for them; 0 for the
// true K-th ack).
//
// The invariant: a peer is credited only with seqs it holds. A resyncing
// peer's ack says it holds resyncFrom..ack; the seqs below resyncFrom are
// in chunks not yet copied. Its ack is therefore credited only once
// max(floor, W computed without it) covers resyncFrom-1 (then the seqs it
// lacks need no holder or have k anyway, and those above it holds exactly
// as its ack says); otherwise it counts as holding nothing. W only grows
// as more resyncing peers are credited, so the fixed point takes at most
// one pass per resyncing peer beyond the first.
func (p *PrimaryCore) quorum(level wire.AckLevel, k int, ackSet bool, exclude *peerState, floor uint64) uint64 {
	w, resyncing := p.quorumPass(level, k, ackSet, exclude, floor)
	for resyncing {
		next, _ := p.quorumPass(level, k, ackSet, exclude, max(w, floor))
		if next <= w {
			break
		}
		w = next
	}
	return w
}

// quorumPass is one pass of quorum with the seqs ≤ held taken as held by
// k peers already; it also reports whether any counted peer is resyncing.
func (p *PrimaryCore) quorumPass(level wire.AckLevel, k int, ackSet bool, exclude *peerState, held uint64) (uint64, bool) {
	s := p.scratch[:0]
	resyncing := false
	for _, ps := range p.peers {
		if ackSet && ps.out {
			continue
		}
		if ps == exclude {
			s = append(s, 0)
			continue
		}
		s = append(s, credit(ps, level, held))
		resyncing = resyncing || ps.resyncFrom > 1
	}
	return quorumInPlace(s, k), resyncing
}

// credit is what peer ps counts toward a quorum at level when every seq
// ≤ held has its k holders: its ack, unless it is a resyncing peer
// lacking seqs above held (those below its resyncFrom), then nothing.
func credit(ps *peerState, level wire.AckLevel, held uint64) uint64 {
	if ps.resyncFrom > 1 && ps.resyncFrom-1 > held {
		return 0
	}
	return ps.ack.Level(level)
}

// ResyncSkipLimit returns the highest seq a resync of peer may start
// after (ResyncBegin.From - 1) without a waiting request depending on
// that peer's acks of seqs it lacks (see settled), so that none waits for
// the whole resync. The driver caps the journal tail it replaces by chunk
// copies at it.
func (p *PrimaryCore) ResyncSkipLimit(peer string) uint64 {
	ps := p.byName[peer]
	if ps == nil {
		return 0
	}
	// The last record is always streamed: a flush proposed before the
	// next write (its seq is the last) then has a record of the peer's to
	// wait for instead of the whole resync.
	return min(p.settled(ps), max(p.lastSeq(), 1)-1)
}

// settled returns the highest seq through which no request waits for a
// mirror's ack other than ps's: in sync mode, below the first request
// still waiting for its ack quorum (the last seq if none waits); in async
// mode, the throttle's K-th ack over the other peers while the throttle
// can hold writes, else the last seq.
func (p *PrimaryCore) settled(ps *peerState) uint64 {
	last := p.lastSeq()
	if p.cfg.Mode == wire.ModeSync {
		for _, q := range []*reqQueue{&p.qLevel, &p.qDur} {
			if r := q.front(); r != nil {
				last = min(last, max(r.seq, 1)-1)
			}
		}
		return last
	}
	if p.cfg.MaxLagTicks == 0 || p.cfg.SyncAcks == 0 || p.inSync < p.cfg.SyncAcks {
		return last
	}
	return min(last, p.quorum(p.cfg.AckLevel, p.cfg.SyncAcks, false, ps, 0))
}

// recompute refreshes the sync quorum watermarks.
func (p *PrimaryCore) recompute() {
	k := p.ackK
	if p.cfg.AllowDegraded && !p.cfg.Coordinated && p.inSync < k {
		k = p.inSync
	}
	p.wLevel = p.kthAckSet(p.cfg.AckLevel, k, &p.qLevel)
	p.wDur = p.kthAckSet(wire.AckDurable, k, &p.qDur)
}

// SetAckSet makes only the acks of members count toward k in sync mode
// (0 ≤ k ≤ len(members); k 0: a write completes once local), for every
// request not yet complete too; a coordinator calls it once the sync set
// it recorded covers the new set (see PrimaryConfig.Coordinated). In async
// mode the ack set names the promotion candidates only: it is recorded
// (AckSet) but the throttle keeps SyncAcks over every mirror.
func (p *PrimaryCore) SetAckSet(members []string, k int) error {
	in := make(map[string]bool, len(members))
	for _, m := range members {
		if p.byName[m] == nil {
			return fmt.Errorf("mirror: ack set: %q is not a mirror of this primary", m)
		}
		if in[m] {
			return fmt.Errorf("mirror: ack set: %q listed twice", m)
		}
		in[m] = true
	}
	if k < 0 || k > len(members) {
		return fmt.Errorf("mirror: ack set: k %d must be between 0 and the number of members (%d)", k, len(members))
	}
	for _, ps := range p.peers {
		ps.out = !in[ps.name]
	}
	p.ackK = k
	if p.cfg.Mode == wire.ModeSync {
		p.recompute()
		p.drain()
	}
	return nil
}

// AckSet returns the mirrors whose acks count toward K (sync mode), in
// Peers order, and K.
func (p *PrimaryCore) AckSet() (members []string, k int) {
	for _, ps := range p.peers {
		if !ps.out {
			members = append(members, ps.name)
		}
	}
	return members, p.ackK
}

// drain moves requests whose conditions hold out of the queues. O(1) per
// request moved.
func (p *PrimaryCore) drain() {
	if p.fenced {
		return
	}
	// The watermarks depend on the queues' first requests while a peer
	// resyncs (kthAckSet): recompute them as those change.
	for resyncing := p.resyncing(); ; {
		if resyncing {
			p.recompute()
		}
		moved := false
		for r := p.qLevel.front(); r != nil && r.seq <= p.wLevel; r = p.qLevel.front() {
			p.qLevel.pop()
			r.remoteOK = true
			p.tryComplete(r)
			moved = true
		}
		for r := p.qDur.front(); r != nil && r.seq <= p.wDur; r = p.qDur.front() {
			p.qDur.pop()
			r.remoteOK = true
			if r.seq <= p.localDurable {
				r.durOK = true
				p.tryComplete(r)
			} else {
				p.qLocal.push(r)
			}
			moved = true
		}
		if !moved || !resyncing {
			break
		}
	}
	for r := p.qLocal.front(); r != nil && r.seq <= p.localDurable; r = p.qLocal.front() {
		p.qLocal.pop()
		r.durOK = true
		p.tryComplete(r)
	}
	if p.held.len() > 0 && !p.throttled() {
		for p.held.len() > 0 {
			r := p.held.pop()
			r.held = false
			p.complete(r, nil)
		}
	}
}

func (p *PrimaryCore) tryComplete(r *request) {
	if r.forgotten {
		if !r.queued {
			p.complete(r, nil)
		}
		return
	}
	if !r.localDone || !r.remoteOK || !r.durOK || r.held {
		return
	}
	if p.cfg.Mode == wire.ModeAsync && r.kind != kindFlush && (p.held.len() > 0 || p.throttled()) {
		r.held = true
		p.held.push(r)
		return
	}
	p.complete(r, nil)
}

func (p *PrimaryCore) complete(r *request, err error) {
	if !r.forgotten {
		p.rd().Completions = append(p.rd().Completions, Completion{ID: r.id, Err: err})
		if err == nil && r.kind != kindFlush && r.seq > p.ackedHi {
			p.acked.add(p.ackedHi+1, p.now)
			p.ackedHi = r.seq
		}
	}
	delete(p.pending, r.id)
	*r = request{}
	p.free = append(p.free, r)
}

// expire handles requests of q that waited AckTimeoutTicks: with
// AllowDegraded the in-sync peers that did not ack are demoted so the
// request completes; otherwise it fails with ErrNoQuorum.
func (p *PrimaryCore) expire(q *reqQueue, level wire.AckLevel) {
	for r := q.front(); r != nil && r.tick+int64(p.cfg.AckTimeoutTicks) <= p.now; r = q.front() {
		if p.cfg.AllowDegraded && !p.cfg.Coordinated {
			last := p.lastSeq()
			for _, ps := range p.peers {
				if ps.state == PeerInSync && ps.ack.Level(level) < r.seq {
					ps.target = last
					p.setState(ps, PeerCatchingUp)
				}
			}
			p.recompute()
			p.drain()
			if q.front() == r { // cannot happen: all remaining in-sync peers acked
				q.pop()
				p.complete(r, ErrNoQuorum)
			}
			continue
		}
		q.pop()
		p.complete(r, ErrNoQuorum)
	}
}

func (p *PrimaryCore) fence(epoch uint64) {
	p.fencedBy = max(p.fencedBy, epoch)
	if p.fenced {
		return
	}
	p.fenced = true
	p.qLevel.clear()
	p.qDur.clear()
	p.qLocal.clear()
	p.held.clear()
	// Complete in seq order for determinism.
	ids := make([]*request, 0, len(p.pending))
	for _, r := range p.pending {
		ids = append(ids, r)
	}
	sortRequests(ids)
	for _, r := range ids {
		p.complete(r, ErrFenced)
	}
}

func sortRequests(rs []*request) {
	// Insertion sort is fine for the usual handful; fall back to a simple
	// merge for large sets.
	if len(rs) < 32 {
		for i := 1; i < len(rs); i++ {
			for j := i; j > 0 && less(rs[j], rs[j-1]); j-- {
				rs[j], rs[j-1] = rs[j-1], rs[j]
			}
		}
		return
	}
	mid := len(rs) / 2
	a := append([]*request(nil), rs[:mid]...)
	b := append([]*request(nil), rs[mid:]...)
	sortRequests(a)
	sortRequests(b)
	i, j := 0, 0
	for k := range rs {
		if j == len(b) || (i < len(a) && !less(b[j], a[i])) {
			rs[k] = a[i]
			i++
		} else {
			rs[k] = b[j]
			j++
		}
	}
}

func less(a, b *request) bool {
	if a.seq != b.seq {
		return a.seq < b.seq
	}
	return a.id < b.id
}

// throttled reports whether async completions are held for lag.
func (p *PrimaryCore) throttled() bool {
	if p.cfg.Mode != wire.ModeAsync || p.cfg.MaxLagTicks == 0 || p.cfg.SyncAcks == 0 || p.inSync < p.cfg.SyncAcks {
		return false
	}
	w := p.kth(p.cfg.AckLevel, p.cfg.SyncAcks)
	if w >= p.lastSeq() {
		return false
	}
	// The tick counter says only that the seq was proposed in tick
	// tickOf and that this is tick now: up to one tick period more may
	// have passed than their difference says. Holding at the bound itself
	// keeps the span of acknowledgements a failure can lose within
	// MaxLagTicks periods.
	return p.now-p.lag.tickOf(w+1, p.now) >= int64(p.cfg.MaxLagTicks)
}

// updateRates refreshes the recent ack rates and the rate of new seqs
// (exponential averages over about rateTicks ticks), once per tick.
func (p *PrimaryCore) updateRates() {
	last := p.lastSeq()
	p.seqRate += (float64(last-min(p.rateSeq, last)) - p.seqRate) / rateTicks
	p.rateSeq = last
	for _, ps := range p.peers {
		a := ps.ack.Level(p.cfg.AckLevel)
		if ps.state == PeerDisconnected || ps.state == PeerNeedsResync || a < ps.rateAck {
			ps.rate, ps.rateAck = 0, a // no session, or a resync restarted its acks
			continue
		}
		ps.rate += (float64(a-ps.rateAck) - ps.rate) / rateTicks
		ps.rateAck = a
	}
}

// pruneLag drops the lag segments no peer in a session (nor the async
// quorum) needs, and the acknowledgement segments below what every such
// peer applied.
func (p *PrimaryCore) pruneLag() {
	keep, keepApplied := p.lastSeq(), p.ackedHi
	for _, ps := range p.peers {
		if ps.state == PeerInSync || ps.state == PeerCatchingUp || ps.state == PeerResyncing {
			keep = min(keep, ps.ack.Level(p.cfg.AckLevel))
			keepApplied = min(keepApplied, ps.ack.Applied)
		}
	}
	if p.cfg.Mode == wire.ModeAsync && p.cfg.SyncAcks > 0 {
		keep = min(keep, p.kth(p.cfg.AckLevel, p.cfg.SyncAcks))
	}
	p.lag.prune(keep)
	p.acked.prune(keepApplied)
}
