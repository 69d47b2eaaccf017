package mirror

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/blockmirror/blockmirror/journal"
	"github.com/blockmirror/blockmirror/mirror/core"
	"github.com/blockmirror/blockmirror/mirror/wire"
	"github.com/blockmirror/blockmirror/transport"
)

// PeerAddr names a mirror and where its daemon listens.
type PeerAddr struct {
	// Name is the node name the mirror's certificate must carry.
	Name string
	// Addr is its QUIC address, HOST:PORT.
	Addr string
}

// ReplicationOptions configure a primary's replication to its mirrors.
type ReplicationOptions struct {
	Peers         []PeerAddr
	Mode          wire.Mode
	SyncAcks      int
	AckLevel      wire.AckLevel
	AllowDegraded bool
	// AckTimeout bounds how long a sync write waits for mirror acks before
	// it fails with EIO (default 5 s).
	AckTimeout time.Duration
	// MaxLag bounds (async mode) how far behind the K-th best mirror may
	// be in time before writes are throttled; 0 disables the bound.
	MaxLag time.Duration
	// Tick is the core's clock period (default 10 ms).
	Tick time.Duration
	// BatchBytes caps the record data per Records frame (default 1 MiB).
	BatchBytes int
	// Lanes is how many record lanes a session uses (default DefaultLanes,
	// at most wire.MaxLanes; 1: records on the log stream): streams each
	// on a connection of its own — its own congestion window and loss
	// recovery — that the records of one session are spread over and the
	// mirror puts back in seq order (see lanes.go). Mirrors that do not
	// offer lanes (wire.FlagLanes) get the records on the log stream.
	Lanes int
	// MaxInFlight bounds the record bytes sent to a mirror and not yet
	// acknowledged as received (default DefaultMaxInFlight): enough for
	// the bandwidth-delay product, and what bounds the mirror's buffers.
	MaxInFlight int
	// spreadAll (tests): every frame may go to any lane, however small
	// (spreadMin off), so that small records cross lanes out of order.
	spreadAll bool
	// NodeName is this primary's node name, sent in the handshake.
	NodeName string
	// VolumeName is the volume's configured name, sent in the handshake so
	// that a mirror host serving several volumes routes the session to it.
	VolumeName string
	// Pool shares QUIC connections with other volumes replicating to the
	// same mirror hosts (one connection per host, streams per volume).
	// nil: a private pool (one connection per mirror for this volume).
	Pool *ConnPool
	// Transport is the QUIC configuration (identity and timeouts).
	Transport transport.Config
	// Resync tunes the resync of mirrors that cannot catch up.
	Resync ResyncOptions
	// OnAck, when set, gets the time from a write's admission to a mirror's
	// acknowledgement of it at the ack level (for metrics; must not block).
	OnAck func(peer string, d time.Duration)
	// OnResyncSent, when set, counts chunk data bytes a resync sent to peer
	// (what ResyncProgress.SentBytes adds up; for metrics, must not block).
	OnResyncSent func(peer string, n int)
	// Coordinated: a coordinator owns the ack set (SetAckSet); the
	// primary never drops a mirror from it by itself, whatever
	// AllowDegraded says (see core.PrimaryConfig.Coordinated).
	Coordinated bool
	// Lease, when set, is the coordinator's write lease: heartbeats are
	// sent only while it is valid, so a fenced primary stops counting as
	// contact for its mirrors (the Volume gates completions on it).
	Lease *WriteLease
	// HeartbeatEvery is the period of heartbeats (default 1 s).
	HeartbeatEvery time.Duration
	Logger         *slog.Logger
}

func (o ReplicationOptions) withDefaults() ReplicationOptions {
	if o.Mode == 0 {
		o.Mode = wire.ModeSync
	}
	if o.AckLevel == 0 {
		o.AckLevel = wire.AckWritten
	}
	if o.SyncAcks == 0 {
		o.SyncAcks = 1
	}
	if o.HeartbeatEvery <= 0 {
		o.HeartbeatEvery = heartbeatEvery
	}
	if o.AckTimeout <= 0 {
		o.AckTimeout = 5 * time.Second
	}
	if o.Tick <= 0 {
		o.Tick = 10 * time.Millisecond
	}
	if o.BatchBytes <= 0 {
		o.BatchBytes = 1 << 20
	}
	if o.Lanes <= 0 {
		o.Lanes = DefaultLanes
	}
	o.Lanes = min(o.Lanes, wire.MaxLanes)
	if o.MaxInFlight <= 0 {
		o.MaxInFlight = DefaultMaxInFlight
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	o.Peers = append([]PeerAddr(nil), o.Peers...)
	if o.Pool == nil {
		o.Pool = NewConnPool()
	}
	return o
}

// Replication is the I/O shell around a PrimaryCore: it dials every
// mirror, streams journal records to it, feeds acks, ticks and local
// durability into the core, and completes NBD requests as the core says.
// It implements Replicator for a Volume.
//
// Goroutines (all stopped by Close): one ticker, one local syncer, and per
// mirror one link that dials, handshakes and, per session, one receiver
// and one sender.
type Replication struct {
	node *Node
	j    *journal.Journal
	opts ReplicationOptions
	log  *slog.Logger

	mu      sync.Mutex // guards core, waiters, links' session state
	core    *core.PrimaryCore
	waiters map[uint64]chan error
	links   map[string]*peerLink

	syncReq chan uint64

	resyncOpts ResyncOptions
	srcMu      sync.Mutex
	src        stableReader
	// indirectFloor (mu): the highest indirect record the journal holds
	// whose data the image no longer has; a mirror behind it is resynced
	// (journalFirst).
	indirectFloor uint64

	// cumBytes[seq%cumRing] is the total record data admitted through seq,
	// for the lag in bytes that status shows.
	cumBytes   []uint64
	totalBytes uint64
	admitTime  []int64 // unix ns of admission by seq%cumRing (with OnAck)

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// StartReplication starts replicating node (a primary) to opts.Peers.
func StartReplication(node *Node, opts ReplicationOptions) (*Replication, error) {
	opts = opts.withDefaults()
	if len(opts.Peers) == 0 {
		return nil, errors.New("mirror: replication needs at least one mirror")
	}
	if err := node.BeginWrites(); err != nil {
		return nil, err
	}
	m := node.Meta()
	j := node.Journal
	names := make([]string, len(opts.Peers))
	for i, p := range opts.Peers {
		names[i] = p.Name
	}
	ticks := func(d time.Duration) int {
		if d <= 0 {
			return 0
		}
		return max(1, int(d/opts.Tick))
	}
	_, durable := j.Watermarks()
	next := j.LastSeq() + 1
	pc, err := core.NewPrimaryCore(core.PrimaryConfig{
		Peers: names, Mode: opts.Mode, SyncAcks: opts.SyncAcks, AckLevel: opts.AckLevel,
		AllowDegraded: opts.AllowDegraded, Coordinated: opts.Coordinated, AckTimeoutTicks: ticks(opts.AckTimeout),
		MaxLagTicks: ticks(opts.MaxLag), Epoch: m.Epoch, NextSeq: next,
		JournalFirst: min(j.FirstSeq(), next), LocalDurable: min(durable, next-1),
		// Fenced in an earlier run: no write completes.
		FencedBy: m.FencedBy,
		Node:     opts.NodeName, Volume: m.Volume, Size: uint64(m.Size),
	})
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &Replication{
		node: node, j: j, opts: opts, log: opts.Logger, core: pc,
		waiters: make(map[uint64]chan error), links: make(map[string]*peerLink),
		syncReq: make(chan uint64, 1), ctx: ctx, cancel: cancel, cumBytes: make([]uint64, cumRing), admitTime: make([]int64, cumRing),
		resyncOpts: opts.Resync.withDefaults(),
	}
	keep := make(map[string]bool, len(opts.Peers))
	for _, p := range opts.Peers {
		keep[p.Name] = true
		// Registered at open if the node knew it; a new mirror is tracked
		// from the journal's first record (see peerstate.go).
		from := j.FirstSeq()
		if pm, ok := m.Peers[p.Name]; ok {
			from = max(from, pm.DurableSeq+1)
		}
		if err := node.addPeerConsumer(p.Name, from); err != nil {
			cancel()
			return nil, err
		}
		r.links[p.Name] = &peerLink{r: r, addr: p, log: r.log.With("peer", p.Name, "addr", p.Addr)}
	}
	if err := node.forgetPeers(keep); err != nil {
		cancel()
		return nil, err
	}
	peerNames := make([]string, 0, len(opts.Peers))
	for _, p := range opts.Peers {
		peerNames = append(peerNames, p.Name)
	}
	if err := node.handOverAdopted(peerNames); err != nil {
		cancel()
		return nil, err
	}
	r.wg.Add(2)
	go r.tickLoop()
	go r.syncLoop()
	for _, l := range r.links {
		r.wg.Add(1)
		go l.run(ctx)
	}
	return r, nil
}

// setSource gives the replication the volume that resync reads from.
func (r *Replication) setSource(v stableReader) {
	r.srcMu.Lock()
	r.src = v
	r.srcMu.Unlock()
}

func (r *Replication) source() stableReader {
	r.srcMu.Lock()
	defer r.srcMu.Unlock()
	return r.src
}

// Admit implements Replicator.
func (r *Replication) Admit(id uint64, bytes int, fua bool) (uint64, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	seq, err := r.core.ProposeWrite(id, fua)
	if err != nil {
		return 0, err
	}
	r.totalBytes += uint64(bytes)
	r.cumBytes[seq%cumRing] = r.totalBytes
	if r.opts.OnAck != nil {
		r.admitTime[seq%cumRing] = time.Now().UnixNano()
	}
	r.waiters[id] = make(chan error, 1)
	r.processLocked()
	return seq, nil
}

// fencedErr returns the error Admit gives every write once the core is
// fenced (a node of a higher epoch exists), nil before.
func (r *Replication) fencedErr() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.core.Fenced() {
		return core.ErrFenced
	}
	return nil
}

// AdmitFlush implements Replicator.
func (r *Replication) AdmitFlush(id uint64) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.waiters[id] = make(chan error, 1)
	if err := r.core.ProposeFlush(id); err != nil {
		delete(r.waiters, id)
		return err
	}
	r.processLocked()
	return nil
}

// WaitsForMirrors implements Replicator: in sync mode every write (FUA or
// not) completes only once mirrors acked it; in async mode none does (a
// FUA write needs local durability only; see the acknowledgement rules in
// the package doc).
func (r *Replication) WaitsForMirrors(fua bool) bool {
	return r.opts.Mode == wire.ModeSync
}

// Forget implements Replicator.
func (r *Replication) Forget(id uint64) {
	r.mu.Lock()
	r.core.Forget(id)
	delete(r.waiters, id)
	r.processLocked()
	r.mu.Unlock()
}

// LocalDone implements Replicator.
func (r *Replication) LocalDone(ctx context.Context, id uint64) error {
	r.mu.Lock()
	ch := r.waiters[id]
	r.core.LocalDone(id)
	r.processLocked()
	r.mu.Unlock()
	if ch == nil {
		return fmt.Errorf("mirror: request %d was never admitted", id)
	}
	forget := func() {
		r.mu.Lock()
		delete(r.waiters, id)
		r.mu.Unlock()
	}
	defer forget()
	select {
	case err := <-ch:
		return err
	case <-ctx.Done():
		return ctx.Err()
	case <-r.ctx.Done():
		return errors.New("mirror: replication stopped")
	}
}

// processLocked takes the core's outputs and acts on them without
// blocking. r.mu must be held.
func (r *Replication) processLocked() {
	rd := r.core.Ready()
	for _, c := range rd.Completions {
		// LocalDone removes the waiter once it has its result (a flush can
		// complete inside AdmitFlush, before LocalDone is called).
		if ch, ok := r.waiters[c.ID]; ok {
			ch <- c.Err
		}
	}
	for _, s := range rd.StartStreams {
		if l := r.links[s.Peer]; l != nil {
			l.startStream(s.From)
		}
	}
	for _, f := range rd.PeerFlushes {
		if l := r.links[f.Peer]; l != nil {
			l.queueFlush(f.Through)
		}
	}
	if rd.SyncLocal > 0 {
		offer(r.syncReq, rd.SyncLocal, maxSeq)
	}
	for _, rel := range rd.Releases {
		r.j.Release(peerConsumer(rel.Peer), rel.Through)
		if l := r.links[rel.Peer]; l != nil {
			l.durable = rel.Through
		}
	}
	for _, p := range rd.NeedResync {
		r.log.Warn("mirror cannot catch up from the journal and needs a resync", "peer", p)
		if l := r.links[p]; l != nil {
			l.needsResync = true
		}
	}
	for _, n := range rd.SplitBrain {
		l := r.links[n.Peer]
		if l == nil {
			continue
		}
		l.splitBrain = n.Reason
		if n.Reason != "" {
			r.node.NoteSplitBrain(n.Peer, n.Reason)
		} else {
			r.node.ClearSplitBrain(n.Peer)
		}
	}
	if rd.Fenced > 0 {
		r.log.Error("fenced: a node of a higher epoch exists (another node was promoted); writes now fail", "their_epoch", rd.Fenced)
		// Durably, so a restart does not unfence the node (one small
		// metadata write, once per higher epoch seen).
		if err := r.node.Fence(rd.Fenced); err != nil {
			r.log.Error("recording the fence in the metadata failed", "err", err)
		}
	}
}

// tickLoop advances the core's clock and persists peer progress.
func (r *Replication) tickLoop() {
	defer r.wg.Done()
	t := time.NewTicker(r.opts.Tick)
	defer t.Stop()
	persist := time.NewTicker(time.Second)
	defer persist.Stop()
	// The core's clock follows the real time: a ticker drops ticks when
	// this loop is late, so every tick period elapsed is a core tick (the
	// --max-lag and in-sync bounds are in ticks).
	start, ticked := time.Now(), int64(0)
	for {
		select {
		case <-r.ctx.Done():
			r.persistPeers()
			return
		case <-t.C:
			first := r.j.FirstSeq()
			due := int64(time.Since(start) / r.opts.Tick)
			r.mu.Lock()
			r.core.JournalFirst(r.journalFirstLocked(first))
			for ; ticked < due; ticked++ {
				r.core.Tick()
			}
			r.processLocked()
			r.mu.Unlock()
		case <-persist.C:
			r.persistPeers()
		}
	}
}

// persistPeers saves each mirror's durable ack point in the metadata, so
// a restarted primary keeps the journal records its mirrors still need.
func (r *Replication) persistPeers() {
	r.mu.Lock()
	type pm struct {
		durable     uint64
		needsResync bool
	}
	cur := make(map[string]pm, len(r.links))
	for name, l := range r.links {
		cur[name] = pm{l.durable, l.needsResync}
	}
	r.mu.Unlock()
	old := r.node.Meta()
	changed := false
	for name, c := range cur {
		o := old.Peers[name]
		if c.durable > o.DurableSeq || (c.needsResync && !o.NeedsResync) {
			changed = true
		}
	}
	if !changed {
		return
	}
	err := r.node.UpdateMeta(func(m *Meta) error {
		if m.Peers == nil {
			m.Peers = make(map[string]PeerMeta)
		}
		for name, c := range cur {
			p := m.Peers[name]
			p.DurableSeq = max(p.DurableSeq, c.durable)
			p.NeedsResync = p.NeedsResync || c.needsResync
			m.Peers[name] = p
		}
		return nil
	})
	if err != nil {
		r.log.Error("saving mirror progress failed", "err", err)
	}
}

// syncLoop makes the local journal durable when the core asks.
func (r *Replication) syncLoop() {
	defer r.wg.Done()
	for {
		var seq uint64
		select {
		case <-r.ctx.Done():
			return
		case seq = <-r.syncReq:
		}
		// The core asks for a FUA write's sync when the write is admitted,
		// which is just before its record is submitted: wait for the
		// record first (Wait refuses seqs the journal does not hold yet).
		// (Bounded: a record whose submission failed never comes.)
		giveUp := time.After(5 * time.Second)
	waitSubmit:
		for r.j.LastSeq() < seq {
			ch := r.j.Changed()
			if r.j.LastSeq() >= seq {
				break
			}
			select {
			case <-r.ctx.Done():
				return
			case <-giveUp:
				break waitSubmit
			case <-ch:
			}
		}
		if err := r.j.Wait(r.ctx, seq, journal.Durable); err != nil {
			if r.ctx.Err() == nil {
				r.log.Error("local journal sync failed", "seq", seq, "err", err)
			}
			continue
		}
		_, durable := r.j.Watermarks()
		r.mu.Lock()
		r.core.LocalDurable(durable)
		r.processLocked()
		r.mu.Unlock()
	}
}

// observeAck reports ack latency for a peer whose ack at the ack level
// moved from old to now (r.mu held).
func (r *Replication) observeAck(peer string, old, now uint64) {
	if r.opts.OnAck == nil || now <= old || r.core.LastSeq()-now >= cumRing {
		return
	}
	if t := r.admitTime[now%cumRing]; t != 0 {
		r.opts.OnAck(peer, time.Duration(time.Now().UnixNano()-t))
	}
}

// cumRing is how many recent seqs the byte lag is exact for.
const cumRing = 1 << 18

// bytesBetween is the record data admitted after acked through last (r.mu
// held); for a mirror further behind than cumRing seqs it is a lower
// bound.
func (r *Replication) bytesBetween(acked, last uint64) uint64 {
	if acked >= last {
		return 0
	}
	if last-acked >= cumRing {
		acked = last - cumRing + 1
	}
	return r.cumBytes[last%cumRing] - r.cumBytes[acked%cumRing]
}

// Status returns a snapshot for `blockmirror status`.
func (r *Replication) Status() ReplicationStatus {
	r.mu.Lock()
	defer r.mu.Unlock()
	cs := r.core.Status()
	st := ReplicationStatus{
		Mode: r.opts.Mode.String(), SyncAcks: r.opts.SyncAcks, AckLevel: r.opts.AckLevel.String(),
		AllowDegraded: r.opts.AllowDegraded, Epoch: cs.Epoch, LastSeq: cs.LastSeq,
		LocalDurable: cs.LocalDurable, JournalFirst: cs.JournalFirst, QuorumSeq: cs.QuorumSeq,
		Degraded: cs.Degraded, Throttled: cs.Throttled, Fenced: cs.Fenced, Pending: cs.Pending,
		InSyncLagSeconds: r.seconds(int64(cs.InSyncLagTicks)),
	}
	for _, p := range cs.Peers {
		l := r.links[p.Name]
		ps := PeerReport{
			Name: p.Name, State: p.State.String(), Received: p.Acks.Received, Written: p.Acks.Written,
			Durable: p.Acks.Durable, Applied: p.Acks.Applied, LagRecords: p.LagRecords,
			LagSeconds: r.seconds(p.LagTicks), AgeSeconds: r.seconds(p.AgeTicks),
		}
		if p.ETATicks >= 0 && p.State == core.PeerCatchingUp {
			ps.ETASeconds = ptrTo(r.seconds(p.ETATicks))
		}
		if l != nil {
			ps.Addr = l.addr.Addr
			ps.Connected = l.connected
			ps.LastError = l.lastErr
			ps.RTTMicros = l.rtt.Microseconds()
			if l.sess != nil {
				ps.QUIC = quicReport(l.sess.conn.Stats(), l.sess.laneConns)
			}
			ps.LagBytes = l.lagBytes(p.Acks.Level(r.opts.AckLevel), cs.LastSeq)
			ps.SplitBrain = l.splitBrain
			if l.resync != nil {
				ps.Resync = ptrTo(l.resync.progress())
			} else if l.lastResync.TotalBytes > 0 {
				ps.Resync = ptrTo(l.lastResync)
			}
		}
		st.Peers = append(st.Peers, ps)
	}
	st.SplitBrain = r.node.SplitBrain()
	return st
}

// seconds converts core ticks to seconds.
func (r *Replication) seconds(ticks int64) float64 {
	return (time.Duration(ticks) * r.opts.Tick).Seconds()
}

// ReplicationStatus is the primary's replication state, as JSON for status.
type ReplicationStatus struct {
	Mode          string `json:"mode"`
	SyncAcks      int    `json:"sync_acks"`
	AckLevel      string `json:"ack_level"`
	AllowDegraded bool   `json:"allow_degraded"`
	Epoch         uint64 `json:"epoch"`
	LastSeq       uint64 `json:"last_seq"`
	LocalDurable  uint64 `json:"local_durable_seq"`
	JournalFirst  uint64 `json:"journal_first_seq"`
	QuorumSeq     uint64 `json:"quorum_seq"`
	Degraded      bool   `json:"degraded"`
	Throttled     bool   `json:"throttled"`
	Fenced        bool   `json:"fenced"`
	Pending       int    `json:"pending_requests"`
	// InSyncLagSeconds: a mirror is in-sync only while it has acknowledged
	// every write older than this (a tenth of --ack-timeout); further
	// behind it is catching-up.
	InSyncLagSeconds float64 `json:"in_sync_lag_seconds"`
	// SplitBrain, when set, describes a split brain seen on contact with a
	// peer and names the command that resolves it.
	SplitBrain string       `json:"split_brain,omitempty"`
	Peers      []PeerReport `json:"peers"`
}

// PeerReport is one mirror's state in ReplicationStatus.
type PeerReport struct {
	Name string `json:"name"`
	Addr string `json:"addr"`
	// State is in-sync only within in_sync_lag_seconds of the primary;
	// catching-up: connected and behind (lag_records, lag_bytes,
	// lag_seconds, eta_seconds); also resyncing, needs-resync,
	// disconnected.
	State      string  `json:"state"`
	Connected  bool    `json:"connected"`
	Received   uint64  `json:"received_seq"`
	Written    uint64  `json:"written_seq"`
	Durable    uint64  `json:"durable_seq"`
	Applied    uint64  `json:"applied_seq"`
	LagRecords uint64  `json:"lag_records"`
	LagBytes   uint64  `json:"lag_bytes"`
	LagSeconds float64 `json:"lag_seconds"`
	// ETASeconds (catching-up): when the lag will be gone at the recent
	// rates of acks and new writes; absent when the mirror does not gain.
	ETASeconds *float64 `json:"eta_seconds,omitempty"`
	// AgeSeconds: how long ago the oldest write the mirror has not
	// applied was acknowledged to its client (0: it applied every
	// acknowledged write). A failover to it now loses the writes
	// acknowledged since then.
	AgeSeconds float64 `json:"age_seconds"`
	RTTMicros  int64   `json:"rtt_us"`
	// QUIC describes the connection to the mirror while one is up.
	QUIC       *QUICReport `json:"quic,omitempty"`
	LastError  string      `json:"last_error,omitempty"`
	SplitBrain string      `json:"split_brain,omitempty"`
	// Resync is the current (or last) resync's progress.
	Resync *ResyncProgress `json:"resync,omitempty"`
}

// QUICReport is the state of the QUIC connections of a session to a
// mirror, as quic-go reports it: what to look at when acks are slow
// although the mirror is not busy (a small congestion window, lost
// packets, a long path). With record lanes the session uses Connections
// connections: the RTTs are the log stream's connection's, the window,
// packet and byte counts the sums over all of them.
type QUICReport struct {
	SmoothedRTTMicros int64  `json:"srtt_us"`
	MinRTTMicros      int64  `json:"min_rtt_us"`
	CongestionWindow  uint64 `json:"cwnd_bytes"`
	PacketsSent       uint64 `json:"packets_sent"`
	PacketsLost       uint64 `json:"packets_lost"`
	BytesSent         uint64 `json:"bytes_sent"`
	Connections       int    `json:"connections"`
}

// quicReport reports on the log stream's connection main and the
// session's other lane connections.
func quicReport(main transport.ConnStats, lanes []streamConn) *QUICReport {
	q := &QUICReport{
		SmoothedRTTMicros: main.SmoothedRTT.Microseconds(), MinRTTMicros: main.MinRTT.Microseconds(),
		CongestionWindow: main.CongestionWindow, PacketsSent: main.PacketsSent, PacketsLost: main.PacketsLost,
		BytesSent: main.BytesSent, Connections: 1 + len(lanes),
	}
	for _, c := range lanes {
		s := c.Stats()
		q.CongestionWindow += s.CongestionWindow
		q.PacketsSent += s.PacketsSent
		q.PacketsLost += s.PacketsLost
		q.BytesSent += s.BytesSent
	}
	return q
}

func ptrTo[T any](v T) *T { return &v }

// Fence stops the primary from completing writes: a node of a higher
// epoch exists. Every pending and later write fails with ErrFenced.
func (r *Replication) Fence(epoch uint64) {
	r.mu.Lock()
	r.core.Fence(epoch)
	r.processLocked()
	r.mu.Unlock()
}

// Close stops replication. Requests still waiting fail.
func (r *Replication) Close() error {
	r.cancel()
	r.wg.Wait()
	return nil
}

// SetAckSet makes only the acks of members count toward k (sync mode),
// for every request not yet complete too (see core.PrimaryCore.SetAckSet).
func (r *Replication) SetAckSet(members []string, k int) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.core.SetAckSet(members, k); err != nil {
		return err
	}
	r.processLocked()
	return nil
}

// PeerContact is one mirror as a coordinator sees it.
type PeerContact struct {
	Name   string
	InSync bool
	// Acked is the mirror's ack at the ack level; Lag the assigned seqs
	// it has not acknowledged at that level.
	Acked, Lag uint64
	// SinceConfirm is the age of the send time of the last heartbeat the
	// mirror echoed in its current session (negative: none).
	SinceConfirm time.Duration
}

// Contacts returns every mirror's contact state and the ack set (members
// in Peers order, and K). Cheap: no I/O.
func (r *Replication) Contacts() (peers []PeerContact, ackSet []string, k int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	st := r.core.Status()
	for _, p := range st.Peers {
		pc := PeerContact{Name: p.Name, InSync: p.State == core.PeerInSync, Acked: p.Acks.Level(r.opts.AckLevel),
			Lag: p.LagRecords, SinceConfirm: -1}
		if l := r.links[p.Name]; l != nil && !l.confirmed.IsZero() {
			pc.SinceConfirm = time.Since(l.confirmed)
		}
		peers = append(peers, pc)
	}
	ackSet, k = r.core.AckSet()
	return peers, ackSet, k
}
