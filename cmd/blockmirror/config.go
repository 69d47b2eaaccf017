package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"strings"

	"github.com/blockmirror/blockmirror/internal/config"
	"github.com/blockmirror/blockmirror/mirror"
)

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

// configFlags are --config and --volume, shared by serve and mirror.
type configFlags struct {
	path, volume string
}

func (c *configFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&c.path, "config", "", "node configuration file (TOML; see dist/blockmirror.example.toml); flags given on the command line override it")
	fs.StringVar(&c.volume, "volume", "", "with --config: the one volume to run (default: every volume of this role in the file, in one process)")
}

// several returns the names of the file's volumes of role when --config is
// given without --volume (nil otherwise): with more than one, the process
// runs them all.
func (c *configFlags) several(role string) ([]string, error) {
	if c.path == "" || c.volume != "" {
		return nil, nil
	}
	cfg, err := config.Load(c.path)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, v := range cfg.Volumes {
		if v.Role == role {
			names = append(names, v.Name)
		}
	}
	return names, nil
}

// apply fills every flag of f that was not given on the command line from
// the configuration file's volume of the given role.
func (c *configFlags) apply(fs *flag.FlagSet, role string, f *serveFlags, allow *string) error {
	set := map[string]bool{}
	fs.Visit(func(fl *flag.Flag) { set[fl.Name] = true })
	f.control.explicit = set["control-group"]
	if c.path == "" {
		if c.volume != "" {
			return fmt.Errorf("--volume needs --config")
		}
		return nil
	}
	cfg, err := config.Load(c.path)
	if err != nil {
		return err
	}
	var vols []config.VolumeConfig
	var names []string
	for _, v := range cfg.Volumes {
		if v.Role == role && (c.volume == "" || v.Name == c.volume) {
			vols = append(vols, v)
			names = append(names, v.Name)
		}
	}
	switch {
	case len(vols) == 0 && c.volume != "":
		return fmt.Errorf("%s: no %s volume named %q", c.path, role, c.volume)
	case len(vols) == 0:
		return fmt.Errorf("%s: no %s volume", c.path, role)
	case len(vols) > 1:
		return fmt.Errorf("%s has %d %s volumes (%s): choose one with --volume",
			c.path, len(vols), role, strings.Join(names, ", "))
	}
	v, n := vols[0], cfg.Node
	f.volumeName = v.Name
	str := func(name string, dst *string, val string) {
		if !set[name] {
			*dst = val
		}
	}
	boolean := func(name string, dst *bool, val bool) {
		if !set[name] {
			*dst = val
		}
	}
	str("data", &f.data, v.Data)
	str("disk", &f.disk, v.Disk)
	str("nbd", &f.nbdAddr, v.NBD)
	str("export", &f.export, v.Export)
	str("admin", &f.admin, n.Admin)
	str("control", &f.control.path, n.Control)
	if !set["control-group"] && n.ControlGroup != "" {
		f.control.group, f.control.explicit = n.ControlGroup, true
	}
	str("nbd-tls", &f.nbdTLS.mode, n.NBDTLS)
	str("nbd-tls-cert", &f.nbdTLS.cert, n.NBDTLSCert)
	str("nbd-tls-key", &f.nbdTLS.key, n.NBDTLSKey)
	str("nbd-tls-client-ca", &f.nbdTLS.clientCA, n.NBDTLSClientCA)
	str("certs", &f.repl.id.certs, n.Certs)
	str("node", &f.repl.id.node, n.Name)
	str("log-level", &f.log.level, n.LogLevel)
	str("log-format", &f.log.format, n.LogFormat)
	boolean("pprof", &f.log.pprof, n.Pprof)
	boolean("read-only", &f.readOnly, v.ReadOnly)
	if !set["size"] {
		f.size.v = int64(v.Size)
	}
	if !set["journal-max"] {
		f.journalMax.v = int64(v.JournalMax)
	}
	if role == config.RoleMirror {
		str("listen", &f.listen, v.Listen)
		if !set["allow"] && allow != nil {
			*allow = strings.Join(v.Allow, ",")
		}
		return nil
	}
	if !set["mirror"] {
		f.repl.mirrors = nil
		for _, m := range v.Mirrors {
			f.repl.mirrors = append(f.repl.mirrors, mirror.PeerAddr{Name: m.Name, Addr: m.Address})
		}
	}
	str("mode", &f.repl.mode, v.Mode)
	str("ack-level", &f.repl.ackLevel, v.AckLevel)
	boolean("allow-degraded", &f.repl.allowDegraded, v.AllowDegraded)
	if !set["sync-acks"] {
		f.repl.syncAcks = v.SyncAcks
	}
	if !set["max-lag"] {
		f.repl.maxLag = v.MaxLag.Duration()
	}
	if !set["ack-timeout"] {
		f.repl.ackTimeout = v.AckTimeout.Duration()
	}
	if !set["resync-rate"] {
		f.repl.resyncRate.v = int64(v.ResyncRate)
	}
	return nil
}
