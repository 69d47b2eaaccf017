package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/blockmirror/blockmirror/internal/config"
	"github.com/blockmirror/blockmirror/internal/metrics"
	"github.com/blockmirror/blockmirror/mirror"
	"github.com/blockmirror/blockmirror/nbd"
	"github.com/blockmirror/blockmirror/transport"
)

// Options are what a process needs besides its configuration.
type Options struct {
	// Logger receives every event of the process; nil discards.
	Logger *slog.Logger
	// Version is reported in the build-info metric.
	Version string
	// JournalTestWriteDelay delays every local journal write pass of a
	// primary (test builds only: see cmd/blockmirror's test hooks).
	JournalTestWriteDelay time.Duration
}

// Process is a running blockmirror daemon: the volumes of one role of a
// config.Process (one or several: the same code path), the NBD servers
// they share (one per address), the QUIC connections their replication
// shares (primaries) or the listener they share (several mirrors), one
// metrics registry, and one admin endpoint and control socket.
//
// New opens every volume; Run serves until its context ends or a primary
// is demoted. Every goroutine the process starts is waited for before Run
// returns.
type Process struct {
	cfg     *config.Process
	env     *env
	log     *slog.Logger
	volumes []*Volume
	// host serves several mirror volumes on one listener (nil otherwise).
	host  *mirror.ReplicaHost
	admin *adminServer
	// fo runs automatic failover (nil without --etcd).
	fo *failover
	// controlMu orders the updates of the control operations.
	controlMu sync.Mutex

	stopOnce sync.Once
	stopped  chan struct{}
	stopErr  error
}

// env is what the volumes of one process share.
type env struct {
	opts    Options
	node    config.NodeConfig
	log     *slog.Logger
	reg     *metrics.Registry
	nbdOpts nbd.Options
	// tc is the node's QUIC identity (tcErr when it cannot be loaded:
	// needed only by volumes that replicate or listen).
	tc    transport.Config
	tcErr error
	pool  *mirror.ConnPool

	// servers are the NBD servers by listen address, each serving until
	// nbdCtx ends; nbdWG waits for them.
	nbdCtx     context.Context
	nbdMu      sync.Mutex
	nbdStopped bool
	servers    map[string]*nbdEntry
	nbdWG      sync.WaitGroup
	nbdErr     func(error)
	// roleChanged tells the process that a volume's role changed.
	roleChanged func()
}

type nbdEntry struct {
	srv  *nbd.Server
	addr net.Addr
}

// transport returns the node's QUIC configuration, or why there is none.
func (e *env) transport() (transport.Config, error) { return e.tc, e.tcErr }

// nbdServer returns the process's NBD server for addr, listening and
// serving from the first call on.
func (e *env) nbdServer(addr string) (*nbd.Server, net.Addr, error) {
	e.nbdMu.Lock()
	defer e.nbdMu.Unlock()
	if s := e.servers[addr]; s != nil {
		return s.srv, s.addr, nil
	}
	if e.nbdStopped {
		return nil, nil, errors.New("the process is stopping")
	}
	srv, err := nbd.NewServerChecked(e.nbdOpts)
	if err != nil {
		return nil, nil, err
	}
	ln, err := nbd.Listen(addr)
	if err != nil {
		return nil, nil, err
	}
	s := &nbdEntry{srv: srv, addr: ln.Addr()}
	e.servers[addr] = s
	e.nbdWG.Go(func() {
		if err := srv.Serve(e.nbdCtx, ln); err != nil && e.nbdCtx.Err() == nil {
			e.nbdErr(fmt.Errorf("serve NBD on %s: %w", addr, err))
		}
	})
	return s.srv, s.addr, nil
}

// New opens the volumes of cfg (creating a primary volume that does not
// exist yet when a size is given), and for mirrors starts listening for
// primaries. Nothing is served until Run; a Process that is never run must
// be closed with Run on a cancelled context.
func New(ctx context.Context, cfg *config.Process, opts Options) (*Process, error) {
	if len(cfg.Volumes) == 0 {
		return nil, errors.New("no volume to run")
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	nbdOpts, err := nbdServerOptions(cfg.Node, log)
	if err != nil {
		return nil, err
	}
	reg := metrics.New()
	reg.SetBuildInfo(opts.Version)
	p := &Process{cfg: cfg, log: log, stopped: make(chan struct{})}
	p.env = &env{
		opts: opts, node: cfg.Node, log: log, reg: reg, nbdOpts: nbdOpts, pool: mirror.NewConnPool(),
		servers: map[string]*nbdEntry{}, nbdErr: p.stop, roleChanged: p.roleChanged,
	}
	p.env.tc, p.env.tcErr = nodeTransport(cfg.Node, log)
	if cfg.Node.Coordinated() {
		if err := checkCoordinated(cfg); err != nil {
			return nil, err
		}
		// The data directory's role wins over the command's: a node
		// restarted after a failover opens as what it had become.
		if role := openRole(&cfg.Volumes[0], cfg.Role); role != cfg.Role {
			log.Info("automatic failover: opening the volume in the role its data directory records", "role", role, "command_role", cfg.Role)
			c := *cfg
			c.Role = role
			c.Volumes = []config.VolumeConfig{cfg.Volumes[0]}
			c.Volumes[0].Role = role
			cfg = &c
			p.cfg = cfg
		}
	}
	for _, c := range cfg.Volumes {
		vlog := log
		if len(cfg.Volumes) > 1 || cfg.Role == config.RoleMirror {
			vlog = log.With("volume_name", c.Label())
		}
		p.volumes = append(p.volumes, &Volume{cfg: c, env: p.env, log: vlog, hooks: newVolumeHooks(reg, c.Export),
			role: mirror.Role(cfg.Role), onStop: p.stop})
	}
	if cfg.Node.Coordinated() {
		v := p.volumes[0]
		v.lease = mirror.NewWriteLease(v.cfg.AckTimeout.Duration())
		fo, err := newFailover(cfg, v, reg, log)
		if err != nil {
			return nil, err
		}
		p.fo = fo
	}
	if err := p.open(ctx); err != nil {
		if p.fo != nil {
			p.fo.cli.Close()
		}
		return nil, err
	}
	return p, nil
}

// nodeTransport loads the node's QUIC identity from certs and name.
func nodeTransport(n config.NodeConfig, log *slog.Logger) (transport.Config, error) {
	if n.Certs == "" || n.Name == "" {
		return transport.Config{}, errors.New("--certs DIR and --node NAME are required for replication (create them with `blockmirror certs init --out DIR NAME...`)")
	}
	id, err := transport.LoadNode(n.Certs, n.Name)
	if err != nil {
		return transport.Config{}, err
	}
	return transport.Config{Identity: id, Logger: log}, nil
}

// open opens the volumes (New).
func (p *Process) open(ctx context.Context) error {
	if p.cfg.Role == config.RolePrimary {
		return p.openPrimaries(ctx)
	}
	return p.openMirrors(ctx)
}

func (p *Process) openPrimaries(ctx context.Context) error {
	for _, v := range p.volumes {
		node, err := v.openPrimary(ctx)
		if err != nil {
			p.abandon() // the volumes opened so far
			if len(p.volumes) > 1 {
				err = fmt.Errorf("volume %s: %w", v.cfg.Label(), err)
			}
			return err
		}
		v.opened = node
	}
	return nil
}

// openMirrors starts the mirror daemons: one volume listens alone (and
// accepts a primary whatever volume name it sends, so that a node started
// from flags serves any primary); several share one listener and route
// every session by its volume name.
func (p *Process) openMirrors(ctx context.Context) error {
	tc, err := p.env.transport()
	if err != nil {
		return err
	}
	allowAny, allow := false, map[string]bool{}
	for i, v := range p.volumes {
		c := &v.cfg
		if c.Listen == "" {
			return fmt.Errorf("volume %s: no listen address", c.Label())
		}
		if i > 0 && c.Listen != p.volumes[0].cfg.Listen {
			return fmt.Errorf("mirror volumes %s and %s listen on different addresses (%s, %s): one process has one QUIC listener; give them the same listen, or run each alone with --volume",
				p.volumes[0].cfg.Label(), c.Label(), p.volumes[0].cfg.Listen, c.Listen)
		}
		if len(c.Allow) == 0 {
			allowAny = true
		}
		for _, a := range c.Allow {
			allow[a] = true
		}
	}
	if !allowAny {
		for a := range allow {
			tc.AllowPeers = append(tc.AllowPeers, a)
		}
		sort.Strings(tc.AllowPeers)
	}
	p.env.tc = tc
	if len(p.volumes) == 1 {
		v := p.volumes[0]
		d, err := mirror.NewReplica(ctx, v.mirrorOptions())
		if err != nil {
			return err
		}
		v.mirror = d
		return nil
	}
	p.host, err = mirror.NewReplicaHost(mirror.ReplicaHostOptions{Listen: p.volumes[0].cfg.Listen, Transport: tc, Logger: p.log})
	if err != nil {
		return err
	}
	for _, v := range p.volumes {
		d, err := p.host.AddVolume(ctx, v.cfg.Name, v.mirrorOptions())
		if err != nil {
			p.abandon() // closes the volumes added so far
			return err
		}
		v.mirror = d
	}
	return nil
}

// Volumes returns the process's volumes, in configuration order.
func (p *Process) Volumes() []*Volume { return slices.Clone(p.volumes) }

// stop ends Run: err nil for a demoted volume, else the failure.
func (p *Process) stop(err error) {
	p.stopOnce.Do(func() {
		p.stopErr = err
		close(p.stopped)
	})
}

// Run starts the admin endpoint and the control socket and serves every
// volume until ctx ends, a volume fails (the error stops every volume) or
// a primary is demoted (the process stops serving). Stopping, the NBD
// servers first finish the requests in flight, then the volumes stop
// replicating, checkpoint and close, and then the admin endpoint closes.
func (p *Process) Run(ctx context.Context) error {
	nbdCtx, stopNBD := context.WithCancel(ctx)
	defer stopNBD()
	p.env.nbdCtx = nbdCtx
	volCtx, stopVolumes := context.WithCancel(context.Background())
	defer stopVolumes()

	if ctx.Err() != nil {
		p.abandon()
		return nil
	}
	a, err := p.startAdmin()
	if err != nil {
		p.abandon()
		return err
	}
	defer a.close()
	var wg sync.WaitGroup
	defer wg.Wait()
	defer stopVolumes() // before wg.Wait
	if p.host != nil {
		wg.Go(func() {
			if err := p.host.Run(volCtx); err != nil {
				p.stop(err)
			}
		})
	}
	var errMu sync.Mutex
	var errs []error
	for _, v := range p.volumes {
		wg.Go(func() {
			if err := p.runVolume(volCtx, v); err != nil {
				if len(p.volumes) > 1 {
					err = fmt.Errorf("volume %s: %w", v.cfg.Label(), err)
				}
				errMu.Lock()
				errs = append(errs, err)
				errMu.Unlock()
				p.stop(err)
			}
		})
	}
	foCtx, stopFailover := context.WithCancel(context.Background())
	defer stopFailover()
	var foWG sync.WaitGroup
	if p.fo != nil {
		foWG.Go(func() { p.fo.run(foCtx, p.stop) })
	}
	if len(p.volumes) > 1 {
		what := "mirroring several volumes in one process"
		if p.cfg.Role == config.RolePrimary {
			what = "serving several volumes in one process"
		}
		p.log.Info(what, "volumes", strings.Join(p.cfg.Names(), ", "))
	}
	select {
	case <-ctx.Done():
	case <-p.stopped:
	}
	// The coordinator first: it revokes its lease (the leader key goes at
	// once) and fences the volume, before the volume stops.
	stopFailover()
	foWG.Wait()
	stopNBD()
	p.env.nbdMu.Lock()
	p.env.nbdStopped = true // no server starts after this
	p.env.nbdMu.Unlock()
	p.env.nbdWG.Wait()
	stopVolumes()
	wg.Wait()
	errMu.Lock()
	defer errMu.Unlock()
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	select {
	case <-p.stopped:
		return p.stopErr
	default:
	}
	return nil
}

// runVolume serves one volume until ctx ends.
func (p *Process) runVolume(ctx context.Context, v *Volume) error {
	if node := v.opened; node != nil {
		v.opened = nil
		return v.rejoinLoop(ctx, v.serve(ctx, node))
	}
	if p.host != nil {
		// The host runs the volume; a volume promoted online by the host
		// would need a listener of its own (not offered with several).
		<-ctx.Done()
		return nil
	}
	return v.rejoinLoop(ctx, v.runMirror(ctx, v.mirror))
}

// startAdmin starts the process's admin endpoint (read-only) and control
// socket, whose default name is the node's, else the volume's or its
// export's (one volume).
func (p *Process) startAdmin() (*adminServer, error) {
	a := newAdminServer(p.log, p.Status)
	a.enableMetrics(p.env.reg)
	if p.cfg.Node.Pprof {
		a.enablePprof()
	}
	if err := a.run(p.cfg.Node.Admin); err != nil {
		return nil, err
	}
	names := []string{p.cfg.Node.Name}
	if len(p.volumes) == 1 {
		names = append(names, p.volumes[0].cfg.Name, p.volumes[0].cfg.Export)
	}
	group, explicit := controlGroup(p.cfg.Node)
	if err := a.runControl(controlSocket(p.cfg.Node, names...), group, explicit); err != nil {
		a.close()
		return nil, err
	}
	p.admin = a
	p.roleChanged()
	return a, nil
}

// abandon closes what New opened without serving it.
func (p *Process) abandon() {
	done, cancel := context.WithCancel(context.Background())
	cancel()
	for _, v := range p.volumes {
		switch {
		case v.opened != nil:
			v.opened.Close()
			v.opened = nil
		case p.host == nil && v.mirror != nil:
			v.mirror.Run(done)
		}
	}
	if p.host != nil {
		p.host.Run(done)
	}
}

// roleChanged offers the control operations the volumes' roles allow:
// verify on a primary (?volume=NAME with several); promote and demote
// only for a process of one volume (a promoted mirror needs its own
// listener for the responder).
func (p *Process) roleChanged() {
	a := p.admin
	if a == nil {
		return
	}
	p.controlMu.Lock()
	defer p.controlMu.Unlock()
	primaries := 0
	for _, v := range p.volumes {
		if v.Role() == mirror.RolePrimary {
			primaries++
		}
	}
	a.handle("verify", nil)
	if primaries > 0 {
		a.handle("verify", p.verify)
	}
	a.handle("promote", nil)
	a.handle("demote", nil)
	a.handle("switchover", nil)
	if len(p.volumes) != 1 {
		return
	}
	v := p.volumes[0]
	if p.fo != nil {
		// The coordinator owns the role: a promotion or demotion by hand
		// would bypass etcd's epoch. A planned change is a switchover.
		a.handle("switchover", func(ctx context.Context, q url.Values) (any, error) {
			to := q.Get("to")
			if to == "" {
				return nil, errors.New("switchover: name the target mirror (?to=NAME)")
			}
			if err := p.fo.coord.Switchover(ctx, to); err != nil {
				return nil, err
			}
			return map[string]any{"switched_over": true, "to": to}, nil
		})
		return
	}
	if v.Role() == mirror.RolePrimary {
		a.handle("demote", func(ctx context.Context, q url.Values) (any, error) {
			if err := v.Demote(ctx, q.Get("split_brain_loser") == "1"); err != nil {
				return nil, err
			}
			return map[string]any{"demoted": true, "data": v.cfg.Data}, nil
		})
		return
	}
	a.handle("promote", func(ctx context.Context, q url.Values) (any, error) {
		m, err := v.Promote(ctx, q.Get("force") == "1")
		if err != nil {
			return nil, err
		}
		return map[string]any{"promoted": true, "epoch": m.Epoch, "nbd": v.cfg.NBD}, nil
	})
}

// verify runs verify on the primary volume named by ?volume=NAME (the
// only one without a name).
func (p *Process) verify(ctx context.Context, q url.Values) (any, error) {
	name := q.Get("volume")
	var names []string
	for _, v := range p.volumes {
		if v.Role() != mirror.RolePrimary {
			continue
		}
		if len(p.volumes) == 1 || v.cfg.Name == name {
			rep, err := v.Verify(ctx, q.Get("resync") == "1")
			if err != nil {
				return nil, err
			}
			return rep, nil
		}
		names = append(names, v.cfg.Name)
	}
	sort.Strings(names)
	return nil, fmt.Errorf("this process serves several volumes: name one with ?volume=NAME (one of %s)", strings.Join(names, ", "))
}

// Status is what GET /v1/status shows: the volume's status for a process
// of one volume, else every volume's by name and the QUIC connection
// counts.
func (p *Process) Status() NodeStatus {
	if len(p.volumes) == 1 {
		st := p.volumes[0].Status()
		if p.fo != nil {
			st.Failover = new(p.fo.coord.Status())
		}
		return st
	}
	out := NodeStatus{Volumes: make(map[string]NodeStatus, len(p.volumes))}
	for _, v := range p.volumes {
		out.Volumes[v.cfg.Name] = v.Status()
	}
	if p.host != nil {
		out.Connections = &ConnStatus{Accepted: p.host.Connections()}
	} else {
		ps := p.env.pool.Stats()
		out.Connections = &ConnStatus{Open: ps.Open, Dialed: ps.Dialed}
	}
	return out
}
