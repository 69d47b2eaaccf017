package faultproxy

import (
	"container/heap"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Direction selects the traffic a fault applies to.
type Direction uint8

const (
	// Up is client → target.
	Up Direction = 1 << iota
	// Down is target → client.
	Down
	// Both is Up and Down.
	Both = Up | Down
)

func (d Direction) String() string {
	switch d {
	case Up:
		return "up"
	case Down:
		return "down"
	case Both:
		return "both"
	}
	return fmt.Sprintf("direction(%d)", uint8(d))
}

// ParseDirection parses "up", "down" or "both".
func ParseDirection(s string) (Direction, error) {
	switch strings.ToLower(s) {
	case "up":
		return Up, nil
	case "down":
		return Down, nil
	case "both", "":
		return Both, nil
	}
	return 0, fmt.Errorf("faultproxy: direction %q: want up, down or both", s)
}

// DefaultReorderDelay is the extra hold of a reordered datagram when
// Faults.ReorderDelay is zero.
const DefaultReorderDelay = 5 * time.Millisecond

// Faults describes the impairment of one direction. The zero value is a
// perfect link.
type Faults struct {
	Drop         float64       `json:"drop"`          // probability in [0,1]
	Delay        time.Duration `json:"delay"`         // fixed latency added
	Jitter       time.Duration `json:"jitter"`        // plus uniform [0, Jitter)
	Duplicate    float64       `json:"dup"`           // probability in [0,1]
	Reorder      float64       `json:"reorder"`       // probability in [0,1]
	ReorderDelay time.Duration `json:"reorder_delay"` // 0 = DefaultReorderDelay
}

func (f Faults) validate() error {
	for name, p := range map[string]float64{"drop": f.Drop, "dup": f.Duplicate, "reorder": f.Reorder} {
		if !(p >= 0 && p <= 1) {
			return fmt.Errorf("faultproxy: %s probability %v outside [0,1]", name, p)
		}
	}
	if f.Delay < 0 || f.Jitter < 0 || f.ReorderDelay < 0 {
		return fmt.Errorf("faultproxy: negative delay, jitter or reorder_delay")
	}
	return nil
}

// Config configures a Proxy.
type Config struct {
	// Listen is the UDP address clients send to, e.g. "127.0.0.2:7001"
	// (port 0 picks one; see Addr).
	Listen string
	// Target is the UDP address datagrams are forwarded to.
	Target string
	// Seed seeds the fault decisions.
	Seed uint64
	// Logger receives session and control events; nil discards.
	Logger *slog.Logger
	// SessionIdle closes a client session after this long without traffic
	// in either direction (default 2 min).
	SessionIdle time.Duration
	// AllowNonLoopback permits non-loopback Listen/Target addresses.
	AllowNonLoopback bool
}

// DirStats counts datagrams of one direction. Forwarded counts datagrams
// sent on (duplicates included), Dropped those discarded (partition
// included).
type DirStats struct {
	Received   uint64 `json:"received"`
	Forwarded  uint64 `json:"forwarded"`
	Dropped    uint64 `json:"dropped"`
	Duplicated uint64 `json:"duplicated"`
	Delayed    uint64 `json:"delayed"`
	Reordered  uint64 `json:"reordered"`
	Bytes      uint64 `json:"bytes"` // forwarded bytes
}

// DirState is a direction's current settings.
type DirState struct {
	Partitioned bool   `json:"partitioned"`
	Faults      Faults `json:"faults"`
}

// Stats is a snapshot of the proxy's counters and settings.
type Stats struct {
	Up        DirStats `json:"up"`
	Down      DirStats `json:"down"`
	UpState   DirState `json:"up_state"`
	DownState DirState `json:"down_state"`
	Sessions  int      `json:"sessions"`
}

type counters struct {
	received, forwarded, dropped, duplicated, delayed, reordered, bytes atomic.Uint64
}

func (c *counters) snapshot() DirStats {
	return DirStats{
		Received: c.received.Load(), Forwarded: c.forwarded.Load(), Dropped: c.dropped.Load(),
		Duplicated: c.duplicated.Load(), Delayed: c.delayed.Load(), Reordered: c.reordered.Load(),
		Bytes: c.bytes.Load(),
	}
}

type direction struct {
	mu          sync.Mutex
	faults      Faults
	partitioned bool
	rng         *rand.Rand
	n           counters
	line        *delayLine
}

// decide returns the delays of the copies to send (nil = drop).
func (d *direction) decide(buf *[2]time.Duration) []time.Duration {
	d.mu.Lock()
	defer d.mu.Unlock()
	f := d.faults
	if d.partitioned || (f.Drop > 0 && d.rng.Float64() < f.Drop) {
		d.n.dropped.Add(1)
		return nil
	}
	copies := 1
	if f.Duplicate > 0 && d.rng.Float64() < f.Duplicate {
		copies = 2
		d.n.duplicated.Add(1)
	}
	out := buf[:0]
	for range copies {
		delay := f.Delay
		if f.Jitter > 0 {
			delay += time.Duration(d.rng.Int64N(int64(f.Jitter)))
		}
		if f.Reorder > 0 && d.rng.Float64() < f.Reorder {
			rd := f.ReorderDelay
			if rd == 0 {
				rd = DefaultReorderDelay
			}
			delay += rd
			d.n.reordered.Add(1)
		}
		out = append(out, delay)
	}
	return out
}

type session struct {
	client *net.UDPAddr
	up     *net.UDPConn
	last   atomic.Int64 // unix nanos of the last datagram either way
}

// Proxy is a fault-injecting UDP proxy. Create it with New, start it with Run.
type Proxy struct {
	cfg    Config
	log    *slog.Logger
	ln     *net.UDPConn
	target *net.UDPAddr
	dirs   [2]*direction // [0] up, [1] down

	mu       sync.Mutex
	sessions map[string]*session
	closed   bool
	wg       sync.WaitGroup // session readers
	started  atomic.Bool
}

// New validates cfg and binds the listen socket; no datagram is read until
// Run.
func New(cfg Config) (*Proxy, error) {
	if cfg.SessionIdle <= 0 {
		cfg.SessionIdle = 2 * time.Minute
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	la, err := net.ResolveUDPAddr("udp", cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("faultproxy: listen address %q: %w", cfg.Listen, err)
	}
	ta, err := net.ResolveUDPAddr("udp", cfg.Target)
	if err != nil {
		return nil, fmt.Errorf("faultproxy: target address %q: %w", cfg.Target, err)
	}
	if !cfg.AllowNonLoopback && (!la.IP.IsLoopback() || !ta.IP.IsLoopback()) {
		return nil, fmt.Errorf("faultproxy: %s → %s: only loopback addresses are allowed", cfg.Listen, cfg.Target)
	}
	ln, err := net.ListenUDP("udp", la)
	if err != nil {
		return nil, fmt.Errorf("faultproxy: listen %s: %w", cfg.Listen, err)
	}
	setBuffers(ln)
	p := &Proxy{cfg: cfg, log: cfg.Logger, ln: ln, target: ta, sessions: make(map[string]*session)}
	for i := range p.dirs {
		p.dirs[i] = &direction{rng: rand.New(rand.NewPCG(cfg.Seed, uint64(i+1)))}
	}
	return p, nil
}

// Addr is the address clients send to.
func (p *Proxy) Addr() *net.UDPAddr { return p.ln.LocalAddr().(*net.UDPAddr) }

func (p *Proxy) each(dir Direction, f func(*direction)) {
	if dir&Up != 0 {
		f(p.dirs[0])
	}
	if dir&Down != 0 {
		f(p.dirs[1])
	}
}

// SetFaults replaces the faults of dir (Up, Down or Both).
func (p *Proxy) SetFaults(dir Direction, f Faults) error {
	if err := f.validate(); err != nil {
		return err
	}
	p.each(dir, func(d *direction) {
		d.mu.Lock()
		d.faults = f
		d.mu.Unlock()
	})
	p.log.Info("faultproxy: faults set", "dir", dir.String(), "faults", fmt.Sprintf("%+v", f))
	return nil
}

// Partition drops all traffic in dir until Heal.
func (p *Proxy) Partition(dir Direction) {
	p.each(dir, func(d *direction) {
		d.mu.Lock()
		d.partitioned = true
		d.mu.Unlock()
	})
	p.log.Info("faultproxy: partitioned", "dir", dir.String())
}

// Heal removes all partitions and faults: the link is perfect again.
// Datagrams already in a delay line are still delivered.
func (p *Proxy) Heal() {
	p.each(Both, func(d *direction) {
		d.mu.Lock()
		d.partitioned = false
		d.faults = Faults{}
		d.mu.Unlock()
	})
	p.log.Info("faultproxy: healed")
}

// Stats returns the counters and current settings.
func (p *Proxy) Stats() Stats {
	st := func(d *direction) DirState {
		d.mu.Lock()
		defer d.mu.Unlock()
		return DirState{Partitioned: d.partitioned, Faults: d.faults}
	}
	p.mu.Lock()
	n := len(p.sessions)
	p.mu.Unlock()
	return Stats{
		Up: p.dirs[0].n.snapshot(), Down: p.dirs[1].n.snapshot(),
		UpState: st(p.dirs[0]), DownState: st(p.dirs[1]), Sessions: n,
	}
}

// Run forwards datagrams until ctx is done, then closes all sockets and
// returns after every goroutine it started has exited. It returns nil after
// a cancellation and may be called only once.
func (p *Proxy) Run(ctx context.Context) error {
	if !p.started.CompareAndSwap(false, true) {
		return errors.New("faultproxy: Run called twice")
	}
	var bg sync.WaitGroup
	for i, d := range p.dirs {
		d.line = newDelayLine()
		bg.Add(1)
		go func() {
			defer bg.Done()
			d.line.run(func(it *item) { p.send(Direction(1<<i), it.sess, it.data) })
		}()
	}
	bg.Add(1)
	go func() {
		defer bg.Done()
		p.janitor(ctx)
	}()
	stop := context.AfterFunc(ctx, func() { p.ln.Close() })
	defer stop()
	p.log.Info("faultproxy: running", "listen", p.Addr().String(), "target", p.target.String())

	err := p.readClients()
	if ctx.Err() != nil {
		err = nil
	}
	p.mu.Lock()
	p.closed = true
	for k, s := range p.sessions {
		s.up.Close()
		delete(p.sessions, k)
	}
	p.mu.Unlock()
	p.wg.Wait()
	for _, d := range p.dirs {
		d.line.close()
	}
	p.ln.Close()
	bg.Wait()
	return err
}

func (p *Proxy) readClients() error {
	buf := make([]byte, 64<<10)
	var delays [2]time.Duration
	for {
		n, from, err := p.ln.ReadFromUDP(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("faultproxy: read: %w", err)
		}
		s, err := p.session(from)
		if err != nil {
			p.log.Warn("faultproxy: cannot open upstream socket", "client", from.String(), "err", err)
			continue
		}
		if s == nil {
			return nil // closing
		}
		p.forward(Up, s, buf[:n], &delays)
	}
}

// forward applies dir's faults to one datagram.
func (p *Proxy) forward(dir Direction, s *session, data []byte, delays *[2]time.Duration) {
	s.last.Store(time.Now().UnixNano())
	d := p.dirs[0]
	if dir == Down {
		d = p.dirs[1]
	}
	d.n.received.Add(1)
	for _, delay := range d.decide(delays) {
		if delay <= 0 {
			p.send(dir, s, data)
			continue
		}
		d.n.delayed.Add(1)
		d.line.add(&item{at: time.Now().Add(delay), sess: s, data: append([]byte(nil), data...)})
	}
}

func (p *Proxy) send(dir Direction, s *session, data []byte) {
	var err error
	d := p.dirs[0]
	if dir == Up {
		_, err = s.up.Write(data)
	} else {
		d = p.dirs[1]
		_, err = p.ln.WriteToUDP(data, s.client)
	}
	if err != nil {
		// The peer's socket may be gone (ECONNREFUSED) or we are closing.
		d.n.dropped.Add(1)
		return
	}
	d.n.forwarded.Add(1)
	d.n.bytes.Add(uint64(len(data)))
}

// session returns (creating if needed) the session of client; nil while
// closing.
func (p *Proxy) session(client *net.UDPAddr) (*session, error) {
	key := client.String()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, nil
	}
	if s, ok := p.sessions[key]; ok {
		return s, nil
	}
	up, err := net.DialUDP("udp", nil, p.target)
	if err != nil {
		return nil, err
	}
	setBuffers(up)
	s := &session{client: client, up: up}
	s.last.Store(time.Now().UnixNano())
	p.sessions[key] = s
	p.wg.Add(1)
	go p.readTarget(s)
	p.log.Debug("faultproxy: new session", "client", key, "upstream", up.LocalAddr().String())
	return s, nil
}

// socketBuffer is the UDP socket buffer size the proxy asks for, so that
// its own sockets do not add loss to bursts (the kernel caps it at
// net.core.rmem_max / wmem_max).
const socketBuffer = 8 << 20

func setBuffers(c *net.UDPConn) {
	c.SetReadBuffer(socketBuffer)
	c.SetWriteBuffer(socketBuffer)
}

// readTarget forwards the target's replies for one session until its
// upstream socket is closed.
func (p *Proxy) readTarget(s *session) {
	defer p.wg.Done()
	buf := make([]byte, 64<<10)
	var delays [2]time.Duration
	for {
		n, err := s.up.Read(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// ECONNREFUSED from an earlier send to a dead target: keep going.
			continue
		}
		p.forward(Down, s, buf[:n], &delays)
	}
}

func (p *Proxy) janitor(ctx context.Context) {
	t := time.NewTicker(max(p.cfg.SessionIdle/4, 10*time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			p.mu.Lock()
			for k, s := range p.sessions {
				if now.Sub(time.Unix(0, s.last.Load())) > p.cfg.SessionIdle {
					s.up.Close()
					delete(p.sessions, k)
					p.log.Debug("faultproxy: session expired", "client", k)
				}
			}
			p.mu.Unlock()
		}
	}
}

// delayLine releases items at their due time, in due-time order (FIFO for
// equal times).
type delayLine struct {
	mu     sync.Mutex
	h      itemHeap
	seq    uint64
	wake   chan struct{}
	done   chan struct{}
	closed bool
}

type item struct {
	at   time.Time
	seq  uint64
	sess *session
	data []byte
}

type itemHeap []*item

func (h itemHeap) Len() int { return len(h) }
func (h itemHeap) Less(i, j int) bool {
	if !h[i].at.Equal(h[j].at) {
		return h[i].at.Before(h[j].at)
	}
	return h[i].seq < h[j].seq
}
func (h itemHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *itemHeap) Push(x any)   { *h = append(*h, x.(*item)) }
func (h *itemHeap) Pop() any {
	old := *h
	it := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	return it
}

func newDelayLine() *delayLine {
	return &delayLine{wake: make(chan struct{}, 1), done: make(chan struct{})}
}

func (l *delayLine) add(it *item) {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return
	}
	l.seq++
	it.seq = l.seq
	heap.Push(&l.h, it)
	first := l.h[0] == it
	l.mu.Unlock()
	if first {
		select {
		case l.wake <- struct{}{}:
		default:
		}
	}
}

func (l *delayLine) close() {
	l.mu.Lock()
	l.closed = true
	l.h = nil
	l.mu.Unlock()
	close(l.done)
}

func (l *delayLine) run(send func(*item)) {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		l.mu.Lock()
		now := time.Now()
		var due []*item
		for len(l.h) > 0 && !l.h[0].at.After(now) {
			due = append(due, heap.Pop(&l.h).(*item))
		}
		wait := time.Hour
		if len(l.h) > 0 {
			wait = l.h[0].at.Sub(now)
		}
		l.mu.Unlock()
		for _, it := range due {
			send(it)
		}
		timer.Reset(wait)
		select {
		case <-l.done:
			return
		case <-l.wake:
		case <-timer.C:
		}
	}
}
