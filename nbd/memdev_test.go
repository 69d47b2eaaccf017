package nbd_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/blockmirror/blockmirror/nbd"
)

// memDev is an in-memory nbd.Device with fault injection and call
// accounting, for tests.
type memDev struct {
	mu   sync.RWMutex
	data []byte

	// failAt: requests touching this offset fail with failErr (-1: none).
	failAt  atomic.Int64
	failErr error
	// delay, if set, is slept (honouring ctx) before each request.
	delay func(op string, off int64) time.Duration
	// gate, if non-nil, blocks every request until closed or ctx done.
	gate chan struct{}
	// zeroFast: WriteZeroes with FastZero fails with ENOTSUP unless set.
	zeroFast bool

	calls, cur, peak atomic.Int64
	cancelled        atomic.Int64
	flushes          atomic.Int64
	fuaCalls         atomic.Int64
	trims            atomic.Int64
	lastZero         atomic.Value // nbd.ZeroFlags
}

var _ nbd.Device = (*memDev)(nil)

func newMemDev(size int) *memDev {
	d := &memDev{data: make([]byte, size)}
	d.failAt.Store(-1)
	d.failErr = fmt.Errorf("memdev: injected: %w", syscall.EIO)
	return d
}

func (d *memDev) Size() int64 { return int64(len(d.data)) }

// enter does the accounting and fault injection shared by all calls.
func (d *memDev) enter(ctx context.Context, op string, off, n int64) error {
	d.calls.Add(1)
	c := d.cur.Add(1)
	for {
		p := d.peak.Load()
		if c <= p || d.peak.CompareAndSwap(p, c) {
			break
		}
	}
	if d.gate != nil {
		select {
		case <-d.gate:
		case <-ctx.Done():
			d.cancelled.Add(1)
			return ctx.Err()
		}
	}
	if d.delay != nil {
		if t := d.delay(op, off); t > 0 {
			tm := time.NewTimer(t)
			select {
			case <-tm.C:
			case <-ctx.Done():
				tm.Stop()
				d.cancelled.Add(1)
				return ctx.Err()
			}
		}
	}
	if f := d.failAt.Load(); f >= 0 && f >= off && f < off+max(n, 1) {
		return d.failErr
	}
	return nil
}

func (d *memDev) leave() { d.cur.Add(-1) }

func (d *memDev) ReadAt(ctx context.Context, p []byte, off int64) error {
	defer d.leave()
	if err := d.enter(ctx, "read", off, int64(len(p))); err != nil {
		return err
	}
	d.mu.RLock()
	copy(p, d.data[off:])
	d.mu.RUnlock()
	return nil
}

func (d *memDev) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	defer d.leave()
	if err := d.enter(ctx, "write", off, int64(len(p))); err != nil {
		return err
	}
	if fua {
		d.fuaCalls.Add(1)
	}
	d.mu.Lock()
	copy(d.data[off:], p)
	d.mu.Unlock()
	return nil
}

func (d *memDev) Trim(ctx context.Context, off, length int64, fua bool) error {
	defer d.leave()
	if err := d.enter(ctx, "trim", off, length); err != nil {
		return err
	}
	d.trims.Add(1)
	if fua {
		d.fuaCalls.Add(1)
	}
	d.mu.Lock()
	clear(d.data[off : off+length])
	d.mu.Unlock()
	return nil
}

func (d *memDev) WriteZeroes(ctx context.Context, off, length int64, f nbd.ZeroFlags) error {
	defer d.leave()
	if err := d.enter(ctx, "zero", off, length); err != nil {
		return err
	}
	d.lastZero.Store(f)
	if f.FastZero && !d.zeroFast {
		return fmt.Errorf("memdev: fast zero: %w", syscall.ENOTSUP)
	}
	if f.FUA {
		d.fuaCalls.Add(1)
	}
	d.mu.Lock()
	clear(d.data[off : off+length])
	d.mu.Unlock()
	return nil
}

func (d *memDev) Flush(ctx context.Context) error {
	defer d.leave()
	if err := d.enter(ctx, "flush", 0, 0); err != nil {
		return err
	}
	d.flushes.Add(1)
	return nil
}

func (d *memDev) snapshot(off, n int) []byte {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return append([]byte(nil), d.data[off:off+n]...)
}
