// Command blockmirror is a block-device mirroring agent: a primary serves a
// virtual disk over NBD, journals every write and ships it over QUIC to
// mirror agents; a mirror can be promoted when the primary is lost.
//
// Run `blockmirror help` for the commands.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"syscall"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

type command struct {
	name    string
	summary string
	run     func(ctx context.Context, args []string, stdout, stderr io.Writer) error
}

func commands() []command {
	return []command{
		{"serve", "serve a volume over NBD as the primary, replicating to mirrors", runServe},
		{"mirror", "run the mirror daemon that receives a primary's writes", runMirror},
		{"certs", "create the cluster CA and node certificates (certs init)", runCerts},
		{"status", "show the role, epoch and peers of a running node", runStatus},
		{"promote", "make a mirror the primary (epoch + 1)", runPromote},
		{"demote", "turn a primary into a mirror", runDemote},
		{"config", "check a node configuration file (config check FILE)", runConfig},
		{"cluster", "automatic failover on etcd: cluster status, pause, resume, switchover", runCluster},
		{"verify", "compare the primary with its mirrors online (and optionally resync differences)", runVerify},
		{"attach", "attach an NBD export to a kernel /dev/nbdX device", runAttach},
		{"version", "print the version", runVersion},
	}
}

func main() {
	os.Exit(realMain(os.Args[1:], os.Stdout, os.Stderr))
}

func realMain(args []string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" || args[0] == "-help" {
		if len(args) > 1 {
			args = []string{args[1], "-h"}
		} else {
			usage(stdout)
			return 0
		}
	}
	for _, c := range commands() {
		if c.name == args[0] {
			err := c.run(ctx, args[1:], stdout, stderr)
			switch {
			case err == nil, errors.Is(err, flag.ErrHelp):
				return 0
			case errors.Is(err, context.Canceled):
				return 0
			case errors.Is(err, errUsage):
				return 2
			case errors.Is(err, errVerifyFailed):
				return 3
			}
			fmt.Fprintf(stderr, "blockmirror %s: %v\n", c.name, err)
			return 1
		}
	}
	fmt.Fprintf(stderr, "blockmirror: unknown command %q\n\n", args[0])
	usage(stderr)
	return 2
}

// errUsage marks an error the flag package already reported.
var errUsage = errors.New("usage")

// errVerifyFailed: verify found differences or could not compare (exit 3).
var errVerifyFailed = errors.New("verify found differences")

func usage(w io.Writer) {
	fmt.Fprintf(w, "blockmirror %s — block-device mirroring over NBD and QUIC\n\nUsage: blockmirror COMMAND [flags]\n\nCommands:\n", version)
	cs := commands()
	sort.Slice(cs, func(i, j int) bool { return cs[i].name < cs[j].name })
	for _, c := range cs {
		fmt.Fprintf(w, "  %-9s %s\n", c.name, c.summary)
	}
	fmt.Fprintf(w, "\nRun `blockmirror COMMAND -h` for the flags of a command.\n")
}

// newFlagSet returns a FlagSet whose usage text starts with synopsis.
func newFlagSet(name, synopsis string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: blockmirror %s\n\nFlags:\n", synopsis)
		fs.PrintDefaults()
	}
	return fs
}

// parseFlags parses args, rejecting stray positional arguments unless
// positional allows them.
func parseFlags(fs *flag.FlagSet, args []string, positional bool) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return errUsage
	}
	if !positional && fs.NArg() > 0 {
		fmt.Fprintf(fs.Output(), "unexpected argument %q\n", fs.Arg(0))
		fs.Usage()
		return errUsage
	}
	return nil
}

func runVersion(_ context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("version", "version", stderr)
	if err := parseFlags(fs, args, false); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "blockmirror %s\n", version)
	return nil
}
