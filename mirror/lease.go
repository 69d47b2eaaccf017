package mirror

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"syscall"
	"time"
)

// ErrNoWriteLease: the primary's write lease (granted by a coordinator,
// internal/coord) has run out, and a held request waited for a new one
// longer than the hold timeout. The request's content is undefined (as
// for ErrNoQuorum): it may be in the journal and on mirrors.
var ErrNoWriteLease = fmt.Errorf("mirror: this primary holds no write lease (fenced by its coordinator): %w", syscall.EIO)

// WriteLease gates a primary's completions on a deadline on the monotonic
// clock, as a coordinator grants it: a write, FUA write or flush is
// acknowledged only if the clock, read when it is about to complete, is
// before the deadline. Otherwise it is held until a new deadline comes
// (the coordinator renewed the lease) or the hold timeout passes (then it
// fails with ErrNoWriteLease, i.e. EIO). Checking at completion rather than
// at admission is what makes a process frozen past its deadline (SIGSTOP,
// a long pause) complete nothing when it resumes.
//
// Why in this package and not in mirror/core: the core has no clock (time
// is a tick counter), and the check must read the monotonic clock at the
// last moment before the reply, after the core decided the request may
// complete. The Replication also asks Valid before each heartbeat, so
// mirrors stop counting a fenced primary as contact.
//
// A nil *WriteLease allows everything (no coordinator). Methods are safe
// for concurrent use.
type WriteLease struct {
	hold time.Duration

	mu     sync.Mutex
	until  time.Time
	reason string
	// changed is closed and replaced on every Set.
	changed chan struct{}
}

// NewWriteLease returns a lease that allows nothing until Set grants a
// deadline; held requests fail after hold (default 5 s).
func NewWriteLease(hold time.Duration) *WriteLease {
	if hold <= 0 {
		hold = 5 * time.Second
	}
	return &WriteLease{hold: hold, reason: "no write lease granted yet (the coordinator has not confirmed this node as the leader in etcd)",
		changed: make(chan struct{})}
}

// Set makes completions allowed until until (monotonic; the zero time:
// never); reason is what status and errors say once it has passed.
func (l *WriteLease) Set(until time.Time, reason string) {
	l.mu.Lock()
	l.until, l.reason = until, reason
	close(l.changed)
	l.changed = make(chan struct{})
	l.mu.Unlock()
}

// Valid reports whether a completion is allowed now.
func (l *WriteLease) Valid() bool {
	if l == nil {
		return true
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return time.Now().Before(l.until)
}

// State returns how long completions remain allowed (≤ 0: they are not)
// and the reason they stop.
func (l *WriteLease) State() (left time.Duration, reason string) {
	if l == nil {
		return 1<<63 - 1, ""
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return time.Until(l.until), l.reason
}

// complete returns nil once a completion is allowed, holding the caller
// while it is not; it fails after the hold timeout, when ctx ends, or when
// stop is closed (the volume is demoted or closing).
func (l *WriteLease) complete(ctx context.Context, stop <-chan struct{}) error {
	if l == nil {
		return nil
	}
	var timer <-chan time.Time
	for {
		l.mu.Lock()
		if time.Now().Before(l.until) {
			l.mu.Unlock()
			return nil
		}
		ch, reason := l.changed, l.reason
		l.mu.Unlock()
		if timer == nil {
			t := time.NewTimer(l.hold)
			defer t.Stop()
			timer = t.C
		}
		select {
		case <-ch:
		case <-timer:
			return fmt.Errorf("%w: %s (held %v)", ErrNoWriteLease, reason, l.hold)
		case <-stop:
			return fmt.Errorf("%w: %s", ErrNoWriteLease, reason)
		case <-ctx.Done():
			return errors.Join(ctx.Err(), fmt.Errorf("%w: %s", ErrNoWriteLease, reason))
		}
	}
}
