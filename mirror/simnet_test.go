package mirror

// An in-memory network for the whole-node simulation (sim_nodes_test.go):
// listeners, connections and frame streams with the semantics the drivers
// rely on from package transport (ordered reliable streams, io.EOF after
// CloseWrite, *transport.StreamError after Cancel, connection death),
// with per-stream delivery delays (so frames on different connections
// and streams reorder) and faults: a cut connection, a node whose
// packets stop (crash, partition) and whose connections die later, as
// QUIC's idle timeout would notice. Every wait is on a channel or a timer
// created in the test's synctest bubble, so a goroutine blocked here is
// durably blocked and fake time advances.

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/blockmirror/blockmirror/transport"
)

// simSignal wakes everyone waiting on it; the owner's mutex guards it.
type simSignal struct{ ch chan struct{} }

func (s *simSignal) wait() <-chan struct{} {
	if s.ch == nil {
		s.ch = make(chan struct{})
	}
	return s.ch
}

func (s *simSignal) fire() {
	if s.ch != nil {
		close(s.ch)
		s.ch = nil
	}
}

type simAddr string

func (a simAddr) Network() string { return "sim" }
func (a simAddr) String() string  { return string(a) }

// errSimDown is what a dial to an unreachable node fails with (after the
// handshake timeout), and what a connection that died carries.
var errSimDown = errors.New("sim: peer unreachable")

// simNet is the network of one simulated world.
type simNet struct {
	seed uint64

	mu        sync.Mutex
	listeners map[string]*simListener // by address
	conns     map[*simConn]bool       // live
	parted    map[[2]string]bool      // node pairs that cannot reach each other
	down      map[string]bool         // nodes whose packets stop (crashed)
	delay     time.Duration           // base one-way delay of new connections
	jitter    time.Duration
	nconn     uint64
	pairs     map[[2]string]uint64 // connections dialed so far, per (dialer, listener)
	// idle is how long a connection whose peer went silent lives on.
	idle time.Duration
	// dialTimeout is how long a dial to an unreachable node takes to fail.
	dialTimeout time.Duration
}

func newSimNet(seed uint64) *simNet {
	return &simNet{
		seed: seed, listeners: map[string]*simListener{}, conns: map[*simConn]bool{},
		parted: map[[2]string]bool{}, down: map[string]bool{}, pairs: map[[2]string]uint64{},
		delay: time.Millisecond, jitter: time.Millisecond, idle: 2 * time.Second, dialTimeout: time.Second,
	}
}

func pairOf(a, b string) [2]string {
	if a > b {
		a, b = b, a
	}
	return [2]string{a, b}
}

// reachable reports whether node a can reach node b now (n.mu held).
func (n *simNet) reachableLocked(a, b string) bool {
	return !n.down[a] && !n.down[b] && !n.parted[pairOf(a, b)]
}

// listen opens a listener of node at addr.
func (n *simNet) listen(node, addr string) (*simListener, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if l := n.listeners[addr]; l != nil && !l.closed {
		return nil, fmt.Errorf("sim: listen %s: address in use by %s", addr, l.node)
	}
	l := &simListener{net: n, node: node, addr: addr}
	n.listeners[addr] = l
	return l, nil
}

// dialer returns the dial function of a process of node from; a process
// that died (dead) cannot dial.
func (n *simNet) dialer(from string, dead func() bool) dialFunc {
	return func(ctx context.Context, addr, name string, cfg transport.Config) (streamConn, error) {
		n.mu.Lock()
		l := n.listeners[addr]
		ok := l != nil && !l.closed && l.node == name && n.reachableLocked(from, l.node) && !dead()
		var c *simConn
		if ok {
			n.nconn++
			// The streams' delays are drawn from a seed of the node pair and
			// the pair's dial count, not of the order in which all nodes
			// dialed: a schedule replays even if goroutines ran otherwise.
			pair := [2]string{from, l.node}
			n.pairs[pair]++
			seed := n.seed ^ simHash(from+">"+l.node)*(n.pairs[pair]+1)
			c = &simConn{net: n, id: n.nconn, seed: seed, nodes: pair, delay: n.delay, jitter: n.jitter}
			n.conns[c] = true
			l.queue = append(l.queue, &simEnd{c: c, side: 1})
			l.sig.fire()
		}
		n.mu.Unlock()
		if !ok {
			t := time.NewTimer(n.dialTimeout)
			defer t.Stop()
			select {
			case <-t.C:
				return nil, fmt.Errorf("sim: dial %s (%s): %w", addr, name, errSimDown)
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		return &simEnd{c: c, side: 0}, nil
	}
}

// silence makes node's packets stop (a crash or power loss of the node):
// its listeners close, frames in flight to and from it are lost, and its
// connections die within the idle timeout (the peers notice then).
func (n *simNet) silence(node string, rng *rand.Rand) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.down[node] = true
	for _, l := range n.listeners {
		if l.node == node {
			l.closeLocked()
		}
	}
	for _, c := range n.sortedConnsLocked() {
		if c.nodes[0] == node || c.nodes[1] == node {
			n.blackholeLocked(c, time.Duration(rng.Int64N(int64(n.idle)+1)))
		}
	}
}

// sortedConnsLocked lists the live connections in the order they were
// made (map order would make draws from a schedule's rng differ).
func (n *simNet) sortedConnsLocked() []*simConn {
	cs := make([]*simConn, 0, len(n.conns))
	for c := range n.conns {
		cs = append(cs, c)
	}
	slices.SortFunc(cs, func(a, b *simConn) int { return cmp.Compare(a.id, b.id) })
	return cs
}

// simHash is FNV-1a.
func simHash(s string) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= 1099511628211
	}
	return h
}

// revive lets node's packets flow again (it restarted).
func (n *simNet) revive(node string) {
	n.mu.Lock()
	delete(n.down, node)
	n.mu.Unlock()
}

// partition cuts a and b off from each other (their connections die
// within the idle timeout; dials fail) until heal.
func (n *simNet) partition(a, b string, rng *rand.Rand) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.parted[pairOf(a, b)] = true
	for _, c := range n.sortedConnsLocked() {
		if pairOf(c.nodes[0], c.nodes[1]) == pairOf(a, b) {
			n.blackholeLocked(c, time.Duration(rng.Int64N(int64(n.idle)+1)))
		}
	}
}

func (n *simNet) heal() {
	n.mu.Lock()
	clear(n.parted)
	n.mu.Unlock()
}

// cut kills every live connection between a and b at once (both ends see
// the error: a reliable stream's dropped packet ends the connection).
func (n *simNet) cut(a, b string) int {
	n.mu.Lock()
	var cs []*simConn
	for c := range n.conns {
		if pairOf(c.nodes[0], c.nodes[1]) == pairOf(a, b) {
			cs = append(cs, c)
		}
	}
	n.mu.Unlock()
	for _, c := range cs {
		c.kill(fmt.Errorf("sim: connection cut: %w", errSimDown))
	}
	return len(cs)
}

// slow adds extra to the one-way delay of the connections between a and b.
func (n *simNet) slow(a, b string, extra time.Duration) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for c := range n.conns {
		if pairOf(c.nodes[0], c.nodes[1]) == pairOf(a, b) {
			c.mu.Lock()
			c.delay += extra
			c.mu.Unlock()
		}
	}
}

// blackholeLocked drops c's frames from now on and kills c after d.
func (n *simNet) blackholeLocked(c *simConn, d time.Duration) {
	c.mu.Lock()
	if c.err != nil || c.blackhole {
		c.mu.Unlock()
		return
	}
	c.blackhole = true
	for _, st := range c.streams {
		st.pipes[0].frames, st.pipes[1].frames = nil, nil
	}
	c.mu.Unlock()
	time.AfterFunc(d, func() { c.kill(fmt.Errorf("sim: the peer went silent (idle timeout): %w", errSimDown)) })
}

// live counts the live connections (for the schedule's log).
func (n *simNet) live() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return len(n.conns)
}

type simListener struct {
	net    *simNet
	node   string
	addr   string
	queue  []*simEnd
	sig    simSignal
	closed bool
}

func (l *simListener) Accept(ctx context.Context) (streamConn, error) {
	n := l.net
	for {
		n.mu.Lock()
		if l.closed {
			n.mu.Unlock()
			return nil, transport.ErrClosed
		}
		if len(l.queue) > 0 {
			e := l.queue[0]
			l.queue = l.queue[1:]
			n.mu.Unlock()
			return e, nil
		}
		ch := l.sig.wait()
		n.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

func (l *simListener) Addr() net.Addr { return simAddr(l.addr) }

func (l *simListener) Close() error {
	l.net.mu.Lock()
	defer l.net.mu.Unlock()
	l.closeLocked()
	return nil
}

func (l *simListener) closeLocked() {
	if l.closed {
		return
	}
	l.closed = true
	l.sig.fire()
	for _, e := range l.queue {
		go e.c.kill(transport.ErrClosed)
	}
	l.queue = nil
	if l.net.listeners[l.addr] == l {
		delete(l.net.listeners, l.addr)
	}
}

// simConn is one connection; nodes[0] dialed nodes[1].
type simConn struct {
	net   *simNet
	id    uint64
	seed  uint64
	nodes [2]string

	mu        sync.Mutex
	err       error // set when the connection died
	blackhole bool  // frames are lost from now on
	delay     time.Duration
	jitter    time.Duration
	streams   []*simStream
	accept    [2][]*simStream // opened by the other side, not accepted yet
	sig       simSignal
	nstream   uint64
}

func (c *simConn) kill(err error) {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return
	}
	c.err = err
	for _, st := range c.streams {
		st.pipes[0].frames, st.pipes[1].frames = nil, nil
	}
	c.sig.fire()
	c.mu.Unlock()
	c.net.mu.Lock()
	delete(c.net.conns, c)
	c.net.mu.Unlock()
}

// simEnd is one side of a connection (side 0 dialed).
type simEnd struct {
	c    *simConn
	side int
}

func (e *simEnd) OpenStream(ctx context.Context) (frameStream, error) {
	c := e.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return nil, c.err
	}
	c.nstream++
	st := &simStream{c: c}
	for d := range st.pipes {
		seed := c.seed ^ c.nstream<<4 ^ uint64(d)
		st.pipes[d].rng = rand.New(rand.NewPCG(seed, 0x5eed))
	}
	c.streams = append(c.streams, st)
	c.accept[1-e.side] = append(c.accept[1-e.side], st)
	c.sig.fire()
	return &simStreamEnd{st: st, side: e.side}, nil
}

func (e *simEnd) AcceptStream(ctx context.Context) (frameStream, error) {
	c := e.c
	for {
		c.mu.Lock()
		if c.err != nil {
			c.mu.Unlock()
			return nil, c.err
		}
		if q := c.accept[e.side]; len(q) > 0 {
			st := q[0]
			c.accept[e.side] = q[1:]
			c.mu.Unlock()
			return &simStreamEnd{st: st, side: e.side}, nil
		}
		ch := c.sig.wait()
		c.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

func (e *simEnd) PeerName() string     { return e.c.nodes[1-e.side] }
func (e *simEnd) RemoteAddr() net.Addr { return simAddr(e.c.nodes[1-e.side]) }

func (e *simEnd) Err() error {
	e.c.mu.Lock()
	defer e.c.mu.Unlock()
	return e.c.err
}

func (e *simEnd) Close(code uint64, reason string) error {
	e.c.kill(&transport.CloseError{Code: code, Reason: reason, Remote: true})
	return nil
}

func (e *simEnd) Stats() transport.ConnStats { return transport.ConnStats{} }

type simFrame struct {
	typ uint8
	p   []byte
	at  time.Time
}

// simPipe is one direction of a stream.
type simPipe struct {
	frames  []simFrame // flushed, in flight or waiting to be read
	pending []simFrame // written, not flushed
	closed  bool       // the writer called CloseWrite
	last    time.Time  // delivery time of the newest frame (order)
	rng     *rand.Rand
}

// simStream is a stream; pipes[d] carries frames written by side d.
type simStream struct {
	c         *simConn
	pipes     [2]simPipe
	cancelled bool
	cancelBy  int // the side that cancelled
	code      uint64
	deadline  [2]time.Time
}

type simStreamEnd struct {
	st   *simStream
	side int
}

// errLocked is the error an operation of side gets, if any (c.mu held).
func (s *simStreamEnd) errLocked() error {
	st := s.st
	if st.cancelled {
		return &transport.StreamError{Code: st.code, Remote: st.cancelBy != s.side}
	}
	return st.c.err
}

func (s *simStreamEnd) WriteFrame(typ uint8, parts ...[]byte) error {
	c := s.st.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := s.errLocked(); err != nil {
		return err
	}
	p := &s.st.pipes[s.side]
	if p.closed {
		return fmt.Errorf("sim: write after CloseWrite: %w", transport.ErrClosed)
	}
	var n int
	for _, b := range parts {
		n += len(b)
	}
	buf := make([]byte, 0, n)
	for _, b := range parts {
		buf = append(buf, b...)
	}
	p.pending = append(p.pending, simFrame{typ: typ, p: buf})
	return nil
}

func (s *simStreamEnd) Flush() error {
	c := s.st.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := s.errLocked(); err != nil {
		return err
	}
	s.flushLocked()
	return nil
}

func (s *simStreamEnd) flushLocked() {
	c := s.st.c
	p := &s.st.pipes[s.side]
	if len(p.pending) == 0 {
		return
	}
	if c.blackhole {
		p.pending = p.pending[:0]
		return
	}
	now := time.Now()
	for _, f := range p.pending {
		d := c.delay
		if c.jitter > 0 {
			d += time.Duration(p.rng.Int64N(int64(c.jitter) + 1))
		}
		f.at = now.Add(d)
		if f.at.Before(p.last) {
			f.at = p.last // a stream is ordered
		}
		p.last = f.at
		p.frames = append(p.frames, f)
	}
	p.pending = p.pending[:0]
	c.sig.fire()
}

func (s *simStreamEnd) ReadFrame(buf []byte) (uint8, []byte, error) {
	st := s.st
	c := st.c
	for {
		c.mu.Lock()
		if err := s.errLocked(); err != nil {
			c.mu.Unlock()
			return 0, nil, err
		}
		p := &st.pipes[1-s.side]
		now := time.Now()
		var wake time.Time
		if len(p.frames) > 0 {
			f := p.frames[0]
			if !f.at.After(now) {
				p.frames = p.frames[1:]
				c.mu.Unlock()
				out := buf[:0]
				if cap(buf) < len(f.p) {
					out = make([]byte, 0, len(f.p))
				}
				return f.typ, append(out, f.p...), nil
			}
			wake = f.at
		} else if p.closed {
			c.mu.Unlock()
			return 0, nil, io.EOF
		}
		if dl := st.deadline[s.side]; !dl.IsZero() {
			if !dl.After(now) {
				c.mu.Unlock()
				return 0, nil, fmt.Errorf("sim: read: %w", os.ErrDeadlineExceeded)
			}
			if wake.IsZero() || dl.Before(wake) {
				wake = dl
			}
		}
		ch := c.sig.wait()
		c.mu.Unlock()
		if wake.IsZero() {
			<-ch
			continue
		}
		t := time.NewTimer(wake.Sub(now))
		select {
		case <-ch:
		case <-t.C:
		}
		t.Stop()
	}
}

func (s *simStreamEnd) CloseWrite() error {
	c := s.st.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := s.errLocked(); err != nil {
		return err
	}
	s.flushLocked()
	s.st.pipes[s.side].closed = true
	c.sig.fire()
	return nil
}

func (s *simStreamEnd) Cancel(code uint64) {
	c := s.st.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if s.st.cancelled {
		return
	}
	s.st.cancelled, s.st.cancelBy, s.st.code = true, s.side, code
	s.st.pipes[0].frames, s.st.pipes[1].frames = nil, nil
	s.st.pipes[0].pending, s.st.pipes[1].pending = nil, nil
	c.sig.fire()
}

func (s *simStreamEnd) SetReadDeadline(t time.Time) error {
	c := s.st.c
	c.mu.Lock()
	defer c.mu.Unlock()
	s.st.deadline[s.side] = t
	c.sig.fire()
	return nil
}
