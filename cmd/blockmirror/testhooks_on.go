//go:build blockmirror_testhooks

package main

import "flag"

// registerTestHooks adds the flags only a test build of the daemon has
// (go build -tags blockmirror_testhooks; the e2e tests build it so):
// --test-journal-delay makes every local journal write pass wait, so the
// primary's senders stream records to mirrors before the primary's own
// journal has them — what a crash or power loss then exposes.
func registerTestHooks(fs *flag.FlagSet, d *daemonFlags) {
	fs.DurationVar(&d.testJournalDelay, "test-journal-delay", 0, "TEST BUILD ONLY: delay every local journal write pass by this long")
}
