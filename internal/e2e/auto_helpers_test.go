package e2e

// Helpers for the automatic failover tests (issue 16): blockmirror nodes
// (real processes) of one volume, coordinated by real etcd members that the
// test runs in its own process (so that killing a node never kills etcd,
// and a test can kill etcd's leader or all of etcd on its own).

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/blockmirror/blockmirror/internal/coord"
	"github.com/blockmirror/blockmirror/internal/testutil"
	"github.com/blockmirror/blockmirror/mirror"
)

// autoTTL is the lease TTL the tests run with (the smallest allowed).
const autoTTL = 2 * time.Second

// autoStatus is a node's status with the coordinator's view.
type autoStatus struct {
	foStatus
	Failover *coord.LocalStatus `json:"failover"`
}

// autoCluster is the nodes of one coordinated volume and its etcd.
type autoCluster struct {
	*foCluster
	t     *testing.T
	names []string
	// etcd are the members the test runs; endpoints their client URLs
	// (what the nodes get as --etcd, unless a node is given a proxy).
	etcd      []*coord.Embedded
	etcdCfg   []coord.EmbedConfig
	endpoints []string
	mode      string
	// extra flags for every node.
	extra []string
	// etcdFor overrides a node's --etcd (a proxy in front of etcd);
	// mirrorFor a node's address of another (a proxy in front of it).
	etcdFor   map[string]string
	mirrorFor map[string]map[string]string
}

// newAutoCluster makes nodes names on 127.0.0.(host+i) and an etcd cluster
// of members members on the hosts after them.
func newAutoCluster(t *testing.T, host, members int, mode string, names ...string) *autoCluster {
	t.Helper()
	c := &autoCluster{foCluster: newFoCluster(t, host, names...), t: t, names: names, mode: mode, etcdFor: map[string]string{},
		mirrorFor: map[string]map[string]string{}}
	var initial []string
	for i := range members {
		ip := fmt.Sprintf("127.0.0.%d", host+len(names)+i)
		cfg := coord.EmbedConfig{Dir: t.TempDir(), Name: fmt.Sprintf("etcd%d", i),
			ClientURL: "http://" + foFreeAddr(t, "tcp", ip), PeerURL: "http://" + foFreeAddr(t, "tcp", ip)}
		c.etcdCfg = append(c.etcdCfg, cfg)
		c.endpoints = append(c.endpoints, cfg.ClientURL)
		initial = append(initial, cfg.Name+"="+cfg.PeerURL)
	}
	for i := range c.etcdCfg {
		c.etcdCfg[i].InitialCluster = strings.Join(initial, ",")
	}
	c.etcd = make([]*coord.Embedded, members)
	c.startEtcd()
	t.Cleanup(func() {
		for _, m := range c.etcd {
			if m != nil {
				m.Close()
			}
		}
	})
	return c
}

// startEtcd starts every member not running (together: a new cluster
// needs a majority to serve).
func (c *autoCluster) startEtcd() {
	c.t.Helper()
	var wg sync.WaitGroup
	errs := make([]error, len(c.etcd))
	for i := range c.etcd {
		if c.etcd[i] != nil {
			continue
		}
		wg.Go(func() {
			c.etcd[i], errs[i] = coord.StartEmbedded(c.t.Context(), c.etcdCfg[i])
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			c.t.Fatal(err)
		}
	}
}

// stopEtcd stops member i (as far as its peers and clients can tell, it
// died).
func (c *autoCluster) stopEtcd(i int) {
	c.etcd[i].Close()
	c.etcd[i] = nil
}

// etcdLeader returns the index of etcd's raft leader.
func (c *autoCluster) etcdLeader() int {
	c.t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		for i, m := range c.etcd {
			if m != nil && m.IsLeader() {
				return i
			}
		}
	}
	c.t.Fatal("etcd has no leader")
	return -1
}

// args are the flags every node runs with.
func (c *autoCluster) args(n *foNode) []string {
	etcd := strings.Join(c.endpoints, ",")
	if e := c.etcdFor[n.Name]; e != "" {
		etcd = e
	}
	args := []string{"--etcd", etcd, "--failover-ttl", autoTTL.String(), "--failover-min-interval", "-1s",
		"--listen", n.Listen, "--mode", c.mode, "--ack-timeout", "3s"}
	for _, name := range c.names {
		addr := c.N(name).Listen
		if a := c.mirrorFor[n.Name][name]; a != "" {
			addr = a
		}
		args = append(args, "--mirror", name+"="+addr)
	}
	return append(args, c.extra...)
}

// Start runs node n in the role its data directory records (primary if
// asPrimary and it has none yet).
func (c *autoCluster) Start(n *foNode, asPrimary bool) {
	c.t.Helper()
	if m, err := mirror.LoadMeta(n.Data); err == nil {
		asPrimary = m.Role == mirror.RolePrimary
	}
	if asPrimary {
		n.StartPrimary("256M", c.args(n)...)
	} else {
		n.StartMirror(c.args(n)...)
	}
}

// AutoStatus fetches n's status.
func (n *foNode) AutoStatus() (*autoStatus, error) {
	var st autoStatus
	if err := testutil.GetJSON(n.c.t.Context(), "http://"+n.Admin+"/v1/status", &st); err != nil {
		return nil, err
	}
	return &st, nil
}

// serving reports whether st is a primary that may complete writes.
func (st *autoStatus) serving() bool {
	return st.Primary != nil && st.Failover != nil && st.Failover.Leader && st.Failover.WritesUntil > 0
}

// running returns the nodes whose process runs.
func (c *autoCluster) running() []*foNode {
	var out []*foNode
	for _, name := range c.names {
		if n := c.N(name); n.Proc != nil && !n.Proc.Exited() {
			out = append(out, n)
		}
	}
	return out
}

// WaitPrimary waits until one running node serves as the leader and every
// other running node is a mirror caught up with it and in sync.
func (c *autoCluster) WaitPrimary(timeout time.Duration) *foNode {
	c.t.Helper()
	var p *foNode
	testutil.WaitFor(c.t, timeout, "a coordinated primary with every mirror in sync", func() (bool, string) {
		p = nil
		var why []string
		for _, n := range c.running() {
			st, err := n.AutoStatus()
			if err != nil {
				why = append(why, n.Name+": "+err.Error())
				continue
			}
			if st.serving() {
				p = n
			}
		}
		if p == nil {
			return false, "no node serves: " + strings.Join(why, "; ") + c.describe()
		}
		ps, err := p.AutoStatus()
		if err != nil || ps.Primary == nil || ps.Primary.Replication == nil {
			return false, fmt.Sprintf("primary %s: %v", p.Name, err)
		}
		for _, n := range c.running() {
			if n == p {
				continue
			}
			peer := replPeer(ps.Primary.Replication, n.Name)
			if peer == nil || peer.State != "in-sync" {
				return false, fmt.Sprintf("%s not in sync with %s: %+v", n.Name, p.Name, peer)
			}
		}
		return true, ""
	})
	return p
}

// describe is every running node's status, for failure messages.
func (c *autoCluster) describe() string {
	var b strings.Builder
	for _, n := range c.running() {
		fmt.Fprintf(&b, "\n  %s: %s", n.Name, n.RawStatus())
	}
	return b.String()
}

// rtoProbe measures, after a primary's loss, when one of the nodes first
// serves NBD again and when its first write completes.
type rtoProbe struct {
	served, wrote time.Time
	by            *foNode
}

// probeTakeover polls the NBD address of every node in cands until one
// accepts a connection and completes a write+flush of a block at off (a
// region no test data uses), or timeout.
func probeTakeover(t *testing.T, cands []*foNode, off int64, timeout time.Duration) rtoProbe {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	defer cancel()
	var mu sync.Mutex
	var res rtoProbe
	var wg sync.WaitGroup
	for _, n := range cands {
		wg.Go(func() {
			for ctx.Err() == nil {
				dctx, dcancel := context.WithTimeout(ctx, 300*time.Millisecond)
				c, err := rawDial(dctx, n.NBD, defaultExport)
				dcancel()
				if err != nil {
					time.Sleep(10 * time.Millisecond)
					continue
				}
				served := time.Now()
				err = c.foWrite(foPattern("probe", 0, 4096), off, timeout)
				wrote := time.Now()
				c.c.Close()
				if err != nil {
					time.Sleep(10 * time.Millisecond)
					continue
				}
				mu.Lock()
				if res.by == nil {
					res = rtoProbe{served: served, wrote: wrote, by: n}
				}
				mu.Unlock()
				cancel()
				return
			}
		})
	}
	wg.Wait()
	if res.by == nil {
		t.Fatalf("no node took over within %v", timeout)
	}
	return res
}

// blockWriter writes 64 KiB blocks (write + flush each) to a node until
// stopped or an error, recording those acknowledged.
type blockWriter struct {
	tag   string
	quit  chan struct{}
	done  chan struct{}
	mu    sync.Mutex
	acked []int64 // offsets, in order; block i has foPattern(tag, i)
	times []time.Time
	err   error
}

const blockSize = 64 << 10

func startBlockWriter(t *testing.T, n *foNode, tag string, first int64, count int) *blockWriter {
	t.Helper()
	c := foDial(t, n.NBD)
	w := &blockWriter{tag: tag, quit: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for i := 0; i < count; i++ {
			select {
			case <-w.quit:
				return
			default:
			}
			off := first + int64(i)*blockSize
			if err := c.foWrite(foPattern(tag, i, blockSize), off, 20*time.Second); err != nil {
				w.mu.Lock()
				w.err = err
				w.mu.Unlock()
				return
			}
			w.mu.Lock()
			w.acked = append(w.acked, off)
			w.times = append(w.times, time.Now())
			w.mu.Unlock()
		}
	}()
	return w
}

// stop ends the writer and returns the acknowledged offsets.
func (w *blockWriter) stop() ([]int64, error) {
	select {
	case <-w.quit:
	default:
		close(w.quit)
	}
	<-w.done
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.acked), w.err
}

// waitRejoined waits until n (restarted after a failover) is a mirror of
// p, in sync.
func (c *autoCluster) waitRejoined(n, p *foNode, timeout time.Duration) {
	c.t.Helper()
	n.WaitStatus(timeout, "a mirror again", func(st *foStatus) (bool, string) {
		return st.Mirror != nil, "not a mirror"
	})
	foWaitCaughtUp(c.t, p, n, timeout)
}

// rtoSummary formats a distribution of durations.
func rtoSummary(ds []time.Duration) string {
	if len(ds) == 0 {
		return "no samples"
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	q := func(p float64) time.Duration { return s[min(len(s)-1, int(p*float64(len(s)-1)+0.5))] }
	return fmt.Sprintf("n=%d min %v median %v p90 %v max %v", len(s), s[0].Round(time.Millisecond),
		q(0.5).Round(time.Millisecond), q(0.9).Round(time.Millisecond), s[len(s)-1].Round(time.Millisecond))
}

// autoTrials is the number of kill trials: BLOCKMIRROR_AUTO_TRIALS, else
// def.
func autoTrials(def int) int {
	var n int
	if _, err := fmt.Sscan(os.Getenv("BLOCKMIRROR_AUTO_TRIALS"), &n); err == nil && n > 0 {
		return n
	}
	return def
}
