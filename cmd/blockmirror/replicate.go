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
	"strings"
	"time"

	"github.com/blockmirror/blockmirror/internal/metrics"
	"github.com/blockmirror/blockmirror/mirror"
	"github.com/blockmirror/blockmirror/transport"
)

// mirrorList is the repeatable --mirror NAME=HOST:PORT flag.
type mirrorList []mirror.PeerAddr

func (m *mirrorList) String() string {
	var s []string
	for _, p := range *m {
		s = append(s, p.Name+"="+p.Addr)
	}
	return strings.Join(s, ",")
}

func (m *mirrorList) Set(v string) error {
	name, addr, ok := strings.Cut(v, "=")
	if !ok || name == "" || addr == "" {
		return fmt.Errorf("want NAME=HOST:PORT, got %q", v)
	}
	if err := transport.ValidateNodeName(name); err != nil {
		return err
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return fmt.Errorf("mirror %s: address %q: %v", name, addr, err)
	}
	for _, p := range *m {
		if p.Name == name {
			return fmt.Errorf("mirror %s given twice", name)
		}
	}
	*m = append(*m, mirror.PeerAddr{Name: name, Addr: addr})
	return nil
}

// identityFlags locate this node's certificates.
type identityFlags struct {
	certs, node string
}

func (f *identityFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.certs, "certs", "", "directory with ca.crt and this node's NAME.crt/NAME.key (made by `blockmirror certs init`)")
	fs.StringVar(&f.node, "node", "", "this node's name, as in its certificate")
}

func (f *identityFlags) transport(log *slog.Logger) (transport.Config, error) {
	if f.certs == "" || f.node == "" {
		return transport.Config{}, errors.New("--certs DIR and --node NAME are required for replication (create them with `blockmirror certs init --out DIR NAME...`)")
	}
	id, err := transport.LoadNode(f.certs, f.node)
	if err != nil {
		return transport.Config{}, err
	}
	return transport.Config{Identity: id, Logger: log}, nil
}

// replFlags are serve's replication flags.
type replFlags struct {
	mirrors       mirrorList
	mode          string
	syncAcks      int
	ackLevel      string
	maxLag        time.Duration
	ackTimeout    time.Duration
	allowDegraded bool
	resyncRate    sizeFlag
	id            identityFlags
}

func (r *replFlags) register(fs *flag.FlagSet) {
	fs.Var(&r.mirrors, "mirror", "a mirror to replicate to, NAME=HOST:PORT (repeatable); NAME is the node name in its certificate")
	fs.StringVar(&r.mode, "mode", "sync", "replication mode: sync (reply after --sync-acks mirrors acked) or async (reply after the local journal; mirrors trail within --max-lag)")
	fs.IntVar(&r.syncAcks, "sync-acks", 1, "K: acks needed from any K of the mirrors (sync), or the mirror whose lag --max-lag bounds (async)")
	fs.StringVar(&r.ackLevel, "ack-level", "written", "what a mirror ack means: received (in its memory), written (in its journal), durable (fdatasync'd)")
	fs.DurationVar(&r.maxLag, "max-lag", 5*time.Second, "async: writes are throttled while the K-th best mirror trails by more than this (0: no bound)")
	fs.DurationVar(&r.ackTimeout, "ack-timeout", 5*time.Second, "sync: how long a write waits for K mirror acks before it fails with EIO")
	fs.BoolVar(&r.allowDegraded, "allow-degraded", false, "sync: with fewer than K mirrors in sync, complete writes with the acks available instead of failing them (shown in status)")
	fs.Var(&r.resyncRate, "resync-rate", "cap on resync data per second, e.g. 200M (default: as fast as the link allows; a window keeps live writes flowing)")
	r.id.register(fs)
}

type replication interface {
	mirror.Replicator
	Status() mirror.ReplicationStatus
	Verify(ctx context.Context, resync bool) mirror.VerifyReport
	Fence(epoch uint64)
	Close() error
}

// start begins replication to the configured mirrors (nil without any).
// volumeName is sent to the mirrors (routing on a multi-volume mirror
// host); pool, when not nil, shares connections with other volumes.
func (r *replFlags) start(ctx context.Context, node *mirror.Node, hooks *volumeHooks, log *slog.Logger, volumeName string, pool *mirror.ConnPool) (replication, error) {
	if len(r.mirrors) == 0 {
		return nil, nil
	}
	var mode mirror.Mode
	switch r.mode {
	case "sync":
		mode = mirror.ModeSync
	case "async":
		mode = mirror.ModeAsync
	default:
		return nil, fmt.Errorf("--mode %q: want sync or async", r.mode)
	}
	level, err := parseAckLevel(r.ackLevel)
	if err != nil {
		return nil, err
	}
	if r.syncAcks < 1 || r.syncAcks > len(r.mirrors) {
		return nil, fmt.Errorf("--sync-acks %d: want 1..%d (the number of --mirror flags)", r.syncAcks, len(r.mirrors))
	}
	tc, err := r.id.transport(log)
	if err != nil {
		return nil, err
	}
	rep, err := mirror.StartReplication(node, mirror.ReplicationOptions{
		Peers: r.mirrors, Mode: mode, SyncAcks: r.syncAcks, AckLevel: level,
		AllowDegraded: r.allowDegraded, AckTimeout: r.ackTimeout, MaxLag: r.maxLag,
		Node: r.id.node, VolumeName: volumeName, Pool: pool, Transport: tc, Logger: log,
		Resync: mirror.ResyncOptions{Rate: r.resyncRate.v},
		OnAck:  hooks.onAck,
	})
	if err != nil {
		return nil, fmt.Errorf("start replication: %w", err)
	}
	log.Info("replicating", "mirrors", r.mirrors.String(), "mode", r.mode, "sync_acks", r.syncAcks,
		"ack_level", r.ackLevel, "allow_degraded", r.allowDegraded)
	return rep, nil
}

func parseAckLevel(s string) (mirror.AckLevel, error) {
	switch s {
	case "received":
		return mirror.AckReceived, nil
	case "written":
		return mirror.AckWritten, nil
	case "durable":
		return mirror.AckDurable, nil
	}
	return 0, fmt.Errorf("--ack-level %q: want received, written or durable", s)
}

func runMirror(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("mirror", "mirror --data DIR --listen HOST:PORT --certs DIR --node NAME [--admin ADDR] [flags]", stderr)
	// The serve flags apply after an online promotion (blockmirror promote
	// --admin): the node then serves NBD at --nbd and replicates to the
	// --mirror peers, and keeps answering at --listen (fencing old primaries).
	var f serveFlags
	fs.StringVar(&f.data, "data", "", "data directory of this mirror (the volume is created on the first primary's connection)")
	fs.StringVar(&f.disk, "disk", "", "disk image file or block device (default DIR/disk.img)")
	fs.StringVar(&f.listen, "listen", "", "QUIC address to accept primaries on, HOST:PORT (required)")
	fs.StringVar(&f.admin, "admin", "127.0.0.1:7481", "local HTTP endpoint, read-only: status, metrics ('' disables)")
	f.control.register(fs)
	f.nbdTLS.register(fs)
	fs.StringVar(&f.nbdAddr, "nbd", "127.0.0.1:10809", "after promotion: NBD listen address, HOST:PORT or unix:PATH")
	fs.StringVar(&f.export, "export", "disk", "after promotion: NBD export name")
	var allow string
	fs.StringVar(&allow, "allow", "", "comma-separated node names of primaries allowed to connect (default: any node the CA signed)")
	fs.Var(&f.journalMax, "journal-max", "journal size bound on disk (default 8G)")
	f.repl.register(fs)
	f.log.register(fs)
	var cf configFlags
	cf.register(fs)
	if err := parseFlags(fs, args, false); err != nil {
		return err
	}
	if names, err := cf.several("mirror"); err != nil {
		return err
	} else if len(names) > 1 {
		return mirrorMany(ctx, fs, &cf, f, allow, names, stderr)
	}
	if err := cf.apply(fs, "mirror", &f, &allow); err != nil {
		return err
	}
	if f.data == "" || f.listen == "" {
		fmt.Fprintln(stderr, "--data and --listen are required")
		fs.Usage()
		return errUsage
	}
	log, err := f.log.logger(stderr)
	if err != nil {
		return err
	}
	leaveOneCPU(log)
	tc, err := f.repl.id.transport(log)
	if err != nil {
		return err
	}
	nbdOpts, err := f.nbdTLS.newServerOptions(f.repl.id, log)
	if err != nil {
		return err
	}
	if allow != "" {
		tc.AllowPeers = strings.Split(allow, ",")
	}
	reg := metrics.New()
	reg.SetBuildInfo(version)
	hooks := newVolumeHooks(reg, f.export)
	// Every line of this daemon names its volume (the config's name, or
	// the data directory).
	label := f.volumeName
	if label == "" {
		label = f.data
	}
	d, err := mirror.NewMirror(ctx, mirror.MirrorOptions{
		Listen: f.listen, Name: f.repl.id.node, Transport: tc, Logger: log.With("volume_name", label),
		Node: mirror.NodeOptions{Dir: f.data, Disk: f.disk, JournalMax: f.journalMax.v, OnSync: hooks.onSync},
	})
	if err != nil {
		return err
	}
	a, err := startAdmin(&f, reg, func() nodeStatus { return nodeStatus{Mirror: ptr(d.Status())} }, log, f.repl.id.node, f.volumeName, f.export)
	if err != nil {
		return err
	}
	defer a.close()
	a.handle("promote", func(ctx context.Context, q url.Values) (any, error) {
		m, err := d.Promote(ctx, q.Get("force") == "1")
		if err != nil {
			return nil, err
		}
		return map[string]any{"promoted": true, "epoch": m.Epoch, "nbd": f.nbdAddr}, nil
	})
	err = d.Run(ctx)
	if !errors.Is(err, mirror.ErrPromoted) {
		return err
	}
	node := d.Node()
	defer node.Close()
	log.Info("serving as primary after promotion", "nbd", f.nbdAddr, "listen", f.listen)
	a.handle("promote", nil)
	return serveNode(ctx, node, &f, nbdOpts, a, hooks, log, nil)
}

func ptr[T any](v T) *T { return &v }
