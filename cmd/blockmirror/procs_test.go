package main

import (
	"log/slog"
	"runtime"
	"runtime/debug"
	"testing"
)

func TestLeaveOneCPU(t *testing.T) {
	prev := runtime.GOMAXPROCS(0)
	defer runtime.GOMAXPROCS(prev)
	log := slog.New(slog.DiscardHandler)

	t.Setenv("GOMAXPROCS", "")
	runtime.GOMAXPROCS(4)
	leaveOneCPU(log)
	if got := runtime.GOMAXPROCS(0); got != 3 {
		t.Errorf("4 CPUs: GOMAXPROCS %d, want 3", got)
	}
	runtime.GOMAXPROCS(1)
	leaveOneCPU(log)
	if got := runtime.GOMAXPROCS(0); got != 1 {
		t.Errorf("1 CPU: GOMAXPROCS %d, want 1", got)
	}

	t.Setenv("GOMAXPROCS", "4") // the operator's choice stands
	runtime.GOMAXPROCS(4)
	leaveOneCPU(log)
	if got := runtime.GOMAXPROCS(0); got != 4 {
		t.Errorf("GOMAXPROCS=4 set: got %d, want 4", got)
	}
}

func TestTightenGC(t *testing.T) {
	prev := debug.SetGCPercent(100)
	defer debug.SetGCPercent(prev)
	log := slog.New(slog.DiscardHandler)

	t.Setenv("GOGC", "")
	tightenGC(log)
	if got := debug.SetGCPercent(100); got != daemonGCPercent {
		t.Errorf("GOGC unset: GC percent %d, want %d", got, daemonGCPercent)
	}
	t.Setenv("GOGC", "200") // the operator's choice stands
	tightenGC(log)
	if got := debug.SetGCPercent(100); got != 100 {
		t.Errorf("GOGC=200 set: GC percent changed to %d", got)
	}
}
