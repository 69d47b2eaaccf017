package mirror

import (
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"
)

// TestSimNodes runs the whole-node simulation (sim_nodes_test.go) over a
// fixed set of seeds. A failure prints the seed, the parameters, the
// schedule shrunk to the events it needs and the command that replays it.
func TestSimNodes(t *testing.T) {
	// One P: goroutines between two quiescent points run one at a time,
	// so a schedule replays (select's random choices aside).
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(*simProcsFlag))
	if *simSeedFlag != 0 {
		evs := drawSchedule(*simSeedFlag)
		if *simScheduleFlag != "" {
			var err error
			if evs, err = parseSchedule(*simScheduleFlag); err != nil {
				t.Fatal(err)
			}
		}
		simOne(t, *simSeedFlag, evs, true)
		return
	}
	n := *simCountFlag
	if n == 0 {
		n = simCISeeds
		if testing.Short() {
			n = simShortSeed
		}
	}
	start := time.Now()
	var tot simResult
	var failed []uint64
	first := max(*simFirstFlag, 1)
	for seed := first; seed < first+uint64(n); seed++ {
		if *simKeepGoingFlag {
			if res := runSchedule(t, seed, simParamsOf(seed), drawSchedule(seed), nil); res.err != "" {
				failed = append(failed, seed)
				t.Errorf("seed %d: %s", seed, strings.SplitN(res.err, "\n", 2)[0])
			}
			continue
		}
		res := simOne(t, seed, drawSchedule(seed), false)
		if t.Failed() {
			return
		}
		tot.events += res.events
		tot.writes += res.writes
		tot.acked += res.acked
		tot.failover += res.failover
		tot.crashes += res.crashes
		tot.quar += res.quar
		tot.resyncs += res.resyncs
		tot.simTime += res.simTime
	}
	if *simKeepGoingFlag {
		t.Logf("%d schedules in %v, %d failed: %v", n, time.Since(start).Round(time.Millisecond), len(failed), failed)
		return
	}
	wall := time.Since(start)
	t.Logf("%d schedules in %v: %d events, %d requests (%d acknowledged), %d crashes, %d failovers, %d resync chunks, %d divergent records quarantined",
		n, wall.Round(time.Millisecond), tot.events, tot.writes, tot.acked, tot.crashes, tot.failover, tot.resyncs, tot.quar)
	t.Logf("speed: %s", simSpeed(n, tot.events, tot.simTime, wall))
}

// simOne runs one schedule; on a violation it shrinks the schedule and
// fails t with everything needed to replay it.
func simOne(t *testing.T, seed uint64, evs []simEvent, verbose bool) simResult {
	t.Helper()
	var logw *strings.Builder
	if verbose && *simVerboseFlag {
		logw = new(strings.Builder)
	}
	res := runSchedule(t, seed, simParamsOf(seed), evs, logw)
	if logw != nil {
		t.Log("\n" + logw.String())
	}
	if res.err == "" {
		if verbose {
			t.Logf("seed %d (%v): %d events, %d requests, %d acknowledged, %d crashes, %d failovers, %d resync chunks",
				seed, simParamsOf(seed), res.events, res.writes, res.acked, res.crashes, res.failover, res.resyncs)
		}
		return res
	}
	first := res.err
	shrunk := evs
	if *simShrinkFlag {
		shrunk = shrinkSchedule(t, seed, evs[:min(len(evs), res.events)], simFailureKind(first))
	}
	again := runSchedule(t, seed, simParamsOf(seed), shrunk, nil)
	t.Fatalf("simulation seed %d failed (%v):\n  %s\nschedule (%d events, shrunk from %d):\n  %s\nit fails with:\n  %s\nreplay: go test ./mirror -run 'TestSimNodes$' -sim.seed=%d -sim.schedule='%s' -sim.v",
		seed, simParamsOf(seed), first, len(shrunk), len(evs), formatSchedule(shrunk), again.err, seed, formatSchedule(shrunk))
	return res
}

// shrinkSchedule removes events while the schedule still fails the same
// way (kind): halves, then quarters, ... then single events (delta
// debugging, greedy).
func shrinkSchedule(t *testing.T, seed uint64, evs []simEvent, kind string) []simEvent {
	fails := func(s []simEvent) bool {
		err := runSchedule(t, seed, simParamsOf(seed), s, nil).err
		return err != "" && simFailureKind(err) == kind
	}
	if !fails(evs) {
		return evs // it did not replay: keep it whole
	}
	runs := 0
	for chunk := len(evs) / 2; chunk >= 1 && runs < 400; chunk /= 2 {
		for i := 0; i+chunk <= len(evs) && runs < 400; {
			cand := append(append([]simEvent(nil), evs[:i]...), evs[i+chunk:]...)
			runs++
			if fails(cand) {
				evs = cand
				continue
			}
			i += chunk
		}
	}
	return evs
}

// TestSimSoak runs random seeds for -sim.soak and reports the schedules
// run and the failures (with their seeds). scripts/soak.sh runs it.
func TestSimSoak(t *testing.T) {
	if *simSoakFlag == 0 {
		t.Skip("give -sim.soak=DURATION")
	}
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	start := time.Now()
	deadline := start.Add(*simSoakFlag)
	base := uint64(time.Now().UnixNano())
	var runs, events int
	var simTime time.Duration
	var failed []string
	for seed := base; time.Now().Before(deadline); seed++ {
		runs++
		res := runSchedule(t, seed, simParamsOf(seed), drawSchedule(seed), nil)
		events += res.events
		simTime += res.simTime
		if res.err != "" {
			failed = append(failed, fmt.Sprintf("seed %d: %s", seed, strings.SplitN(res.err, "\n", 2)[0]))
			t.Logf("FAIL seed %d: %s\n  replay: go test ./mirror -run 'TestSimNodes$' -sim.seed=%d -sim.v", seed, res.err, seed)
		}
	}
	wall := time.Since(start)
	fmt.Printf("soak: %d schedules in %v, %d failed (%s)\n", runs, wall.Round(time.Second), len(failed), simSpeed(runs, events, simTime, wall))
	for _, f := range failed {
		fmt.Println("  " + f)
	}
	if len(failed) > 0 {
		t.Fail()
	}
}

// simFailureKind is a failure's message without its time, numbers and
// details: two runs fail the same way if their kinds match.
func simFailureKind(msg string) string {
	if _, rest, ok := strings.Cut(msg, ": "); ok && strings.HasPrefix(msg, "t=") {
		msg = rest
	}
	var b strings.Builder
	for _, r := range msg {
		switch {
		case r == '\n' || r == '(' || r == ':':
			return b.String()
		case r >= '0' && r <= '9':
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}

// simSpeed is the simulation's throughput: schedules per wall minute,
// events per wall second and simulated seconds per wall second. The
// simulation runs on one P (GOMAXPROCS 1, see TestSimNodes), so a wall
// minute is about a CPU minute of the simulated nodes' goroutines plus the
// runtime's (GC) on an otherwise idle core.
func simSpeed(schedules, events int, simTime, wall time.Duration) string {
	if wall <= 0 {
		return "no time measured"
	}
	return fmt.Sprintf("%.0f schedules/min, %.0f events/s, %.1f simulated s per wall s",
		float64(schedules)/wall.Minutes(), float64(events)/wall.Seconds(), simTime.Seconds()/wall.Seconds())
}
