package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"time"

	"github.com/blockmirror/blockmirror/internal/metrics"
	"github.com/blockmirror/blockmirror/mirror"
	"github.com/blockmirror/blockmirror/nbd"
)

type serveFlags struct {
	data, disk, nbdAddr, export string
	size                        sizeFlag
	journalMax                  sizeFlag
	readOnly                    bool
	admin                       string
	control                     controlFlags
	nbdTLS                      nbdTLSFlags
	listen                      string
	// volumeName is the configured volume's name (from --config), sent to
	// mirrors so that a mirror host with several volumes routes by it.
	volumeName string
	repl       replFlags
	log        logFlags
	// testJournalDelay: see testhooks_on.go (test builds only).
	testJournalDelay time.Duration
}

func runServe(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var f serveFlags
	fs := newFlagSet("serve", "serve --data DIR [--size SIZE] [--disk PATH] [--nbd ADDR] [--export NAME] [--mirror NAME=HOST:PORT]... [flags]", stderr)
	fs.StringVar(&f.data, "data", "", "data directory: metadata, journal and (unless --disk) the disk image disk.img (required)")
	fs.Var(&f.size, "size", "size of a new volume, e.g. 10G (only needed to create one)")
	fs.StringVar(&f.disk, "disk", "", "disk image file or block device (default DIR/disk.img)")
	fs.StringVar(&f.nbdAddr, "nbd", "127.0.0.1:10809", "NBD listen address: HOST:PORT or unix:PATH")
	fs.StringVar(&f.export, "export", "disk", "NBD export name")
	fs.Var(&f.journalMax, "journal-max", "journal size bound on disk, e.g. 8G (default 8G); a mirror that falls further behind is resynced")
	fs.BoolVar(&f.readOnly, "read-only", false, "serve the export read-only")
	fs.StringVar(&f.admin, "admin", defaultAdmin, "local HTTP endpoint, read-only: status, metrics ('' disables)")
	fs.StringVar(&f.listen, "listen", "", "QUIC address where this primary answers other primaries (an old primary learns it is fenced; a split brain is detected); usually the address it had as a mirror")
	f.control.register(fs)
	f.nbdTLS.register(fs)
	f.repl.register(fs)
	f.log.register(fs)
	registerTestHooks(fs, &f)
	var cf configFlags
	cf.register(fs)
	if err := parseFlags(fs, args, false); err != nil {
		return err
	}
	if names, err := cf.several("primary"); err != nil {
		return err
	} else if len(names) > 1 {
		return serveMany(ctx, fs, &cf, f, names, stderr)
	}
	if err := cf.apply(fs, "primary", &f, nil); err != nil {
		return err
	}
	if f.data == "" {
		fmt.Fprintln(stderr, "--data is required")
		fs.Usage()
		return errUsage
	}
	log, err := f.log.logger(stderr)
	if err != nil {
		return err
	}
	nbdOpts, err := f.nbdTLS.newServerOptions(f.repl.id, log)
	if err != nil {
		return err
	}
	leaveOneCPU(log)
	return serve(ctx, &f, nbdOpts, log)
}

// openPrimary opens (or creates) the volume f names and checks that it is
// a primary.
func openPrimary(ctx context.Context, f *serveFlags, hooks *volumeHooks, log *slog.Logger) (*mirror.Node, error) {
	node, err := mirror.OpenNode(ctx, mirror.NodeOptions{
		Dir: f.data, Disk: f.disk, Size: f.size.v, Role: mirror.RolePrimary,
		JournalMax: f.journalMax.v, Logger: log, OnSync: hooks.onSync,
		JournalTestWriteDelay: f.testJournalDelay,
	})
	if err != nil {
		return nil, fmt.Errorf("open volume: %w", err)
	}
	if m := node.Meta(); m.Role != mirror.RolePrimary {
		node.Close()
		return nil, fmt.Errorf("the volume in %s is a %s (epoch %d): run `blockmirror mirror` on it, or `blockmirror promote --data %s` to make it primary",
			f.data, m.Role, m.Epoch, f.data)
	}
	return node, nil
}

func serve(ctx context.Context, f *serveFlags, nbdOpts nbd.Options, log *slog.Logger) error {
	reg := metrics.New()
	reg.SetBuildInfo(version)
	hooks := newVolumeHooks(reg, f.export)
	node, err := openPrimary(ctx, f, hooks, log)
	if err != nil {
		return err
	}
	defer node.Close()
	a, err := startAdmin(f, reg, func() nodeStatus { return nodeStatus{} }, log, f.repl.id.node, f.volumeName, f.export)
	if err != nil {
		return err
	}
	defer a.close()
	return serveNode(ctx, node, f, nbdOpts, a, hooks, log, nil)
}

// startAdmin starts a process's admin endpoint (f.admin, read-only) and
// control socket (f.control; its default name is the first non-empty of
// names).
func startAdmin(f *serveFlags, reg *metrics.Registry, status func() nodeStatus, log *slog.Logger, names ...string) (*adminServer, error) {
	a := newAdminServer(log, status)
	a.enableMetrics(reg)
	if f.log.pprof {
		a.enablePprof()
	}
	if err := a.run(f.admin); err != nil {
		return nil, err
	}
	if err := a.runControl(f.control.resolve(names...), f.control.group, f.control.explicit); err != nil {
		a.close()
		return nil, err
	}
	return a, nil
}

// sharedEnv is what the volumes of one serve process share (serveMany);
// nil for a process serving one volume.
type sharedEnv struct {
	pool *mirror.ConnPool
	// nbd is the server (already serving) for the volume's NBD address.
	nbd    func(addr string) (*nbd.Server, net.Addr, error)
	status func(name string, fn func() any)
	verify func(name string, fn func(ctx context.Context, resync bool) any)
}

// serveNode serves an opened primary node over NBD (with replication and
// the responder at --listen) until ctx ends or the node is demoted. a,
// when not nil, is the admin endpoint to report to.
func serveNode(ctx context.Context, node *mirror.Node, f *serveFlags, nbdOpts nbd.Options, a *adminServer, hooks *volumeHooks, log *slog.Logger, env *sharedEnv) error {
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	m := node.Meta()
	log = log.With("volume", m.Volume.String())

	var pool *mirror.ConnPool
	if env != nil {
		pool = env.pool
	}
	repl, err := f.repl.start(ctx, node, hooks, log, f.volumeName, pool)
	if err != nil {
		return err
	}
	if repl != nil {
		defer repl.Close()
	}
	var r mirror.Replicator
	if repl != nil {
		r = repl
	}
	vol, err := mirror.NewVolume(node, r, mirror.VolumeOptions{Logger: log, OnAppend: hooks.onAppend})
	if err != nil {
		return err
	}
	defer func() {
		if err := vol.Close(); err != nil {
			log.Error("final checkpoint failed; the journal will be replayed at the next start", "err", err)
		}
	}()
	fence := func(epoch uint64) {
		log.Error("a node of a higher epoch exists: this primary is fenced and fails every write", "their_epoch", epoch)
		vol.SetReadOnly(fmt.Errorf("%w (a node is primary in epoch %d)", mirror.ErrFenced, epoch))
		if repl != nil {
			repl.Fence(epoch)
		}
	}
	var resp *mirror.Responder
	if f.listen != "" {
		tc, err := f.repl.id.transport(log)
		if err != nil {
			return fmt.Errorf("--listen: %w", err)
		}
		resp, err = mirror.NewResponder(f.listen, f.repl.id.node, node, tc, fence, log)
		if err != nil {
			return err
		}
		go resp.Run(ctx)
	}

	var srv *nbd.Server
	var ln net.Listener
	var nbdAddr net.Addr
	if env != nil {
		srv, nbdAddr, err = env.nbd(f.nbdAddr)
	} else {
		o := nbdOpts
		o.Logger = log
		srv, err = nbd.NewServerChecked(o)
	}
	if err != nil {
		return err
	}
	if err := srv.AddExport(nbd.Export{
		Name:        f.export,
		Description: fmt.Sprintf("blockmirror volume %s", m.Volume),
		Device:      volumeDevice{vol},
		ReadOnly:    f.readOnly,
		Observe:     hooks.observeNBD,
	}); err != nil {
		return err
	}
	if env == nil {
		srv.SetDefaultExport(f.export)
		ln, err = nbd.Listen(f.nbdAddr)
		if err != nil {
			return err
		}
		nbdAddr = ln.Addr()
	} else {
		defer srv.RemoveExport(f.export)
	}
	uri := nbdURI(nbdAddr, f.export, nbdOpts.TLS != nil)
	demoted := false
	go hooks.run(ctx, node.Journal, func() *mirror.ReplicationStatus {
		if repl == nil {
			return nil
		}
		return ptr(repl.Status())
	})
	statusFn := func() nodeStatus {
		m := node.Meta()
		ps := &primaryStatus{Role: string(m.Role), Volume: m.Volume.String(), Size: m.Size, Epoch: m.Epoch,
			NBD: uri, Checkpoint: m.CheckpointSeq}
		if repl != nil {
			ps.Replication = ptr(repl.Status())
		}
		if resp != nil && resp.SplitBrain() != "" {
			ps.SplitBrain = resp.SplitBrain()
		} else if ps.Replication != nil {
			ps.SplitBrain = ps.Replication.SplitBrain
		}
		return nodeStatus{Primary: ps}
	}
	if env != nil {
		env.status(f.volumeName, func() any { return statusFn() })
		if repl != nil {
			env.verify(f.volumeName, func(ctx context.Context, resync bool) any { return repl.Verify(ctx, resync) })
			defer env.verify(f.volumeName, nil)
		}
		log.Info("serving NBD", "uri", uri, "size", m.Size, "epoch", m.Epoch, "example", "nbdinfo "+uri)
		<-ctx.Done()
		log.Info("stopped serving NBD")
		return nil
	}
	if a != nil {
		a.setStatus(statusFn)
		a.handle("verify", func(ctx context.Context, q url.Values) (any, error) {
			if repl == nil {
				return nil, errors.New("this primary has no mirrors to verify")
			}
			return repl.Verify(ctx, q.Get("resync") == "1"), nil
		})
		a.handle("demote", func(ctx context.Context, q url.Values) (any, error) {
			if err := vol.Demote(ctx, q.Get("split_brain_loser") == "1"); err != nil {
				return nil, err
			}
			demoted = true
			log.Warn("demoted to mirror; this process stops serving. Start the node again with `blockmirror mirror --data " + node.Dir + " --listen ...`")
			stop()
			return map[string]any{"demoted": true, "data": node.Dir}, nil
		})
		a.handle("promote", nil)
		defer a.handle("demote", nil)
		defer a.handle("verify", nil)
	}
	log.Info("serving NBD", "uri", uri, "size", m.Size, "epoch", m.Epoch, "example", "nbdinfo "+uri)
	err = srv.Serve(ctx, ln)
	log.Info("stopped serving NBD")
	if demoted {
		return nil
	}
	if err != nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("serve NBD: %w", err)
	}
	return nil
}

// nbdURI formats the NBD URI clients use for an export (nbds:// with TLS).
func nbdURI(a net.Addr, export string, tls bool) string {
	scheme := "nbd"
	if tls {
		scheme = "nbds"
	}
	if a.Network() == "unix" {
		return fmt.Sprintf("%s+unix:///%s?socket=%s", scheme, url.PathEscape(export), a.String())
	}
	host := a.String()
	if strings.HasPrefix(host, "[::]") || strings.HasPrefix(host, "0.0.0.0") {
		_, port, _ := net.SplitHostPort(host)
		host = net.JoinHostPort("127.0.0.1", port)
	}
	return fmt.Sprintf("%s://%s/%s", scheme, host, url.PathEscape(export))
}

// volumeDevice adapts a mirror.Volume to nbd.Device (mirror does not
// import nbd).
type volumeDevice struct{ *mirror.Volume }

func (d volumeDevice) WriteZeroes(ctx context.Context, off, length int64, f nbd.ZeroFlags) error {
	return d.Volume.WriteZeroes(ctx, off, length, mirror.ZeroFlagsView{FUA: f.FUA, NoHole: f.NoHole, FastZero: f.FastZero})
}
