package e2e

// Acknowledged-write durability across kill -9 of the primary.
//
// Several NBD connections write seq-tagged 4 KiB blocks, each tag to a fresh
// block (block index = tag), and log every send and every acknowledgement
// on one logical clock. At a random moment the primary is killed with
// SIGKILL; the mirrors are then let to apply what they hold and stopped
// with SIGTERM, and their images are checked:
//
//   - every non-zero block must be intact (magic, tag = index, run seed,
//     CRC32C): no torn or misplaced writes;
//   - sync mode (K = number of mirrors): every acknowledged tag is present
//     on every mirror;
//   - async mode: each image is a write-order prefix of the acknowledged
//     writes: if tag b is present, every tag acknowledged before b was sent
//     (and so given a lower seq by the primary) is present too.

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

const durMagic = "BMDURA01"

// durBlock is the content of tag b in run seed.
func durBlock(seed, b uint64) []byte {
	p := make([]byte, replBlock)
	copy(p, durMagic)
	binary.BigEndian.PutUint64(p[8:], b)
	binary.BigEndian.PutUint64(p[16:], seed)
	x := seed ^ (b+1)*0x9e3779b97f4a7c15
	for i := 24; i+8 <= replBlock-4; i += 8 {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		binary.LittleEndian.PutUint64(p[i:], x)
	}
	binary.BigEndian.PutUint32(p[replBlock-4:], crc32.Checksum(p[:replBlock-4], crc32.MakeTable(crc32.Castagnoli)))
	return p
}

// ackLog records sends and acks of tags on a logical clock.
type ackLog struct {
	mu     sync.Mutex
	next   uint64 // next tag
	limit  uint64 // tags available (blocks in the volume)
	clock  uint64
	sendAt []uint64 // tag → clock at send
	ackAt  []uint64 // tag → clock at ack (0: not acknowledged)
	errs   []error  // NBD errors (not connection failures)
}

func (l *ackLog) take() (uint64, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.next >= l.limit {
		return 0, false
	}
	tag := l.next
	l.next++
	l.clock++
	l.sendAt = append(l.sendAt, l.clock)
	l.ackAt = append(l.ackAt, 0)
	return tag, true
}

func (l *ackLog) acked(tag uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.clock++
	l.ackAt[tag] = l.clock
}

// durMode is one configuration of the durability test.
type durMode struct {
	name string
	args []string
	sync bool
}

func TestReplAckedWritesSurvivePrimaryKill(t *testing.T) {
	requireRepl(t)
	iters := 10
	if testing.Short() {
		iters = 3
	}
	seed := rand.Uint64()
	t.Logf("seed %d (%d iterations per mode)", seed, iters)
	rng := rand.New(rand.NewPCG(seed, 0))
	modes := []durMode{
		{name: "sync", sync: true},
		{name: "async", args: []string{"--mode", "async", "--sync-acks", "1"}},
	}
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			for i := range iters {
				s := rng.Uint64()
				level := []string{"received", "written", "durable"}[rng.IntN(3)]
				killAfter := time.Duration(200+rng.IntN(1300)) * time.Millisecond
				writers := 1 + rng.IntN(4)
				t.Logf("iteration %d: seed %d ack-level %s writers %d kill after %v", i, s, level, writers, killAfter)
				if !durIteration(t, m, s, level, writers, killAfter) {
					return
				}
			}
		})
	}
}

// durIteration runs one kill -9 round; it returns false if the test failed.
func durIteration(t *testing.T, m durMode, seed uint64, level string, writers int, killAfter time.Duration) bool {
	t.Helper()
	const volBlocks = 64 << 20 / replBlock
	c := newReplCluster(t, "64M", "m1", "m2")
	c.StartMirror("m1")
	c.StartMirror("m2")
	args := []string{"--ack-level", level}
	if m.sync {
		args = append(args, "--mode", "sync", "--sync-acks", "2", "--ack-timeout", "30s")
	}
	c.StartPrimary(primaryOpts{Args: append(args, m.args...)})
	c.WaitPeerState(15*time.Second, "in-sync", "m1", "m2")

	log := &ackLog{limit: volBlocks}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	var conns []*rawConn
	for range writers {
		conn, err := rawDial(ctx, c.Primary.NBD, defaultExport)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, conn)
	}
	var wg sync.WaitGroup
	for _, conn := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer conn.c.Close()
			for {
				tag, ok := log.take()
				if !ok {
					return
				}
				err := conn.pwrite(durBlock(seed, tag), tag*replBlock, 0)
				var ne nbdError
				switch {
				case err == nil:
					log.acked(tag)
				case errors.As(err, &ne):
					log.mu.Lock()
					log.errs = append(log.errs, fmt.Errorf("tag %d: %w", tag, err))
					log.mu.Unlock()
				default:
					return // the primary is gone
				}
			}
		}()
	}
	time.Sleep(killAfter)
	c.Primary.Proc.Kill()
	wg.Wait()

	log.mu.Lock()
	nAcked := 0
	for _, a := range log.ackAt {
		if a != 0 {
			nAcked++
		}
	}
	sent := log.next
	errs := log.errs
	log.mu.Unlock()
	if len(errs) > 0 {
		t.Errorf("writes failed before the kill: %v", errs[:min(len(errs), 3)])
	}
	for _, mm := range c.Mirrors {
		st := c.WaitMirrorQuiet(20*time.Second, mm.Name)
		stopProc(t, mm.Proc)
		present, err := durCheckImage(mm.Image(), seed, sent)
		if err != nil {
			t.Errorf("%s: %v", mm.Name, err)
			continue
		}
		missing, firstMissing := durMissing(present, log.sendAt, log.ackAt, m.sync)
		if missing > 0 && m.sync {
			t.Errorf("%s: %d of %d acknowledged writes missing (first: tag %d) — sync mode lost acknowledged data",
				mm.Name, missing, nAcked, firstMissing)
		}
		if missing > 0 && !m.sync {
			t.Errorf("%s: not a write-order prefix: %d writes acknowledged before a present write was sent are missing (first: tag %d)",
				mm.Name, missing, firstMissing)
		}
		n := 0
		for _, ok := range present {
			if ok {
				n++
			}
		}
		t.Logf("%s: %d sent, %d acknowledged, %d on the mirror (received %d, applied %d)", mm.Name, sent, nAcked, n, st.Received, st.Applied)
	}
	return !t.Failed()
}

// durMissing counts the tags that must be present but are not: in sync
// mode every acknowledged tag; otherwise every tag acknowledged before the
// latest-sent present tag was sent.
func durMissing(present []bool, sendAt, ackAt []uint64, sync bool) (missing int, first uint64) {
	bound := ^uint64(0)
	if !sync {
		bound = 0
		for tag, ok := range present {
			if ok {
				bound = max(bound, sendAt[tag])
			}
		}
	}
	for tag, a := range ackAt {
		if a != 0 && a < bound && (tag >= len(present) || !present[tag]) {
			if missing == 0 {
				first = uint64(tag)
			}
			missing++
		}
	}
	return missing, first
}

// durCheckImage reads tags [0, sent) from an image and reports which are
// present; a block that is neither zero nor its own intact tag, or any
// non-zero block at or after sent, is an error.
func durCheckImage(path string, seed, sent uint64) ([]bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	present := make([]bool, sent)
	buf := make([]byte, replBlock)
	zero := make([]byte, replBlock)
	for tag := uint64(0); ; tag++ {
		_, err := io.ReadFull(f, buf)
		if errors.Is(err, io.EOF) {
			return present, nil
		}
		if err != nil {
			return nil, fmt.Errorf("read block %d: %w", tag, err)
		}
		if string(buf) == string(zero) {
			continue
		}
		if tag >= sent {
			return nil, fmt.Errorf("block %d was never written but holds %s", tag, describeDur(buf, seed))
		}
		if string(buf) != string(durBlock(seed, tag)) {
			return nil, fmt.Errorf("block %d is damaged or misplaced: %s", tag, describeDur(buf, seed))
		}
		present[tag] = true
	}
}

func describeDur(p []byte, seed uint64) string {
	if string(p[:8]) != durMagic {
		return fmt.Sprintf("foreign data %x", p[:16])
	}
	tag := binary.BigEndian.Uint64(p[8:])
	ok := crc32.Checksum(p[:replBlock-4], crc32.MakeTable(crc32.Castagnoli)) == binary.BigEndian.Uint32(p[replBlock-4:])
	return fmt.Sprintf("tag %d of run %d, checksum ok %v (this run %d)", tag, binary.BigEndian.Uint64(p[16:]), ok, seed)
}

// TestReplDurabilityChecker checks the durability verdicts themselves on
// hand-made histories (no processes).
func TestReplDurabilityChecker(t *testing.T) {
	// Two writers: tag 0 sent@1 acked@3, tag 1 sent@2 acked@5,
	// tag 2 sent@4 acked@6, tag 3 sent@7 never acked.
	sendAt := []uint64{1, 2, 4, 7}
	ackAt := []uint64{3, 5, 6, 0}
	for _, tc := range []struct {
		name    string
		present []bool
		sync    bool
		missing int
	}{
		{"sync-all", []bool{true, true, true, false}, true, 0},
		{"sync-unacked-extra", []bool{true, true, true, true}, true, 0},
		{"sync-lost-ack", []bool{true, false, true, false}, true, 1},
		{"async-empty", []bool{false, false, false, false}, false, 0},
		{"async-prefix", []bool{true, true, false, false}, false, 0},
		// tag 1 was sent before tag 0's ack: either order is a prefix.
		{"async-concurrent", []bool{false, true, false, false}, false, 0},
		// tag 2 was sent after tag 0's ack (3 < 4): tag 0 must be there.
		{"async-gap", []bool{false, true, true, false}, false, 1},
		{"async-unacked-needs-all", []bool{true, false, true, true}, false, 1},
	} {
		got, _ := durMissing(tc.present, sendAt, ackAt, tc.sync)
		if got != tc.missing {
			t.Errorf("%s: %d missing, want %d", tc.name, got, tc.missing)
		}
	}
	// The image check: a misplaced block is an error.
	dir := t.TempDir()
	img := filepath.Join(dir, "img")
	b := append(durBlock(9, 0), durBlock(9, 0)...)
	if err := os.WriteFile(img, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := durCheckImage(img, 9, 2); err == nil {
		t.Error("durCheckImage accepted tag 0 in block 1")
	}
	b = append(durBlock(9, 0), make([]byte, replBlock)...)
	os.WriteFile(img, b, 0o600)
	if p, err := durCheckImage(img, 9, 2); err != nil || !p[0] || p[1] {
		t.Errorf("durCheckImage = %v, %v; want [true false]", p, err)
	}
}
