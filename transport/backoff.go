package transport

import (
	"context"
	"math/rand/v2"
	"time"
)

// Backoff computes exponentially growing, jittered delays between
// reconnection attempts. Fill in the fields (zero values select the
// defaults noted) and call Next before every retry, Reset after a success.
// Not safe for concurrent use.
type Backoff struct {
	// Min is the first delay (default 100 ms).
	Min time.Duration
	// Max caps the delay (default 10 s).
	Max time.Duration
	// Factor multiplies the delay after every attempt (default 2; values
	// below 1 are treated as 1).
	Factor float64
	// Jitter in [0, 1] is the fraction of each delay that is randomised:
	// Next returns a value uniformly in [d·(1−Jitter), d]. Default 0.2;
	// negative means none.
	Jitter float64
	// Rand is the randomness source; nil uses a randomly seeded one. Pass
	// rand.New(rand.NewPCG(seed, seed)) for reproducible sequences.
	Rand *rand.Rand

	cur time.Duration // un-jittered delay of the next attempt; 0 = Min
}

func (b *Backoff) params() (lo, hi time.Duration, f, j float64) {
	lo, hi, f, j = b.Min, b.Max, b.Factor, b.Jitter
	if lo <= 0 {
		lo = 100 * time.Millisecond
	}
	if hi <= 0 {
		hi = 10 * time.Second
	}
	if hi < lo {
		hi = lo
	}
	if f == 0 {
		f = 2
	}
	if f < 1 {
		f = 1
	}
	switch {
	case j == 0:
		j = 0.2
	case j < 0:
		j = 0
	case j > 1:
		j = 1
	}
	return lo, hi, f, j
}

// Next returns the delay before the next attempt and advances the schedule.
func (b *Backoff) Next() time.Duration {
	lo, hi, f, j := b.params()
	if b.cur < lo {
		b.cur = lo
	}
	d := b.cur
	if next := time.Duration(float64(d) * f); next > hi || next < d {
		b.cur = hi
	} else {
		b.cur = next
	}
	if d > hi {
		d = hi
	}
	if j > 0 {
		if b.Rand == nil {
			b.Rand = rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))
		}
		d -= time.Duration(j * b.Rand.Float64() * float64(d))
	}
	return d
}

// Reset restarts the schedule at Min (call it after a successful connect).
func (b *Backoff) Reset() { b.cur = 0 }

// Wait sleeps for Next() or until ctx is done (returning its error).
func (b *Backoff) Wait(ctx context.Context) error {
	t := time.NewTimer(b.Next())
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
