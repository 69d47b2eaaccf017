package mirror

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/blockmirror/blockmirror/internal/vfs"
	"github.com/blockmirror/blockmirror/journal"
)

// TestApplierBacksOffOnReadErrors: when the journal cannot be read (a
// failing disk; in the simulation, the file system of a process that was
// killed), the mirror's applier retries with a pause that grows, and
// applies again once reads work. It used to retry at once, for ever: a
// core spun at 100 % and the log got one error line per attempt (the
// simulation's seed 796 never advanced its clock: no convergence, no end).
func TestApplierBacksOffOnReadErrors(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var failing atomic.Bool
		var attempts atomic.Int64
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		fsys := vfs.WithErrors(vfs.NewCrashableMem(), vfs.InjectorFunc(func(op vfs.Op, path string) error {
			if !failing.Load() || op != vfs.OpOpen || !strings.HasSuffix(path, ".seg") {
				return nil
			}
			if attempts.Add(1) > 10000 {
				cancel() // a retry loop without pause: end it, so the test fails instead of hanging
			}
			return errors.New("injected: the disk fails reads")
		}))
		nopts := NodeOptions{FS: fsys, Dir: "/m", Size: plDisk, Role: RoleMirror, JournalSegment: 16 << 10, journalTailBytes: 1}
		n, err := OpenNode(ctx, nopts)
		if err != nil {
			t.Fatal(err)
		}
		n.Close()
		nopts.Size = 0
		d, err := newMirrorVolume(ctx, ReplicaOptions{Node: nopts})
		if err != nil {
			t.Fatal(err)
		}
		defer d.Node().Close()
		for s := uint64(1); s <= 10; s++ {
			data := make([]byte, 4096)
			for i := range data {
				data[i] = byte(s)
			}
			r := journal.Record{Op: journal.OpWrite, Epoch: 1, Seq: s, Offset: s * 4096, Length: 4096, Data: data}
			if err := d.Node().Journal.Submit(ctx, r); err != nil {
				t.Fatal(err)
			}
		}
		if err := d.Node().Journal.Sync(ctx); err != nil {
			t.Fatal(err)
		}
		failing.Store(true)
		d.mu.Lock()
		d.applyTo = 10
		d.mu.Unlock()
		d.wg.Add(1)
		go d.applyLoop(ctx)
		time.Sleep(10 * time.Second)
		if got := attempts.Load(); got > 100 {
			t.Fatalf("the applier tried to read the failing journal %d times in 10 s; want a pause between attempts", got)
		}
		failing.Store(false)
		time.Sleep(2 * time.Second)
		if got := d.applied(); got != 10 {
			t.Fatalf("applied through %d after reads work again, want 10", got)
		}
		cancel()
		d.wg.Wait()
	})
}
