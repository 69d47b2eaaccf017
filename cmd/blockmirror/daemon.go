package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"time"

	"github.com/blockmirror/blockmirror/internal/config"
	"github.com/blockmirror/blockmirror/internal/daemon"
	"github.com/blockmirror/blockmirror/transport"
)

// The daemon commands (serve, mirror): their flags and the configuration
// file become one config.Process, which internal/daemon runs.

// defaultAdmin is where a primary serves status and metrics, and where
// `blockmirror status` looks, unless told otherwise. Loopback only.
const defaultAdmin = config.DefaultAdmin

// daemonFlags bind the daemon commands' flags to a node and a volume;
// keys maps each flag to the configuration key it overrides.
type daemonFlags struct {
	node  config.NodeConfig
	vol   config.VolumeConfig
	keys  map[string]string
	allow string
	// path and volume are --config and --volume.
	path, volume string
	// testJournalDelay: see testhooks_on.go (test builds only).
	testJournalDelay time.Duration
}

func newDaemonFlags() *daemonFlags { return &daemonFlags{keys: map[string]string{}} }

func (d *daemonFlags) str(fs *flag.FlagSet, dst *string, name, key, def, usage string) {
	fs.StringVar(dst, name, def, usage)
	d.keys[name] = key
}

func (d *daemonFlags) text(fs *flag.FlagSet, dst flag.Value, name, key, usage string) {
	fs.Var(dst, name, usage)
	d.keys[name] = key
}

func (d *daemonFlags) boolean(fs *flag.FlagSet, dst *bool, name, key string, usage string) {
	fs.BoolVar(dst, name, false, usage)
	d.keys[name] = key
}

// registerNode adds the flags of the [node] table every daemon has.
func (d *daemonFlags) registerNode(fs *flag.FlagSet, admin string) {
	n := &d.node
	d.str(fs, &n.Admin, "admin", "admin", admin, "local HTTP endpoint, read-only: status, metrics ('' disables)")
	d.str(fs, &n.Control, "control", "control", config.ControlAuto,
		"unix socket for control (promote, demote, verify): "+config.ControlAuto+" is "+daemon.ControlDir+"/NAME.sock, NAME the node name (or the volume's, or the export's); '' disables online control")
	d.str(fs, &n.ControlGroup, "control-group", "control_group", daemon.DefaultControlGroup,
		"group whose members may use the control socket besides root (the socket is 0660 root:GROUP; without the group, 0600)")
	d.str(fs, &n.NBDTLS, "nbd-tls", "nbd_tls", config.NBDTLSOff, "NBD over TLS (NBD_OPT_STARTTLS): off; on (clients may use TLS); require (plaintext clients are refused)")
	d.str(fs, &n.NBDTLSCert, "nbd-tls-cert", "nbd_tls_cert", "", "NBD server certificate, PEM (default: this node's certificate from --certs and --node)")
	d.str(fs, &n.NBDTLSKey, "nbd-tls-key", "nbd_tls_key", "", "key of --nbd-tls-cert, PEM")
	d.str(fs, &n.NBDTLSClientCA, "nbd-tls-client-ca", "nbd_tls_client_ca", "", "require NBD clients to present a certificate from this CA: a PEM file, or 'cluster' for the cluster CA of --certs")
	d.str(fs, &n.Certs, "certs", "certs", "", "directory with ca.crt and this node's NAME.crt/NAME.key (made by 'blockmirror certs init')")
	d.str(fs, &n.Name, "node", "name", "", "this node's name, as in its certificate")
	d.str(fs, &n.LogLevel, "log-level", "log_level", config.DefaultLogLevel, "log level: debug, info, warn or error")
	d.str(fs, &n.LogFormat, "log-format", "log_format", config.DefaultLogFormat, "log format: text or json")
	d.boolean(fs, &n.Pprof, "pprof", "pprof", "serve Go profiles under /debug/pprof/ on the admin endpoint")
	d.registerFailover(fs)
	fs.StringVar(&d.path, "config", "", "node configuration file (TOML; see dist/blockmirror.example.toml); flags given on the command line override it")
	fs.StringVar(&d.volume, "volume", "", "with --config: the one volume to run (default: every volume of this role in the file, in one process)")
	registerTestHooks(fs, d)
}

// registerFailover adds the automatic failover flags (etcd).
func (d *daemonFlags) registerFailover(fs *flag.FlagSet) {
	n := &d.node
	d.str(fs, &n.Etcd, "etcd", "etcd", "", "automatic failover: etcd client URLs, comma-separated (every node of the volume names the same cluster; default with --etcd-embed: its member)")
	d.str(fs, &n.EtcdCerts, "etcd-certs", "etcd_certs", "", "directory with ca.crt, client.crt and client.key: TLS to etcd with a client certificate (and server.crt/server.key for --etcd-embed)")
	d.str(fs, &n.EtcdPrefix, "etcd-prefix", "etcd_prefix", "", "etcd key prefix of the volumes' coordination keys (default /blockmirror)")
	d.str(fs, &n.EtcdEmbed, "etcd-embed", "etcd_embed", "", "run an etcd member in this node with its data in DIR (as k3s does), named after --node; give three nodes one each for a cluster that survives one")
	d.str(fs, &n.EtcdEmbedClient, "etcd-embed-client", "etcd_embed_client", "", "the embedded member's client URL (default http://127.0.0.1:2379)")
	d.str(fs, &n.EtcdEmbedPeer, "etcd-embed-peer", "etcd_embed_peer", "", "the embedded member's peer URL (default http://127.0.0.1:2380)")
	d.str(fs, &n.EtcdEmbedCluster, "etcd-embed-cluster", "etcd_embed_cluster", "", "every embedded member, NAME=PEERURL,... (default: this member alone)")
	d.text(fs, durationFlag{&n.FailoverTTL}, "failover-ttl", "failover_ttl", "leader lease TTL, whole seconds ≥ 2s (default 5s): a lost primary is replaced after about this long; a cut-off one fences itself before")
	d.text(fs, durationFlag{&n.FailoverMinInterval}, "failover-min-interval", "failover_min_interval", "least time between two automatic failovers (default 5m; negative: none)")
	d.boolean(fs, &n.FailoverNoFailsafe, "failover-no-failsafe", "failover_no_failsafe", "when etcd is unreachable, fence the primary at its lease's end even while every mirror of the sync set confirms contact")
	d.str(fs, &n.FailoverHook, "failover-hook", "failover_hook", "", "shell command run on each promotion, demotion, fence and unfence of this node (move a VIP, notify); env BLOCKMIRROR_EVENT, _EPOCH, _REASON, _VOLUME, _NODE, _NBD")
}

// registerReplication adds a primary's replication flags (a mirror's
// apply once it is promoted online).
func (d *daemonFlags) registerReplication(fs *flag.FlagSet) {
	v := &d.vol
	v.SyncAcks = config.DefaultSyncAcks
	v.MaxLag, v.AckTimeout = config.DefaultMaxLag, config.DefaultAckTimeout
	d.text(fs, (*mirrorList)(&v.Mirrors), "mirror", "mirrors", "a mirror to replicate to, NAME=HOST:PORT (repeatable); NAME is the node name in its certificate")
	d.str(fs, &v.Mode, "mode", "mode", config.DefaultMode, "replication mode: sync (reply after --sync-acks mirrors acked) or async (reply after the local journal; mirrors trail within --max-lag)")
	fs.IntVar(&v.SyncAcks, "sync-acks", config.DefaultSyncAcks, "K: acks needed from any K of the mirrors (sync), or the mirror whose lag --max-lag bounds (async)")
	d.keys["sync-acks"] = "sync_acks"
	d.str(fs, &v.AckLevel, "ack-level", "ack_level", config.DefaultAckLevel, "what a mirror ack means: received (in its memory), written (in its journal), durable (fdatasync'd)")
	d.text(fs, durationFlag{&v.MaxLag}, "max-lag", "max_lag", "async: writes are throttled while the K-th best mirror trails by more than this (0: no bound)")
	d.text(fs, durationFlag{&v.AckTimeout}, "ack-timeout", "ack_timeout", "sync: how long a write waits for K mirror acks before it fails with EIO")
	d.boolean(fs, &v.AllowDegraded, "allow-degraded", "allow_degraded", "sync: with fewer than K mirrors in sync, complete writes with the acks available instead of failing them (shown in status)")
	fs.IntVar(&v.Lanes, "lanes", 0, "connections each mirror's records are spread over, 1..16 (default 4): more for long or lossy links, 1 for a single stream (docs/tuning.md)")
	d.keys["lanes"] = "lanes"
	d.text(fs, sizeFlag{&v.ResyncRate}, "resync-rate", "resync_rate", "cap on resync data per second, e.g. 200M (default: as fast as the link allows; a window keeps live writes flowing)")
}

// process merges the flags over the configuration file (if any) into the
// process to run.
func (d *daemonFlags) process(fs *flag.FlagSet, role string) (*config.Process, error) {
	var set []string
	fs.Visit(func(f *flag.Flag) {
		if k, ok := d.keys[f.Name]; ok {
			set = append(set, k)
		}
	})
	node, vol := d.node, d.vol
	if d.allow != "" {
		vol.Allow = strings.Split(d.allow, ",")
	}
	explicitGroup := false
	for _, k := range set {
		explicitGroup = explicitGroup || k == "control_group"
	}
	if !explicitGroup {
		node.ControlGroup = "" // the default group: its absence is only a warning
	}
	if d.path == "" {
		if d.volume != "" {
			return nil, fmt.Errorf("--volume needs --config")
		}
		return config.Merge(nil, "", role, "", node, vol, set)
	}
	c, err := config.Load(d.path)
	if err != nil {
		return nil, err
	}
	return config.Merge(c, d.path, role, d.volume, node, vol, set)
}

// serveFlags returns serve's flags.
func serveFlags(stderr io.Writer) (*daemonFlags, *flag.FlagSet) {
	d := newDaemonFlags()
	fs := newFlagSet("serve", "serve --data DIR [--size SIZE] [--disk PATH] [--nbd ADDR] [--export NAME] [--mirror NAME=HOST:PORT]... [flags]", stderr)
	v := &d.vol
	d.str(fs, &v.Data, "data", "data", "", "data directory: metadata, journal and (unless --disk) the disk image disk.img (required)")
	d.text(fs, sizeFlag{&v.Size}, "size", "size", "size of a new volume, e.g. 10G (only needed to create one)")
	d.str(fs, &v.Disk, "disk", "disk", "", "disk image file or block device (default DIR/disk.img)")
	d.str(fs, &v.NBD, "nbd", "nbd", config.DefaultNBD, "NBD listen address: HOST:PORT or unix:PATH")
	d.str(fs, &v.Export, "export", "export", "disk", "NBD export name")
	v.JournalMax = config.DefaultJournalMax
	d.text(fs, sizeFlag{&v.JournalMax}, "journal-max", "journal_max", "journal size bound on disk, e.g. 8G; a mirror that falls further behind is resynced")
	v.IndirectMin = config.DefaultIndirectMin
	d.text(fs, sizeFlag{&v.IndirectMin}, "indirect-min", "indirect_min", "writes of at least this size (4 KiB-aligned) are written once, to the disk image, with only their checksums in the journal; 0 journals every write with its data")
	d.boolean(fs, &v.ReadOnly, "read-only", "read_only", "serve the export read-only")
	d.str(fs, &v.Listen, "listen", "listen", "", "QUIC address where this primary answers other primaries (an old primary learns it is fenced; a split brain is detected); usually the address it had as a mirror")
	d.registerNode(fs, defaultAdmin)
	d.registerReplication(fs)
	return d, fs
}

func runServe(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return runDaemon(ctx, args, stderr, config.RolePrimary, serveFlags, func(v *config.VolumeConfig) string {
		if v.Data == "" {
			return "--data is required"
		}
		return ""
	})
}

// mirrorFlags returns mirror's flags.
func mirrorFlags(stderr io.Writer) (*daemonFlags, *flag.FlagSet) {
	d := newDaemonFlags()
	fs := newFlagSet("mirror", "mirror --data DIR --listen HOST:PORT --certs DIR --node NAME [--admin ADDR] [flags]", stderr)
	// The serve flags apply after an online promotion (blockmirror promote
	// --admin): the node then serves NBD at --nbd and replicates to the
	// --mirror peers, and keeps answering at --listen (fencing old primaries).
	v := &d.vol
	d.str(fs, &v.Data, "data", "data", "", "data directory of this mirror (the volume is created on the first primary's connection)")
	d.str(fs, &v.Disk, "disk", "disk", "", "disk image file or block device (default DIR/disk.img)")
	d.str(fs, &v.Listen, "listen", "listen", "", "QUIC address to accept primaries on, HOST:PORT (required)")
	d.str(fs, &v.NBD, "nbd", "nbd", config.DefaultNBD, "after promotion: NBD listen address, HOST:PORT or unix:PATH")
	d.str(fs, &v.Export, "export", "export", "disk", "after promotion: NBD export name")
	fs.StringVar(&d.allow, "allow", "", "comma-separated node names of primaries allowed to connect (default: any node the CA signed)")
	d.keys["allow"] = "allow"
	v.JournalMax = config.DefaultJournalMax
	d.text(fs, sizeFlag{&v.JournalMax}, "journal-max", "journal_max", "journal size bound on disk")
	v.IndirectMin = config.DefaultIndirectMin
	d.text(fs, sizeFlag{&v.IndirectMin}, "indirect-min", "indirect_min", "after promotion: writes of at least this size are written once, to the disk image (0: journal every write with its data)")
	d.registerNode(fs, "127.0.0.1:7481")
	d.registerReplication(fs)
	return d, fs
}

func runMirror(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return runDaemon(ctx, args, stderr, config.RoleMirror, mirrorFlags, func(v *config.VolumeConfig) string {
		if v.Data == "" || v.Listen == "" {
			return "--data and --listen are required"
		}
		return ""
	})
}

// runDaemon parses a daemon command's flags (without --config, missing
// says what the command cannot do without) into the process of role, and
// runs it: its logger, one CPU left to the kernel, internal/daemon's
// Process.
func runDaemon(ctx context.Context, args []string, stderr io.Writer, role string,
	flags func(io.Writer) (*daemonFlags, *flag.FlagSet), missing func(*config.VolumeConfig) string) error {
	d, fs := flags(stderr)
	if err := parseFlags(fs, args, false); err != nil {
		return err
	}
	if msg := missing(&d.vol); d.path == "" && msg != "" {
		fmt.Fprintln(stderr, msg)
		fs.Usage()
		return errUsage
	}
	p, err := d.process(fs, role)
	if err != nil {
		return err
	}
	log, err := newLogger(p.Node, stderr)
	if err != nil {
		return err
	}
	leaveOneCPU(log)
	tightenGC(log)
	proc, err := daemon.New(ctx, p, daemon.Options{Logger: log, Version: version, JournalTestWriteDelay: d.testJournalDelay})
	if err != nil {
		return err
	}
	return proc.Run(ctx)
}

// newLogger makes the process's logger from log_level and log_format.
func newLogger(n config.NodeConfig, w io.Writer) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(n.LogLevel)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", n.LogLevel)
	}
	o := &slog.HandlerOptions{Level: lv}
	switch strings.ToLower(n.LogFormat) {
	case "text":
		return slog.New(slog.NewTextHandler(w, o)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, o)), nil
	}
	return nil, fmt.Errorf("--log-format %q: want text or json", n.LogFormat)
}

// mirrorList is the repeatable --mirror NAME=HOST:PORT flag.
type mirrorList []config.MirrorConfig

func (m *mirrorList) String() string {
	var s []string
	for _, p := range *m {
		s = append(s, p.Name+"="+p.Address)
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
	*m = append(*m, config.MirrorConfig{Name: name, Address: addr})
	return nil
}

// sizeFlag is a flag holding a config.Size ("10G").
type sizeFlag struct{ v *config.Size }

func (f sizeFlag) String() string {
	if f.v == nil || *f.v == 0 {
		return ""
	}
	return f.v.String()
}

func (f sizeFlag) Set(s string) error { return f.v.UnmarshalText([]byte(s)) }

// durationFlag is a flag holding a config.Duration ("5s").
type durationFlag struct{ v *config.Duration }

func (f durationFlag) String() string {
	if f.v == nil {
		return ""
	}
	return f.v.String()
}

func (f durationFlag) Set(s string) error { return f.v.UnmarshalText([]byte(s)) }

func runConfig(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) < 1 || args[0] != "check" {
		fmt.Fprintln(stderr, "Usage: blockmirror config check FILE")
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help") {
			return flag.ErrHelp
		}
		return errUsage
	}
	fs := newFlagSet("config check", "config check FILE", stderr)
	if err := parseFlags(fs, args[1:], true); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return errUsage
	}
	return config.Check(fs.Arg(0), stdout)
}
