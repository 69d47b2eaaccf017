package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"sort"
	"strings"
	"sync"

	"github.com/blockmirror/blockmirror/internal/metrics"
	"github.com/blockmirror/blockmirror/mirror"
	"github.com/blockmirror/blockmirror/nbd"
)

// connStatus counts a multi-volume process's QUIC connections: a primary's
// pool (one connection per mirror host, shared by its volumes) or a mirror
// host's accepted connections.
type connStatus struct {
	Open     int   `json:"open,omitempty"`
	Dialed   int   `json:"dialed,omitempty"`
	Accepted int64 `json:"accepted,omitempty"`
}

// volumeStatuses collects the per-volume status functions of a
// multi-volume process for GET /v1/status.
type volumeStatuses struct {
	mu     sync.Mutex
	status map[string]func() any
	verify map[string]func(ctx context.Context, resync bool) any
}

func newVolumeStatuses() *volumeStatuses {
	return &volumeStatuses{status: map[string]func() any{}, verify: map[string]func(context.Context, bool) any{}}
}

func (v *volumeStatuses) setStatus(name string, fn func() any) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if fn == nil {
		delete(v.status, name)
		return
	}
	v.status[name] = fn
}

func (v *volumeStatuses) setVerify(name string, fn func(context.Context, bool) any) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if fn == nil {
		delete(v.verify, name)
		return
	}
	v.verify[name] = fn
}

// snapshot returns {"volumes": {name: status}} plus the connection counts.
func (v *volumeStatuses) snapshot(conns func() *connStatus) nodeStatus {
	v.mu.Lock()
	fns := make(map[string]func() any, len(v.status))
	for n, fn := range v.status {
		fns[n] = fn
	}
	v.mu.Unlock()
	out := nodeStatus{Volumes: make(map[string]nodeStatus, len(fns)), Connections: conns()}
	for n, fn := range fns {
		if st, ok := fn().(nodeStatus); ok {
			out.Volumes[n] = st
		}
	}
	return out
}

// verifyHandler runs verify on the volume named by ?volume=NAME.
func (v *volumeStatuses) verifyHandler(ctx context.Context, q url.Values) (any, error) {
	name := q.Get("volume")
	v.mu.Lock()
	fn := v.verify[name]
	var names []string
	for n := range v.verify {
		names = append(names, n)
	}
	v.mu.Unlock()
	if fn == nil {
		sort.Strings(names)
		return nil, fmt.Errorf("this process serves several volumes: name one with ?volume=NAME (one of %s)", strings.Join(names, ", "))
	}
	return fn(ctx, q.Get("resync") == "1"), nil
}

// volumeFlags returns a copy of base filled from the file's volume name
// of role (flags given on the command line override the file).
func volumeFlags(fs *flag.FlagSet, cf *configFlags, role string, base serveFlags, name string, allow *string) (*serveFlags, error) {
	f := base
	c := *cf
	c.volume = name
	if err := c.apply(fs, role, &f, allow); err != nil {
		return nil, err
	}
	if f.data == "" {
		return nil, fmt.Errorf("volume %s: no data directory", name)
	}
	return &f, nil
}

// serveMany serves every primary volume of the configuration file in one
// process: one NBD server per distinct NBD address (an export per volume),
// one admin endpoint, one QUIC connection per mirror host shared by the
// volumes, metrics labelled by export. A volume that fails stops the
// process.
func serveMany(ctx context.Context, fs *flag.FlagSet, cf *configFlags, base serveFlags, names []string, stderr io.Writer) error {
	flags := make([]*serveFlags, len(names))
	for i, n := range names {
		f, err := volumeFlags(fs, cf, "primary", base, n, nil)
		if err != nil {
			return err
		}
		flags[i] = f
	}
	log, err := flags[0].log.logger(stderr)
	if err != nil {
		return err
	}
	nbdOpts, err := flags[0].nbdTLS.newServerOptions(flags[0].repl.id, log)
	if err != nil {
		return err
	}
	leaveOneCPU(log)
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	reg := metrics.New()
	reg.SetBuildInfo(version)
	vs := newVolumeStatuses()
	pool := mirror.NewConnPool()
	var wg sync.WaitGroup
	defer wg.Wait()
	defer stop() // runs before wg.Wait: every goroutine below ends with ctx

	type nbdEntry struct {
		srv  *nbd.Server
		addr net.Addr
	}
	var nbdMu sync.Mutex
	servers := map[string]*nbdEntry{}
	env := &sharedEnv{
		pool:   pool,
		status: vs.setStatus,
		verify: vs.setVerify,
		nbd: func(addr string) (*nbd.Server, net.Addr, error) {
			nbdMu.Lock()
			defer nbdMu.Unlock()
			if e := servers[addr]; e != nil {
				return e.srv, e.addr, nil
			}
			srv, err := nbd.NewServerChecked(nbdOpts)
			if err != nil {
				return nil, nil, err
			}
			ln, err := nbd.Listen(addr)
			if err != nil {
				return nil, nil, err
			}
			e := &nbdEntry{srv: srv, addr: ln.Addr()}
			servers[addr] = e
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := srv.Serve(ctx, ln); err != nil && !errors.Is(err, context.Canceled) && ctx.Err() == nil {
					log.Error("NBD server stopped; stopping every volume", "addr", addr, "err", err)
					stop()
				}
			}()
			return e.srv, e.addr, nil
		},
	}
	a, err := startAdmin(flags[0], reg, func() nodeStatus {
		return vs.snapshot(func() *connStatus {
			ps := pool.Stats()
			return &connStatus{Open: ps.Open, Dialed: ps.Dialed}
		})
	}, log, flags[0].repl.id.node)
	if err != nil {
		return err
	}
	defer a.close()
	a.handle("verify", vs.verifyHandler)
	log.Info("serving several volumes in one process", "volumes", strings.Join(names, ", "))
	errc := make(chan error, len(flags))
	for _, f := range flags {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := serveOne(ctx, f, nbdOpts, reg, log.With("volume_name", f.volumeName), env); err != nil {
				errc <- fmt.Errorf("volume %s: %w", f.volumeName, err)
				stop()
			}
		}()
	}
	<-ctx.Done()
	wg.Wait()
	close(errc)
	var errs []error
	for e := range errc {
		errs = append(errs, e)
	}
	return errors.Join(errs...)
}

// serveOne opens one primary volume of a multi-volume process and serves
// it until ctx ends.
func serveOne(ctx context.Context, f *serveFlags, nbdOpts nbd.Options, reg *metrics.Registry, log *slog.Logger, env *sharedEnv) error {
	hooks := newVolumeHooks(reg, f.export)
	node, err := openPrimary(ctx, f, hooks, log)
	if err != nil {
		return err
	}
	defer node.Close()
	defer env.status(f.volumeName, nil)
	return serveNode(ctx, node, f, nbdOpts, nil, hooks, log, env)
}

// mirrorMany runs every mirror volume of the configuration file on one
// MirrorHost (one QUIC listener; primaries route sessions by volume name).
// The volumes must share one listen address. Online promotion is per
// process and so not offered here: run a volume alone (--volume) for that.
func mirrorMany(ctx context.Context, fs *flag.FlagSet, cf *configFlags, base serveFlags, baseAllow string, names []string, stderr io.Writer) error {
	flags := make([]*serveFlags, len(names))
	anyPeer := false
	allowSet := map[string]bool{}
	for i, n := range names {
		allow := baseAllow
		f, err := volumeFlags(fs, cf, "mirror", base, n, &allow)
		if err != nil {
			return err
		}
		if f.listen == "" {
			return fmt.Errorf("volume %s: no listen address", n)
		}
		if i > 0 && f.listen != flags[0].listen {
			return fmt.Errorf("mirror volumes %s and %s listen on different addresses (%s, %s): one process has one QUIC listener; give them the same listen, or run each alone with --volume",
				names[0], n, flags[0].listen, f.listen)
		}
		if allow == "" {
			anyPeer = true
		}
		for _, a := range strings.Split(allow, ",") {
			if a != "" {
				allowSet[a] = true
			}
		}
		flags[i] = f
	}
	log, err := flags[0].log.logger(stderr)
	if err != nil {
		return err
	}
	leaveOneCPU(log)
	tc, err := flags[0].repl.id.transport(log)
	if err != nil {
		return err
	}
	if !anyPeer {
		for a := range allowSet {
			tc.AllowPeers = append(tc.AllowPeers, a)
		}
		sort.Strings(tc.AllowPeers)
	}
	host, err := mirror.NewMirrorHost(mirror.MirrorHostOptions{Listen: flags[0].listen, Transport: tc, Logger: log})
	if err != nil {
		return err
	}
	reg := metrics.New()
	reg.SetBuildInfo(version)
	vs := newVolumeStatuses()
	for _, f := range flags {
		hooks := newVolumeHooks(reg, f.export)
		d, err := host.AddVolume(ctx, f.volumeName, mirror.MirrorOptions{
			Name: f.repl.id.node, Logger: log.With("volume_name", f.volumeName),
			Node: mirror.NodeOptions{Dir: f.data, Disk: f.disk, JournalMax: f.journalMax.v, OnSync: hooks.onSync},
		})
		if err != nil {
			return err
		}
		vs.setStatus(f.volumeName, func() any { return nodeStatus{Mirror: ptr(d.Status())} })
	}
	a, err := startAdmin(flags[0], reg, func() nodeStatus {
		return vs.snapshot(func() *connStatus { return &connStatus{Accepted: host.Connections()} })
	}, log, flags[0].repl.id.node)
	if err != nil {
		return err
	}
	defer a.close()
	log.Info("mirroring several volumes in one process", "volumes", strings.Join(names, ", "), "listen", host.Addr())
	return host.Run(ctx)
}
