package main

import (
	"context"
	"errors"
	"io"
)

// promote and demote arrive with the failover work; until then they say
// so instead of pretending.
var errNoFailover = errors.New("promote/demote are not implemented in this build yet")

func runPromote(context.Context, []string, io.Writer, io.Writer) error { return errNoFailover }
func runDemote(context.Context, []string, io.Writer, io.Writer) error  { return errNoFailover }
