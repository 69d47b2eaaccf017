package mirror

import (
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/blockmirror/blockmirror/mirror/wire"
)

// frameOf is a lane frame holding seqs first..last (size bytes counted).
func frameOf(first, last uint64, size int) laneFrame {
	var recs []wire.Record
	for s := first; s <= last; s++ {
		recs = append(recs, wire.Record{Seq: s})
	}
	return laneFrame{recs: recs, bytes: size}
}

// TestLaneMergeReordersAcrossLanes feeds frames cut from seqs 1..N to
// several lanes that deliver them with random delays (each lane in its own
// order, lanes overtaking each other) and checks that the merge releases
// every record exactly once, in seq order, while holding at most its
// bound plus one frame per lane.
func TestLaneMergeReordersAcrossLanes(t *testing.T) {
	const lanes, frames, size, limit = 4, 400, 1000, 8000
	rng := rand.New(rand.NewPCG(1, 2))
	// The sender's cut: frame i holds 1..3 records; frames go round the
	// lanes in order (a lane's frames ascend).
	per := make([][]laneFrame, lanes)
	next := uint64(1)
	for i := range frames {
		n := uint64(1 + rng.IntN(3))
		per[i%lanes] = append(per[i%lanes], frameOf(next, next+n-1, size))
		next += n
	}
	total := next - 1
	m := newLaneMerge(limit)
	m.activate(wire.Lanes{Token: 5, From: 1, Count: lanes})
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, lanes)
	for i := range lanes {
		if err := m.join(5, uint8(i)); err != nil {
			t.Fatal(err)
		}
		delays := make([]time.Duration, len(per[i]))
		for k := range delays {
			delays[k] = time.Duration(rng.IntN(300)) * time.Microsecond
		}
		wg.Go(func() {
			for k, f := range per[i] {
				time.Sleep(delays[k])
				if err := m.put(ctx, f); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	want, maxHeld, early := uint64(1), 0, 0
	for want <= total {
		select {
		case <-m.ready:
		case err := <-errs:
			t.Fatalf("put: %v", err)
		case <-ctx.Done():
			t.Fatalf("merge stalled waiting for seq %d of %d", want, total)
		}
		m.mu.Lock()
		maxHeld = max(maxHeld, m.held)
		early = max(early, len(m.pending)-1)
		m.mu.Unlock()
		for {
			f, ok := m.pop()
			if !ok {
				break
			}
			for _, r := range f.recs {
				if r.Seq != want {
					t.Fatalf("released seq %d, want %d", r.Seq, want)
				}
				want++
			}
		}
	}
	wg.Wait()
	if bound := limit + lanes*size; maxHeld > bound {
		t.Errorf("merge held %d bytes, bound %d", maxHeld, bound)
	}
	if early == 0 {
		t.Error("no frame ever arrived ahead of its turn: the test did not reorder")
	}
	t.Logf("%d records in %d frames; at most %d frames waited out of order, %d bytes held", total, frames, early, maxHeld)
}

// TestLaneMergeFullTakesTheAwaitedFrame: with the merge full of later
// frames, a put of a still later one waits, and the awaited frame is
// taken at once (no deadlock); releasing it lets the waiting one in.
func TestLaneMergeFullTakesTheAwaitedFrame(t *testing.T) {
	m := newLaneMerge(100)
	m.activate(wire.Lanes{Token: 1, From: 10, Count: 3})
	ctx := t.Context()
	if err := m.put(ctx, frameOf(12, 12, 100)); err != nil {
		t.Fatal(err)
	}
	blocked := make(chan error, 1)
	go func() { blocked <- m.put(ctx, frameOf(13, 14, 100)) }()
	select {
	case err := <-blocked:
		t.Fatalf("a put into a full merge returned (%v) instead of waiting", err)
	case <-time.After(50 * time.Millisecond):
	}
	if _, ok := m.pop(); ok {
		t.Fatal("pop released a frame before the awaited seq 10 arrived")
	}
	done := make(chan error, 1)
	go func() { done <- m.put(ctx, frameOf(10, 11, 100)) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the awaited frame was refused by a full merge: deadlock")
	}
	for _, want := range []uint64{10, 12} {
		f, ok := m.pop()
		if !ok || f.first() != want {
			t.Fatalf("pop: %v %v, want the frame from %d", f.recs, ok, want)
		}
	}
	if err := <-blocked; err != nil {
		t.Fatalf("the waiting put: %v", err)
	}
	if f, ok := m.pop(); !ok || f.first() != 13 {
		t.Fatalf("pop: %v %v, want the frame from 13", f.recs, ok)
	}
}

func TestLaneMergeRejects(t *testing.T) {
	m := newLaneMerge(1 << 20)
	m.activate(wire.Lanes{Token: 7, From: 5, Count: 2})
	for _, c := range []struct {
		token uint64
		index uint8
	}{{8, 0}, {7, 2}} {
		if err := m.join(c.token, c.index); !errors.Is(err, errLaneProtocol) {
			t.Errorf("join(%d, %d) = %v, want a lane protocol error", c.token, c.index, err)
		}
	}
	if err := m.join(7, 1); err != nil {
		t.Fatal(err)
	}
	if err := m.join(7, 1); !errors.Is(err, errLaneProtocol) {
		t.Errorf("a second join of lane 1 = %v, want a lane protocol error", err)
	}
	ctx := t.Context()
	if err := m.put(ctx, frameOf(4, 4, 10)); !errors.Is(err, errLaneProtocol) {
		t.Errorf("a frame before From = %v, want a lane protocol error", err)
	}
	if err := m.put(ctx, frameOf(7, 8, 10)); err != nil {
		t.Fatal(err)
	}
	if err := m.put(ctx, frameOf(7, 7, 10)); !errors.Is(err, errLaneProtocol) {
		t.Errorf("a second frame from seq 7 = %v, want a lane protocol error", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	small := newLaneMerge(10)
	small.activate(wire.Lanes{Token: 1, From: 1, Count: 2})
	if err := small.put(cctx, frameOf(3, 3, 10)); err != nil {
		t.Fatal(err)
	}
	cancel()
	if err := small.put(cctx, frameOf(4, 4, 10)); !errors.Is(err, context.Canceled) {
		t.Errorf("a waiting put after its context ended = %v, want context.Canceled", err)
	}
}

// TestSendWindowBoundsInFlight: frames wait while the bytes sent and not
// received would pass the limit, one frame always goes, and an ack for
// seq N releases exactly the frames ending at or before N.
func TestSendWindowBoundsInFlight(t *testing.T) {
	w := newSendWindow(100)
	ctx := t.Context()
	if err := w.reserve(ctx, 5, 150); err != nil { // larger than the window, alone: goes
		t.Fatal(err)
	}
	got := make(chan error, 1)
	go func() { got <- w.reserve(ctx, 9, 60) }()
	select {
	case err := <-got:
		t.Fatalf("a frame past the window went (%v)", err)
	case <-time.After(50 * time.Millisecond):
	}
	w.acked(4) // the frame ends at 5: still in flight
	select {
	case err := <-got:
		t.Fatalf("an ack below the frame's end released it (%v)", err)
	case <-time.After(50 * time.Millisecond):
	}
	w.acked(5)
	if err := <-got; err != nil {
		t.Fatal(err)
	}
	if n := w.bytes(); n != 60 {
		t.Fatalf("in flight %d, want 60", n)
	}
	if err := w.reserve(ctx, 12, 40); err != nil { // 60+40 fits exactly
		t.Fatal(err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := w.reserve(cctx, 13, 1); !errors.Is(err, context.Canceled) {
		t.Fatalf("reserve on a full window after its context ended = %v", err)
	}
	w.acked(100)
	if n := w.bytes(); n != 0 {
		t.Fatalf("in flight %d after acking everything, want 0", n)
	}
}
