package mirror

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/blockmirror/blockmirror/internal/vfs"
	"github.com/blockmirror/blockmirror/journal"
)

// TestNodePowerLossIndirect is TestNodePowerLoss with the indirect path
// on (IndirectMin 16 KiB; a third of the writes 16-256 KiB, 4 KiB-aligned,
// on a 1 MiB disk, so most of them overlap recent ones). Invariant, as
// there: the node opens; its journal is a gapless prefix that holds every
// write acknowledged durable; the store is the effect of that prefix
// (apart from sectors of later writes); recovery is durable.
func TestNodePowerLossIndirect(t *testing.T) {
	seeds := 40
	if testing.Short() {
		seeds = 10
	}
	for seed := range uint64(seeds) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) { nodePowerLossOnce(t, 1000+seed, 16<<10) })
	}
}

// cloneEveryStep wraps m so that a power loss is simulated before every
// file change: clones gets, before the k-th change, m as a power loss at
// that instant would leave it (several draws of what unsynced writes
// survive), with acked() — what the test had acknowledged as durable then.
type cloneEveryStep struct {
	m     *vfs.MemFS
	mu    sync.Mutex
	on    bool
	steps []plStep
	acked func() int
	rng   *rand.Rand
}

type plStep struct {
	k      int
	op     string
	acked  int
	clones []*vfs.MemFS
}

func (c *cloneEveryStep) MaybeError(op vfs.Op, path string) error {
	if !op.Mutates() {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.on {
		return nil
	}
	s := plStep{k: len(c.steps), op: op.String() + " " + path, acked: c.acked()}
	for range 3 {
		s.clones = append(s.clones, c.m.CrashClone(c.rng))
	}
	s.clones = append(s.clones, c.m.CrashCloneDropUnsynced())
	c.steps = append(c.steps, s)
	return nil
}

// TestIndirectPowerLossEveryStep cuts the power before every file change
// (several outcomes each) of a sequence of indirect and direct writes:
// an indirect write, a flush, a small write over it (which must wait for a
// checkpoint), an indirect FUA write, an indirect write over the first
// after the checkpoint, a trim over part of it, and a last indirect write
// no sync covers. Every outcome must open and hold a prefix of the writes
// that includes every one acknowledged durable, with the store the
// effect of that prefix apart from sectors of later writes. The outcomes
// must include the case the replay check exists for — an indirect record
// that reached the disk by writeback while its data did not — and there
// the journal is cut before it. Invariant: the crash rule of indirect
// writes (mirror/indirect.go, docs/design.md).
func TestIndirectPowerLossEveryStep(t *testing.T) {
	m := vfs.NewCrashableMem()
	var (
		mu    sync.Mutex
		ops   []plOp
		acked int
	)
	cs := &cloneEveryStep{m: m, rng: rand.New(rand.NewPCG(7, 7)), acked: func() int { mu.Lock(); defer mu.Unlock(); return acked }}
	fsys := vfs.WithErrors(m, cs)
	n, v := plVolume(t, fsys, VolumeOptions{CheckpointInterval: time.Hour, IndirectMin: 16 << 10})
	ctx := context.Background()
	write := func(off, size int64, fua bool) {
		op := plOp{kind: journal.OpWrite, off: off, n: size, fua: fua, data: make([]byte, size)}
		i := len(ops)
		for j := range op.data {
			op.data[j] = byte(i*7 + j/plSector + 1)
		}
		mu.Lock()
		ops = append(ops, op)
		mu.Unlock()
		if err := op.do(ctx, v); err != nil {
			t.Fatal(err)
		}
		if fua {
			mu.Lock()
			acked = len(ops)
			mu.Unlock()
		}
	}
	flush := func() {
		mu.Lock()
		before := len(ops)
		mu.Unlock()
		if err := v.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		acked = max(acked, before)
		mu.Unlock()
	}
	cs.mu.Lock()
	cs.on = true
	cs.mu.Unlock()
	write(64<<10, 192<<10, false) // 1: indirect
	flush()
	write(100<<10, 4<<10, false)  // 2: over 1, waits for a checkpoint
	write(512<<10, 256<<10, true) // 3: indirect, FUA
	cp := n.Meta().CheckpointSeq
	write(32<<10, 128<<10, false) // 4: indirect over 1 (checkpointed)
	op := plOp{kind: journal.OpTrim, off: 40 << 10, n: 8 << 10}
	ops = append(ops, op)
	if err := op.do(ctx, v); err != nil { // 5
		t.Fatal(err)
	}
	write(800<<10, 96<<10, false) // 6: indirect, never synced
	cs.mu.Lock()
	cs.on = false
	steps := cs.steps
	cs.mu.Unlock()
	if cp < 1 {
		t.Fatalf("the write over an indirect record did not wait for a checkpoint covering it (checkpoint %d)", cp)
	}
	if got := v.j.Stats(); got.BytesWritten > 64<<10 {
		t.Fatalf("the journal took %d bytes for %d KiB of mostly indirect writes", got.BytesWritten, (192+4+256+128+96)/1)
	}
	v.Close()
	n.Close()

	cuts := 0
	for _, s := range steps {
		for i, crashed := range s.clones {
			var logBuf bytes.Buffer
			n := plOpen(t, crashed, slog.New(slog.NewTextHandler(&logBuf, nil)))
			last := int(n.Journal.LastSeq())
			if last < s.acked || last > len(ops) {
				t.Fatalf("step %d (%s), outcome %d: journal ends at %d; %d were acknowledged durable, %d issued\n%s", s.k, s.op, i, last, s.acked, len(ops), logBuf.String())
			}
			checkPrefixStore(t, readStore(t, n), ops, last)
			if strings.Contains(logBuf.String(), "lacks the data of an indirect record") {
				cuts++
			}
			n.Close()
		}
	}
	t.Logf("%d steps, %d outcomes each; %d outcomes cut the journal at an indirect record whose data was lost", len(steps), len(steps[0].clones), cuts)
	if cuts == 0 {
		t.Fatal("no outcome had an indirect record on disk without its data: the replay check was not exercised")
	}
}

// TestIndirectData: a mirror's sender turns an indirect record read from
// the journal's files back into its data, read from the image, while no
// later write touched it — also after a restart (the chunk map is rebuilt
// from the journal) — and refuses once a later write overlapped it
// (errNotIntact: the mirror is resynced instead). Invariant: the catch-up
// rule of indirect writes.
func TestIndirectData(t *testing.T) {
	m := vfs.NewCrashableMem()
	n, v := plVolume(t, m, VolumeOptions{CheckpointInterval: time.Hour, IndirectMin: 16 << 10})
	ctx := context.Background()
	a := bytes.Repeat([]byte{0xa1}, 128<<10)
	b := bytes.Repeat([]byte{0xb2}, 64<<10)
	if err := v.WriteAt(ctx, a, 0, false); err != nil {
		t.Fatal(err)
	}
	if err := v.WriteAt(ctx, b, 512<<10, false); err != nil {
		t.Fatal(err)
	}
	fromFiles := func(j *journal.Journal, seq uint64) journal.Record {
		var got journal.Record
		j.Scan(seq, func(r journal.Record) error {
			if r.Seq == seq {
				got = r
				got.Sums = bytes.Clone(r.Sums)
			}
			return nil
		})
		if got.Op == journal.OpWrite && got.Sums != nil {
			// From the memory tail: as the files hold it.
			got.Op, got.Data = journal.OpIndirect, nil
		}
		if got.Op != journal.OpIndirect {
			t.Fatalf("seq %d from the journal's files: %v, want an indirect record", seq, got.Op)
		}
		return got
	}
	if d, err := v.IndirectData(ctx, fromFiles(v.j, 1)); err != nil || !bytes.Equal(d, a) {
		t.Fatalf("indirect seq 1 read back: %v", err)
	}
	// A 4 KiB write into the second 64 KiB of seq 1.
	if err := v.WriteAt(ctx, make([]byte, 4096), 100<<10, false); err != nil {
		t.Fatal(err)
	}
	if _, err := v.IndirectData(ctx, fromFiles(v.j, 1)); !errors.Is(err, errNotIntact) {
		t.Fatalf("indirect seq 1 after an overlapping write: %v, want errNotIntact", err)
	}
	if d, err := v.IndirectData(ctx, fromFiles(v.j, 2)); err != nil || !bytes.Equal(d, b) {
		t.Fatalf("indirect seq 2 (not overlapped) read back: %v", err)
	}
	v.Close()
	n.Close()
	// After a restart (the journal still holds them: no mirror released
	// them... here the store's checkpoint did, so the records are kept by a
	// consumer standing in for a mirror).
	n = plOpen(t, m, nil)
	defer n.Close()
	if err := n.Journal.AddConsumer("peer:x", 1, true); err != nil {
		t.Fatal(err)
	}
	v, err := NewVolume(n, nil, VolumeOptions{CheckpointInterval: time.Hour, IndirectMin: 16 << 10})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	if n.Journal.FirstSeq() > 1 {
		t.Skipf("the journal dropped seq 1 at the restart (first %d)", n.Journal.FirstSeq())
	}
	if _, err := v.IndirectData(ctx, fromFiles(v.j, 1)); !errors.Is(err, errNotIntact) {
		t.Fatalf("after a restart, overlapped seq 1: %v, want errNotIntact", err)
	}
	if d, err := v.IndirectData(ctx, fromFiles(v.j, 2)); err != nil || !bytes.Equal(d, b) {
		t.Fatalf("after a restart, seq 2 read back: %v", err)
	}
}

// TestIndirectReplayKeepsLaterIndirect: a 4 KiB write, then a 256 KiB
// indirect FUA write over it, a flush and a power loss: the replay must
// not write the earlier record over the later indirect one, whose data is
// in the image only. Invariant: replay never undoes an acknowledged
// indirect write. (From a reviewer's repro.)
func TestIndirectReplayKeepsLaterIndirect(t *testing.T) {
	m := vfs.NewCrashableMem()
	n, v := plVolume(t, m, VolumeOptions{CheckpointInterval: time.Hour, IndirectMin: 64 << 10})
	ctx := t.Context()
	d := bytes.Repeat([]byte{'d'}, 256<<10)
	if err := v.WriteAt(ctx, bytes.Repeat([]byte{'x'}, 4096), 0, false); err != nil {
		t.Fatal(err)
	}
	if err := v.WriteAt(ctx, d, 0, true); err != nil {
		t.Fatal(err)
	}
	if err := v.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	crashed := m.CrashClone(rand.New(rand.NewPCG(1, 2)))
	v.Close()
	n.Close()
	n = plOpen(t, crashed, nil)
	defer n.Close()
	if got := readStore(t, n); !bytes.Equal(got[:256<<10], d) {
		t.Fatalf("after a power loss the acknowledged indirect write at 0 is lost: it holds %q...", got[:8])
	}
}

// TestIndirectQuarantineKeepsData: a demoted old primary quarantines its
// divergent records; an indirect one goes into the file with its data,
// read back from the image (a resync overwrites the image next).
// Invariant: a quarantine keeps what the node wrote. (From a reviewer's
// repro.)
func TestIndirectQuarantineKeepsData(t *testing.T) {
	m := vfs.NewCrashableMem()
	n, v := plVolume(t, m, VolumeOptions{CheckpointInterval: time.Hour, IndirectMin: 64 << 10})
	d := bytes.Repeat([]byte{'d'}, 256<<10)
	if err := v.WriteAt(t.Context(), d, 0, true); err != nil {
		t.Fatal(err)
	}
	crashed := m.CrashClone(rand.New(rand.NewPCG(1, 2)))
	v.Close()
	n.Close()
	n = plOpen(t, crashed, nil)
	if err := Demote(n, false); err != nil {
		t.Fatal(err)
	}
	n.Close()
	n = plOpen(t, crashed, nil)
	defer n.Close()
	rep, err := n.Quarantine(0, "test")
	if err != nil {
		t.Fatal(err)
	}
	if rep == nil || rep.Records != 1 || rep.DataBytes != int64(len(d)) || len(rep.IndirectOverwritten) != 0 {
		t.Fatalf("quarantine of a divergent 256 KiB indirect write: %+v; want 1 record with %d data bytes", rep, len(d))
	}
}
