package config

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
)

// Config is one node's configuration: the node itself and the volumes it
// serves. Load and Parse return it with defaults filled in, so every field
// holds the effective value.
type Config struct {
	// Node describes this process: its identity, logging and admin endpoint.
	Node NodeConfig `toml:"node"`
	// Volumes are the volumes this node serves, as primary or as mirror.
	// At least one is required.
	Volumes []VolumeConfig `toml:"volumes"`

	// src locates keys in the file the Config was parsed from (nil for a
	// Config built in code); Validate uses it for line numbers.
	src *source
}

// NodeConfig is the [node] table.
type NodeConfig struct {
	// Name is this node's name as in its certificate (1-63 letters, digits,
	// '-' and '.', starting and ending with a letter or digit). Required when
	// any volume replicates.
	Name string `toml:"name"`
	// Certs is the directory holding ca.crt and Name.crt/Name.key (made by
	// `blockmirror certs init`). Required when any volume replicates.
	Certs string `toml:"certs"`
	// Admin is the local HTTP endpoint for status and metrics (read-only),
	// HOST:PORT. Default DefaultAdmin; "" disables it. It must be a loopback
	// address unless AdminAllowRemote is set.
	Admin string `toml:"admin"`
	// AdminAllowRemote permits a non-loopback Admin address. The endpoint
	// has no authentication and shows volume names, addresses and sizes
	// (and Go profiles with Pprof).
	AdminAllowRemote bool `toml:"admin_allow_remote"`
	// Control is the unix socket for control (promote, demote, verify):
	// an absolute path, ControlAuto (the default:
	// /run/blockmirror/NAME.sock, NAME the node name or else the
	// volume's), or "" to disable online control.
	Control string `toml:"control"`
	// ControlGroup may use the control socket besides root; "" means
	// "blockmirror", whose absence then only makes the socket root-only
	// (a group named here must exist).
	ControlGroup string `toml:"control_group"`
	// NBDTLS is NBDTLSOff (default), NBDTLSOn (clients may start TLS) or
	// NBDTLSRequire (plaintext clients are refused), for every NBD
	// address of the process.
	NBDTLS string `toml:"nbd_tls"`
	// NBDTLSCert and NBDTLSKey are the NBD server's certificate and key
	// (PEM files); without them the node's certificate from Certs and
	// Name is used.
	NBDTLSCert string `toml:"nbd_tls_cert"`
	NBDTLSKey  string `toml:"nbd_tls_key"`
	// NBDTLSClientCA, when set, requires NBD clients to present a
	// certificate issued by this CA: a PEM file, or NBDTLSClientCACluster
	// for the cluster CA (Certs/ca.crt).
	NBDTLSClientCA string `toml:"nbd_tls_client_ca"`
	// LogLevel is debug, info, warn or error. Default "info".
	LogLevel string `toml:"log_level"`
	// LogFormat is text or json. Default "text".
	LogFormat string `toml:"log_format"`
	// Pprof serves Go profiles under /debug/pprof/ on the admin endpoint.
	Pprof bool `toml:"pprof"`

	// Automatic failover (internal/coord): every node of a volume points
	// at the same etcd cluster. Etcd is its client URLs, comma-separated
	// ("" without automatic failover, unless EtcdEmbed runs a member:
	// then its own client URL).
	Etcd string `toml:"etcd"`
	// EtcdCerts holds ca.crt, client.crt and client.key (TLS to etcd).
	EtcdCerts string `toml:"etcd_certs"`
	// EtcdPrefix is the key prefix (default /blockmirror).
	EtcdPrefix string `toml:"etcd_prefix"`
	// EtcdEmbed runs an etcd member in this node (as k3s does) with its
	// data in this directory; the member is named after the node.
	// EtcdEmbedClient and EtcdEmbedPeer are its URLs (defaults
	// http://127.0.0.1:2379 and :2380); EtcdEmbedCluster is
	// NAME=PEERURL,... of every member (default: this member alone).
	EtcdEmbed        string `toml:"etcd_embed"`
	EtcdEmbedClient  string `toml:"etcd_embed_client"`
	EtcdEmbedPeer    string `toml:"etcd_embed_peer"`
	EtcdEmbedCluster string `toml:"etcd_embed_cluster"`
	// FailoverTTL is the leader lease's TTL (whole seconds, ≥ 2 s;
	// default 5 s).
	FailoverTTL Duration `toml:"failover_ttl"`
	// FailoverMinInterval is the least time between two automatic
	// failovers (default 5 min; negative: none).
	FailoverMinInterval Duration `toml:"failover_min_interval"`
	// FailoverNoFailsafe fences the primary at its lease's end when etcd
	// is unreachable, whatever its mirrors confirm.
	FailoverNoFailsafe bool `toml:"failover_no_failsafe"`
	// FailoverHook is a shell command run on every promotion, demotion,
	// fence and unfence of this node (move a VIP, notify), with
	// BLOCKMIRROR_EVENT, BLOCKMIRROR_EPOCH, BLOCKMIRROR_REASON,
	// BLOCKMIRROR_VOLUME and BLOCKMIRROR_NODE in its environment.
	FailoverHook string `toml:"failover_hook"`
}

// Coordinated reports whether the node runs automatic failover.
func (n *NodeConfig) Coordinated() bool { return n.Etcd != "" || n.EtcdEmbed != "" }

// VolumeConfig is one [[volumes]] table.
type VolumeConfig struct {
	// Name identifies the volume (1-63 letters, digits, '-', '.' and '_',
	// starting with a letter or digit); unique within the file.
	Name string `toml:"name"`
	// Role is RolePrimary or RoleMirror. Required.
	Role string `toml:"role"`
	// Data is the volume's data directory (metadata, journal and, unless
	// Disk is set, the disk image disk.img). Required; unique. Relative
	// paths are relative to the process's working directory.
	Data string `toml:"data"`
	// Disk is a disk image file or block device (default Data/disk.img);
	// unique when set.
	Disk string `toml:"disk"`
	// Size is the size of a new primary volume (a multiple of 512); only
	// needed to create one. A mirror takes its size from the primary.
	Size Size `toml:"size"`
	// NBD is the NBD listen address, HOST:PORT or unix:PATH. Default
	// DefaultNBD. Volumes may share an address if their exports differ. A
	// mirror uses it once promoted.
	NBD string `toml:"nbd"`
	// Export is the NBD export name. Default: the volume name.
	Export string `toml:"export"`
	// ReadOnly serves the export read-only.
	ReadOnly bool `toml:"read_only"`
	// JournalMax bounds the journal on disk; a mirror falling further
	// behind is resynced. Default DefaultJournalMax.
	JournalMax Size `toml:"journal_max"`
	// IndirectMin: writes of at least this size (4 KiB-aligned) are
	// written once, to the disk image, with only their checksums in the
	// journal (docs/design.md, "Indirect writes"); 0 disables it. Default
	// DefaultIndirectMin.
	IndirectMin Size `toml:"indirect_min"`

	// Mirrors are the mirrors a primary replicates to. Primary only.
	Mirrors []MirrorConfig `toml:"mirrors"`
	// Mode is ModeSync (a write completes after SyncAcks mirror acks) or
	// ModeAsync (after the local journal; mirrors trail within MaxLag).
	// Default ModeSync. Primary only.
	Mode string `toml:"mode"`
	// SyncAcks is K: acks needed from any K mirrors (sync), or the mirror
	// whose lag MaxLag bounds (async). 1..len(Mirrors); default 1. Primary
	// only.
	SyncAcks int `toml:"sync_acks"`
	// AckLevel is what a mirror ack means: AckReceived, AckWritten or
	// AckDurable. Default AckWritten. Primary only.
	AckLevel string `toml:"ack_level"`
	// MaxLag throttles async writes while the K-th best mirror trails by
	// more than this; 0 means no bound. Default DefaultMaxLag. Primary only.
	MaxLag Duration `toml:"max_lag"`
	// AckTimeout is how long a sync write waits for K acks before failing
	// with EIO. Must be positive. Default DefaultAckTimeout. Primary only.
	AckTimeout Duration `toml:"ack_timeout"`
	// AllowDegraded completes sync writes with the acks available when
	// fewer than K mirrors are in sync, instead of failing them. Primary only.
	AllowDegraded bool `toml:"allow_degraded"`
	// ResyncRate limits full-resync traffic to each mirror, in bytes per
	// second; 0 means unlimited (the default). Primary only.
	ResyncRate Size `toml:"resync_rate"`
	// Lanes is how many connections each mirror's records are spread
	// over, 1..16; 0 means the default (mirror.DefaultLanes). More lanes
	// help long or lossy paths, where one connection's congestion window
	// bounds the replication (docs/tuning.md). Primary only.
	Lanes int `toml:"lanes"`

	// Listen is the QUIC address a mirror accepts primaries on, HOST:PORT.
	// Required for (and only for) mirrors.
	Listen string `toml:"listen"`
	// Allow lists the node names of primaries allowed to connect; empty
	// means any node the cluster CA signed. Mirror only.
	Allow []string `toml:"allow"`
}

// MirrorConfig is one mirror of a primary volume.
type MirrorConfig struct {
	// Name is the mirror node's name, as in its certificate.
	Name string `toml:"name"`
	// Address is where the mirror listens, HOST:PORT.
	Address string `toml:"address"`
}

// Roles, modes and ack levels: the accepted values of the role, mode and
// ack_level keys (file format).
const (
	RolePrimary = "primary"
	RoleMirror  = "mirror"

	ModeSync  = "sync"
	ModeAsync = "async"

	AckReceived = "received"
	AckWritten  = "written"
	AckDurable  = "durable"

	NBDTLSOff     = "off"
	NBDTLSOn      = "on"
	NBDTLSRequire = "require"

	// ControlAuto selects the default control socket path.
	ControlAuto = "auto"
	// NBDTLSClientCACluster selects the cluster CA for NBD client
	// certificates.
	NBDTLSClientCACluster = "cluster"
)

// Defaults for keys the file leaves out. They match the command-line flags'
// defaults.
const (
	DefaultAdmin     = "127.0.0.1:7480"
	DefaultNBD       = "127.0.0.1:10809"
	DefaultLogLevel  = "info"
	DefaultLogFormat = "text"
	DefaultMode      = ModeSync
	DefaultSyncAcks  = 1
	DefaultAckLevel  = AckWritten
	DefaultMaxLag    = Duration(5e9)
	// MaxLanes bounds Volume.Lanes (the wire protocol's limit).
	MaxLanes          = 16
	DefaultAckTimeout = Duration(5e9)
	DefaultJournalMax = Size(8 << 30)
	// DefaultIndirectMin turns the indirect path on for writes of 256 KiB
	// and more (docs/tuning.md, "Indirect writes", has the sweep); 0 in
	// the file or on the command line turns it off.
	DefaultIndirectMin = Size(256 << 10)
)

// Load reads and parses the TOML file at path (see Parse).
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: read %s: %w", path, err)
	}
	return Parse(data, path)
}

// Parse parses a TOML configuration; name is the file name used in error
// messages. Keys the file leaves out get their defaults (role-dependent: a
// mirror gets no replication settings), and the result is validated. Any
// problem — a TOML syntax error, an unknown key, a value of the wrong type,
// a failed validation rule — makes Parse return a nil Config and an *Error
// listing every problem found, with line numbers.
func Parse(data []byte, name string) (*Config, error) {
	d := newDecoder(data, name)
	c, err := d.decode()
	if err != nil {
		return nil, err
	}
	problems := d.problems
	var verr *Error
	if errors.As(c.Validate(), &verr) {
		// A key that failed to decode was left zero; don't also complain
		// that it is missing or invalid.
	next:
		for _, p := range verr.Problems {
			for _, dp := range d.problems {
				if dp.Key != "" && (p.Key == dp.Key || strings.HasPrefix(p.Key, dp.Key+".") || strings.HasPrefix(p.Key, dp.Key+"[")) {
					continue next
				}
			}
			problems = append(problems, p)
		}
	}
	if len(problems) > 0 {
		sortProblems(problems)
		return nil, &Error{Problems: problems}
	}
	return c, nil
}

// Volume returns the volume named name (a pointer into c.Volumes, so the
// caller can merge command-line flags into it) and whether it exists.
func (c *Config) Volume(name string) (*VolumeConfig, bool) {
	for i := range c.Volumes {
		if c.Volumes[i].Name == name {
			return &c.Volumes[i], true
		}
	}
	return nil, false
}

// WithDefaults returns a deep copy of c where every zero-valued field that
// has a default gets it (role-dependent, as in Parse). Unlike Parse, which
// knows which keys the file set, it cannot tell an explicit zero from an
// unset field: a zero MaxLag becomes DefaultMaxLag, an empty Admin becomes
// DefaultAdmin.
func (c *Config) WithDefaults() *Config {
	cp := c.clone()
	cp.Node.applyDefaults(func(string) bool { return false })
	for i := range cp.Volumes {
		v := &cp.Volumes[i]
		v.applyDefaults(func(key string) bool { return !v.isZero(key) })
	}
	return cp
}

func (c *Config) clone() *Config {
	cp := *c
	cp.Volumes = make([]VolumeConfig, len(c.Volumes))
	for i, v := range c.Volumes {
		v.Mirrors = append([]MirrorConfig(nil), v.Mirrors...)
		v.Allow = append([]string(nil), v.Allow...)
		cp.Volumes[i] = v
	}
	return &cp
}

// applyDefaults fills the node keys has reports absent.
func (n *NodeConfig) applyDefaults(has func(key string) bool) {
	if !has("admin") && n.Admin == "" {
		n.Admin = DefaultAdmin
	}
	if !has("control") && n.Control == "" {
		n.Control = ControlAuto
	}
	if !has("nbd_tls") && n.NBDTLS == "" {
		n.NBDTLS = NBDTLSOff
	}
	if !has("log_level") && n.LogLevel == "" {
		n.LogLevel = DefaultLogLevel
	}
	if !has("log_format") && n.LogFormat == "" {
		n.LogFormat = DefaultLogFormat
	}
}

// applyDefaults fills the volume keys has reports absent. Replication
// defaults apply to primaries only, so that a mirror's config shows no
// replication settings.
func (v *VolumeConfig) applyDefaults(has func(key string) bool) {
	if !has("nbd") {
		v.NBD = DefaultNBD
	}
	if !has("export") {
		v.Export = v.Name
	}
	if !has("journal_max") {
		v.JournalMax = DefaultJournalMax
	}
	if !has("indirect_min") {
		v.IndirectMin = DefaultIndirectMin
	}
	if v.Role != RolePrimary {
		return
	}
	if !has("mode") {
		v.Mode = DefaultMode
	}
	if !has("sync_acks") {
		v.SyncAcks = DefaultSyncAcks
	}
	if !has("ack_level") {
		v.AckLevel = DefaultAckLevel
	}
	if !has("max_lag") {
		v.MaxLag = DefaultMaxLag
	}
	if !has("ack_timeout") {
		v.AckTimeout = DefaultAckTimeout
	}
}

// isZero reports whether the defaultable field key of v is unset.
func (v *VolumeConfig) isZero(key string) bool {
	switch key {
	case "nbd":
		return v.NBD == ""
	case "export":
		return v.Export == ""
	case "journal_max":
		return v.JournalMax == 0
	case "indirect_min":
		return v.IndirectMin == 0
	case "mode":
		return v.Mode == ""
	case "sync_acks":
		return v.SyncAcks == 0
	case "ack_level":
		return v.AckLevel == ""
	case "max_lag":
		return v.MaxLag == 0
	case "ack_timeout":
		return v.AckTimeout == 0
	}
	return true
}

// Check loads the file at path and writes "ok: N volumes" to w, or every
// problem found, one per line ("FILE:LINE: message"). It returns nil when
// the file is valid, otherwise an error summarising the failure (the
// details went to w) that wraps ErrInvalid, or the error reading the file.
// It is `blockmirror config check FILE`.
func Check(path string, w io.Writer) error {
	c, err := Load(path)
	if err != nil {
		var ce *Error
		if !errors.As(err, &ce) {
			return err
		}
		for _, p := range ce.Problems {
			fmt.Fprintln(w, p.String())
		}
		n := len(ce.Problems)
		return fmt.Errorf("%s: %d %s: %w", path, n, plural(n, "problem", "problems"), ErrInvalid)
	}
	n := len(c.Volumes)
	_, err = fmt.Fprintf(w, "ok: %d %s\n", n, plural(n, "volume", "volumes"))
	return err
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

// ErrInvalid is wrapped by *Error and by Check's summary error.
var ErrInvalid = errors.New("invalid configuration")

// Problem is one thing wrong with a configuration.
type Problem struct {
	// File is the file name given to Parse or Load ("" for a Config built
	// in code).
	File string
	// Line is the 1-based line the problem is on, 0 when unknown.
	Line int
	// Key is the key path the problem concerns, such as
	// "volumes[1].sync_acks" ("" for the whole file).
	Key string
	// Msg says what is wrong, and where in terms of volume names.
	Msg string
}

// String formats p as "FILE:LINE: MSG", dropping unknown parts.
func (p Problem) String() string {
	var b strings.Builder
	if p.File != "" {
		b.WriteString(p.File)
		if p.Line > 0 {
			fmt.Fprintf(&b, ":%d", p.Line)
		}
		b.WriteString(": ")
	} else if p.Line > 0 {
		fmt.Fprintf(&b, "line %d: ", p.Line)
	}
	b.WriteString(p.Msg)
	return b.String()
}

// Error is the error Parse, Load and Validate return for an invalid
// configuration: every problem found, in file order.
type Error struct {
	Problems []Problem
}

// Error lists the problems, one per line.
func (e *Error) Error() string {
	s := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		s[i] = p.String()
	}
	return strings.Join(s, "\n")
}

// Unwrap makes errors.Is(err, ErrInvalid) true.
func (e *Error) Unwrap() error { return ErrInvalid }
