package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/url"
	"time"

	"github.com/blockmirror/blockmirror/internal/config"
	"github.com/blockmirror/blockmirror/internal/coord"
)

// `blockmirror cluster`: a volume's automatic failover state in etcd.

const clusterUsage = `Usage: blockmirror cluster SUBCOMMAND [flags]

Subcommands:
  status      leader, lease age, epoch, sync set, pause, last failover and every member (--json)
  pause       stop automatic failover of the volume (planned maintenance; --reason TEXT)
  resume      let automatic failover happen again
  switchover  hand the primary role to a mirror with no loss (--to NAME; on the primary's host)

Every subcommand but switchover talks to etcd: --etcd URLS (or the config
file's etcd), --etcd-certs DIR, --etcd-prefix, and --volume NAME (the
volume's name, or its export name for a volume given by flags: default
"disk"). Run "blockmirror cluster SUBCOMMAND -h" for the flags.
`

func runCluster(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, clusterUsage)
		return errUsage
	}
	switch args[0] {
	case "status":
		return clusterStatus(ctx, args[1:], stdout, stderr)
	case "pause", "resume":
		return clusterPause(ctx, args[0], args[1:], stdout, stderr)
	case "switchover":
		return clusterSwitchover(ctx, args[1:], stdout, stderr)
	case "-h", "--help", "-help", "help":
		fmt.Fprint(stderr, clusterUsage)
		return flag.ErrHelp
	}
	fmt.Fprintf(stderr, "blockmirror cluster: unknown subcommand %q\n\n%s", args[0], clusterUsage)
	return errUsage
}

// etcdFlags are the flags that name a volume's keys in etcd.
type etcdFlags struct {
	etcd, certs, prefix, volume, config string
}

func (e *etcdFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&e.etcd, "etcd", "", "etcd client URLs, comma-separated (default: the config file's, else http://127.0.0.1:2379)")
	fs.StringVar(&e.certs, "etcd-certs", "", "directory with ca.crt, client.crt and client.key (TLS to etcd)")
	fs.StringVar(&e.prefix, "etcd-prefix", "", "etcd key prefix (default /blockmirror)")
	fs.StringVar(&e.volume, "volume", "disk", "the volume: its configured name, or its export name for a volume given by flags")
	fs.StringVar(&e.config, "config", "", "node configuration file to take etcd, etcd_certs and etcd_prefix from (flags override it)")
}

// clientConfig says how to reach etcd, as the flags (over the config
// file) say, and the key prefix.
func (e *etcdFlags) clientConfig() (c *coord.ClientConfig, prefix string, err error) {
	endpoints, certs, prefix := e.etcd, e.certs, e.prefix
	if e.config != "" {
		cfg, err := config.Load(e.config)
		if err != nil {
			return nil, "", err
		}
		endpoints = cmp(endpoints, cfg.Node.Etcd, cfg.Node.EtcdEmbedClient)
		certs = cmp(certs, cfg.Node.EtcdCerts)
		prefix = cmp(prefix, cfg.Node.EtcdPrefix)
	}
	eps, err := coord.ParseEndpoints(cmp(endpoints, "http://127.0.0.1:2379"))
	if err != nil {
		return nil, "", fmt.Errorf("--etcd: %w", err)
	}
	cc := &coord.ClientConfig{Endpoints: eps, CertsDir: certs, DialTimeout: 5 * time.Second}
	return cc, prefix, nil
}

// cmp returns the first non-empty string.
// connect makes an etcd client as the flags say (the caller closes it).
func (e *etcdFlags) connect() (*coord.Client, *coord.ClientConfig, string, error) {
	cc, prefix, err := e.clientConfig()
	if err != nil {
		return nil, nil, "", err
	}
	cli, err := coord.Connect(*cc)
	if err != nil {
		return nil, nil, "", fmt.Errorf("connect to etcd: %w", err)
	}
	return cli, cc, prefix, nil
}

func cmp(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}

func clusterStatus(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("cluster status", "cluster status [--etcd URLS] [--volume NAME] [--json]", stderr)
	var e etcdFlags
	e.register(fs)
	asJSON := fs.Bool("json", false, "print the status as JSON")
	if err := parseFlags(fs, args, false); err != nil {
		return err
	}
	cli, cc, prefix, err := e.connect()
	if err != nil {
		return err
	}
	defer cli.Close()
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	st, err := coord.ReadStatus(rctx, cli, prefix, e.volume)
	if err != nil {
		return fmt.Errorf("read the status of volume %s from etcd %v: %w", e.volume, cc.Endpoints, err)
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(st)
	}
	return st.WriteText(stdout)
}

func clusterPause(ctx context.Context, op string, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("cluster "+op, "cluster "+op+" [--etcd URLS] [--volume NAME]", stderr)
	var e etcdFlags
	e.register(fs)
	reason := ""
	if op == "pause" {
		fs.StringVar(&reason, "reason", "", "why (shown in cluster status)")
	}
	if err := parseFlags(fs, args, false); err != nil {
		return err
	}
	cli, _, prefix, err := e.connect()
	if err != nil {
		return err
	}
	defer cli.Close()
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if op == "pause" {
		if reason == "" {
			reason = "paused with blockmirror cluster pause"
		}
		if err := coord.Pause(rctx, cli, prefix, e.volume, reason); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "automatic failover of %s paused (the primary's lease rules still apply; planned switchovers still work): blockmirror cluster resume --volume %s\n", e.volume, e.volume)
		return nil
	}
	if err := coord.Resume(rctx, cli, prefix, e.volume); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "automatic failover of %s resumed\n", e.volume)
	return nil
}

func clusterSwitchover(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("cluster switchover", "cluster switchover --to NAME [--admin ADDR | --control PATH]", stderr)
	to := fs.String("to", "", "the mirror (node name) to hand the primary role to (required)")
	var target controlTarget
	target.register(fs, defaultAdmin, "the running primary")
	if err := parseFlags(fs, args, false); err != nil {
		return err
	}
	if *to == "" {
		fmt.Fprintln(stderr, "--to NAME is required")
		fs.Usage()
		return errUsage
	}
	var res map[string]any
	if err := target.post(ctx, "/v1/switchover?to="+url.QueryEscape(*to), &res); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "switched over to %s: it is the primary of the next epoch; this node is its mirror\n", *to)
	return nil
}
