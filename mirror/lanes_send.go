package mirror

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"sync"

	"github.com/blockmirror/blockmirror/mirror/wire"
)

// DefaultLanes is ReplicationOptions.Lanes' default. One connection's
// congestion control (quic-go's NewReno, see docs/tuning.md) grows its
// window by one packet per round trip once it left slow start, and halves
// it at a loss: on a long or lossy path each connection carries a small
// share of the link, and the lanes add up (bench-wan.sh).
const DefaultLanes = 8

// laneOut is where a lane's frames are written: a stream and the lock its
// writers share (the log stream's is the session's writeMu).
type laneOut struct {
	st frameStream
	mu *sync.Mutex
}

// openLanes opens the session's record lanes and announces them on the
// log stream (MsgLanes, first record from). Lane 0 is a second stream on
// the session's connection, lane i > 0 a stream on the pool's lane-i
// connection to the same mirror. A mirror that does not offer lanes, a
// single lane configured, or a lane that cannot be opened: the records
// go on the log stream, as one lane. done cancels the lane streams and
// releases their connections.
func (l *peerLink) openLanes(ctx context.Context, s *session, from uint64) (lanes []laneOut, done func()) {
	single := []laneOut{{st: s.st, mu: &s.writeMu}}
	n := l.r.opts.Lanes
	if n <= 1 || s.flags&wire.FlagLanes == 0 {
		return single, func() {}
	}
	var undo []func()
	var conns []streamConn
	done = func() {
		l.r.mu.Lock()
		s.laneConns = nil
		l.r.mu.Unlock()
		for _, f := range undo {
			f()
		}
	}
	var tb [8]byte
	if _, err := rand.Read(tb[:]); err != nil {
		l.log.Warn("no random lane token; records go on the log stream", "err", err)
		return single, func() {}
	}
	token := binary.LittleEndian.Uint64(tb[:])
	for i := range n {
		st, conn, release, err := l.openLane(ctx, s, i, token)
		if err != nil {
			done()
			l.log.Warn("opening a record lane failed; records go on the log stream this session", "lane", i, "err", err)
			return single, func() {}
		}
		undo = append(undo, release)
		lanes = append(lanes, laneOut{st: st, mu: new(sync.Mutex)})
		if conn != s.conn {
			conns = append(conns, conn)
		}
	}
	if err := sendFrame(&s.writeMu, s.st, wire.MsgLanes, wire.AppendLanes(nil, wire.Lanes{Token: token, From: from, Count: uint8(n)})); err != nil {
		done()
		// The log stream failed: the session ends; its sender finds out.
		return single, func() {}
	}
	l.r.mu.Lock()
	s.laneConns = conns
	l.r.mu.Unlock()
	return lanes, done
}

// openLane opens lane i's stream on conn and sends its LaneJoin; release
// cancels the stream and releases the connection.
func (l *peerLink) openLane(ctx context.Context, s *session, i int, token uint64) (st frameStream, conn streamConn, release func(), err error) {
	conn, release = s.conn, func() {}
	if i > 0 {
		c, rel, err := l.r.opts.Pool.getLane(ctx, l.addr.Addr, l.addr.Name, i, l.r.opts.Transport)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("dial %s: %w", l.addr.Addr, err)
		}
		conn, release = c, rel
	}
	buf, err := wire.AppendLaneJoin(nil, wire.LaneJoin{Volume: l.r.opts.VolumeName, Token: token, Index: uint8(i)})
	if err != nil {
		release()
		return nil, nil, nil, fmt.Errorf("join lane %d: %w", i, err)
	}
	st, done, err := openStreamWith(ctx, conn, wire.MsgLaneJoin, buf)
	if err != nil {
		release()
		return nil, nil, nil, fmt.Errorf("join lane %d: %w", i, err)
	}
	rel := release // not the result itself: the closure is assigned to it
	return st, conn, func() { done(); rel() }, nil
}

// spreadMin is the smallest frame that goes to a lane other than lane 0.
// A smaller frame means the journal holds little unsent (a frame takes
// all that is there, up to BatchBytes): it waits for lane 0, and the
// records written meanwhile make the next frame larger, as one stream
// batched them. Small records under a light load so keep to one
// connection: full packets, one ack per batch.
const spreadMin = 256 << 10

// lanePipe feeds encoded Records frames to one writer goroutine per lane.
// A frame goes to the free lane with the lowest index (a lane is busy
// from the frame's hand-over until QUIC took all of it, which a full
// congestion window delays), a frame smaller than spreadMin only to lane
// 0: a light load stays on lane 0, and a backlog spreads over as many
// lanes as it keeps busy, a lane that stalls (a lost packet, a small
// window) taking fewer. At most 2 frames per lane plus one are
// encoded or on their way at once: the memory bound (buffers are reused).
// Its owner cancels it, cancels the lanes' streams (releasing a writer
// blocked on one) and waits on wg.
type lanePipe struct {
	ctx    context.Context
	cancel context.CancelFunc
	jobs   []chan *[]byte // per lane, capacity 1: empty unless busy
	free   chan *[]byte
	made   int
	spread int // smallest frame for lanes > 0
	wg     sync.WaitGroup

	mu    sync.Mutex
	busy  []bool
	idle  chan struct{} // closed (and replaced) when a lane turns free
	first error         // first writer error
}

func newLanePipe(ctx context.Context, lanes []laneOut, spread int) *lanePipe {
	ctx, cancel := context.WithCancel(ctx)
	p := &lanePipe{
		ctx: ctx, cancel: cancel, free: make(chan *[]byte, 2*len(lanes)+1), spread: spread,
		busy: make([]bool, len(lanes)), idle: make(chan struct{}),
	}
	for range lanes {
		p.jobs = append(p.jobs, make(chan *[]byte, 1))
	}
	// Only once jobs is complete: a writer reads it while it runs.
	for i, ln := range lanes {
		p.wg.Add(1)
		go p.write(i, ln)
	}
	return p
}

func (p *lanePipe) write(i int, ln laneOut) {
	defer p.wg.Done()
	for {
		select {
		case b := <-p.jobs[i]:
			if err := sendFrame(ln.mu, ln.st, wire.MsgRecords, *b); err != nil {
				p.mu.Lock()
				if p.first == nil {
					p.first = fmt.Errorf("send records (lane %d): %w", i, err)
				}
				p.mu.Unlock()
				p.cancel()
				return
			}
			p.free <- b
			p.mu.Lock()
			p.busy[i] = false
			close(p.idle)
			p.idle = make(chan struct{})
			p.mu.Unlock()
		case <-p.ctx.Done():
			return
		}
	}
}

// buffer returns a frame buffer, waiting for one when all are in use.
func (p *lanePipe) buffer() (*[]byte, error) {
	select {
	case b := <-p.free:
		return b, nil
	default:
	}
	if p.made < cap(p.free) {
		p.made++
		return new([]byte), nil
	}
	select {
	case b := <-p.free:
		return b, nil
	case <-p.ctx.Done():
		return nil, p.ctx.Err()
	}
}

// send hands an encoded frame to the free lane with the lowest index (to
// lane 0 if it is smaller than spreadMin), waiting for one when all are
// busy.
func (p *lanePipe) send(b *[]byte) error {
	eligible := len(p.busy)
	if len(*b) < p.spread {
		eligible = 1
	}
	for {
		p.mu.Lock()
		for i, busy := range p.busy[:eligible] {
			if !busy {
				p.busy[i] = true
				p.mu.Unlock()
				p.jobs[i] <- b // empty while not busy: does not block
				return nil
			}
		}
		idle := p.idle
		p.mu.Unlock()
		select {
		case <-idle:
		case <-p.ctx.Done():
			return p.ctx.Err()
		}
	}
}

// err returns a writer's error in preference to err (which is then
// usually its consequence, a cancelled context).
func (p *lanePipe) err(err error) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.first != nil {
		return p.first
	}
	return err
}

// DefaultMaxInFlight is ReplicationOptions.MaxInFlight's default: record
// bytes sent to a mirror and not yet acknowledged as received. It covers
// the bandwidth-delay product of a fast long path (64 MiB: 800 MB/s at
// 80 ms round trip) and bounds what a mirror buffers for a session — the
// lane merge and the QUIC receive buffers together — whatever the lanes'
// windows add up to.
const DefaultMaxInFlight = 64 << 20

// sendWindow bounds a session's record bytes in flight: sent and not yet
// acknowledged as received (Ack.Received, the mirror's contiguous seq).
// Safe for concurrent use: the sender reserves, the ack reader releases.
type sendWindow struct {
	limit int

	mu       sync.Mutex
	inflight int
	frames   []windowFrame // in seq order
	room     chan struct{} // closed (and replaced) when inflight shrinks
}

type windowFrame struct {
	last uint64
	n    int
}

func newSendWindow(limit int) *sendWindow {
	return &sendWindow{limit: limit, room: make(chan struct{})}
}

// reserve waits until a frame of n bytes ending at seq last fits (one
// frame always does, so a frame larger than the window still goes) and
// counts it in flight.
func (w *sendWindow) reserve(ctx context.Context, last uint64, n int) error {
	w.mu.Lock()
	for w.inflight > 0 && w.inflight+n > w.limit {
		room := w.room
		w.mu.Unlock()
		select {
		case <-room:
		case <-ctx.Done():
			return ctx.Err()
		}
		w.mu.Lock()
	}
	w.inflight += n
	w.frames = append(w.frames, windowFrame{last, n})
	w.mu.Unlock()
	return nil
}

// acked releases the frames the mirror received through seq.
func (w *sendWindow) acked(seq uint64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	k := 0
	for k < len(w.frames) && w.frames[k].last <= seq {
		w.inflight -= w.frames[k].n
		k++
	}
	if k == 0 {
		return
	}
	w.frames = append(w.frames[:0], w.frames[k:]...)
	close(w.room)
	w.room = make(chan struct{})
}

// bytes returns the bytes in flight.
func (w *sendWindow) bytes() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.inflight
}
