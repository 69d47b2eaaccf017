package coord

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// This file is the test harness: real embedded etcd members on loopback,
// a TCP proxy that cuts a client off etcd, and a world of fake nodes whose
// Status follows the Node contract (a mirror hears from a primary while
// their link is up and the primary's write deadline has not passed).

// freeAddr returns a loopback address with a free TCP port.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func testLogger(t *testing.T) *slog.Logger {
	if os.Getenv("COORD_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// startEtcd starts a single-member etcd (stopped at cleanup).
func startEtcd(t *testing.T) *Embedded {
	t.Helper()
	return startMember(t, t.TempDir(), "e0", "http://"+freeAddr(t), "http://"+freeAddr(t), "")
}

func startMember(t *testing.T, dir, name, client, peer, cluster string) *Embedded {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	m, err := StartEmbedded(ctx, EmbedConfig{Dir: dir, Name: name, ClientURL: client, PeerURL: peer, InitialCluster: cluster, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	return m
}

// startEtcd3 starts a three-member etcd cluster.
func startEtcd3(t *testing.T) []*Embedded {
	t.Helper()
	var names, peers, clients []string
	var parts []string
	for i := 0; i < 3; i++ {
		names = append(names, fmt.Sprintf("e%d", i))
		peers = append(peers, "http://"+freeAddr(t))
		clients = append(clients, "http://"+freeAddr(t))
		parts = append(parts, names[i]+"="+peers[i])
	}
	cluster := strings.Join(parts, ",")
	out := make([]*Embedded, 3)
	var wg sync.WaitGroup
	errs := make([]error, 3)
	for i := range out {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			out[i], errs[i] = StartEmbedded(ctx, EmbedConfig{Dir: t.TempDir(), Name: names[i], ClientURL: clients[i], PeerURL: peers[i], InitialCluster: cluster, Logger: testLogger(t)})
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(out[i].Close)
	}
	return out
}

func newClient(t *testing.T, endpoints ...string) *clientv3.Client {
	t.Helper()
	cli, err := Connect(ClientConfig{Endpoints: endpoints, DialTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// tcpProxy forwards a listen address to target until cut: then it closes
// every connection and black-holes new ones (accepts, never answers), as
// a partition looks to a client.
type tcpProxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	cut    bool
	conns  map[net.Conn]bool
}

func newTCPProxy(t *testing.T, target string) *tcpProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &tcpProxy{ln: ln, target: strings.TrimPrefix(target, "http://"), conns: map[net.Conn]bool{}}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go p.serve(c)
		}
	}()
	t.Cleanup(func() { ln.Close(); <-done; p.setCut(true) })
	return p
}

func (p *tcpProxy) URL() string { return "http://" + p.ln.Addr().String() }

func (p *tcpProxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.conns[c] = true
	return p.cut
}

func (p *tcpProxy) serve(c net.Conn) {
	if p.track(c) {
		io.Copy(io.Discard, c) // black hole until closed
		return
	}
	up, err := net.Dial("tcp", p.target)
	if err != nil {
		c.Close()
		return
	}
	p.track(up)
	go func() { io.Copy(up, c); up.Close() }()
	io.Copy(c, up)
	c.Close()
}

// setCut cuts (closing every connection) or heals the proxy.
func (p *tcpProxy) setCut(cut bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = cut
	// Cutting closes the forwarded connections; healing closes the
	// black-holed ones (a client then reconnects at once, as it would
	// after a partition heals and its keepalive times out).
	for c := range p.conns {
		c.Close()
	}
	p.conns = map[net.Conn]bool{}
}

// world holds fake nodes and the links between them.
type world struct {
	mu    sync.Mutex
	clock Clock
	nodes map[string]*fakeNode
	// down[a+"|"+b]: the link between a and b is cut (a < b).
	down map[string]bool
	t0   time.Time
}

func newWorld() *world {
	return &world{clock: RealClock, nodes: map[string]*fakeNode{}, down: map[string]bool{}, t0: time.Now()}
}

func linkKey(a, b string) string {
	if a > b {
		a, b = b, a
	}
	return a + "|" + b
}

// setLink cuts or heals the link between a and b.
func (w *world) setLink(a, b string, up bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.down[linkKey(a, b)] = !up
}

// isolate cuts (or heals) every link of a.
func (w *world) isolate(a string, cut bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for b := range w.nodes {
		if b != a {
			w.down[linkKey(a, b)] = cut
		}
	}
}

type promotion struct {
	node  string
	epoch uint64
	at    time.Time
}

// fakeNode implements Node. Writes are modelled by their deadline: the
// harness records every SetWriteLease, so a test can check when the node
// could last have completed a write.
type fakeNode struct {
	w    *world
	name string

	mu            sync.Mutex
	role          Role
	epoch         uint64
	seq           uint64
	consistent    bool
	mode          Mode
	k             int
	allowDegraded bool
	ackSet        AckSet
	peers         []string
	until         time.Time
	reason        string
	// ended is when the last replaced deadline ended: its own time, or
	// when a later SetWriteLease revoked it (a node honours a revocation
	// once the call returns).
	ended time.Time
	// maxUntil is the latest deadline ever granted: what a process frozen
	// before a revocation could still use when it resumes.
	maxUntil    time.Time
	lastContact time.Time
	confirm     map[string]time.Time
	promotions  []promotion
	demotions   int
	fences      int
	leases      int
	dead        bool
}

func (w *world) add(name string, role Role, epoch, seq uint64) *fakeNode {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := &fakeNode{w: w, name: name, role: role, epoch: epoch, seq: seq, consistent: true, mode: ModeSync, k: 1,
		lastContact: w.clock.Now(), confirm: map[string]time.Time{}}
	w.nodes[name] = n
	return n
}

// setPeers gives a primary its mirrors (its ack set starts as all of them,
// as a node without a coordinator has it).
func (n *fakeNode) setPeers(mode Mode, k int, degraded bool, peers ...string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.mode, n.k, n.allowDegraded, n.peers = mode, k, degraded, peers
	kk := k
	if mode == ModeAsync {
		kk = 0
	}
	n.ackSet = AckSet{Members: union(peers), K: kk}
}

func (n *fakeNode) serving(now time.Time) bool {
	return !n.dead && n.role == RolePrimary && now.Before(n.until)
}

// Status derives contacts from the world: a mirror hears from every live,
// serving primary it has a link to; a primary gets confirmations from its
// live mirrors it has a link to.
func (n *fakeNode) Status() NodeStatus {
	w := n.w
	now := w.clock.Now()
	w.mu.Lock()
	defer w.mu.Unlock()
	n.mu.Lock()
	defer n.mu.Unlock()
	st := NodeStatus{Role: n.role, Epoch: n.epoch, LastSeq: n.seq, DurableSeq: n.seq, Consistent: n.consistent}
	if n.role == RoleMirror {
		for name, p := range w.nodes {
			if name == n.name || w.down[linkKey(name, n.name)] || n.dead {
				continue
			}
			p.mu.Lock()
			if p.serving(now) && p.epoch >= n.epoch {
				n.lastContact = now
			}
			p.mu.Unlock()
		}
		st.SincePrimaryContact = now.Sub(n.lastContact)
		return st
	}
	st.Mode, st.SyncAcks, st.AllowDegraded = n.mode, n.k, n.allowDegraded
	st.AckSet = AckSet{Members: append([]string(nil), n.ackSet.Members...), K: n.ackSet.K}
	for _, name := range n.peers {
		ps := PeerStatus{Name: name, SinceConfirm: -1}
		if m, ok := w.nodes[name]; ok && !w.down[linkKey(name, n.name)] && !n.dead {
			m.mu.Lock()
			if !m.dead && m.role == RoleMirror {
				ps.InSync, ps.Acked = m.consistent, m.seq
				if n.serving(now) {
					n.confirm[name] = now
				}
			}
			m.mu.Unlock()
		}
		if c, ok := n.confirm[name]; ok {
			ps.SinceConfirm = now.Sub(c)
		}
		st.Peers = append(st.Peers, ps)
	}
	return st
}

func (n *fakeNode) Promote(ctx context.Context, epoch uint64) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.role != RoleMirror || epoch <= n.epoch {
		return fmt.Errorf("fake promote of a %s at epoch %d to %d", n.role, n.epoch, epoch)
	}
	n.role, n.epoch = RolePrimary, epoch
	n.until = time.Time{}
	n.promotions = append(n.promotions, promotion{n.name, epoch, n.w.clock.Now()})
	return nil
}

func (n *fakeNode) Demote(ctx context.Context) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.role != RolePrimary {
		return fmt.Errorf("fake demote of a %s", n.role)
	}
	n.role = RoleMirror
	n.until = time.Time{}
	n.demotions++
	n.lastContact = n.w.clock.Now()
	return nil
}

func (n *fakeNode) SetWriteLease(until time.Time, reason string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	now := n.w.clock.Now()
	if n.until.After(now) && !until.After(now) {
		n.fences++
	}
	end := n.until
	if end.After(now) {
		end = now
	}
	if end.After(n.ended) {
		n.ended = end
	}
	n.until, n.reason = until, reason
	n.leases++
	if until.After(n.maxUntil) {
		n.maxUntil = until
	}
}

func (n *fakeNode) SetAckSet(ctx context.Context, set AckSet) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.ackSet = AckSet{Members: append([]string(nil), set.Members...), K: set.K}
	return nil
}

// view is a copy of a fake node's state.
type view struct {
	role   Role
	epoch  uint64
	until  time.Time
	reason string
	// writesEnd: the node completes no write at or after it (unless
	// granted again).
	writesEnd  time.Time
	maxUntil   time.Time
	promotions []promotion
	demotions  int
	fences     int
	ackSet     AckSet
}

func (n *fakeNode) get() view {
	n.mu.Lock()
	defer n.mu.Unlock()
	end := n.ended
	if n.until.After(end) {
		end = n.until
	}
	return view{role: n.role, epoch: n.epoch, until: n.until, reason: n.reason, writesEnd: end, maxUntil: n.maxUntil,
		promotions: append([]promotion(nil), n.promotions...), demotions: n.demotions, fences: n.fences, ackSet: n.ackSet}
}

func (n *fakeNode) set(f func(n *fakeNode)) {
	n.mu.Lock()
	defer n.mu.Unlock()
	f(n)
}

// running is a coordinator under test.
type running struct {
	c      *Coordinator
	cancel context.CancelFunc
	done   chan error
	once   sync.Once
}

// stop ends the coordinator (it revokes its session, as a clean stop).
func (r *running) stop() {
	r.once.Do(func() {
		r.cancel()
		<-r.done
	})
}

// testConfig is a fast configuration: TTL 2 s, poll 100 ms.
func testConfig(t *testing.T, cli *clientv3.Client, node string) Config {
	return Config{Client: cli, Prefix: "/test", Volume: "vol", Node: node, TTL: 2 * time.Second,
		Poll: 100 * time.Millisecond, Settle: 200 * time.Millisecond, MinInterval: -1, Logger: testLogger(t).With("node", node)}
}

func startCoord(t *testing.T, cfg Config, n Node) *running {
	t.Helper()
	c, err := New(cfg, n)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{c: c, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- c.Run(ctx) }()
	t.Cleanup(r.stop)
	return r
}

// eventually polls cond every 50 ms until it holds or d passes.
func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	end := time.Now().Add(d)
	for !cond() {
		if time.Now().After(end) {
			t.Fatalf("%s: not within %v", what, d)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// never checks cond stays false for d.
func never(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	end := time.Now().Add(d)
	for time.Now().Before(end) {
		if cond() {
			t.Fatalf("%s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func status(t *testing.T, cli *clientv3.Client) *ClusterStatus {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	cs, err := ReadStatus(ctx, cli, "/test", "vol")
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

func (cs *ClusterStatus) String() string {
	var b strings.Builder
	cs.WriteText(&b)
	return b.String()
}

// promotedNodes lists every promotion in the world, in time order.
func (w *world) promotions() []promotion {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []promotion
	for _, n := range w.nodes {
		n.mu.Lock()
		out = append(out, n.promotions...)
		n.mu.Unlock()
	}
	sort.Slice(out, func(i, j int) bool { return out[i].at.Before(out[j].at) })
	return out
}
