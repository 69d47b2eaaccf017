package journal_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/blockmirror/blockmirror/internal/vfs"
	"github.com/blockmirror/blockmirror/journal"
)

// powerSize is the payload size of seq in the power-loss test: mostly
// small (many records per write and per sector), sometimes larger than a
// segment.
func powerSize(seq uint64) int {
	h := seq * 0x9E3779B97F4A7C15
	switch h >> 61 {
	case 0:
		return 70<<10 + int(h%4096)
	case 1, 2:
		return int(h % (12 << 10))
	default:
		return int(h % 700)
	}
}

func powerOpts(fsys vfs.FS) journal.Options {
	return journal.Options{FS: fsys, Dir: "/node/journal", Volume: testVolume, SegmentBytes: 64 << 10, MaxBytes: 1 << 40}
}

// TestPowerLoss appends records from four writers (a third of them waited
// for Durable) to a journal on the crashable MemFS, cuts the power at a
// random instant, and reopens the journal on what the crash left: it must
// open, hold a gapless prefix of the records submitted with their exact
// contents, that prefix must include every record acknowledged Durable
// before the crash, and the recovery must itself be durable (a second
// power loss right after Open changes nothing) and leave nothing behind
// the last record (appending after it and reopening keeps the chain).
// Invariant: a power loss never loses a durable record and never stops the
// journal from opening.
func TestPowerLoss(t *testing.T) {
	seeds := 60
	if testing.Short() {
		seeds = 15
	}
	base := uint64(1)
	if *modelSeed != 0 {
		base, seeds = *modelSeed, 1
	}
	for i := range seeds {
		seed := base + uint64(i)
		t.Run(fmt.Sprint(seed), func(t *testing.T) { powerLossOnce(t, seed) })
	}
}

func powerLossOnce(t *testing.T, seed uint64) {
	t.Logf("rerun with -run 'TestPowerLoss/^%d$' or -journal.seed=%d", seed, seed)
	rng := rand.New(rand.NewPCG(seed, 11))
	m := vfs.NewCrashableMem()
	j, err := journal.Open(powerOpts(m))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	crashAfter := uint64(1 + rng.IntN(800))
	var (
		mu       sync.Mutex // orders seq assignment
		acked    atomic.Uint64
		stop     atomic.Bool
		crashed  *vfs.MemFS
		ackedAt  uint64
		crashMu  sync.Mutex
		wg       sync.WaitGroup
		writeErr atomic.Value
	)
	crash := func() {
		crashMu.Lock()
		defer crashMu.Unlock()
		if crashed == nil {
			ackedAt = acked.Load() // acknowledged before the power went
			crashed = m.CrashClone(rng)
			stop.Store(true)
		}
	}
	for w := range 4 {
		wg.Go(func() {
			for !stop.Load() {
				mu.Lock()
				seq := j.LastSeq() + 1
				err := j.Submit(ctx, rec(seq, powerSize(seq)))
				mu.Unlock()
				if err != nil {
					writeErr.Store(err)
					return
				}
				if seq%3 == uint64(w)%3 {
					if err := j.Wait(ctx, seq, journal.Durable); err != nil {
						writeErr.Store(err)
						return
					}
					for a := acked.Load(); a < seq && !acked.CompareAndSwap(a, seq); a = acked.Load() {
					}
				}
				if seq >= crashAfter {
					crash()
				}
			}
		})
	}
	wg.Wait()
	if err, _ := writeErr.Load().(error); err != nil {
		t.Fatal(err)
	}
	j.Close() // on the old file system; the crash already happened

	j, err = journal.Open(powerOpts(crashed))
	if err != nil {
		t.Fatalf("open after the power loss: %v", err)
	}
	first, last := j.FirstSeq(), j.LastSeq()
	if last < ackedAt {
		t.Fatalf("last seq %d after the power loss, but %d was acknowledged durable", last, ackedAt)
	}
	checkChain(t, j, first, last, powerSize)
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}

	// Recovery is durable: a second power loss right after it keeps it.
	again := crashed.CrashCloneDropUnsynced()
	j, err = journal.Open(powerOpts(again))
	if err != nil {
		t.Fatalf("open after a second power loss: %v", err)
	}
	if j.FirstSeq() != first || j.LastSeq() != last {
		t.Fatalf("second power loss: seqs %d..%d, want %d..%d", j.FirstSeq(), j.LastSeq(), first, last)
	}
	// Nothing of the torn tail is left behind the last record.
	for seq := last + 1; seq <= last+20; seq++ {
		if err := j.Append(ctx, rec(seq, powerSize(seq)), journal.Durable); err != nil {
			t.Fatal(err)
		}
	}
	j.Close()
	j, err = journal.Open(powerOpts(again.CrashCloneDropUnsynced()))
	if err != nil {
		t.Fatalf("open after appending past the recovered end: %v", err)
	}
	defer j.Close()
	if j.LastSeq() != last+20 {
		t.Fatalf("last seq %d after 20 appends, want %d", j.LastSeq(), last+20)
	}
	checkChain(t, j, first, last+20, powerSize)
	t.Logf("crash after seq %d: %d acknowledged durable, %d..%d recovered", crashAfter, ackedAt, first, last)
}

// checkChain scans first..last and checks every record's seq, size (as
// size gives it) and content.
func checkChain(t *testing.T, j *journal.Journal, first, last uint64, size func(uint64) int) {
	t.Helper()
	next := first
	err := j.Scan(first, func(r journal.Record) error {
		if r.Seq != next {
			return fmt.Errorf("seq %d, want %d", r.Seq, next)
		}
		if len(r.Data) != size(r.Seq) {
			return fmt.Errorf("seq %d: %d bytes, want %d", r.Seq, len(r.Data), size(r.Seq))
		}
		checkRec(t, r, r.Seq)
		next++
		return nil
	})
	if err != nil {
		t.Fatalf("scan: %v", err)
	}
	if next != last+1 {
		t.Fatalf("scan ended at %d, last seq %d", next-1, last)
	}
}
