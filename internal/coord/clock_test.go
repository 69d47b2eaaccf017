package coord

import (
	"sync"
	"testing"
	"time"
)

// fakeClock is a Clock that moves only when told to. Its readings carry
// no monotonic part; the coordinator only subtracts and compares them.
type fakeClock struct {
	mu      sync.Mutex
	now     time.Time
	waiters []fakeWaiter
}

type fakeWaiter struct {
	at time.Time
	ch chan time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{now: time.Unix(1_000_000, 0)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) After(d time.Duration) <-chan time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	ch := make(chan time.Time, 1)
	if d <= 0 {
		ch <- c.now
		return ch
	}
	c.waiters = append(c.waiters, fakeWaiter{c.now.Add(d), ch})
	return ch
}

// Advance moves the clock and fires every timer that is due.
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	kept := c.waiters[:0]
	for _, w := range c.waiters {
		if !w.at.After(c.now) {
			w.ch <- c.now
		} else {
			kept = append(kept, w)
		}
	}
	c.waiters = kept
}

// TestFrozenPrimaryCompletesNothingWhenItResumes drives the primary's
// coordinator and node on a fake clock against real etcd. While the clock
// runs the primary may write; then the process "freezes" (nothing runs)
// while the clock jumps past the TTL, as under SIGSTOP: at the first
// instant it resumes, before its coordinator has run, the deadline the
// node holds is already past, so no write can complete.
func TestFrozenPrimaryCompletesNothingWhenItResumes(t *testing.T) {
	e := startEtcd(t)
	clk := newFakeClock()
	w := newWorld()
	w.clock = clk
	a := w.add("a", RolePrimary, 3, 100)
	w.add("b", RoleMirror, 3, 100)
	a.setPeers(ModeSync, 1, false, "b")
	cfg := testConfig(t, newClient(t, e.Endpoint()), "a")
	cfg.Clock = clk
	r := startCoord(t, cfg, a)
	// Let time run in small steps until a may write.
	stop := make(chan struct{})
	var ticking sync.WaitGroup
	ticking.Add(1)
	go func() {
		defer ticking.Done()
		for {
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
				clk.Advance(5 * time.Millisecond)
			}
		}
	}()
	eventually(t, 15*time.Second, "a may write", func() bool { return a.get().until.After(clk.Now()) && r.c.Status().Leader })
	// Freeze: stop the clock's steps, jump past the TTL.
	close(stop)
	ticking.Wait()
	granted := a.get().until
	clk.Advance(cfg.TTL + time.Second)
	if !granted.Before(clk.Now()) {
		t.Fatalf("after a freeze of TTL+1s the node's deadline is %v in the future", granted.Sub(clk.Now()))
	}
	// The deadline the node holds is bounded by the last renewal: no
	// later than TTL − margin after a renewal the coordinator stamped.
	ls := r.c.Status()
	if ls.LeaseAge < cfg.TTL || ls.WritesUntil != 0 {
		t.Errorf("status after the freeze: %+v", ls)
	}
}
