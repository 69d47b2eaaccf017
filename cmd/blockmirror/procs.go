package main

import (
	"log/slog"
	"os"
	"runtime"
	"runtime/debug"
)

// leaveOneCPU runs the daemon's Go code on one CPU fewer than the runtime
// would (never fewer than one), unless GOMAXPROCS is set. A storage daemon
// shares its host with the kernel's I/O work (softirqs of the UDP traffic,
// page-cache writeback) and with the guests or clients it serves; when the
// runtime may use every CPU it spreads each write's goroutine hand-offs
// across threads that then wake each other. On the project's 2-CPU test
// machine, one CPU for Go code raised 4 KiB random-write IOPS at queue
// depth 32 without a mirror from 75–77k to 83–84k, and cut the CPU a
// replicated write costs by 10–20% (docs/tuning.md).
func leaveOneCPU(log *slog.Logger) {
	if os.Getenv("GOMAXPROCS") != "" {
		return
	}
	n := runtime.GOMAXPROCS(0)
	if n <= 1 {
		return
	}
	runtime.GOMAXPROCS(n - 1)
	log.Debug("running Go code on one CPU fewer than available (set GOMAXPROCS to choose)", "gomaxprocs", n-1)
}

// daemonGCPercent is the garbage collector's target the daemon runs with
// unless GOGC is set. Most of a daemon's heap is record data held on
// purpose — the journal's memory tail, the records in flight to mirrors,
// a mirror's lane merge — about 130 MiB under a 1 MiB write stream, and
// with Go's default of 100 the heap grows to twice that before a
// collection: a mirror of an async primary peaked at 279–307 MiB RSS.
// Those buffers hold no pointers, so marking them costs little and
// collecting twice as often is cheap (docs/tuning.md has the A/B).
const daemonGCPercent = 50

// tightenGC sets daemonGCPercent unless the operator set GOGC.
func tightenGC(log *slog.Logger) {
	if os.Getenv("GOGC") != "" {
		return
	}
	debug.SetGCPercent(daemonGCPercent)
	log.Debug("garbage collector target set (set GOGC to choose)", "gogc", daemonGCPercent)
}
