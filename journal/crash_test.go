package journal_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/blockmirror/blockmirror/journal"
)

const crashChildEnv = "JOURNAL_CRASH_CHILD_DIR"

func TestMain(m *testing.M) {
	if dir := os.Getenv(crashChildEnv); dir != "" {
		crashChild(dir)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func crashOpts(dir string) journal.Options {
	return journal.Options{Dir: dir, Volume: testVolume, SegmentBytes: 256 << 10, MaxBytes: 4 << 20}
}

// crashSize is the payload size of seq in the crash test: mostly small,
// sometimes larger than a segment.
func crashSize(seq uint64) int {
	h := seq * 0x9E3779B97F4A7C15
	switch h >> 60 {
	case 0:
		return 300<<10 + int(h%4096)
	case 1, 2, 3:
		return int(h % (64 << 10))
	default:
		return int(h % 4096)
	}
}

// crashChild appends records with four writers until killed, printing each
// seq once it is acknowledged durable.
func crashChild(dir string) {
	j, err := journal.Open(crashOpts(dir))
	if err != nil {
		fmt.Fprintln(os.Stderr, "child open:", err)
		os.Exit(3)
	}
	out := bufio.NewWriter(os.Stdout)
	var mu sync.Mutex // orders seq assignment and stdout
	ctx := context.Background()
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for {
				mu.Lock()
				seq := j.LastSeq() + 1
				err := j.Submit(ctx, rec(seq, crashSize(seq)))
				mu.Unlock()
				if err != nil {
					fmt.Fprintln(os.Stderr, "child submit:", err)
					os.Exit(4)
				}
				if err := j.Wait(ctx, seq, journal.Durable); err != nil {
					fmt.Fprintln(os.Stderr, "child wait:", err)
					os.Exit(5)
				}
				mu.Lock()
				fmt.Fprintln(out, seq)
				out.Flush()
				mu.Unlock()
			}
		})
	}
	wg.Wait()
}

// TestCrashKill9 re-runs the test binary as a child that appends durably
// and kills it with SIGKILL at random moments; after each kill the journal
// must open, be a gapless prefix, and hold every acknowledged record.
func TestCrashKill9(t *testing.T) {
	budget := 10 * time.Second
	if testing.Short() {
		budget = 2 * time.Second
	}
	seed := uint64(time.Now().UnixNano())
	if *modelSeed != 0 {
		seed = *modelSeed
	}
	t.Logf("seed %d (rerun with -journal.seed=%d)", seed, seed)
	rng := rand.New(rand.NewPCG(seed, 7))
	dir := t.TempDir()
	deadline := time.Now().Add(budget)
	var maxAcked uint64
	iters, torn := 0, 0
	for time.Now().Before(deadline) {
		iters++
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), crashChildEnv+"="+dir)
		cmd.Stderr = os.Stderr
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		acked := make(chan uint64, 1)
		go func() {
			var hi uint64
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				if v, err := strconv.ParseUint(sc.Text(), 10, 64); err == nil && v > hi {
					hi = v
				}
			}
			acked <- hi
		}()
		time.Sleep(time.Duration(20+rng.IntN(150)) * time.Millisecond)
		cmd.Process.Signal(syscall.SIGKILL)
		hi := <-acked
		err = cmd.Wait()
		if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() {
			t.Fatalf("iteration %d: child exited on its own: %v", iters, err)
		}
		maxAcked = max(maxAcked, hi)

		o := crashOpts(dir)
		o.MaxBytes = 1 << 40 // no size-bound drops while verifying
		var logBuf bytes.Buffer
		o.Logger = slog.New(slog.NewTextHandler(&logBuf, nil))
		j, err := journal.Open(o)
		if err != nil {
			t.Fatalf("iteration %d (seed %d): open after kill: %v", iters, seed, err)
		}
		if j.LastSeq() < maxAcked {
			t.Fatalf("iteration %d (seed %d): last seq %d < acknowledged %d", iters, seed, j.LastSeq(), maxAcked)
		}
		checkChain(t, j, j.FirstSeq(), j.LastSeq(), crashSize)
		if err := j.Close(); err != nil {
			t.Fatal(err)
		}
		torn += strings.Count(logBuf.String(), "torn")
	}
	if maxAcked == 0 {
		t.Fatal("the child never acknowledged a record")
	}
	t.Logf("%d kills, %d records acknowledged, %d torn tails repaired", iters, maxAcked, torn)
}
