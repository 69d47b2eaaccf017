package mirror

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/blockmirror/blockmirror/internal/vfs"
	"github.com/blockmirror/blockmirror/journal"
)

const (
	plDisk   = 1 << 20
	plSector = vfs.SectorSize
)

// plOp is one write-like request of the power-loss tests; op i carries
// journal seq i+1 (a volume without replication numbers them in order).
type plOp struct {
	kind journal.Op
	off  int64
	n    int64
	data []byte // OpWrite
	fua  bool
}

func randomOp(rng *rand.Rand, i int) plOp {
	off := rng.Int64N(plDisk/plSector) * plSector
	n := min(int64(1+rng.IntN(64))*plSector, plDisk-off)
	op := plOp{kind: journal.OpWrite, off: off, n: n, fua: rng.IntN(8) == 0}
	switch rng.IntN(10) {
	case 0:
		op.kind = journal.OpTrim
	case 1:
		op.kind = journal.OpZero
	default:
		op.data = make([]byte, n)
		for j := range op.data {
			op.data[j] = byte(i*7 + j/plSector + 1)
		}
	}
	return op
}

// largeOp is a 4 KiB-aligned write of 16 to 256 KiB (the indirect path's
// size with IndirectMin 16 KiB).
func largeOp(rng *rand.Rand, i int) plOp {
	n := int64(4+rng.IntN(61)) * 4096
	off := rng.Int64N((plDisk-n)/4096+1) * 4096
	op := plOp{kind: journal.OpWrite, off: off, n: n, fua: rng.IntN(8) == 0, data: make([]byte, n)}
	for j := range op.data {
		op.data[j] = byte(i*7 + j/plSector + 1)
	}
	return op
}

func (op plOp) apply(disk []byte) {
	if op.kind == journal.OpWrite {
		copy(disk[op.off:], op.data)
	} else {
		clear(disk[op.off : op.off+op.n])
	}
}

// sector returns what op leaves in sector s (which it covers).
func (op plOp) sector(s int64) []byte {
	if op.kind != journal.OpWrite {
		return make([]byte, plSector)
	}
	at := s*plSector - op.off
	return op.data[at : at+plSector]
}

func (op plOp) do(ctx context.Context, v *Volume) error {
	switch op.kind {
	case journal.OpTrim:
		return v.Trim(ctx, op.off, op.n, op.fua)
	case journal.OpZero:
		return v.WriteZeroes(ctx, op.off, op.n, ZeroFlagsView{FUA: op.fua})
	}
	return v.WriteAt(ctx, op.data, op.off, op.fua)
}

// effect returns the disk after ops, from zeroes.
func effect(ops []plOp) []byte {
	disk := make([]byte, plDisk)
	for _, op := range ops {
		op.apply(disk)
	}
	return disk
}

// plVolume opens a new node on fsys and serves it as a volume without
// replication.
func plVolume(t *testing.T, fsys vfs.FS, opts VolumeOptions) (*Node, *Volume) {
	t.Helper()
	n := plOpen(t, fsys, nil)
	v, err := NewVolume(n, nil, opts)
	if err != nil {
		t.Fatal(err)
	}
	return n, v
}

// plWrite issues count random ops through v one after the other (with
// FUA only if fua), calling after(i) once op i is done, and returns them.
func plWrite(t *testing.T, v *Volume, rng *rand.Rand, count int, fua bool, after func(i int)) []plOp {
	t.Helper()
	var ops []plOp
	for i := range count {
		op := randomOp(rng, i)
		op.fua = op.fua && fua
		ops = append(ops, op)
		if err := op.do(t.Context(), v); err != nil {
			t.Fatal(err)
		}
		if after != nil {
			after(i)
		}
	}
	return ops
}

func plOpen(t *testing.T, fsys vfs.FS, log *slog.Logger) *Node {
	t.Helper()
	n, err := OpenNode(context.Background(), NodeOptions{FS: fsys, Dir: "/data/vol", Size: plDisk, Logger: log, JournalSegment: 64 << 10})
	if err != nil {
		t.Fatalf("open node: %v", err)
	}
	return n
}

func readStore(t *testing.T, n *Node) []byte {
	t.Helper()
	b := make([]byte, plDisk)
	if _, err := n.Store.ReadAt(b, 0); err != nil {
		t.Fatal(err)
	}
	return b
}

// checkPrefixStore checks that the store of a node reopened after a power
// loss holds the effect of ops[:last] (its recovered journal prefix),
// except sectors that a later op had written before the power went: a
// power loss keeps or loses each unsynced sector of the image, as it does
// on any disk, and the journal cannot undo what it never recorded durably.
// It returns how many sectors held such a later write.
func checkPrefixStore(t *testing.T, got []byte, ops []plOp, last int) int {
	t.Helper()
	want := effect(ops[:last])
	later := 0
	for s := int64(0); s < plDisk/plSector; s++ {
		g := got[s*plSector : (s+1)*plSector]
		if bytes.Equal(g, want[s*plSector:(s+1)*plSector]) {
			continue
		}
		ok := false
		for _, op := range ops[last:] {
			if s*plSector >= op.off && s*plSector < op.off+op.n && bytes.Equal(g, op.sector(s)) {
				ok = true
				break
			}
		}
		if !ok {
			t.Fatalf("sector %d (offset %d) holds neither the effect of writes 1..%d nor data of a later write", s, s*plSector, last)
		}
		later++
	}
	return later
}

// TestNodePowerLoss writes through the real Volume (no replication) on
// the crashable MemFS, with the volume's checkpoints running every few
// milliseconds, FUA on some writes and Flushes between others, cuts the
// power at a random instant and reopens the node with OpenNode. Invariant:
// the node opens; its journal holds a gapless prefix 1..L of the writes
// that includes every write made durable (FUA, or completed before a
// Flush that returned) before the power loss; the store holds the effect
// of that prefix (apart from sectors a write after L had already reached,
// see checkPrefixStore); and recovery is itself durable.
func TestNodePowerLoss(t *testing.T) {
	seeds := 40
	if testing.Short() {
		seeds = 10
	}
	for seed := range uint64(seeds) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) { nodePowerLossOnce(t, seed, 0) })
	}
}

// nodePowerLossOnce is one seed of TestNodePowerLoss; with indirect > 0
// it is VolumeOptions.IndirectMin, and a third of the writes are large
// enough for the indirect path (TestNodePowerLossIndirect).
func nodePowerLossOnce(t *testing.T, seed uint64, indirect int) {
	rng := rand.New(rand.NewPCG(seed, 21))
	m := vfs.NewCrashableMem()
	n, v := plVolume(t, m, VolumeOptions{
		CheckpointInterval: time.Duration(1+rng.IntN(5)) * time.Millisecond,
		CheckpointBytes:    int64(64<<10 + rng.IntN(512<<10)),
		IndirectMin:        indirect,
	})
	ctx := context.Background()
	var (
		mu      sync.Mutex
		ops     []plOp
		durable atomic.Int64 // ops[:durable] acknowledged durable
		stop    atomic.Bool
	)
	crashAt := 1 + rng.IntN(300)
	opRng := rand.New(rand.NewPCG(seed, 22))
	writerDone := make(chan error, 1)
	go func() {
		for i := 0; !stop.Load(); i++ {
			if opRng.IntN(10) == 0 {
				mu.Lock()
				before := len(ops)
				mu.Unlock()
				if err := v.Flush(ctx); err != nil {
					writerDone <- err
					return
				}
				durable.Store(max(durable.Load(), int64(before)))
				continue
			}
			op := randomOp(opRng, i)
			if indirect > 0 && opRng.IntN(3) == 0 {
				op = largeOp(opRng, i)
			}
			mu.Lock()
			ops = append(ops, op)
			idx := len(ops)
			mu.Unlock()
			if err := op.do(ctx, v); err != nil {
				writerDone <- err
				return
			}
			if op.fua {
				// FUA makes this write durable; earlier ones only if a
				// flush covered them (the journal syncs in order, though).
				durable.Store(max(durable.Load(), int64(idx)))
			}
		}
		writerDone <- nil
	}()
	for {
		mu.Lock()
		issued := len(ops)
		mu.Unlock()
		if issued >= crashAt {
			break
		}
		time.Sleep(50 * time.Microsecond)
	}
	ackedAt := int(durable.Load())
	crashed := m.CrashClone(rng)
	mu.Lock()
	issued := len(ops)
	mu.Unlock()
	stop.Store(true)
	if err := <-writerDone; err != nil {
		t.Fatal(err)
	}
	v.Close()
	n.Close()

	var logBuf bytes.Buffer
	n = plOpen(t, crashed, slog.New(slog.NewTextHandler(&logBuf, nil)))
	last := int(n.Journal.LastSeq())
	if last < ackedAt || last > issued {
		t.Fatalf("journal ends at %d after the power loss; %d were durable, %d issued", last, ackedAt, issued)
	}
	if cp := n.Meta().CheckpointSeq; cp != uint64(last) {
		t.Fatalf("checkpoint %d after recovery, journal last %d", cp, last)
	}
	mu.Lock()
	all := ops[:issued]
	mu.Unlock()
	got := readStore(t, n)
	later := checkPrefixStore(t, got, all, last)
	n.Close()

	// Recovery is durable: another power loss right after it changes
	// nothing.
	n = plOpen(t, crashed.CrashCloneDropUnsynced(), nil)
	defer n.Close()
	if int(n.Journal.LastSeq()) != last || !bytes.Equal(readStore(t, n), got) {
		t.Fatalf("a second power loss after recovery changed the node (last %d, was %d)", n.Journal.LastSeq(), last)
	}
	t.Logf("seed %d: %d writes issued, %d durable, journal recovered through %d, %d sectors of later writes", seed, issued, ackedAt, last, later)
}

// TestNodePowerLossAfterFlush: with nothing written after a Flush
// returned, a power loss leaves the store exactly the effect of every
// write. Invariant: a Flush makes the volume's whole state durable.
func TestNodePowerLossAfterFlush(t *testing.T) {
	for seed := range uint64(20) {
		rng := rand.New(rand.NewPCG(seed, 23))
		m := vfs.NewCrashableMem()
		n, v := plVolume(t, m, VolumeOptions{CheckpointInterval: time.Duration(1+rng.IntN(3)) * time.Millisecond})
		ops := plWrite(t, v, rng, 50+rng.IntN(100), true, nil)
		if err := v.Flush(t.Context()); err != nil {
			t.Fatal(err)
		}
		crashed := m.CrashClone(rng)
		v.Close()
		n.Close()
		n = plOpen(t, crashed, nil)
		if !bytes.Equal(readStore(t, n), effect(ops)) || int(n.Journal.LastSeq()) != len(ops) {
			t.Fatalf("seed %d: after a flush and a power loss the store differs from the %d writes (journal last %d)", seed, len(ops), n.Journal.LastSeq())
		}
		n.Close()
	}
}

// TestCheckpointWaitsForDurableJournal is scenario 6 of issue 12: the
// volume's checkpoint covered records that were applied to the store but
// not yet durable in the journal, so a power loss that dropped the
// journal's unsynced tail left meta.json claiming a checkpoint beyond the
// journal's end, and the primary could not open ("set start: not empty").
// Invariant: a checkpoint seq is saved only once the journal is durable
// through it (and the store synced).
func TestCheckpointWaitsForDurableJournal(t *testing.T) {
	m := vfs.NewCrashableMem()
	n, v := plVolume(t, m, VolumeOptions{CheckpointInterval: time.Hour})
	ctx := t.Context()
	ops := plWrite(t, v, rand.New(rand.NewPCG(6, 6)), 10, false, func(i int) {
		if i == 4 {
			if err := v.Flush(ctx); err != nil { // 1..5 durable, 6..10 only written
				t.Fatal(err)
			}
		}
	})
	if err := n.Checkpoint(v.appliedThrough()); err != nil {
		t.Fatal(err)
	}
	crashed := m.CrashCloneDropUnsynced() // the power goes right after the checkpoint
	v.Close()
	n.Close()
	n, err := OpenNode(ctx, NodeOptions{FS: crashed, Dir: "/data/vol"})
	if err != nil {
		t.Fatalf("open after a power loss right after a checkpoint: %v", err)
	}
	defer n.Close()
	if last, cp := n.Journal.LastSeq(), n.Meta().CheckpointSeq; last != 10 || cp != 10 {
		t.Fatalf("journal last %d, checkpoint %d; want both 10", last, cp)
	}
	if !bytes.Equal(readStore(t, n), effect(ops)) {
		t.Fatal("the store lost checkpointed writes")
	}
}

// TestRecoverJournalBehindCheckpoint: when the journal ends before the
// checkpoint (meta.json says the store holds seqs the journal lost, as a
// checkpoint saved ahead of the durable journal by an earlier build left
// it), recovery drops the journal's records — all of them are in the store
// — continues numbering after the checkpoint, and says so, instead of
// refusing to start. Invariant: a node whose store is checkpointed past
// its journal always opens, and never reuses a checkpointed seq.
func TestRecoverJournalBehindCheckpoint(t *testing.T) {
	m := vfs.NewCrashableMem()
	n, v := plVolume(t, m, VolumeOptions{CheckpointInterval: time.Hour})
	ctx := t.Context()
	want := effect(plWrite(t, v, rand.New(rand.NewPCG(7, 7)), 5, true, nil))
	v.Close() // checkpoint 5, journal 1..5
	if err := n.UpdateMeta(func(m *Meta) error { m.CheckpointSeq = 12; return nil }); err != nil {
		t.Fatal(err)
	}
	n.Close()
	var logBuf bytes.Buffer
	n, err := OpenNode(ctx, NodeOptions{FS: m, Dir: "/data/vol", Logger: slog.New(slog.NewTextHandler(&logBuf, nil))})
	if err != nil {
		t.Fatalf("open with the journal (last 5) behind the checkpoint (12): %v", err)
	}
	if first, last := n.Journal.FirstSeq(), n.Journal.LastSeq(); first != 13 || last != 12 {
		t.Fatalf("journal %d..%d after recovery, want empty, continuing at 13", first, last)
	}
	if !strings.Contains(logBuf.String(), "checkpoint") || !strings.Contains(logBuf.String(), "level=WARN") {
		t.Fatalf("recovery did not say what it did:\n%s", logBuf.String())
	}
	if !bytes.Equal(readStore(t, n), want) {
		t.Fatal("recovery changed the store")
	}
	n.Close()
	// It sticks, also across a power loss.
	n = plOpen(t, m.CrashCloneDropUnsynced(), nil)
	defer n.Close()
	if n.Journal.FirstSeq() != 13 {
		t.Fatalf("after a power loss the journal starts at %d, want 13", n.Journal.FirstSeq())
	}
}
