package transport_test

import (
	"context"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/blockmirror/blockmirror/transport"
)

func TestBackoffSchedule(t *testing.T) {
	b := transport.Backoff{Min: 100 * time.Millisecond, Max: time.Second, Factor: 2, Jitter: -1}
	want := []time.Duration{100, 200, 400, 800, 1000, 1000}
	for i, w := range want {
		if got := b.Next(); got != w*time.Millisecond {
			t.Fatalf("step %d: %v, want %v", i, got, w*time.Millisecond)
		}
	}
	b.Reset()
	if got := b.Next(); got != 100*time.Millisecond {
		t.Fatalf("after Reset: %v", got)
	}
}

func TestBackoffJitterDeterministicAndBounded(t *testing.T) {
	mk := func(seed uint64) *transport.Backoff {
		return &transport.Backoff{Min: 10 * time.Millisecond, Max: 80 * time.Millisecond, Jitter: 0.5, Rand: rand.New(rand.NewPCG(seed, seed))}
	}
	a, b, c := mk(1), mk(1), mk(2)
	differs := false
	base := 10 * time.Millisecond
	for i := 0; i < 50; i++ {
		x, y, z := a.Next(), b.Next(), c.Next()
		if x != y {
			t.Fatalf("step %d: same seed gave %v and %v", i, x, y)
		}
		differs = differs || x != z
		if x < base/2 || x > base {
			t.Fatalf("step %d: %v outside [%v, %v]", i, x, base/2, base)
		}
		base = min(base*2, 80*time.Millisecond)
	}
	if !differs {
		t.Error("different seeds gave identical sequences")
	}
}

func TestBackoffWaitHonoursContext(t *testing.T) {
	b := transport.Backoff{Min: time.Hour, Max: time.Hour}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	start := time.Now()
	if err := b.Wait(ctx); err != context.DeadlineExceeded {
		t.Fatalf("Wait = %v", err)
	}
	if time.Since(start) > time.Second {
		t.Fatal("Wait ignored the context")
	}
}
