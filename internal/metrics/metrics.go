package metrics

import (
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Label names (format: dashboards and alerts use them).
const (
	LabelVolume = "volume"
	LabelPeer   = "peer"
	LabelOp     = "op"
	LabelLevel  = "level"
	LabelState  = "state"
)

// NBD operation names accepted by NBDMetrics.Observe (format: values of
// the op label). Any other name is counted as OpOther.
const (
	OpRead        = "read"
	OpWrite       = "write"
	OpTrim        = "trim"
	OpZero        = "zero"
	OpFlush       = "flush"
	OpCache       = "cache"
	OpBlockStatus = "block_status"
	OpOther       = "other"
)

var nbdOps = [...]string{OpRead, OpWrite, OpTrim, OpZero, OpFlush, OpCache, OpBlockStatus, OpOther}

func opIndex(op string) int {
	switch op {
	case OpRead:
		return 0
	case OpWrite:
		return 1
	case OpTrim:
		return 2
	case OpZero:
		return 3
	case OpFlush:
		return 4
	case OpCache:
		return 5
	case OpBlockStatus:
		return 6
	}
	return 7
}

// Journal append levels accepted by JournalMetrics.ObserveAppend (format:
// values of the level label). Any other level is counted as LevelOther.
const (
	LevelWritten = "written"
	LevelDurable = "durable"
	LevelOther   = "other"
)

// LatencyBuckets are the upper bounds, in seconds, of every latency
// histogram: 10µs doubling to ~21s (22 buckets), which covers a page-cache
// write on loopback up to a stalled fsync or an ack timeout.
var LatencyBuckets = prometheus.ExponentialBuckets(10e-6, 2, 22)

// Options configure a Registry. The zero value is valid.
type Options struct {
	// Logger receives errors met while serving /metrics; nil discards them.
	Logger *slog.Logger
	// NoRuntimeMetrics leaves out the Go runtime (go_*) and process
	// (process_*) collectors, which are registered by default.
	NoRuntimeMetrics bool
}

// Registry holds every blockmirror metric of one process. Create it once
// with New and pass it (or the per-volume hooks it returns) to the parts
// that observe. It is safe for concurrent use.
type Registry struct {
	reg *prometheus.Registry
	log *slog.Logger

	buildInfo *prometheus.GaugeVec

	nbdRequests *prometheus.CounterVec
	nbdBytes    *prometheus.CounterVec
	nbdErrors   *prometheus.CounterVec
	nbdLatency  *prometheus.HistogramVec

	jAppend   *prometheus.HistogramVec
	jFsync    *prometheus.HistogramVec
	jSize     *prometheus.GaugeVec
	jSegments *prometheus.GaugeVec
	jRecords  *prometheus.CounterVec
	jBytes    *prometheus.CounterVec

	peerAck         *prometheus.HistogramVec
	peerLagRecords  *prometheus.GaugeVec
	peerLagBytes    *prometheus.GaugeVec
	peerLagSeconds  *prometheus.GaugeVec
	peerConnected   *prometheus.GaugeVec
	peerQUICSRTT    *prometheus.GaugeVec
	peerQUICCwnd    *prometheus.GaugeVec
	peerQUICSent    *prometheus.GaugeVec
	peerQUICLost    *prometheus.GaugeVec
	peerState       *prometheus.GaugeVec
	peerResyncDone  *prometheus.GaugeVec
	peerResyncTotal *prometheus.GaugeVec
	peerAge         *prometheus.GaugeVec
	peerResyncSent  *prometheus.CounterVec

	resyncReceived *prometheus.CounterVec
	resyncApplied  *prometheus.CounterVec

	foLeader      *prometheus.GaugeVec
	foEpoch       *prometheus.GaugeVec
	foLeaseAge    *prometheus.GaugeVec
	foWrites      *prometheus.GaugeVec
	foFailsafe    *prometheus.GaugeVec
	foEtcdUp      *prometheus.GaugeVec
	foMemberLag   *prometheus.GaugeVec
	foTransitions *prometheus.CounterVec

	volumeVecs []deleter // everything labelled by volume
	peerVecs   []deleter // everything labelled by volume and peer
}

type deleter interface {
	DeletePartialMatch(prometheus.Labels) int
}

// New returns a Registry with the default Options.
func New() *Registry { return NewWith(Options{}) }

// NewWith returns a Registry with its own prometheus.Registry (the global
// default registry is never used).
func NewWith(o Options) *Registry {
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r := &Registry{reg: prometheus.NewRegistry(), log: log}
	vol := []string{LabelVolume}
	volOp := []string{LabelVolume, LabelOp}
	volPeer := []string{LabelVolume, LabelPeer}
	counter := func(name, help string, labels []string) *prometheus.CounterVec {
		c := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "blockmirror", Name: name, Help: help}, labels)
		r.reg.MustRegister(c)
		return c
	}
	gauge := func(name, help string, labels []string) *prometheus.GaugeVec {
		g := prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "blockmirror", Name: name, Help: help}, labels)
		r.reg.MustRegister(g)
		return g
	}
	histogram := func(name, help string, labels []string) *prometheus.HistogramVec {
		h := prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: "blockmirror", Name: name, Help: help, Buckets: LatencyBuckets}, labels)
		r.reg.MustRegister(h)
		return h
	}

	r.buildInfo = gauge("build_info", "Always 1; the version label is the running blockmirror version.", []string{"version"})

	r.nbdRequests = counter("nbd_requests_total", "NBD requests completed, by volume and operation.", volOp)
	r.nbdBytes = counter("nbd_bytes_total", "Bytes transferred or affected by successful NBD requests (read and write payloads, trimmed and zeroed lengths).", volOp)
	r.nbdErrors = counter("nbd_errors_total", "NBD requests that failed, by volume and operation.", volOp)
	r.nbdLatency = histogram("nbd_request_duration_seconds", "NBD request latency from receipt to reply, by volume and operation.", volOp)

	r.jAppend = histogram("journal_append_duration_seconds", "Journal append latency until the record reached the level (written: in the segment file; durable: fdatasync'd).", []string{LabelVolume, LabelLevel})
	r.jFsync = histogram("journal_fsync_duration_seconds", "Duration of journal fdatasync calls.", vol)
	r.jSize = gauge("journal_size_bytes", "Bytes of journal segments on disk.", vol)
	r.jSegments = gauge("journal_segments", "Journal segment files on disk.", vol)
	r.jRecords = counter("journal_records_total", "Records appended to the journal.", vol)
	r.jBytes = counter("journal_appended_bytes_total", "Bytes appended to the journal (records with their headers).", vol)

	r.peerAck = histogram("peer_ack_duration_seconds", "Time from sending a record to a mirror until its ack arrived, by volume and mirror.", volPeer)
	r.peerLagRecords = gauge("peer_lag_records", "Journal records the mirror has not acked yet.", volPeer)
	r.peerLagBytes = gauge("peer_lag_bytes", "Bytes of journal records the mirror has not acked yet.", volPeer)
	r.peerLagSeconds = gauge("peer_lag_seconds", "Age of the oldest record the mirror has not acked (0 when in sync).", volPeer)
	r.peerConnected = gauge("peer_connected", "1 while a session with the mirror is up, else 0.", volPeer)
	r.peerQUICSRTT = gauge("peer_quic_srtt_seconds", "Smoothed round-trip time of the QUIC connection to the mirror (RFC 9002; 0 when not connected).", volPeer)
	r.peerQUICCwnd = gauge("peer_quic_cwnd_bytes", "Congestion window of the QUIC connection to the mirror: the bytes it may have in flight.", volPeer)
	r.peerQUICSent = gauge("peer_quic_packets_sent", "Packets sent on the current QUIC connection to the mirror (restarts at 0 with each connection).", volPeer)
	r.peerQUICLost = gauge("peer_quic_packets_lost", "Packets declared lost on the current QUIC connection to the mirror (restarts at 0 with each connection).", volPeer)
	r.peerState = gauge("peer_state", "1 for the mirror's current replication state (state label), 0 for states it was in before.", []string{LabelVolume, LabelPeer, LabelState})
	r.peerResyncDone = gauge("peer_resync_done_bytes", "Bytes of the current full resync already sent to the mirror.", volPeer)
	r.peerResyncTotal = gauge("peer_resync_target_bytes", "Bytes the current full resync of the mirror covers (0 when none runs).", volPeer)

	r.peerAge = gauge("peer_age_seconds", "How long ago the oldest write the mirror has not applied was acknowledged to its client (0: it applied every acknowledged write); a failover to it now loses the writes acknowledged since.", volPeer)
	r.peerResyncSent = counter("peer_resync_sent_bytes_total", "Chunk data bytes resyncs sent to the mirror (zero chunks send none); status --json's resync.sent_bytes counts the same for the current resync.", volPeer)
	r.resyncReceived = counter("resync_received_bytes_total", "Mirror side: chunk data bytes received from the primary's resyncs.", vol)
	r.resyncApplied = counter("resync_applied_bytes_total", "Mirror side: disk bytes resync chunks wrote (zero chunks count their length; stale chunks, sent again later, do not count).", vol)
	r.foLeader = gauge("failover_leader", "1 while this node holds the volume's leader key in etcd (automatic failover), else 0.", vol)
	r.foEpoch = gauge("failover_epoch", "The node's epoch for the volume.", vol)
	r.foLeaseAge = gauge("failover_lease_age_seconds", "Leader only: time since the last lease renewal etcd confirmed was sent (the primary fences itself at TTL minus the margin).", vol)
	r.foWrites = gauge("failover_writes_allowed", "Primary only: 1 while the coordinator's write lease lets the primary complete writes, 0 while it is fenced.", vol)
	r.foFailsafe = gauge("failover_failsafe", "1 while the primary serves on its mirrors' confirmations because etcd does not answer (failsafe).", vol)
	r.foEtcdUp = gauge("failover_etcd_reachable", "1 while the coordinator's last etcd step succeeded, else 0.", vol)
	r.foMemberLag = gauge("failover_member_lag_records", "Primary only: records each mirror (member) has not acknowledged, as the coordinator sees it.", []string{LabelVolume, LabelPeer})
	r.foTransitions = counter("failover_events_total", "Failover events of this node: promoted, demoted, fenced, unfenced, leader.", []string{LabelVolume, "event"})

	r.volumeVecs = []deleter{r.nbdRequests, r.nbdBytes, r.nbdErrors, r.nbdLatency, r.jAppend, r.jFsync, r.jSize, r.jSegments, r.jRecords, r.jBytes, r.resyncReceived, r.resyncApplied,
		r.foLeader, r.foEpoch, r.foLeaseAge, r.foWrites, r.foFailsafe, r.foEtcdUp, r.foMemberLag, r.foTransitions}
	r.peerVecs = []deleter{r.peerAck, r.peerLagRecords, r.peerLagBytes, r.peerLagSeconds, r.peerConnected, r.peerQUICSRTT, r.peerQUICCwnd, r.peerQUICSent, r.peerQUICLost, r.peerState, r.peerResyncDone, r.peerResyncTotal, r.peerAge, r.peerResyncSent}

	if !o.NoRuntimeMetrics {
		r.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	}
	return r
}

// Handler serves the registry in the Prometheus text (or, when asked,
// OpenMetrics) format, for GET /metrics. Its own requests are counted in
// promhttp_metric_handler_requests_total.
func (r *Registry) Handler() http.Handler {
	h := promhttp.HandlerFor(r.reg, promhttp.HandlerOpts{
		ErrorLog:          slogPrintln{r.log},
		ErrorHandling:     promhttp.ContinueOnError,
		Registry:          r.reg,
		EnableOpenMetrics: true,
	})
	return promhttp.InstrumentMetricHandler(r.reg, h)
}

type slogPrintln struct{ l *slog.Logger }

func (s slogPrintln) Println(v ...any) { s.l.Warn("metrics: " + fmt.Sprint(v...)) }

// Register adds another collector to the registry (say, for a subsystem's
// own metrics); names should use the blockmirror_ prefix.
func (r *Registry) Register(c prometheus.Collector) error {
	if err := r.reg.Register(c); err != nil {
		return fmt.Errorf("metrics: register: %w", err)
	}
	return nil
}

// SetBuildInfo sets blockmirror_build_info{version} to 1.
func (r *Registry) SetBuildInfo(version string) {
	r.buildInfo.Reset()
	r.buildInfo.WithLabelValues(version).Set(1)
}

// RemoveVolume drops every series of volume, its peers' included (for a
// volume the process no longer serves). Hooks obtained earlier for it keep
// working but are no longer exported.
func (r *Registry) RemoveVolume(volume string) {
	l := prometheus.Labels{LabelVolume: volume}
	for _, v := range r.volumeVecs {
		v.DeletePartialMatch(l)
	}
	for _, v := range r.peerVecs {
		v.DeletePartialMatch(l)
	}
}

// RemovePeer drops the series of one mirror of volume.
func (r *Registry) RemovePeer(volume, peer string) {
	l := prometheus.Labels{LabelVolume: volume, LabelPeer: peer}
	for _, v := range r.peerVecs {
		v.DeletePartialMatch(l)
	}
}

// NBDMetrics are one volume's NBD request metrics. The label values are
// resolved when it is created, so Observe does not allocate. A nil
// *NBDMetrics ignores observations.
type NBDMetrics struct {
	ops [len(nbdOps)]nbdOp
}

type nbdOp struct {
	requests prometheus.Counter
	bytes    prometheus.Counter
	errors   prometheus.Counter
	latency  prometheus.Observer
}

// NBD returns the NBD hooks of volume (every call for the same volume
// updates the same series).
func (r *Registry) NBD(volume string) *NBDMetrics {
	m := &NBDMetrics{}
	for i, op := range nbdOps {
		m.ops[i] = nbdOp{
			requests: r.nbdRequests.WithLabelValues(volume, op),
			bytes:    r.nbdBytes.WithLabelValues(volume, op),
			errors:   r.nbdErrors.WithLabelValues(volume, op),
			latency:  r.nbdLatency.WithLabelValues(volume, op),
		}
	}
	return m
}

// Observe records one completed request: op is one of the Op* names,
// bytes its length (counted only when err is nil), d the time from
// receipt to reply, err its outcome (non-nil counts an error).
func (m *NBDMetrics) Observe(op string, bytes int, d time.Duration, err error) {
	if m == nil {
		return
	}
	o := &m.ops[opIndex(op)]
	o.requests.Inc()
	o.latency.Observe(d.Seconds())
	if err != nil {
		o.errors.Inc()
		return
	}
	if bytes > 0 {
		o.bytes.Add(float64(bytes))
	}
}

// JournalMetrics are one volume's journal metrics. A nil *JournalMetrics
// ignores observations.
type JournalMetrics struct {
	appendWritten, appendDurable, appendOther prometheus.Observer
	fsync                                     prometheus.Observer
	size, segments                            prometheus.Gauge
	records, bytes                            prometheus.Counter
	resyncReceived, resyncApplied             prometheus.Counter
}

// Journal returns the journal hooks of volume.
func (r *Registry) Journal(volume string) *JournalMetrics {
	return &JournalMetrics{
		appendWritten:  r.jAppend.WithLabelValues(volume, LevelWritten),
		appendDurable:  r.jAppend.WithLabelValues(volume, LevelDurable),
		appendOther:    r.jAppend.WithLabelValues(volume, LevelOther),
		fsync:          r.jFsync.WithLabelValues(volume),
		size:           r.jSize.WithLabelValues(volume),
		segments:       r.jSegments.WithLabelValues(volume),
		records:        r.jRecords.WithLabelValues(volume),
		bytes:          r.jBytes.WithLabelValues(volume),
		resyncReceived: r.resyncReceived.WithLabelValues(volume),
		resyncApplied:  r.resyncApplied.WithLabelValues(volume),
	}
}

// ObserveAppend records how long an append took to reach level
// (LevelWritten or LevelDurable).
func (m *JournalMetrics) ObserveAppend(level string, d time.Duration) {
	if m == nil {
		return
	}
	switch level {
	case LevelWritten:
		m.appendWritten.Observe(d.Seconds())
	case LevelDurable:
		m.appendDurable.Observe(d.Seconds())
	default:
		m.appendOther.Observe(d.Seconds())
	}
}

// AddRecords counts appended records and their bytes (the records/s and
// bytes/s rates come from these counters).
func (m *JournalMetrics) AddRecords(records, bytes int) {
	if m == nil {
		return
	}
	if records > 0 {
		m.records.Add(float64(records))
	}
	if bytes > 0 {
		m.bytes.Add(float64(bytes))
	}
}

// AddResync counts, on a mirror, the chunk data bytes a resync received
// and the disk bytes its chunks wrote.
func (m *JournalMetrics) AddResync(received, applied int) {
	if m == nil {
		return
	}
	if received > 0 {
		m.resyncReceived.Add(float64(received))
	}
	if applied > 0 {
		m.resyncApplied.Add(float64(applied))
	}
}

// ObserveFsync records one fdatasync of the journal.
func (m *JournalMetrics) ObserveFsync(d time.Duration) {
	if m == nil {
		return
	}
	m.fsync.Observe(d.Seconds())
}

// SetSize sets the journal's size on disk and its number of segments.
func (m *JournalMetrics) SetSize(bytes uint64, segments int) {
	if m == nil {
		return
	}
	m.size.Set(float64(bytes))
	m.segments.Set(float64(segments))
}

// PeerMetrics are the metrics of one mirror of one volume. A nil
// *PeerMetrics ignores observations.
type PeerMetrics struct {
	ack                                prometheus.Observer
	lagRecords, lagBytes, lagSeconds   prometheus.Gauge
	connected, resyncDone, resyncTotal prometheus.Gauge
	age                                prometheus.Gauge
	resyncSent                         prometheus.Counter
	quicSRTT, quicCwnd                 prometheus.Gauge
	quicSent, quicLost                 prometheus.Gauge
	stateVec                           *prometheus.GaugeVec
	volume, peer                       string
	mu                                 sync.Mutex // guards state, states
	state                              string
	states                             map[string]prometheus.Gauge
}

// Peer returns the hooks of mirror peer of volume.
func (r *Registry) Peer(volume, peer string) *PeerMetrics {
	return &PeerMetrics{
		ack:         r.peerAck.WithLabelValues(volume, peer),
		lagRecords:  r.peerLagRecords.WithLabelValues(volume, peer),
		lagBytes:    r.peerLagBytes.WithLabelValues(volume, peer),
		lagSeconds:  r.peerLagSeconds.WithLabelValues(volume, peer),
		connected:   r.peerConnected.WithLabelValues(volume, peer),
		quicSRTT:    r.peerQUICSRTT.WithLabelValues(volume, peer),
		quicCwnd:    r.peerQUICCwnd.WithLabelValues(volume, peer),
		quicSent:    r.peerQUICSent.WithLabelValues(volume, peer),
		quicLost:    r.peerQUICLost.WithLabelValues(volume, peer),
		resyncDone:  r.peerResyncDone.WithLabelValues(volume, peer),
		resyncTotal: r.peerResyncTotal.WithLabelValues(volume, peer),
		age:         r.peerAge.WithLabelValues(volume, peer),
		resyncSent:  r.peerResyncSent.WithLabelValues(volume, peer),
		stateVec:    r.peerState,
		volume:      volume,
		peer:        peer,
		states:      map[string]prometheus.Gauge{},
	}
}

// ObserveAck records the latency of one ack from the mirror.
func (m *PeerMetrics) ObserveAck(d time.Duration) {
	if m == nil {
		return
	}
	m.ack.Observe(d.Seconds())
}

// SetLag sets how far the mirror trails: unacked records, their bytes, and
// the age in seconds of the oldest.
func (m *PeerMetrics) SetLag(records, bytes uint64, seconds float64) {
	if m == nil {
		return
	}
	m.lagRecords.Set(float64(records))
	m.lagBytes.Set(float64(bytes))
	m.lagSeconds.Set(seconds)
}

// SetAge sets how long ago, in seconds, the oldest write the mirror has
// not applied was acknowledged.
func (m *PeerMetrics) SetAge(seconds float64) {
	if m == nil {
		return
	}
	m.age.Set(seconds)
}

// AddResyncSent counts chunk data bytes a resync sent to the mirror.
func (m *PeerMetrics) AddResyncSent(bytes int) {
	if m == nil || bytes <= 0 {
		return
	}
	m.resyncSent.Add(float64(bytes))
}

// SetConnected sets whether a session with the mirror is up.
func (m *PeerMetrics) SetConnected(up bool) {
	if m == nil {
		return
	}
	v := 0.0
	if up {
		v = 1
	}
	m.connected.Set(v)
}

// SetQUIC sets the statistics of the QUIC connection to the mirror:
// smoothed RTT, congestion window, packets sent and lost on it (all 0 while
// no connection is up).
func (m *PeerMetrics) SetQUIC(srtt time.Duration, cwnd, sent, lost uint64) {
	if m == nil {
		return
	}
	m.quicSRTT.Set(srtt.Seconds())
	m.quicCwnd.Set(float64(cwnd))
	m.quicSent.Set(float64(sent))
	m.quicLost.Set(float64(lost))
}

// SetState sets the mirror's replication state (free-form, such as
// "streaming", "resync", "down"): the series with that state label becomes
// 1 and the previous state's 0. Calls repeating the current state are
// cheap; the first use of a new state allocates its series.
func (m *PeerMetrics) SetState(state string) {
	if m == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if state == m.state && m.states[state] != nil {
		return
	}
	if g := m.states[m.state]; g != nil {
		g.Set(0)
	}
	g := m.states[state]
	if g == nil {
		g = m.stateVec.WithLabelValues(m.volume, m.peer, state)
		m.states[state] = g
	}
	g.Set(1)
	m.state = state
}

// SetResync sets the progress of a full resync, in bytes: done of total
// (both 0 when none runs).
func (m *PeerMetrics) SetResync(done, total uint64) {
	if m == nil {
		return
	}
	m.resyncDone.Set(float64(done))
	m.resyncTotal.Set(float64(total))
}

// FailoverMetrics are one volume's automatic failover gauges.
type FailoverMetrics struct {
	r      *Registry
	volume string
}

// Failover returns the failover hooks of volume.
func (r *Registry) Failover(volume string) *FailoverMetrics {
	return &FailoverMetrics{r: r, volume: volume}
}

// FailoverState is what the failover gauges show.
type FailoverState struct {
	Leader, WritesAllowed, Failsafe, EtcdReachable bool
	Epoch                                          uint64
	// LeaseAge is negative when this node does not hold the lease.
	LeaseAge time.Duration
	// MemberLag: records per mirror not yet acknowledged (primary only).
	MemberLag map[string]uint64
}

// Set updates the gauges.
func (m *FailoverMetrics) Set(s FailoverState) {
	if m == nil {
		return
	}
	b := func(v bool) float64 {
		if v {
			return 1
		}
		return 0
	}
	r, v := m.r, m.volume
	r.foLeader.WithLabelValues(v).Set(b(s.Leader))
	r.foEpoch.WithLabelValues(v).Set(float64(s.Epoch))
	r.foLeaseAge.WithLabelValues(v).Set(max(s.LeaseAge, 0).Seconds())
	r.foWrites.WithLabelValues(v).Set(b(s.WritesAllowed))
	r.foFailsafe.WithLabelValues(v).Set(b(s.Failsafe))
	r.foEtcdUp.WithLabelValues(v).Set(b(s.EtcdReachable))
	r.foMemberLag.DeletePartialMatch(prometheus.Labels{LabelVolume: v})
	for peer, lag := range s.MemberLag {
		r.foMemberLag.WithLabelValues(v, peer).Set(float64(lag))
	}
}

// Event counts a failover event (promoted, demoted, fenced, unfenced,
// leader).
func (m *FailoverMetrics) Event(kind string) {
	if m != nil {
		m.r.foTransitions.WithLabelValues(m.volume, kind).Inc()
	}
}
