package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"

	"github.com/blockmirror/blockmirror/mirror"
)

func runPromote(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("promote", "promote --data DIR | --admin ADDR | --control PATH [--force]", stderr)
	data := fs.String("data", "", "data directory of a stopped mirror to promote (offline)")
	var target controlTarget
	target.register(fs, "", "a running mirror daemon to promote (online; it then serves NBD)")
	force := fs.Bool("force", false, "promote even if the mirror's store is inconsistent (a resync did not complete)")
	if err := parseFlags(fs, args, false); err != nil {
		return err
	}
	switch {
	case (*data == "") == target.empty():
		fmt.Fprintln(stderr, "give exactly one of --data (stopped mirror) or --admin/--control (running mirror)")
		fs.Usage()
		return errUsage
	case !target.empty():
		path := "/v1/promote"
		if *force {
			path += "?force=1"
		}
		var res struct {
			Epoch uint64
			NBD   string
		}
		if err := target.post(ctx, path, &res); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "promoted: primary in epoch %d, serving NBD at %s\n", res.Epoch, res.NBD)
		return nil
	}
	node, err := mirror.OpenNode(ctx, mirror.NodeOptions{Dir: *data, Logger: slog.New(slog.NewTextHandler(stderr, nil))})
	if err != nil {
		return err
	}
	defer node.Close()
	m, err := mirror.Promote(node, *force)
	if errors.Is(err, mirror.ErrNotMirror) {
		fmt.Fprintf(stdout, "%s is already primary in epoch %d; nothing to do\n", *data, m.Epoch)
		return nil
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "promoted %s: primary in epoch %d from seq %d\nstart serving: blockmirror serve --data %s [--nbd ADDR] [--listen ADDR --certs DIR --node NAME] [--mirror ...]\n",
		*data, m.Epoch, m.History[len(m.History)-1].FirstSeq, *data)
	return nil
}

func runDemote(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("demote", "demote --data DIR | --admin ADDR | --control PATH [--split-brain-loser]", stderr)
	data := fs.String("data", "", "data directory of a stopped primary to demote (offline)")
	var target controlTarget
	target.register(fs, "", "a running primary to demote (it stops serving)")
	loser := fs.Bool("split-brain-loser", false, "this node gives up its side of a split brain: on contact with the other primary it quarantines its writes since the fork and resyncs")
	if err := parseFlags(fs, args, false); err != nil {
		return err
	}
	switch {
	case (*data == "") == target.empty():
		fmt.Fprintln(stderr, "give exactly one of --data (stopped primary) or --admin/--control (running primary)")
		fs.Usage()
		return errUsage
	case !target.empty():
		path := "/v1/demote"
		if *loser {
			path += "?split_brain_loser=1"
		}
		var res map[string]any
		if err := target.post(ctx, path, &res); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "demoted; the process stopped serving. Start it as a mirror: blockmirror mirror --data %v --listen HOST:PORT --certs DIR --node NAME\n", res["data"])
		return nil
	}
	node, err := mirror.OpenNode(ctx, mirror.NodeOptions{Dir: *data, Logger: slog.New(slog.NewTextHandler(stderr, nil))})
	if err != nil {
		return err
	}
	defer node.Close()
	if err := mirror.Demote(node, *loser); err != nil {
		if errors.Is(err, mirror.ErrNotPrimary) {
			fmt.Fprintf(stdout, "%s is already a mirror; nothing to do\n", *data)
			return nil
		}
		return err
	}
	fmt.Fprintf(stdout, "demoted %s to mirror\nstart it: blockmirror mirror --data %s --listen HOST:PORT --certs DIR --node NAME\n", *data, *data)
	return nil
}
