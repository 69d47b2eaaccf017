package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/blockmirror/blockmirror/internal/config"
	"github.com/blockmirror/blockmirror/internal/coord"
	"github.com/blockmirror/blockmirror/internal/metrics"
	"github.com/blockmirror/blockmirror/mirror"
)

// Automatic failover (issue 16): with --etcd or --etcd-embed, a volume's
// node is driven by an internal/coord Coordinator. The Volume implements
// coord.Node through coordNode; the Process owns the coordinator (started
// after the volume, stopped before it), the etcd client and, with
// --etcd-embed, an etcd member.

// errRejoin ends a primary's serve when its coordinator demoted it: the
// volume goes on as a mirror in the same process.
var errRejoin = errors.New("demoted by the coordinator: rejoining as a mirror")

// hookTimeout bounds one run of --failover-hook.
const hookTimeout = 30 * time.Second

// coordVolumeName is the name of v's keys in etcd: its configured name,
// else its export name (a volume given by flags), the same on every node.
func coordVolumeName(c *config.VolumeConfig) string {
	if c.Name != "" {
		return c.Name
	}
	return c.Export
}

// checkCoordinated checks what automatic failover needs of a process.
func checkCoordinated(cfg *config.Process) error {
	n := &cfg.Node
	if len(cfg.Volumes) != 1 {
		return fmt.Errorf("automatic failover (--etcd) runs one volume per process; this one has %d (run each with --volume NAME)", len(cfg.Volumes))
	}
	if n.Name == "" {
		return errors.New("automatic failover (--etcd) needs --node NAME: it names this node's records in etcd")
	}
	v := &cfg.Volumes[0]
	if v.Listen == "" {
		return errors.New("automatic failover (--etcd) needs --listen HOST:PORT on every node: where it mirrors, and where a primary rejoins as a mirror once another took over")
	}
	if len(otherMirrors(v, n.Name)) == 0 {
		return errors.New("automatic failover (--etcd) needs the other members as --mirror NAME=HOST:PORT on every node (the same list everywhere may include this node: it is skipped): they are the mirrors of whichever node is primary")
	}
	return nil
}

// otherMirrors is v's mirror list without this node (so that every node
// of a coordinated volume can be given the same list).
func otherMirrors(v *config.VolumeConfig, self string) []config.MirrorConfig {
	var out []config.MirrorConfig
	for _, m := range v.Mirrors {
		if m.Name != self {
			out = append(out, m)
		}
	}
	return out
}

// coordNode is a Volume as coord.Node sees it.
type coordNode struct{ v *Volume }

var _ coord.Node = coordNode{}

// Status implements coord.Node. A volume between roles (promoted but not
// serving yet, demoted but not mirroring yet) reports a mirror that may
// not be promoted.
func (n coordNode) Status() coord.NodeStatus {
	v := n.v
	p, d := v.current()
	switch {
	case p != nil:
		m := p.node.Meta()
		if m.Role != mirror.RolePrimary {
			return coord.NodeStatus{Role: coord.RoleMirror, Epoch: m.Epoch}
		}
		_, durable := p.node.Journal.Watermarks()
		st := coord.NodeStatus{Role: coord.RolePrimary, Epoch: m.Epoch, LastSeq: p.node.Journal.LastSeq(), DurableSeq: durable,
			Consistent: true, Mode: coord.Mode(v.cfg.Mode), SyncAcks: v.cfg.SyncAcks, AllowDegraded: v.cfg.AllowDegraded}
		if p.repl != nil {
			peers, members, k := p.repl.Contacts()
			st.AckSet = coord.AckSet{Members: members, K: k}
			for _, pc := range peers {
				st.Peers = append(st.Peers, coord.PeerStatus{Name: pc.Name, InSync: pc.InSync, Acked: pc.Acked, Lag: pc.Lag, SinceConfirm: pc.SinceConfirm})
			}
		}
		return st
	case d != nil:
		node := d.Node()
		if node == nil {
			return coord.NodeStatus{Role: coord.RoleMirror, SincePrimaryContact: d.SincePrimaryContact()}
		}
		m := node.Meta()
		if m.Role != mirror.RoleMirror {
			return coord.NodeStatus{Role: coord.RoleMirror, Epoch: m.Epoch}
		}
		written, durable := node.Journal.Watermarks()
		ms := d.Status()
		return coord.NodeStatus{Role: coord.RoleMirror, Epoch: m.Epoch, LastSeq: written, DurableSeq: durable,
			Consistent: !ms.Inconsistent && !ms.NeedsResync && !m.Inconsistent && !m.NeedsResync, SincePrimaryContact: d.SincePrimaryContact()}
	}
	return coord.NodeStatus{Role: coord.RoleMirror}
}

// Promote implements coord.Node: an online promotion to exactly epoch;
// it returns once the volume serves NBD as the primary.
func (n coordNode) Promote(ctx context.Context, epoch uint64) error {
	v := n.v
	_, d := v.current()
	if d == nil {
		return mirror.ErrNotMirror
	}
	changed := v.roleChange()
	if _, err := d.PromoteTo(ctx, epoch); err != nil {
		return err
	}
	for {
		if p, _ := v.current(); p != nil {
			return nil
		}
		select {
		case <-changed:
			changed = v.roleChange()
		case <-ctx.Done():
			return fmt.Errorf("promoted to epoch %d, but not serving yet: %w", epoch, ctx.Err())
		}
	}
}

// Demote implements coord.Node: the primary stops completing writes,
// records its demotion, and the volume rejoins as a mirror.
func (n coordNode) Demote(ctx context.Context) error {
	v := n.v
	p, _ := v.current()
	if p == nil {
		return mirror.ErrNotPrimary
	}
	if err := p.vol.Demote(ctx, false); err != nil {
		return err
	}
	v.log.Warn("demoted by the coordinator: this node stops serving NBD and rejoins as a mirror", "listen", v.cfg.Listen)
	p.rejoinOnce.Do(func() { close(p.rejoin) })
	return nil
}

// SetWriteLease implements coord.Node.
func (n coordNode) SetWriteLease(until time.Time, reason string) { n.v.lease.Set(until, reason) }

// SetAckSet implements coord.Node.
func (n coordNode) SetAckSet(ctx context.Context, set coord.AckSet) error {
	p, _ := n.v.current()
	if p == nil || p.repl == nil {
		return mirror.ErrNotPrimary
	}
	return p.repl.SetAckSet(set.Members, set.K)
}

// failover is a process's automatic failover: its etcd client, its
// embedded etcd member (if any) and the coordinator of its one volume.
type failover struct {
	cfg   config.NodeConfig
	log   *slog.Logger
	v     *Volume
	cli   coordClient
	coord *coord.Coordinator
	emb   *coord.Embedded
	fm    *metrics.FailoverMetrics

	events chan coord.Event
}

// coordClient is the part of the etcd client the daemon uses.
type coordClient interface{ Close() error }

// newFailover sets up automatic failover for v (nothing runs until run).
func newFailover(cfg *config.Process, v *Volume, reg *metrics.Registry, log *slog.Logger) (*failover, error) {
	n := cfg.Node
	f := &failover{cfg: n, log: log, v: v, events: make(chan coord.Event, 16), fm: reg.Failover(v.cfg.Export)}
	endpoints := n.Etcd
	if endpoints == "" {
		endpoints = embedClientURL(n)
	}
	eps, err := coord.ParseEndpoints(endpoints)
	if err != nil {
		return nil, fmt.Errorf("--etcd: %w", err)
	}
	cli, err := coord.Connect(coord.ClientConfig{Endpoints: eps, CertsDir: n.EtcdCerts})
	if err != nil {
		return nil, fmt.Errorf("connect to etcd: %w", err)
	}
	f.cli = cli
	c, err := coord.New(coord.Config{
		Client: cli, Prefix: n.EtcdPrefix, Volume: coordVolumeName(&v.cfg), Node: n.Name,
		TTL: n.FailoverTTL.Duration(), MinInterval: n.FailoverMinInterval.Duration(), NoFailsafe: n.FailoverNoFailsafe,
		OnEvent: f.onEvent, Logger: log,
	}, coordNode{v})
	if err != nil {
		cli.Close()
		return nil, err
	}
	f.coord = c
	return f, nil
}

// ttl is the lease TTL the coordinator runs with.
func (f *failover) ttl() time.Duration {
	if d := f.cfg.FailoverTTL.Duration(); d > 0 {
		return d
	}
	return coord.DefaultTTL
}

func embedClientURL(n config.NodeConfig) string {
	if n.EtcdEmbedClient != "" {
		return n.EtcdEmbedClient
	}
	return "http://127.0.0.1:2379"
}

// run starts the embedded member (if any) and runs the coordinator until
// ctx ends; then it fences the volume (no coordinator: no write lease),
// and stops the member.
func (f *failover) run(ctx context.Context, fatal func(error)) {
	var wg sync.WaitGroup
	defer wg.Wait()
	hookCtx, stopHooks := context.WithCancel(context.Background())
	defer stopHooks() // after the coordinator stopped (deferred later, runs first)
	wg.Go(func() { f.runHooks(hookCtx) })
	if f.cfg.EtcdEmbed != "" {
		emb, err := coord.StartEmbedded(ctx, coord.EmbedConfig{
			Dir: f.cfg.EtcdEmbed, Name: f.cfg.Name, ClientURL: embedClientURL(f.cfg), PeerURL: f.cfg.EtcdEmbedPeer,
			InitialCluster: f.cfg.EtcdEmbedCluster, CertsDir: f.cfg.EtcdCerts, Logger: f.log,
		})
		if err != nil {
			if ctx.Err() == nil {
				fatal(fmt.Errorf("start the embedded etcd member (--etcd-embed %s): %w", f.cfg.EtcdEmbed, err))
			}
			return
		}
		f.emb = emb
		defer emb.Close()
		f.log.Info("embedded etcd member serving", "name", emb.Name(), "client", emb.Endpoint())
		wg.Go(func() {
			select {
			case err := <-emb.Err():
				if err != nil && ctx.Err() == nil {
					fatal(fmt.Errorf("embedded etcd member: %w", err))
				}
			case <-ctx.Done():
			}
		})
	}
	defer f.cli.Close()
	wg.Go(func() { f.refreshMetrics(ctx) })
	f.log.Info("automatic failover on etcd", "volume", coordVolumeName(&f.v.cfg), "ttl", f.ttl())
	f.coord.Run(ctx)
	f.v.lease.Set(time.Time{}, "the coordinator stopped (the process is stopping)")
}

// onEvent is the coordinator's OnEvent: it must not block.
func (f *failover) onEvent(e coord.Event) {
	f.fm.Event(e.Kind)
	select {
	case f.events <- e:
	default:
		f.log.Warn("failover hook queue full; event not passed to the hook", "event", e.Kind, "epoch", e.Epoch)
	}
}

// runHooks runs --failover-hook for each event, one at a time, until ctx
// ends.
func (f *failover) runHooks(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case e := <-f.events:
			if f.cfg.FailoverHook != "" {
				f.runHook(ctx, e)
			}
		}
	}
}

func (f *failover) runHook(ctx context.Context, e coord.Event) {
	ctx, cancel := context.WithTimeout(ctx, hookTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "/bin/sh", "-c", f.cfg.FailoverHook)
	cmd.Env = append(os.Environ(),
		"BLOCKMIRROR_EVENT="+e.Kind, "BLOCKMIRROR_EPOCH="+strconv.FormatUint(e.Epoch, 10), "BLOCKMIRROR_REASON="+e.Reason,
		"BLOCKMIRROR_VOLUME="+coordVolumeName(&f.v.cfg), "BLOCKMIRROR_NODE="+f.cfg.Name, "BLOCKMIRROR_NBD="+f.v.cfg.NBD)
	start := time.Now()
	out, err := cmd.CombinedOutput()
	text := strings.TrimSpace(string(out))
	if len(text) > 2000 {
		text = text[:2000] + "..."
	}
	if err != nil {
		f.log.Error("failover hook failed", "event", e.Kind, "epoch", e.Epoch, "err", err, "output", text)
		return
	}
	f.log.Info("failover hook ran", "event", e.Kind, "epoch", e.Epoch, "took", time.Since(start).Round(time.Millisecond), "output", text)
}

// refreshMetrics updates the failover gauges every second until ctx ends.
func (f *failover) refreshMetrics(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		ls := f.coord.Status()
		st := coordNode{f.v}.Status()
		left, _ := f.v.lease.State()
		fs := metrics.FailoverState{Leader: ls.Leader, Epoch: st.Epoch, LeaseAge: ls.LeaseAge, Failsafe: ls.Failsafe,
			WritesAllowed: st.Role == coord.RolePrimary && left > 0, EtcdReachable: ls.EtcdError == ""}
		if !ls.Leader {
			fs.LeaseAge = -1
		}
		if len(st.Peers) > 0 {
			fs.MemberLag = map[string]uint64{}
			for _, p := range st.Peers {
				fs.MemberLag[p.Name] = p.Lag
			}
		}
		f.fm.Set(fs)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// openRole is the role a coordinated volume opens in: its data
// directory's (a node restarted after a failover keeps the role it had),
// else the command's (a new volume).
func openRole(v *config.VolumeConfig, cmdRole string) string {
	m, err := mirror.LoadMeta(v.Data)
	if err != nil {
		return cmdRole // none yet (or unreadable: opening it says why)
	}
	return string(m.Role)
}
