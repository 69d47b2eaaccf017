package mirror

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/blockmirror/blockmirror/internal/vfs"
	"github.com/blockmirror/blockmirror/journal"
	"github.com/blockmirror/blockmirror/mirror/wire"
)

var errPowerLost = errors.New("power lost")

// crashPoint is an Injector that, at the step-th mutating operation,
// takes the states a power loss right then could leave (several seeded
// ones and the oldest) and fails that operation and every later one: the
// process is gone.
type crashPoint struct {
	m    *vfs.MemFS
	step int

	mu      sync.Mutex
	armed   bool
	n       int
	crashed []*vfs.MemFS
}

func (c *crashPoint) MaybeError(op vfs.Op, path string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.armed {
		return nil
	}
	if c.crashed != nil {
		return errPowerLost
	}
	if !op.Mutates() {
		return nil
	}
	if c.n++; c.n < c.step {
		return nil
	}
	for seed := range uint64(4) {
		c.crashed = append(c.crashed, c.m.CrashClone(rand.New(rand.NewPCG(seed, uint64(c.step)))))
	}
	c.crashed = append(c.crashed, c.m.CrashCloneDropUnsynced())
	return fmt.Errorf("%s %s: %w", op, path, errPowerLost)
}

func (c *crashPoint) arm() {
	c.mu.Lock()
	c.armed = true
	c.mu.Unlock()
}

// resetFixture makes a mirror volume whose journal holds records 1..30 of
// epoch 1, all durable, 1..20 applied and checkpointed, 21..30 not yet
// applied — a mirror in the middle of following its primary.
func resetFixture(t *testing.T, fsys vfs.FS) *Replica {
	t.Helper()
	ctx := t.Context()
	n, err := OpenNode(ctx, NodeOptions{FS: fsys, Dir: "/m", Size: plDisk, Role: RoleMirror, JournalSegment: 16 << 10})
	if err != nil {
		t.Fatal(err)
	}
	add := func(from, to uint64) {
		for s := from; s <= to; s++ {
			data := make([]byte, 4096)
			for i := range data {
				data[i] = byte(s)
			}
			r := journal.Record{Op: journal.OpWrite, Epoch: 1, Seq: s, Offset: (s % 200) * 4096, Length: 4096, Data: data}
			if err := n.Journal.Submit(ctx, r); err != nil {
				t.Fatal(err)
			}
		}
		if err := n.Journal.Sync(ctx); err != nil {
			t.Fatal(err)
		}
	}
	add(1, 20)
	n.Close()
	d, err := newMirrorVolume(ctx, ReplicaOptions{Node: NodeOptions{FS: fsys, Dir: "/m", JournalSegment: 16 << 10}})
	if err != nil {
		t.Fatal(err)
	}
	n = d.Node()
	add(21, 30)
	if cp := n.Meta().CheckpointSeq; cp != 20 {
		t.Fatalf("fixture checkpoint %d, want 20", cp)
	}
	return d
}

// TestResetCrashAtEveryStep: a power loss at any point of a mirror's Reset
// (beginResync: apply what the journal holds, empty it, restart it at the
// primary's From, record the checkpoint) leaves a node that opens, and
// that is marked inconsistent as soon as its journal or checkpoint no
// longer describe the history it had. Before the fix, SetStart ran before
// CheckpointSeq was updated: a crash between the two left a journal
// starting at From above a checkpoint far below it ("records are missing;
// resync this node"), and the mirror could not open. Invariant: a resync
// interrupted by a power loss never leaves a mirror that cannot start, nor
// one that claims to be consistent.
func TestResetCrashAtEveryStep(t *testing.T) {
	for _, from := range []uint64{100, 31, 25} {
		t.Run(fmt.Sprintf("from=%d", from), func(t *testing.T) {
			for step := 1; ; step++ {
				m := vfs.NewCrashableMem()
				cp := &crashPoint{m: m, step: step}
				d := resetFixture(t, vfs.WithErrors(m, cp))
				cp.arm()
				err := d.beginResync(t.Context(), wire.ResyncBegin{Reset: true, From: from})
				d.Node().Close()
				if err == nil {
					if cp.crashed != nil {
						t.Fatalf("step %d: the reset succeeded though an operation failed", step)
					}
					n, err := OpenNode(t.Context(), NodeOptions{FS: m.CrashCloneDropUnsynced(), Dir: "/m"})
					if err != nil {
						t.Fatalf("open after a complete reset and a power loss: %v", err)
					}
					defer n.Close()
					// The store holds 1..30, which agree with the primary's
					// history: the checkpoint stays there when From is below
					// (and the empty journal continues after it on opening).
					held := max(from-1, 30)
					if n.Journal.FirstSeq() != held+1 || n.Journal.LastSeq() != held || n.Meta().CheckpointSeq != held || !n.Meta().Inconsistent {
						t.Fatalf("after the reset: journal %d..%d, checkpoint %d, inconsistent %v; want empty at %d, %d, true",
							n.Journal.FirstSeq(), n.Journal.LastSeq(), n.Meta().CheckpointSeq, n.Meta().Inconsistent, held+1, held)
					}
					t.Logf("%d mutating operations, each a crash point", step-1)
					return
				}
				if !errors.Is(err, errPowerLost) {
					t.Fatalf("step %d: beginResync: %v", step, err)
				}
				for i, c := range cp.crashed {
					n, err := OpenNode(t.Context(), NodeOptions{FS: c, Dir: "/m"})
					if err != nil {
						t.Fatalf("power loss at mutating operation %d of the reset (state %d): the mirror cannot open: %v", step, i, err)
					}
					mt := n.Meta()
					// Untouched, recovery replays 21..30 and checkpoints 30.
					same := n.Journal.LastSeq() == 30 && mt.CheckpointSeq == 30
					if !same && !mt.Inconsistent {
						t.Fatalf("power loss at mutating operation %d (state %d): journal %d..%d, checkpoint %d, but not marked inconsistent",
							step, i, n.Journal.FirstSeq(), n.Journal.LastSeq(), mt.CheckpointSeq)
					}
					n.Close()
				}
			}
		})
	}
}
