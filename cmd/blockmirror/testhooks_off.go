//go:build !blockmirror_testhooks

package main

import "flag"

// registerTestHooks: a release build has no test hooks (see
// testhooks_on.go).
func registerTestHooks(*flag.FlagSet, *daemonFlags) {}
