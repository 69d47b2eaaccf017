package mirror

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/blockmirror/blockmirror/mirror/wire"
)

// TestSimScenarios runs the stories in testdata/sim/*.txt through the
// whole-node simulation. A story is:
//
//	# what happens, in words (comments anywhere)
//	cluster seed=N mirrors=M k=K mode=sync|async level=received|written|durable [degraded] [maxlag=D]
//	        [journalmax=BYTES] [queue=BYTES] [ckpt=D] [mirrorckpt=D] [lanes=N (default 1)]
//	        [indirect=BYTES] [tail=BYTES] [inflight=BYTES]
//	run
//	  events, as the simulation prints schedules (see simEvent), any
//	  number per line, each line may end in a # comment
//	expect
//	  converged | quarantined NODE [N] | resynced NODE | fenced NODE |
//	  not-fenced NODE | split-brain NODE | no-split-brain NODE |
//	  role NODE primary|mirror | epoch N
//
// Every story runs the simulation's invariants too, and after its events
// the faults heal and the cluster must converge.
func TestSimScenarios(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	files, err := filepath.Glob(filepath.Join("testdata", "sim", "*.txt"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no scenarios in testdata/sim: %v", err)
	}
	for _, f := range files {
		t.Run(strings.TrimSuffix(filepath.Base(f), ".txt"), func(t *testing.T) {
			sc, err := parseScenario(f)
			if err != nil {
				t.Fatal(err)
			}
			var logw *strings.Builder
			if *simVerboseFlag {
				logw = new(strings.Builder)
			}
			res := runSchedule(t, sc.seed, sc.params, sc.events, logw)
			if logw != nil {
				t.Log("\n" + logw.String())
			}
			if res.err != "" {
				t.Fatalf("%s\n%s:\n  %s\nreplay with -sim.v for the trace", sc.title, f, res.err)
			}
			for _, e := range sc.expect {
				if msg := e.check(res); msg != "" {
					t.Errorf("%s: expect %s: %s", f, e.line, msg)
				}
			}
		})
	}
}

type scenario struct {
	title  string
	seed   uint64
	params simParams
	events []simEvent
	expect []scenarioExpect
}

type scenarioExpect struct {
	line  string
	check func(simResult) string
}

func parseScenario(path string) (*scenario, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	sc := &scenario{seed: 1}
	sc.params = simParams{mirrors: 1, k: 1, mode: wire.ModeSync, level: wire.AckDurable, ckpt: time.Second, mirrorCkpt: time.Second}
	section := ""
	sc2 := bufio.NewScanner(f)
	for ln := 1; sc2.Scan(); ln++ {
		line := sc2.Text()
		if i := strings.Index(line, "#"); i >= 0 {
			if section == "" && sc.title == "" {
				sc.title = strings.TrimSpace(line[i+1:])
			}
			line = line[:i]
		}
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		fail := func(format string, args ...any) error {
			return fmt.Errorf("%s:%d: %s", path, ln, fmt.Sprintf(format, args...))
		}
		fields := strings.Fields(line)
		switch fields[0] {
		case "cluster":
			for _, kv := range fields[1:] {
				if err := sc.set(kv); err != nil {
					return nil, fail("%v", err)
				}
			}
			continue
		case "run", "expect":
			section = fields[0]
			continue
		}
		switch section {
		case "run":
			evs, err := parseSchedule(line)
			if err != nil {
				return nil, fail("%v", err)
			}
			sc.events = append(sc.events, evs...)
		case "expect":
			e, err := parseExpect(line)
			if err != nil {
				return nil, fail("%v", err)
			}
			sc.expect = append(sc.expect, e)
		default:
			return nil, fail("%q before run or expect", line)
		}
	}
	return sc, sc2.Err()
}

func (sc *scenario) set(kv string) error {
	k, v, _ := strings.Cut(kv, "=")
	p := &sc.params
	var err error
	switch k {
	case "seed":
		sc.seed, err = strconv.ParseUint(v, 10, 64)
	case "mirrors":
		p.mirrors, err = strconv.Atoi(v)
	case "k":
		p.k, err = strconv.Atoi(v)
	case "mode":
		p.mode = map[string]wire.Mode{"sync": wire.ModeSync, "async": wire.ModeAsync}[v]
	case "level":
		p.level = map[string]wire.AckLevel{"received": wire.AckReceived, "written": wire.AckWritten, "durable": wire.AckDurable}[v]
	case "degraded":
		p.degraded = true
	case "maxlag":
		p.maxLag, err = time.ParseDuration(v)
	case "journalmax":
		p.journalMax, err = strconv.ParseInt(v, 10, 64)
	case "queue":
		p.queueBytes, err = strconv.ParseInt(v, 10, 64)
	case "ckpt":
		p.ckpt, err = time.ParseDuration(v)
	case "mirrorckpt":
		p.mirrorCkpt, err = time.ParseDuration(v)
	case "indirect":
		p.indirect, err = strconv.Atoi(v)
	case "tail":
		p.tailBytes, err = strconv.ParseInt(v, 10, 64)
	case "lanes":
		p.lanes, err = strconv.Atoi(v)
	case "inflight":
		p.inFlight, err = strconv.Atoi(v)
	default:
		return fmt.Errorf("unknown cluster setting %q", k)
	}
	if err == nil && (p.mode == 0 || p.level == 0) {
		err = fmt.Errorf("bad %s %q", k, v)
	}
	return err
}

func parseExpect(line string) (scenarioExpect, error) {
	f := strings.Fields(line)
	e := scenarioExpect{line: line}
	node := func() string {
		if len(f) > 1 {
			return f[1]
		}
		return ""
	}
	end := func(r simResult) (simNodeEnd, string) {
		n, ok := r.nodes[node()]
		if !ok {
			return n, fmt.Sprintf("no node %q", node())
		}
		return n, ""
	}
	switch f[0] {
	case "converged":
		e.check = func(simResult) string { return "" } // every run must converge
	case "quarantined":
		want := 1
		if len(f) > 2 {
			want, _ = strconv.Atoi(f[2])
		}
		e.check = func(r simResult) string {
			n, msg := end(r)
			if msg == "" && n.quarantined < want {
				msg = fmt.Sprintf("%d quarantine reports, want at least %d", n.quarantined, want)
			}
			return msg
		}
	case "resynced":
		e.check = func(r simResult) string {
			n, msg := end(r)
			if msg == "" && n.resynced == 0 {
				msg = "no resync chunk was written"
			}
			return msg
		}
	case "fenced", "not-fenced":
		e.check = func(r simResult) string {
			n, msg := end(r)
			if msg == "" && n.fenced != (f[0] == "fenced") {
				msg = fmt.Sprintf("fenced %v", n.fenced)
			}
			return msg
		}
	case "split-brain", "no-split-brain":
		e.check = func(r simResult) string {
			n, msg := end(r)
			if msg == "" && n.splitBrain != (f[0] == "split-brain") {
				msg = fmt.Sprintf("reported a split brain: %v", n.splitBrain)
			}
			return msg
		}
	case "role":
		if len(f) != 3 {
			return e, fmt.Errorf("role NODE primary|mirror")
		}
		e.check = func(r simResult) string {
			n, msg := end(r)
			if msg == "" && n.role != f[2] {
				msg = "it is " + n.role
			}
			return msg
		}
	case "epoch":
		want, err := strconv.ParseUint(node(), 10, 64)
		if err != nil {
			return e, fmt.Errorf("epoch N: %v", err)
		}
		e.check = func(r simResult) string {
			if r.epoch != want {
				return fmt.Sprintf("epoch %d", r.epoch)
			}
			return ""
		}
	default:
		return e, fmt.Errorf("unknown expectation %q", f[0])
	}
	return e, nil
}
