package core_test

// A seeded, deterministic simulation of one PrimaryCore and 1..3
// ReplicaCores exchanging real wire messages over simulated connections,
// with in-memory journals and stores, connection drops, partitions, and
// mirror process crashes and power losses. See TestSimulation.

import (
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"maps"
	"math/rand/v2"
	"testing"

	"github.com/blockmirror/blockmirror/mirror/core"
	"github.com/blockmirror/blockmirror/mirror/wire"
)

var (
	simSeed  = flag.Uint64("sim.seed", 0, "run only the simulation schedule with this seed")
	simCount = flag.Int("sim.n", 0, "number of simulation schedules (default 3000, 500 with -short)")
)

const (
	simBlocks    = 16
	simBlockSize = 4096
	simActive    = 400  // ticks with client load and faults
	simSettle    = 4000 // ticks allowed for convergence afterwards
)

var simVolume = wire.UUID{0xb1, 0x0c, 0x4d, 0x11}

type simParams struct {
	mirrors    int
	k          int
	mode       wire.Mode
	level      wire.AckLevel
	degraded   bool
	maxLag     int
	faultRate  float64 // per mirror per tick
	maxDelay   int     // network delay bound, ticks
	ioDelay    int     // local I/O delay bound, ticks
	maxPending int     // outstanding client requests
}

func (p simParams) String() string {
	return fmt.Sprintf("mirrors=%d k=%d mode=%v level=%v degraded=%v maxLag=%d faults=%.3f netDelay=%d ioDelay=%d pending=%d",
		p.mirrors, p.k, p.mode, p.level, p.degraded, p.maxLag, p.faultRate, p.maxDelay, p.ioDelay, p.maxPending)
}

type simMsg struct {
	at      int64
	typ     wire.MsgType
	payload []byte
}

type simConn struct {
	up            bool
	gen           int
	toMirror      []simMsg
	toPrimary     []simMsg
	lastM, lastP  int64
	reconnectAt   int64
	blockedUntil  int64 // partition
	maxDelay      int
	handshakeDone bool
}

type simReq struct {
	id       uint64
	kind     int // 0 write, 1 fua write, 2 flush
	seq      uint64
	proposed int64
}

type simLocalOp struct {
	at  int64
	seq uint64
	id  uint64
}

type simAppend struct {
	at            int64
	from, through uint64
}

type simSync struct {
	at      int64
	through uint64
}

type simMirror struct {
	name  string
	core  *core.ReplicaCore
	conn  simConn
	down  bool
	upAt  int64
	inbox map[uint64]wire.Record
	// journal
	jrecs    map[uint64]wire.Record
	jLast    uint64
	jDurable uint64
	appends  []simAppend
	syncs    []simSync
	handed   uint64 // highest seq handed out for persisting this session
	// store
	store     map[uint64]uint64 // block → seq of the record that wrote it (0: zero)
	applied   uint64
	ckpt      map[uint64]uint64
	ckptSeq   uint64
	replaying uint64 // > 0: replay after restart runs through this seq
	// ground truth for the quorum checks
	acked     wire.Ack // what the primary has been told (truthful)
	powerLoss int64    // tick of the last power loss
}

type sim struct {
	t      *testing.T
	seed   uint64
	rng    *rand.Rand
	p      simParams
	now    int64
	core   *core.PrimaryCore
	recs   []wire.Record // recs[seq-1]
	tick   []int64       // proposal tick per seq
	reqs   map[uint64]*simReq
	nextID uint64
	local  []simLocalOp
	lastLA int64
	// primary journal
	jWritten, jDurable uint64
	syncWant           uint64
	syncAt             int64
	released           map[string]uint64
	senders            map[string]*simSender
	mirrors            []*simMirror
	byName             map[string]*simMirror
	completed          int
	failed             int
	buf                []byte
}

type simSender struct {
	active bool
	gen    int
	next   uint64
}

func (s *sim) fail(format string, args ...any) {
	panic(simFailure(fmt.Sprintf("t=%d: ", s.now) + fmt.Sprintf(format, args...)))
}

type simFailure string

func newSim(t *testing.T, seed uint64) *sim {
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	var p simParams
	p.mirrors = 1 + rng.IntN(3)
	p.k = 1 + rng.IntN(p.mirrors)
	p.mode = wire.ModeSync
	if rng.IntN(3) == 0 {
		p.mode = wire.ModeAsync
		p.maxLag = []int{0, 5, 20, 60}[rng.IntN(4)]
	}
	p.level = wire.AckLevel(1 + rng.IntN(3))
	p.degraded = p.mode == wire.ModeSync && rng.IntN(3) == 0
	p.faultRate = []float64{0, 0.002, 0.01, 0.03}[rng.IntN(4)]
	p.maxDelay = rng.IntN(7)
	p.ioDelay = rng.IntN(4)
	p.maxPending = 1 + rng.IntN(12)
	s := &sim{
		t: t, seed: seed, rng: rng, p: p,
		reqs: map[uint64]*simReq{}, released: map[string]uint64{},
		senders: map[string]*simSender{}, byName: map[string]*simMirror{},
	}
	var names []string
	for i := 0; i < p.mirrors; i++ {
		m := &simMirror{
			name: fmt.Sprintf("m%d", i), inbox: map[uint64]wire.Record{}, jrecs: map[uint64]wire.Record{},
			store: map[uint64]uint64{}, ckpt: map[uint64]uint64{}, powerLoss: -1,
		}
		m.conn.maxDelay = rng.IntN(p.maxDelay + 1)
		m.conn.reconnectAt = int64(rng.IntN(5))
		names = append(names, m.name)
		s.mirrors = append(s.mirrors, m)
		s.byName[m.name] = m
		s.senders[m.name] = &simSender{}
		s.restartMirror(m)
	}
	core, err := core.NewPrimaryCore(core.PrimaryConfig{
		Peers: names, Mode: p.mode, SyncAcks: p.k, AckLevel: p.level, AllowDegraded: p.degraded,
		AckTimeoutTicks: 80, MaxLagTicks: p.maxLag, Epoch: 1,
	})
	if err != nil {
		t.Fatalf("seed %d: %v", seed, err)
	}
	s.core = core
	return s
}

func (s *sim) identity() core.VolumeIdentity {
	return core.VolumeIdentity{Volume: simVolume, Size: simBlocks * simBlockSize, Epoch: 1,
		History: []wire.EpochStart{{Epoch: 1, FirstSeq: 1}}}
}

// restartMirror starts a new incarnation of m from its journal and checkpoint.
func (s *sim) restartMirror(m *simMirror) {
	core, err := core.NewReplicaCore(core.ReplicaConfig{
		Identity: s.identity(), Node: m.name, LastSeq: m.jLast, DurableSeq: m.jDurable,
		AppliedSeq: m.ckptSeq, SyncEveryTicks: 1 + s.rng.IntN(15), CheckpointEvery: uint64(1 + s.rng.IntN(64)),
	})
	if err != nil {
		s.fail("%s: restart: %v", m.name, err)
	}
	m.core = core
	m.down = false
	m.applied = m.ckptSeq
	m.replaying = 0
	if m.jDurable > m.ckptSeq {
		m.replaying = m.jDurable
	} else if m.ckptSeq > 0 {
		s.checkStore(m)
	}
	m.handed = m.jLast
	m.appends, m.syncs = nil, nil
	clear(m.inbox)
}

// ---- network ----

func (s *sim) send(c *simConn, toMirror bool, typ wire.MsgType, payload []byte) {
	if !c.up {
		return
	}
	at := s.now + int64(s.rng.IntN(c.maxDelay+1))
	if toMirror {
		at = max(at, c.lastM)
		c.lastM = at
		c.toMirror = append(c.toMirror, simMsg{at, typ, payload})
	} else {
		at = max(at, c.lastP)
		c.lastP = at
		c.toPrimary = append(c.toPrimary, simMsg{at, typ, payload})
	}
}

func (s *sim) drop(m *simMirror) {
	c := &m.conn
	if !c.up {
		return
	}
	c.up = false
	c.handshakeDone = false
	c.toMirror, c.toPrimary = nil, nil
	c.reconnectAt = s.now + 1 + int64(s.rng.IntN(20))
	s.senders[m.name].active = false
	s.core.PeerDown(m.name)
	if !m.down {
		m.core.Disconnect()
		for seq := range m.inbox {
			if seq > m.handed {
				delete(m.inbox, seq)
			}
		}
	}
}

func (s *sim) connect(m *simMirror) {
	c := &m.conn
	c.up = true
	c.gen++
	c.lastM, c.lastP = s.now, s.now
	h := wire.Hello{
		Version: wire.ProtoVersion, Role: wire.PeerRolePrimary, Mode: s.p.mode, AckLevel: s.p.level,
		Volume: simVolume, Size: simBlocks * simBlockSize, Epoch: 1, LastSeq: uint64(len(s.recs)),
		Node: "primary", History: []wire.EpochStart{{Epoch: 1, FirstSeq: 1}},
	}
	b, err := wire.AppendHello(nil, &h)
	if err != nil {
		s.fail("encode hello: %v", err)
	}
	s.send(c, true, wire.MsgHello, b)
}

// deliver hands over the messages due on m's connection.
func (s *sim) deliver(m *simMirror) {
	c := &m.conn
	for len(c.toMirror) > 0 && c.up && c.toMirror[0].at <= s.now && !m.down {
		msg := c.toMirror[0]
		if msg.typ == wire.MsgHello && len(m.appends) > 0 {
			break // the driver finishes the previous session's appends first
		}
		c.toMirror = c.toMirror[1:]
		s.mirrorReceive(m, msg)
		s.pump()
	}
	for len(c.toPrimary) > 0 && c.up && c.toPrimary[0].at <= s.now {
		msg := c.toPrimary[0]
		c.toPrimary = c.toPrimary[1:]
		s.primaryReceive(m, msg)
		s.pump()
	}
}

func (s *sim) mirrorReceive(m *simMirror, msg simMsg) {
	switch msg.typ {
	case wire.MsgHello:
		h, err := wire.DecodeHello(msg.payload)
		if err != nil {
			s.fail("%s: %v", m.name, err)
		}
		reply := m.core.Hello(h, m.jLast)
		if reply.Code != wire.CodeOK {
			s.fail("%s refused the primary: %s", m.name, reply.Reason)
		}
		m.handed = m.jLast
		b, err := wire.AppendHelloReply(nil, &reply)
		if err != nil {
			s.fail("encode reply: %v", err)
		}
		s.send(&m.conn, false, wire.MsgHelloReply, b)
	case wire.MsgRecords:
		recs, err := wire.DecodeRecords(nil, msg.payload)
		if err != nil {
			s.fail("%s: %v", m.name, err)
		}
		if err := m.core.Receive(recs); err != nil {
			s.fail("%s: %v", m.name, err)
		}
		for _, r := range recs {
			m.inbox[r.Seq] = r
		}
	case wire.MsgFlush:
		f, err := wire.DecodeFlush(msg.payload)
		if err != nil {
			s.fail("%s: %v", m.name, err)
		}
		m.core.Flush(f.Through)
	default:
		s.fail("%s: unexpected %v", m.name, msg.typ)
	}
}

func (s *sim) primaryReceive(m *simMirror, msg simMsg) {
	switch msg.typ {
	case wire.MsgHelloReply:
		r, err := wire.DecodeHelloReply(msg.payload)
		if err != nil {
			s.fail("%s: %v", m.name, err)
		}
		if r.LastSeq != m.jLast || r.DurableSeq > m.jDurable {
			// The mirror cannot have changed its journal since replying: the
			// connection would have dropped on a crash, and appends are
			// drained before a handshake.
			s.fail("%s: reply says last %d durable %d, journal has %d/%d", m.name, r.LastSeq, r.DurableSeq, m.jLast, m.jDurable)
		}
		m.acked = wire.Ack{Received: r.LastSeq, Written: r.LastSeq, Durable: r.DurableSeq, Applied: r.AppliedSeq}
		m.conn.handshakeDone = true
		if err := s.core.PeerUp(m.name, core.PeerInfo{Epoch: r.Epoch, LastSeq: r.LastSeq, DurableSeq: r.DurableSeq,
			AppliedSeq: r.AppliedSeq, Flags: r.Flags}); err != nil {
			s.fail("PeerUp %s: %v", m.name, err)
		}
	case wire.MsgAck:
		a, err := wire.DecodeAck(msg.payload)
		if err != nil {
			s.fail("%s: %v", m.name, err)
		}
		st := m.core.Status()
		if a.Received > st.Received || a.Written > m.jLast || a.Durable > m.jDurable || a.Applied > m.applied {
			s.fail("%s: untruthful ack %+v: received %d journal %d/%d applied %d", m.name, a, st.Received, m.jLast, m.jDurable, m.applied)
		}
		m.acked = wire.Ack{Received: max(m.acked.Received, a.Received), Written: max(m.acked.Written, a.Written),
			Durable: max(m.acked.Durable, a.Durable), Applied: max(m.acked.Applied, a.Applied)}
		if err := s.core.PeerAck(m.name, a); err != nil {
			s.fail("PeerAck %s: %v", m.name, err)
		}
	default:
		s.fail("primary: unexpected %v from %s", msg.typ, m.name)
	}
}

// ---- outputs ----

// pump processes core outputs until there are none.
// A mirror driver is sometimes busy and leaves its outputs for a later
// pump, so sessions also end with records received but not yet persisted.
func (s *sim) pump() {
	var busy [3]bool
	for i := range s.mirrors {
		busy[i] = s.rng.IntN(4) == 0
	}
	for progress := true; progress; {
		progress = false
		rd := s.core.Ready()
		if !rd.Empty() {
			progress = true
			s.handlePrimaryReady(rd)
		}
		for i, m := range s.mirrors {
			if m.down || busy[i] {
				continue
			}
			if s.handleMirrorReady(m, m.core.Ready()) {
				progress = true
			}
		}
	}
}

func (s *sim) handlePrimaryReady(rd core.PrimaryReady) {
	for _, c := range rd.Completions {
		s.checkCompletion(c)
	}
	for _, ss := range rd.StartStreams {
		m := s.byName[ss.Peer]
		if !m.conn.up {
			continue
		}
		*s.senders[ss.Peer] = simSender{active: true, gen: m.conn.gen, next: ss.From}
	}
	for _, f := range rd.PeerFlushes {
		m := s.byName[f.Peer]
		s.send(&m.conn, true, wire.MsgFlush, wire.AppendFlush(nil, wire.Flush{Through: f.Through}))
	}
	if rd.SyncLocal > s.syncWant {
		s.syncWant = rd.SyncLocal
		s.syncAt = s.now + int64(s.rng.IntN(s.p.ioDelay+1))
	}
	for _, r := range rd.Releases {
		if r.Through < s.released[r.Peer] {
			s.fail("release for %s went back from %d to %d", r.Peer, s.released[r.Peer], r.Through)
		}
		s.released[r.Peer] = r.Through
	}
	if len(rd.Releases) > 0 {
		first := uint64(len(s.recs)) + 1
		for _, m := range s.mirrors {
			first = min(first, s.released[m.name]+1)
		}
		s.core.JournalFirst(first)
	}
	if len(rd.NeedResync) > 0 {
		s.fail("peers need resync: %v", rd.NeedResync)
	}
}

func (s *sim) handleMirrorReady(m *simMirror, rd core.ReplicaReady) bool {
	progress := false
	if !rd.Persist.Empty() {
		progress = true
		if rd.Persist.From != m.handed+1 {
			s.fail("%s: persist %d..%d after %d", m.name, rd.Persist.From, rd.Persist.Through, m.handed)
		}
		m.handed = rd.Persist.Through
		at := s.now + int64(s.rng.IntN(s.p.ioDelay+1))
		if n := len(m.appends); n > 0 {
			at = max(at, m.appends[n-1].at)
		}
		m.appends = append(m.appends, simAppend{at, rd.Persist.From, rd.Persist.Through})
	}
	if rd.SyncLocal > 0 {
		progress = true
		if rd.SyncLocal > m.jLast {
			s.fail("%s: sync through %d but journal written through %d", m.name, rd.SyncLocal, m.jLast)
		}
		m.syncs = append(m.syncs, simSync{s.now + int64(s.rng.IntN(s.p.ioDelay+1)), rd.SyncLocal})
	}
	if rd.SendAck {
		progress = true
		if m.conn.up {
			s.send(&m.conn, false, wire.MsgAck, wire.AppendAck(nil, rd.Ack))
		}
	}
	if rd.ApplyThrough > 0 {
		progress = true
		s.apply(m, rd.ApplyThrough)
	}
	if rd.Checkpoint > 0 {
		progress = true
		if rd.Checkpoint > m.applied {
			s.fail("%s: checkpoint %d beyond applied %d", m.name, rd.Checkpoint, m.applied)
		}
		if rd.Checkpoint == m.applied {
			m.ckpt = maps.Clone(m.store)
			m.ckptSeq = m.applied
			for seq := range m.jrecs {
				if seq <= m.ckptSeq {
					delete(m.jrecs, seq)
				}
			}
		}
	}
	if rd.NewEpoch > 0 {
		s.fail("%s: unexpected epoch change to %d", m.name, rd.NewEpoch)
	}
	return progress
}

// apply applies m's journal records after applied through seq, checking
// each against the primary's record of that seq.
func (s *sim) apply(m *simMirror, through uint64) {
	if through > m.jDurable {
		s.fail("%s: apply through %d beyond durable %d", m.name, through, m.jDurable)
	}
	for seq := m.applied + 1; seq <= through; seq++ {
		r, ok := m.jrecs[seq]
		if !ok {
			s.fail("%s: apply seq %d: not in journal (applied %d, checkpoint %d)", m.name, seq, m.applied, m.ckptSeq)
		}
		want := s.recs[seq-1]
		if r.Seq != seq || r.Epoch != want.Epoch || r.Op != want.Op || r.Offset != want.Offset || string(r.Data) != string(want.Data) {
			s.fail("%s: record %d differs from the primary's: %+v vs %+v", m.name, seq, r, want)
		}
		applyRecord(m.store, r)
		m.applied = seq
	}
	m.core.Applied(m.applied)
	if m.replaying > 0 && m.applied >= m.replaying {
		m.replaying = 0
		s.checkStore(m)
	}
}

func applyRecord(store map[uint64]uint64, r wire.Record) {
	b := r.Offset / simBlockSize
	switch r.Op {
	case wire.OpWrite:
		store[b] = binary.BigEndian.Uint64(r.Data)
	case wire.OpTrim, wire.OpZero:
		delete(store, b)
	}
}

// checkStore verifies that m's store equals the primary's records 1..applied.
func (s *sim) checkStore(m *simMirror) {
	want := map[uint64]uint64{}
	for seq := uint64(1); seq <= m.applied; seq++ {
		applyRecord(want, s.recs[seq-1])
	}
	if !maps.Equal(want, m.store) {
		s.fail("%s: store is not the write-order prefix through %d:\n got %v\nwant %v", m.name, m.applied, m.store, want)
	}
}

// checkCompletion verifies the durability promise of a completed request.
func (s *sim) checkCompletion(c core.Completion) {
	r := s.reqs[c.ID]
	if r == nil {
		s.fail("completion of unknown or already completed request %d", c.ID)
	}
	delete(s.reqs, c.ID)
	if c.Err != nil {
		if !errors.Is(c.Err, core.ErrNoQuorum) || s.p.mode != wire.ModeSync || s.p.degraded {
			s.fail("request %d (seq %d) failed: %v", r.id, r.seq, c.Err)
		}
		// The core's clock trails the sim's by one tick within a step.
		if s.now-r.proposed+1 < 80 {
			s.fail("request %d failed after %d ticks, before the timeout", r.id, s.now-r.proposed)
		}
		s.failed++
		return
	}
	s.completed++
	if r.kind != 2 && s.jWritten < r.seq {
		s.fail("write seq %d completed before it was written locally (%d)", r.seq, s.jWritten)
	}
	if r.kind != 0 && s.jDurable < r.seq {
		s.fail("request %d (kind %d, seq %d) completed but local journal durable only through %d", r.id, r.kind, r.seq, s.jDurable)
	}
	if s.p.mode != wire.ModeSync || s.p.degraded || r.seq == 0 {
		return
	}
	level := s.p.level
	if r.kind != 0 {
		level = wire.AckDurable
	}
	acked, held := 0, 0
	for _, m := range s.mirrors {
		if m.acked.Level(level) >= r.seq {
			acked++
		}
		var have uint64
		switch {
		case level == wire.AckDurable:
			have = m.jDurable
		case level == wire.AckWritten && m.powerLoss < r.proposed:
			have = m.jLast
		default:
			have = r.seq // received level: not checkable after the fact
		}
		if have >= r.seq {
			held++
		}
	}
	if acked < s.p.k || held < s.p.k {
		s.fail("request %d (kind %d, seq %d) completed with %d mirrors acked and %d holding it at level %v, want %d",
			r.id, r.kind, r.seq, acked, held, level, s.p.k)
	}
}

// ---- the run ----

func (s *sim) propose() {
	kind := 0
	switch x := s.rng.IntN(20); {
	case x == 0:
		kind = 2
	case x < 3:
		kind = 1
	}
	s.nextID++
	id := s.nextID
	r := &simReq{id: id, kind: kind, proposed: s.now}
	s.reqs[id] = r
	if kind == 2 {
		r.seq = uint64(len(s.recs))
		if err := s.core.ProposeFlush(id); err != nil {
			s.fail("flush: %v", err)
		}
		return
	}
	seq, err := s.core.ProposeWrite(id, kind == 1)
	if err != nil {
		s.fail("propose: %v", err)
	}
	if seq != uint64(len(s.recs))+1 {
		s.fail("propose: got seq %d, want %d", seq, len(s.recs)+1)
	}
	r.seq = seq
	block := uint64(s.rng.IntN(simBlocks))
	rec := wire.Record{Epoch: 1, Seq: seq, Offset: block * simBlockSize}
	if s.rng.IntN(10) == 0 {
		rec.Op, rec.Length = wire.OpTrim, simBlockSize
	} else {
		rec.Op, rec.Length = wire.OpWrite, 8
		rec.Data = binary.BigEndian.AppendUint64(nil, seq)
	}
	s.recs = append(s.recs, rec)
	s.tick = append(s.tick, s.now)
	at := max(s.now+int64(s.rng.IntN(s.p.ioDelay+1)), s.lastLA)
	s.lastLA = at
	s.local = append(s.local, simLocalOp{at: at, seq: seq, id: id})
}

func (s *sim) fault(m *simMirror) {
	switch s.rng.IntN(4) {
	case 0: // connection drop
		s.drop(m)
	case 1: // partition
		s.drop(m)
		m.conn.blockedUntil = s.now + int64(10+s.rng.IntN(150))
	case 2, 3: // crash
		if m.down {
			return
		}
		s.drop(m)
		m.down = true
		m.upAt = s.now + int64(1+s.rng.IntN(60))
		m.appends, m.syncs = nil, nil // in-flight I/O is lost
		clear(m.inbox)
		if s.rng.IntN(2) == 0 {
			// Power loss: the journal keeps what was durable; the store
			// holds the checkpoint plus an arbitrary part of later writes.
			for seq := range m.jrecs {
				if seq > m.jDurable {
					delete(m.jrecs, seq)
				}
			}
			m.jLast = m.jDurable
			for b, v := range m.store {
				if s.rng.IntN(2) == 0 {
					if cv, ok := m.ckpt[b]; ok {
						m.store[b] = cv
					} else {
						delete(m.store, b)
					}
				} else {
					m.store[b] = v
				}
			}
			for b, v := range m.ckpt {
				if _, ok := m.store[b]; !ok && s.rng.IntN(2) == 0 {
					m.store[b] = v
				}
			}
			m.powerLoss = s.now
		}
	}
}

func (s *sim) step(active bool) {
	s.now++
	for _, m := range s.mirrors {
		if active && s.p.faultRate > 0 && s.rng.Float64() < s.p.faultRate {
			s.fault(m)
		}
		if m.down && s.now >= m.upAt {
			s.restartMirror(m)
			s.pump()
		}
		if !m.conn.up && !m.down && s.now >= m.conn.reconnectAt && s.now >= m.conn.blockedUntil {
			s.connect(m)
		}
	}
	if active {
		for n := s.rng.IntN(3); n > 0 && len(s.reqs) < s.p.maxPending; n-- {
			s.propose()
		}
	}
	s.pump()
	// Primary local I/O: writes complete in order, syncs when due.
	for len(s.local) > 0 && s.local[0].at <= s.now {
		op := s.local[0]
		s.local = s.local[1:]
		s.jWritten = op.seq
		s.core.LocalDone(op.id)
	}
	if s.syncWant > s.jDurable && s.now >= s.syncAt {
		s.jDurable = min(s.syncWant, s.jWritten)
		s.core.LocalDurable(s.jDurable)
	}
	s.pump()
	for _, m := range s.mirrors {
		s.deliver(m)
	}
	// Senders stream assigned records in batches.
	for name, snd := range s.senders {
		m := s.byName[name]
		if !snd.active || !m.conn.up || m.conn.gen != snd.gen {
			continue
		}
		for snd.next <= uint64(len(s.recs)) {
			end := min(snd.next+uint64(1+s.rng.IntN(8)), uint64(len(s.recs))+1)
			b, err := wire.AppendRecords(s.buf[:0], s.recs[snd.next-1:end-1])
			if err != nil {
				s.fail("encode records: %v", err)
			}
			s.send(&m.conn, true, wire.MsgRecords, append([]byte(nil), b...))
			s.buf = b
			snd.next = end
		}
	}
	// Mirror local I/O.
	for _, m := range s.mirrors {
		if m.down {
			continue
		}
		changed := false
		for len(m.appends) > 0 && m.appends[0].at <= s.now {
			a := m.appends[0]
			m.appends = m.appends[1:]
			if a.from != m.jLast+1 {
				s.fail("%s: append %d..%d after journal end %d", m.name, a.from, a.through, m.jLast)
			}
			for seq := a.from; seq <= a.through; seq++ {
				r, ok := m.inbox[seq]
				if !ok {
					s.fail("%s: append of seq %d which the driver does not hold", m.name, seq)
				}
				r.Data = append([]byte(nil), r.Data...)
				m.jrecs[seq] = r
				delete(m.inbox, seq)
			}
			m.jLast = a.through
			changed = true
		}
		for len(m.syncs) > 0 && m.syncs[0].at <= s.now {
			m.jDurable = max(m.jDurable, min(m.syncs[0].through, m.jLast))
			m.syncs = m.syncs[1:]
			changed = true
		}
		if changed {
			m.core.LocalProgress(m.jLast, m.jDurable)
		}
	}
	s.core.Tick()
	for _, m := range s.mirrors {
		if !m.down {
			m.core.Tick()
		}
	}
	s.pump()
}

func (s *sim) converged() bool {
	last := uint64(len(s.recs))
	if len(s.reqs) > 0 {
		return false
	}
	for _, m := range s.mirrors {
		if m.down || !m.conn.handshakeDone || m.applied != last || m.jDurable != last {
			return false
		}
	}
	st := s.core.Status()
	for _, ps := range st.Peers {
		if ps.State != core.PeerInSync {
			return false
		}
	}
	return true
}

func (s *sim) run() (err error) {
	defer func() {
		if r := recover(); r != nil {
			f, ok := r.(simFailure)
			if !ok {
				panic(r)
			}
			err = errors.New(string(f))
		}
	}()
	for i := 0; i < simActive; i++ {
		s.step(true)
	}
	for _, m := range s.mirrors {
		m.conn.blockedUntil = 0
	}
	for i := 0; i < simSettle; i++ {
		if s.converged() {
			for _, m := range s.mirrors {
				s.checkStore(m)
			}
			return nil
		}
		s.step(false)
	}
	st := s.core.Status()
	desc := fmt.Sprintf("primary: last %d written %d durable %d pending %d status %+v", len(s.recs), s.jWritten, s.jDurable, len(s.reqs), st)
	for _, m := range s.mirrors {
		desc += fmt.Sprintf("\n%s: down %v conn %v hs %v journal %d/%d applied %d core %+v", m.name, m.down, m.conn.up,
			m.conn.handshakeDone, m.jLast, m.jDurable, m.applied, m.core.Status())
	}
	return fmt.Errorf("no convergence %d ticks after the faults stopped:\n%s", simSettle, desc)
}

// TestSimulation runs thousands of seeded schedules (see the sim type) and
// checks: (a) sync mode without AllowDegraded: a completed write was acked
// by ≥ K mirrors at the ack level (FUA/flush: durable), the acks were
// truthful when received, and the data still survives the crash types the
// level protects against; (b) each mirror's store is always the
// primary's records 1..s applied in order (checked per applied record and
// in full after every crash replay and at the end); (c) no record is
// applied twice, out of order, skipped or different from the primary's;
// (d) after the faults stop every request completes and every mirror is
// in sync, durable and applied through the last seq.
func TestSimulation(t *testing.T) {
	if *simSeed != 0 {
		s := newSim(t, *simSeed)
		if err := s.run(); err != nil {
			t.Fatalf("seed %d (%v): %v", *simSeed, s.p, err)
		}
		t.Logf("seed %d (%v): %d records, %d completed, %d failed", *simSeed, s.p, len(s.recs), s.completed, s.failed)
		return
	}
	n := *simCount
	if n == 0 {
		n = 3000
		if testing.Short() {
			n = 500
		}
	}
	var recs, completed, failed int
	for i := 0; i < n; i++ {
		seed := uint64(i + 1)
		s := newSim(t, seed)
		if err := s.run(); err != nil {
			t.Fatalf("seed %d (%v): %v\nreplay with: go test ./mirror -run TestSimulation -sim.seed=%d -v", seed, s.p, err, seed)
		}
		recs += len(s.recs)
		completed += s.completed
		failed += s.failed
	}
	t.Logf("%d schedules: %d records, %d requests completed, %d failed with ErrNoQuorum", n, recs, completed, failed)
}
