package config

import (
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Validate checks c as it is (Load and Parse have already applied
// defaults; a Config built in code may want WithDefaults first) and returns
// nil or an *Error listing every problem, each naming the volume and, for a
// parsed Config, the file and line:
//
//	blockmirror.toml:12: volume "db": sync_acks 3 exceeds the 2 mirrors listed
//
// Rules: at least one volume; volume names valid and unique; role primary
// or mirror; data directories (and disks) unique; NBD address+export pairs
// unique; size a multiple of 512; for primaries mode, ack_level and
// sync_acks (1..number of mirrors) valid, mirror names valid node names,
// unique and not this node, mirror addresses HOST:PORT and unique; for
// mirrors a listen address and no primary-only settings; node name and
// certs present when anything replicates; admin on loopback unless
// admin_allow_remote; log level and format known.
func (c *Config) Validate() error {
	v := validator{src: c.src}
	v.node(c)
	v.volumes(c)
	if len(v.problems) == 0 {
		return nil
	}
	sortProblems(v.problems)
	return &Error{Problems: v.problems}
}

type validator struct {
	src      *source
	problems []Problem
}

func (v *validator) add(key, format string, args ...any) {
	p := Problem{Key: key, Msg: fmt.Sprintf(format, args...)}
	if v.src != nil {
		p.File, p.Line = v.src.file, v.src.line(key)
	}
	v.problems = append(v.problems, p)
}

func (v *validator) node(c *Config) {
	n := &c.Node
	var replicating []string
	for _, vol := range c.Volumes {
		if vol.Role == RoleMirror || len(vol.Mirrors) > 0 {
			replicating = append(replicating, strconv.Quote(vol.Name))
		}
	}
	if len(replicating) > 0 {
		who := "volume " + replicating[0] + " replicates"
		if len(replicating) > 1 {
			who = "volumes " + strings.Join(replicating, ", ") + " replicate"
		}
		if n.Name == "" {
			v.add("node.name", "node: name is required (%s; it is this node's certificate name)", who)
		}
		if n.Certs == "" {
			v.add("node.certs", "node: certs is required (%s; it is the directory with ca.crt and the node's certificate and key, made by `blockmirror certs init`)", who)
		}
	}
	if n.Name != "" {
		if err := checkNodeName(n.Name); err != "" {
			v.add("node.name", "node: name %q: %s", n.Name, err)
		}
	}
	if n.Admin != "" {
		host, err := checkHostPort(n.Admin, true)
		switch {
		case err != "":
			v.add("node.admin", "node: admin %q: %s", n.Admin, err)
		case !n.AdminAllowRemote && !isLoopback(host):
			v.add("node.admin", "node: admin %q is not a loopback address; the admin endpoint has no authentication and shows the node's volumes, addresses and metrics (set admin_allow_remote = true to allow it anyway)", n.Admin)
		}
	}
	switch {
	case n.Control == "" || n.Control == ControlAuto:
	case !filepath.IsAbs(n.Control):
		v.add("node.control", "node: control %q: want an absolute path for the control socket, %q, or \"\" to disable online control", n.Control, ControlAuto)
	case len(n.Control) > maxSocketPath:
		v.add("node.control", "node: control %q is %d bytes, longer than the %d a unix socket path allows", n.Control, len(n.Control), maxSocketPath)
	}
	v.failover(n)
	v.nbdTLS(n)
	switch strings.ToLower(n.LogLevel) {
	case "debug", "info", "warn", "error":
	default:
		v.add("node.log_level", "node: log_level %q: want debug, info, warn or error", n.LogLevel)
	}
	switch n.LogFormat {
	case "text", "json":
	default:
		v.add("node.log_format", "node: log_format %q: want text or json", n.LogFormat)
	}
}

// maxSocketPath is the longest unix socket path (sun_path less its NUL).
const maxSocketPath = 107

// nbdTLS checks nbd_tls and its certificate settings.
func (v *validator) nbdTLS(n *NodeConfig) {
	switch n.NBDTLS {
	case NBDTLSOff, NBDTLSOn, NBDTLSRequire:
	default:
		v.add("node.nbd_tls", "node: nbd_tls %q: want %s, %s or %s", n.NBDTLS, NBDTLSOff, NBDTLSOn, NBDTLSRequire)
		return
	}
	if (n.NBDTLSCert == "") != (n.NBDTLSKey == "") {
		v.add("node.nbd_tls_cert", "node: nbd_tls_cert and nbd_tls_key go together (the NBD server's certificate and its key)")
	}
	if n.NBDTLS == NBDTLSOff {
		if n.NBDTLSCert != "" || n.NBDTLSClientCA != "" {
			v.add("node.nbd_tls", "node: nbd_tls is off, so nbd_tls_cert, nbd_tls_key and nbd_tls_client_ca would be ignored: set nbd_tls = \"on\" or \"require\", or remove them")
		}
		return
	}
	if n.NBDTLSCert == "" && (n.Certs == "" || n.Name == "") {
		v.add("node.nbd_tls", "node: nbd_tls %q needs a server certificate: nbd_tls_cert and nbd_tls_key, or certs and name (the node's certificate)", n.NBDTLS)
	}
	if n.NBDTLSClientCA == NBDTLSClientCACluster && n.Certs == "" {
		v.add("node.nbd_tls_client_ca", "node: nbd_tls_client_ca = %q needs certs (the directory with the cluster's ca.crt)", NBDTLSClientCACluster)
	}
}

// failover checks the automatic failover settings.
func (v *validator) failover(n *NodeConfig) {
	if !n.Coordinated() {
		if n.FailoverTTL != 0 || n.FailoverMinInterval != 0 || n.FailoverHook != "" || n.FailoverNoFailsafe ||
			n.EtcdCerts != "" || n.EtcdPrefix != "" || n.EtcdEmbedClient != "" || n.EtcdEmbedPeer != "" || n.EtcdEmbedCluster != "" {
			v.add("node.etcd", "node: the failover_* and etcd_* settings need etcd (the cluster's client URLs) or etcd_embed (a member in this node)")
		}
		return
	}
	if n.Name == "" {
		v.add("node.name", "node: automatic failover needs name: it names this node's records in etcd")
	}
	if d := n.FailoverTTL.Duration(); d != 0 && (d < 2*time.Second || d%time.Second != 0) {
		v.add("node.failover_ttl", "node: failover_ttl %v: must be whole seconds, at least 2s", d)
	}
	if n.EtcdEmbed == "" && (n.EtcdEmbedClient != "" || n.EtcdEmbedPeer != "" || n.EtcdEmbedCluster != "") {
		v.add("node.etcd_embed", "node: etcd_embed_client, etcd_embed_peer and etcd_embed_cluster need etcd_embed (the member's data directory)")
	}
}

func (v *validator) volumes(c *Config) {
	if len(c.Volumes) == 0 {
		v.add("volumes", "no volumes: add at least one [[volumes]] table")
		return
	}
	names := map[string]int{}
	dataDirs := map[string]int{}
	disks := map[string]int{}
	exports := map[string]int{}
	adminHost, adminPort, _ := net.SplitHostPort(c.Node.Admin)
	for i := range c.Volumes {
		vol := &c.Volumes[i]
		key := "volumes[" + strconv.Itoa(i) + "]"
		at := func(k string) string { return key + "." + k }
		who := "volume " + strconv.Quote(vol.Name)
		if vol.Name == "" {
			who = key
			v.add(at("name"), "%s: name is required", who)
		} else if err := checkVolumeName(vol.Name); err != "" {
			v.add(at("name"), "%s: name: %s", who, err)
		} else if j, dup := names[vol.Name]; dup {
			v.add(at("name"), "%s is defined twice (first as volumes[%d]%s)", who, j, v.lineRef("volumes["+strconv.Itoa(j)+"]"))
		} else {
			names[vol.Name] = i
		}

		if vol.Data == "" {
			v.add(at("data"), "%s: data is required (the volume's data directory)", who)
		} else if j, dup := dataDirs[filepath.Clean(vol.Data)]; dup {
			v.add(at("data"), "%s: data directory %q is also used by volume %q", who, vol.Data, c.Volumes[j].Name)
		} else {
			dataDirs[filepath.Clean(vol.Data)] = i
		}
		if vol.Disk != "" {
			if j, dup := disks[filepath.Clean(vol.Disk)]; dup {
				v.add(at("disk"), "%s: disk %q is also used by volume %q", who, vol.Disk, c.Volumes[j].Name)
			} else {
				disks[filepath.Clean(vol.Disk)] = i
			}
		}
		if vol.Size < 0 || vol.Size%512 != 0 {
			v.add(at("size"), "%s: size %d is not a multiple of 512", who, int64(vol.Size))
		}
		if vol.JournalMax <= 0 {
			v.add(at("journal_max"), "%s: journal_max must be positive", who)
		}
		if vol.IndirectMin < 0 || vol.IndirectMin%4096 != 0 {
			v.add(at("indirect_min"), "%s: indirect_min %d must be 0 (off) or a positive multiple of 4096", who, int64(vol.IndirectMin))
		}

		if vol.NBD == "" {
			v.add(at("nbd"), "%s: nbd is required (HOST:PORT or unix:PATH)", who)
		} else if strings.HasPrefix(vol.NBD, "unix:") {
			if len(vol.NBD) == len("unix:") {
				v.add(at("nbd"), "%s: nbd %q: want unix:PATH with a path", who, vol.NBD)
			}
		} else if host, err := checkHostPort(vol.NBD, true); err != "" {
			v.add(at("nbd"), "%s: nbd %q: %s (want HOST:PORT or unix:PATH)", who, vol.NBD, err)
		} else if _, port, _ := net.SplitHostPort(vol.NBD); c.Node.Admin != "" && port == adminPort && port != "0" && sameHost(host, adminHost) {
			v.add(at("nbd"), "%s: nbd %q is also the node's admin address", who, vol.NBD)
		}
		switch {
		case vol.Export == "" && vol.Name == "":
			// Defaults to the name, whose absence is already reported.
		case vol.Export == "":
			v.add(at("export"), "%s: export must not be empty", who)
		case len(vol.Export) > 4096:
			v.add(at("export"), "%s: export name is %d bytes; NBD allows at most 4096", who, len(vol.Export))
		default:
			k := vol.NBD + "\x00" + vol.Export
			if j, dup := exports[k]; dup {
				v.add(at("export"), "%s: NBD export %q on %s is also served by volume %q", who, vol.Export, vol.NBD, c.Volumes[j].Name)
			} else {
				exports[k] = i
			}
		}

		switch vol.Role {
		case RolePrimary:
			v.primary(c, vol, who, at)
		case RoleMirror:
			v.mirror(vol, who, at)
		case "":
			v.add(at("role"), "%s: role is required: primary or mirror", who)
		default:
			v.add(at("role"), "%s: role %q: want primary or mirror", who, vol.Role)
		}
	}
}

func (v *validator) primary(c *Config, vol *VolumeConfig, who string, at func(string) string) {
	switch vol.Mode {
	case ModeSync, ModeAsync:
	default:
		v.add(at("mode"), "%s: mode %q: want sync or async", who, vol.Mode)
	}
	switch vol.AckLevel {
	case AckReceived, AckWritten, AckDurable:
	default:
		v.add(at("ack_level"), "%s: ack_level %q: want received, written or durable", who, vol.AckLevel)
	}
	n := len(vol.Mirrors)
	switch {
	case vol.SyncAcks < 1 && n > 0:
		v.add(at("sync_acks"), "%s: sync_acks %d: want 1..%d (the number of mirrors listed)", who, vol.SyncAcks, n)
	case vol.SyncAcks < 0:
		v.add(at("sync_acks"), "%s: sync_acks %d is negative", who, vol.SyncAcks)
	case vol.SyncAcks > n && (n > 0 || vol.SyncAcks > 1):
		v.add(at("sync_acks"), "%s: sync_acks %d exceeds the %d %s listed", who, vol.SyncAcks, n, plural(n, "mirror", "mirrors"))
	}
	if vol.AckTimeout <= 0 {
		v.add(at("ack_timeout"), "%s: ack_timeout must be positive", who)
	}
	if vol.MaxLag < 0 {
		v.add(at("max_lag"), "%s: max_lag must not be negative", who)
	}
	if vol.ResyncRate < 0 {
		v.add(at("resync_rate"), "%s: resync_rate must not be negative", who)
	}
	if vol.Lanes < 0 || vol.Lanes > MaxLanes {
		v.add(at("lanes"), "%s: lanes %d must be 1..%d (0: the default)", who, vol.Lanes, MaxLanes)
	}
	names := map[string]int{}
	addrs := map[string]int{}
	for j, m := range vol.Mirrors {
		mk := at("mirrors[" + strconv.Itoa(j) + "]")
		switch {
		case m.Name == "":
			v.add(mk+".name", "%s: mirrors[%d]: name is required", who, j)
		case checkNodeName(m.Name) != "":
			v.add(mk+".name", "%s: mirror name %q: %s", who, m.Name, checkNodeName(m.Name))
		case m.Name == c.Node.Name:
			v.add(mk+".name", "%s: mirror %q is this node (node.name); a node cannot mirror to itself", who, m.Name)
		default:
			if k, dup := names[m.Name]; dup {
				v.add(mk+".name", "%s: mirror %q is listed twice (mirrors[%d] and mirrors[%d])", who, m.Name, k, j)
			} else {
				names[m.Name] = j
			}
		}
		if m.Address == "" {
			v.add(mk+".address", "%s: mirror %q: address is required (HOST:PORT)", who, m.Name)
		} else if _, err := checkHostPort(m.Address, false); err != "" {
			v.add(mk+".address", "%s: mirror %q: address %q: %s", who, m.Name, m.Address, err)
		} else if k, dup := addrs[m.Address]; dup {
			v.add(mk+".address", "%s: mirrors %q and %q have the same address %s", who, vol.Mirrors[k].Name, m.Name, m.Address)
		} else {
			addrs[m.Address] = j
		}
	}
	if vol.Listen != "" {
		v.add(at("listen"), "%s: listen applies only to mirrors (a primary connects out to its mirrors)", who)
	}
	if len(vol.Allow) > 0 {
		v.add(at("allow"), "%s: allow applies only to mirrors", who)
	}
}

func (v *validator) mirror(vol *VolumeConfig, who string, at func(string) string) {
	if vol.Listen == "" {
		v.add(at("listen"), "%s: listen is required for a mirror (the QUIC address primaries connect to, HOST:PORT)", who)
	} else if _, err := checkHostPort(vol.Listen, true); err != "" {
		v.add(at("listen"), "%s: listen %q: %s", who, vol.Listen, err)
	}
	for j, a := range vol.Allow {
		if err := checkNodeName(a); err != "" {
			v.add(at("allow["+strconv.Itoa(j)+"]"), "%s: allow: node name %q: %s", who, a, err)
		}
	}
	if vol.Size != 0 {
		v.add(at("size"), "%s: size applies only to primaries (a mirror takes its size from the primary)", who)
	}
	primaryOnly := []struct {
		key string
		set bool
	}{
		{"mirrors", len(vol.Mirrors) > 0},
		{"mode", vol.Mode != ""},
		{"sync_acks", vol.SyncAcks != 0},
		{"ack_level", vol.AckLevel != ""},
		{"max_lag", vol.MaxLag != 0},
		{"ack_timeout", vol.AckTimeout != 0},
		{"allow_degraded", vol.AllowDegraded},
		{"resync_rate", vol.ResyncRate != 0},
		{"lanes", vol.Lanes != 0},
	}
	for _, p := range primaryOnly {
		if p.set {
			v.add(at(p.key), "%s: %s applies only to primaries (this volume's role is mirror)", who, p.key)
		}
	}
}

// lineRef is " (line N)" for a key whose line is known.
func (v *validator) lineRef(key string) string {
	if l := v.src.line(key); l > 0 {
		return " at line " + strconv.Itoa(l)
	}
	return ""
}

// checkNodeName applies the certificate node-name rule (the same as the
// transport package's): 1-63 ASCII letters, digits, '-' and '.', starting
// and ending with a letter or digit, no "..". It returns "" or the reason.
func checkNodeName(name string) string {
	if name == "" || len(name) > 63 {
		return "must be 1-63 characters"
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		alnum := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		if !alnum && c != '-' && c != '.' || (i == 0 || i == len(name)-1) && !alnum {
			return "only letters, digits, '-' and '.' allowed, starting and ending with a letter or digit"
		}
	}
	if strings.Contains(name, "..") {
		return "must not contain \"..\""
	}
	return ""
}

// checkVolumeName: 1-63 ASCII letters, digits, '-', '.' and '_', starting
// with a letter or digit (names may become directory and export names).
func checkVolumeName(name string) string {
	if len(name) > 63 {
		return fmt.Sprintf("%q is longer than 63 characters", name)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		alnum := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		if !alnum && c != '-' && c != '.' && c != '_' || i == 0 && !alnum {
			return fmt.Sprintf("%q: only letters, digits, '-', '.' and '_' allowed, starting with a letter or digit", name)
		}
	}
	return ""
}

// checkHostPort checks HOST:PORT with a numeric port (0 allowed for
// listeners, meaning any free port); an empty host is allowed for
// listeners (all interfaces). It returns the host, and "" or the reason.
func checkHostPort(addr string, listen bool) (string, string) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", "want HOST:PORT"
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return host, fmt.Sprintf("port %q is not a number from 1 to 65535", port)
	}
	if p == 0 && !listen {
		return host, "port 0 cannot be dialed"
	}
	if host == "" && !listen {
		return host, "host is empty"
	}
	if strings.ContainsAny(host, " \t/") {
		return host, fmt.Sprintf("host %q is not a host name or IP address", host)
	}
	return host, ""
}

// isLoopback: localhost or an address in 127.0.0.0/8 or ::1.
func isLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.Unmap().IsLoopback()
}

// sameHost reports whether two listen hosts may collide: equal, or either
// is the wildcard.
func sameHost(a, b string) bool {
	wild := func(h string) bool { return h == "" || h == "0.0.0.0" || h == "::" }
	return a == b || wild(a) || wild(b)
}
