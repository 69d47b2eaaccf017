package journal_test

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/blockmirror/blockmirror/journal"
)

var modelSeed = flag.Uint64("journal.seed", 0, "seed for TestModel (0: time-based)")

type modelRec struct {
	epoch  uint64
	size   int
	op     journal.Op
	offset uint64
	length uint32
}

func (m modelRec) record(seq uint64) journal.Record {
	r := journal.Record{Epoch: m.epoch, Seq: seq, Op: m.op, Offset: m.offset, Length: m.length}
	if m.op == journal.OpWrite {
		r.Data = payload(seq*1000+m.epoch, m.size)
	}
	return r
}

type modelConsumer struct {
	released  uint64
	droppable bool
}

type dropEvent struct {
	name    string
	through uint64
	regions []journal.Region
}

// TestModel runs random operations against the journal and a simple
// in-memory model and checks they agree.
func TestModel(t *testing.T) {
	seeds := []uint64{1, 2, 3}
	if *modelSeed != 0 {
		seeds = []uint64{*modelSeed}
	} else if !testing.Short() {
		seeds = append(seeds, uint64(time.Now().UnixNano()))
	}
	for _, seed := range seeds {
		ok := t.Run("", func(t *testing.T) { runModel(t, seed, 400) })
		if !ok {
			t.Fatalf("model test failed with seed %d (rerun with -journal.seed=%d)", seed, seed)
		}
	}
}

func runModel(t *testing.T, seed uint64, steps int) {
	rng := rand.New(rand.NewPCG(seed, 99))
	dir := t.TempDir()
	var evMu sync.Mutex
	var events []dropEvent
	o := journal.Options{
		Dir: dir, Volume: testVolume, NoSync: true,
		SegmentBytes: 2 << 10, MaxBytes: 24 << 10, TailBytes: int64(rng.IntN(4096) + 1),
		OnDrop: func(name string, through uint64, regs []journal.Region) {
			evMu.Lock()
			events = append(events, dropEvent{name, through, slices.Clone(regs)})
			evMu.Unlock()
		},
	}
	j := mustOpen(t, o)
	defer func() { j.Close() }()
	ctx := context.Background()

	recs := map[uint64]modelRec{}
	var last uint64 // model LastSeq
	var epoch uint64 = 1
	cons := map[string]*modelConsumer{}
	names := []string{"store", "peer:a", "peer:b"}

	processEvents := func() {
		evMu.Lock()
		evs := events
		events = nil
		evMu.Unlock()
		for _, ev := range evs {
			c, ok := cons[ev.name]
			if !ok {
				t.Fatalf("OnDrop for unknown consumer %q", ev.name)
			}
			if !c.droppable {
				t.Fatalf("OnDrop for non-droppable consumer %q", ev.name)
			}
			for i, r := range ev.regions {
				if i > 0 && r.Offset <= ev.regions[i-1].Offset+ev.regions[i-1].Length {
					t.Fatalf("regions not coalesced: %v", ev.regions)
				}
			}
			covered := func(off, n uint64) bool {
				for _, r := range ev.regions {
					if off >= r.Offset && off+n <= r.Offset+r.Length {
						return true
					}
				}
				return false
			}
			// Every record the consumer had not released is covered.
			for s := c.released + 1; s <= ev.through; s++ {
				m, ok := recs[s]
				if ok && m.op != journal.OpEpoch && m.length > 0 && !covered(m.offset, uint64(m.length)) {
					t.Fatalf("drop for %s through %d misses seq %d region %d+%d: %v", ev.name, ev.through, s, m.offset, m.length, ev.regions)
				}
			}
			c.released = max(c.released, ev.through)
		}
	}

	check := func() {
		t.Helper()
		processEvents()
		if got := j.LastSeq(); got != last {
			t.Fatalf("LastSeq %d, model %d", got, last)
		}
		first := j.FirstSeq()
		for name, c := range cons {
			if first > c.released+1 {
				t.Fatalf("first seq %d passed consumer %s released at %d", first, name, c.released)
			}
		}
	}

	verifyRange := func(from uint64, n int) {
		t.Helper()
		r, err := j.NewReader(from)
		if errors.Is(err, journal.ErrGone) && from < j.FirstSeq() {
			return
		}
		if err != nil {
			t.Fatalf("reader from %d: %v", from, err)
		}
		defer r.Close()
		want := from
		for want <= last && n > 0 {
			got, err := r.Next(ctx, 1+rng.IntN(20), 1+rng.IntN(3000))
			if errors.Is(err, journal.ErrGone) {
				return // retention may overtake a slow reader
			}
			if err != nil {
				dumpDir(dir)
				t.Fatalf("read at %d: %v", want, err)
			}
			for _, x := range got {
				m := recs[want]
				exp := m.record(want)
				if x.Seq != want || x.Epoch != exp.Epoch || x.Op != exp.Op || x.Offset != exp.Offset || x.Length != exp.Length || string(x.Data) != string(exp.Data) {
					t.Fatalf("seq %d: got %+v want %+v", want, x, exp)
				}
				want++
				n--
			}
		}
	}

	var trace []string
	defer func() {
		if t.Failed() {
			for _, l := range trace[max(0, len(trace)-40):] {
				t.Log(l)
			}
		}
	}()
	for step := 0; step < steps; step++ {
		k := rng.IntN(100)
		trace = append(trace, fmt.Sprintf("step %d op %d last %d", step, k, last))
		switch {
		case k < 40: // submit a few records
			n := 1 + rng.IntN(8)
			// A third of the batches skip the flusher's wake-up; most of
			// those are then written through, some just waited for, and
			// some left for whatever wakes the flusher next.
			deferred := rng.IntN(3) == 0
			for range n {
				last++
				m := modelRec{epoch: epoch}
				switch rng.IntN(6) {
				case 0:
					m.op, m.offset, m.length = journal.OpTrim, uint64(rng.IntN(64))*512, uint32(rng.IntN(8)+1)*512
				case 1:
					m.op, m.offset, m.length = journal.OpZero, uint64(rng.IntN(64))*512, uint32(rng.IntN(8)+1)*512
				case 2:
					m.op = journal.OpEpoch
				default:
					m.op, m.offset, m.size = journal.OpWrite, uint64(rng.IntN(64))*512, rng.IntN(600)
					m.length = uint32(m.size)
				}
				recs[last] = m
				submit := j.Submit
				if deferred {
					submit = j.SubmitDeferred
				}
				if err := submit(ctx, m.record(last)); err != nil {
					t.Fatalf("step %d submit %d: %v", step, last, err)
				}
			}
			if deferred && rng.IntN(4) != 0 {
				if err := j.WriteThrough(ctx, last); err != nil {
					t.Fatalf("write through %d: %v", last, err)
				}
				if w, _ := j.Watermarks(); w < last {
					t.Fatalf("written watermark %d after write through %d", w, last)
				}
			} else if rng.IntN(2) == 0 {
				lvl := journal.Written
				if rng.IntN(2) == 0 {
					lvl = journal.Durable
				}
				if err := j.Wait(ctx, last, lvl); err != nil {
					t.Fatalf("wait %d: %v", last, err)
				}
				w, d := j.Watermarks()
				if w < last || (lvl == journal.Durable && d < last) {
					t.Fatalf("watermarks %d/%d after wait for %d", w, d, last)
				}
			}
		case k < 55: // read from a random position
			first := j.FirstSeq()
			if last >= first {
				verifyRange(first+rng.Uint64N(last-first+1), 1+rng.IntN(50))
			}
		case k < 65: // release
			if len(cons) > 0 {
				name := names[rng.IntN(len(names))]
				if c, ok := cons[name]; ok && last > c.released {
					through := c.released + 1 + rng.Uint64N(last-c.released)
					c.released = through
					j.Release(name, through)
				}
			}
		case k < 72: // add or remove a consumer
			name := names[rng.IntN(len(names))]
			if _, ok := cons[name]; ok {
				j.RemoveConsumer(name)
				delete(cons, name)
			} else {
				processEvents()
				from := j.FirstSeq() + rng.Uint64N(last+2-j.FirstSeq())
				c := &modelConsumer{released: from - 1, droppable: name != "store"}
				if err := j.AddConsumer(name, from, c.droppable); errors.Is(err, journal.ErrGone) && firstPasses(j, from) {
					break // retention moved FirstSeq meanwhile (or is removing the segment)
				} else if err != nil {
					t.Fatalf("add consumer %s from %d: %v", name, from, err)
				}
				cons[name] = c
			}
		case k < 78: // reopen
			if err := j.Close(); err != nil {
				t.Fatalf("close: %v", err)
			}
			processEvents()
			j = mustOpen(t, o)
			for name, c := range cons {
				if err := j.AddConsumer(name, c.released+1, c.droppable); err != nil {
					t.Fatalf("re-add consumer %s at %d after reopen: %v", name, c.released+1, err)
				}
			}
		case k < 83: // truncate
			processEvents()
			first := j.FirstSeq()
			if last+1 >= first {
				to := first - 1 + rng.Uint64N(last-first+2)
				if err := j.TruncateAfter(to); errors.Is(err, journal.ErrGone) {
					break // retention moved FirstSeq meanwhile
				} else if err != nil {
					t.Fatalf("truncate after %d: %v", to, err)
				}
				for s := to + 1; s <= last; s++ {
					delete(recs, s)
				}
				last = to
				epoch++
				for _, c := range cons {
					c.released = min(c.released, last)
				}
			}
		case k < 86: // full scan
			first := j.FirstSeq()
			n := 0
			if err := j.Scan(first, func(x journal.Record) error {
				s := first + uint64(n)
				exp := recs[s].record(s)
				if x.Seq != s || string(x.Data) != string(exp.Data) || x.Epoch != exp.Epoch {
					t.Fatalf("scan: seq %d got %+v", s, x)
				}
				n++
				return nil
			}); errors.Is(err, journal.ErrGone) && j.FirstSeq() > first {
				break // retention overtook the scan
			} else if err != nil {
				t.Fatalf("scan: %v", err)
			}
			if first+uint64(n) != last+1 {
				t.Fatalf("scan returned %d records from %d, last %d", n, first, last)
			}
		default: // sync
			if err := j.Sync(ctx); err != nil {
				t.Fatal(err)
			}
			if _, d := j.Watermarks(); d != last {
				t.Fatalf("durable %d after Sync, last %d", d, last)
			}
		}
		check()
	}
}

// firstPasses reports whether the journal's first seq moves beyond from
// within a second: true when AddConsumer's ErrGone came from a retention
// pass that had already decided to remove from's segment.
func firstPasses(j *journal.Journal, from uint64) bool {
	for range 1000 {
		if j.FirstSeq() > from {
			return true
		}
		time.Sleep(time.Millisecond)
	}
	return false
}
