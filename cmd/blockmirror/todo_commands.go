package main

// TEMPORARY: replaced as the replication, failover and status commands land.

import (
	"context"
	"errors"
	"flag"
	"io"
	"log/slog"

	"github.com/blockmirror/blockmirror/mirror"
)

var errNotYet = errors.New("not available in this build yet")

func runMirror(context.Context, []string, io.Writer, io.Writer) error  { return errNotYet }
func runCerts(context.Context, []string, io.Writer, io.Writer) error   { return errNotYet }
func runStatus(context.Context, []string, io.Writer, io.Writer) error  { return errNotYet }
func runPromote(context.Context, []string, io.Writer, io.Writer) error { return errNotYet }
func runDemote(context.Context, []string, io.Writer, io.Writer) error  { return errNotYet }

type replFlags struct{}

func (r *replFlags) register(*flag.FlagSet) {}

type replication interface {
	mirror.Replicator
	Close() error
}

func (r *replFlags) start(context.Context, *mirror.Node, *slog.Logger) (replication, error) {
	return nil, nil
}
