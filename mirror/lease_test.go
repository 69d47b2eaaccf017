package mirror_test

import (
	"context"
	"errors"
	"syscall"
	"testing"
	"time"

	"github.com/blockmirror/blockmirror/mirror"
)

// A primary under a write lease completes writes and flushes only before
// the deadline, checked at completion: past it they are held until a new
// deadline comes, and fail with EIO after the hold timeout; demoting
// releases held requests at once.
func TestVolumeWriteLease(t *testing.T) {
	node, err := mirror.OpenNode(t.Context(), mirror.NodeOptions{Dir: t.TempDir(), Size: 4 << 20, Role: mirror.RolePrimary})
	if err != nil {
		t.Fatal(err)
	}
	defer node.Close()
	lease := mirror.NewWriteLease(300 * time.Millisecond)
	v, err := mirror.NewVolume(node, nil, mirror.VolumeOptions{CheckpointInterval: time.Hour, Lease: lease})
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	ctx := t.Context()

	// No lease granted yet: held, then EIO.
	start := time.Now()
	err = v.WriteAt(ctx, buf, 0, false)
	if !errors.Is(err, mirror.ErrNoWriteLease) || !errors.Is(err, syscall.EIO) {
		t.Fatalf("write without a lease: %v", err)
	}
	if d := time.Since(start); d < 300*time.Millisecond {
		t.Fatalf("failed after %v, before the hold timeout", d)
	}

	lease.Set(time.Now().Add(time.Minute), "lease expired")
	if err := v.WriteAt(ctx, buf, 0, true); err != nil {
		t.Fatalf("write under a lease: %v", err)
	}
	if err := v.Flush(ctx); err != nil {
		t.Fatalf("flush under a lease: %v", err)
	}

	// Past the deadline: held until a new deadline is granted.
	lease.Set(time.Now().Add(-time.Millisecond), "lease expired")
	if lease.Valid() {
		t.Fatal("lease valid past its deadline")
	}
	done := make(chan error, 1)
	go func() { done <- v.Flush(ctx) }()
	select {
	case err := <-done:
		t.Fatalf("flush completed past the deadline: %v", err)
	case <-time.After(100 * time.Millisecond):
	}
	lease.Set(time.Now().Add(time.Minute), "")
	if err := <-done; err != nil {
		t.Fatalf("held flush after renewal: %v", err)
	}

	// Held, then the volume is demoted: the write fails at once.
	lease.Set(time.Time{}, "a newer primary exists")
	go func() { done <- v.WriteAt(context.Background(), buf, 4096, false) }()
	time.Sleep(50 * time.Millisecond)
	demoted := make(chan error, 1)
	go func() { demoted <- v.Demote(ctx, false) }()
	select {
	case err := <-done:
		if !errors.Is(err, mirror.ErrNoWriteLease) {
			t.Fatalf("held write after demote: %v", err)
		}
	case <-time.After(200 * time.Millisecond):
		t.Fatal("held write not released by the demotion")
	}
	if err := <-demoted; err != nil {
		t.Fatal(err)
	}
	if left, reason := lease.State(); left > 0 || reason != "a newer primary exists" {
		t.Fatalf("State %v %q", left, reason)
	}
	v.Close()
}
