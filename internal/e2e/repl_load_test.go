package e2e

// A write load for replication tests: one NBD connection writing 4 KiB
// blocks in a loop, recording when each write started and ended and how.

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"sync"
	"testing"
	"time"
)

const replBlock = 4096

// writeResult is one write of a loadWriter.
type writeResult struct {
	Block      int64
	Version    uint64
	Start, End time.Time
	Err        error
}

// loadWriter writes versioned blocks to blocks [0, nblocks) round-robin over
// one NBD connection until stopped or the connection fails, and keeps the
// newest acknowledged version of every block (its model of the disk).
type loadWriter struct {
	t       testing.TB
	seed    uint64
	nblocks int64
	conn    *rawConn
	cancel  context.CancelFunc
	done    chan struct{}

	mu      sync.Mutex
	results []writeResult
	model   map[int64]uint64 // block → last acknowledged version
	// pending is the write in progress (zero Start when none).
	pending writeResult
	connErr error
}

// blockData is the content of version v of block b: a header naming both,
// pseudo-random filler, and a CRC32C trailer.
func blockData(seed uint64, b int64, v uint64) []byte {
	p := make([]byte, replBlock)
	copy(p, "BMLOAD01")
	binary.BigEndian.PutUint64(p[8:], uint64(b))
	binary.BigEndian.PutUint64(p[16:], v)
	binary.BigEndian.PutUint64(p[24:], seed)
	x := seed ^ uint64(b)*0x9e3779b97f4a7c15 ^ v*0xbf58476d1ce4e5b9
	for i := 32; i+8 <= replBlock-4; i += 8 {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		binary.LittleEndian.PutUint64(p[i:], x)
	}
	binary.BigEndian.PutUint32(p[replBlock-4:], crc32.Checksum(p[:replBlock-4], crc32.MakeTable(crc32.Castagnoli)))
	return p
}

// startLoad connects to the NBD server at addr and starts writing.
func startLoad(t testing.TB, addr string, seed uint64, nblocks int64) *loadWriter {
	t.Helper()
	return startLoadExport(t, addr, defaultExport, seed, nblocks)
}

func (w *loadWriter) run(ctx context.Context) {
	defer close(w.done)
	for i := int64(0); ctx.Err() == nil; i++ {
		b := i % w.nblocks
		v := uint64(i/w.nblocks) + 1
		r := writeResult{Block: b, Version: v, Start: time.Now()}
		w.mu.Lock()
		w.pending = r
		w.mu.Unlock()
		err := w.conn.pwrite(blockData(w.seed, b, v), uint64(b*replBlock), 0)
		r.End, r.Err = time.Now(), err
		w.mu.Lock()
		w.pending = writeResult{}
		w.results = append(w.results, r)
		if err == nil {
			w.model[b] = v
		}
		var ne nbdError
		if err != nil && !errors.As(err, &ne) {
			w.connErr = err
		}
		w.mu.Unlock()
		if err != nil && !errors.As(err, &ne) {
			return // connection lost
		}
	}
}

// Stop ends the loop (closing the connection if a write is stuck) and
// waits for it.
func (w *loadWriter) Stop() {
	w.cancel()
	select {
	case <-w.done:
	case <-time.After(100 * time.Millisecond):
		w.conn.c.Close()
		<-w.done
	}
	w.conn.c.Close()
}

// Results returns a copy of the finished writes.
func (w *loadWriter) Results() []writeResult {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]writeResult(nil), w.results...)
}

// Pending returns the write in progress, if any.
func (w *loadWriter) Pending() (writeResult, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.pending, !w.pending.Start.IsZero()
}

// ConnErr is the connection failure that ended the loop, if any.
func (w *loadWriter) ConnErr() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.connErr
}

// Model returns a copy of the last acknowledged version of every block.
func (w *loadWriter) Model() map[int64]uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	m := make(map[int64]uint64, len(w.model))
	for k, v := range w.model {
		m[k] = v
	}
	return m
}

// countStarted counts writes that started after since and succeeded (ok)
// or failed (!ok).
func countStarted(rs []writeResult, since time.Time, ok bool) int {
	n := 0
	for _, r := range rs {
		if r.Start.After(since) && (r.Err == nil) == ok {
			n++
		}
	}
	return n
}

// waitResult waits until a write that started after since has finished
// and returns the first such write.
func (w *loadWriter) waitResult(timeout time.Duration, since time.Time) (writeResult, error) {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		for _, r := range w.Results() {
			if r.Start.After(since) {
				return r, nil
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	return writeResult{}, fmt.Errorf("no write started after %v finished within %v", since.Format(time.TimeOnly), timeout)
}

// verifyModel reads every block of the model through conn and compares.
func verifyModel(t testing.TB, conn *rawConn, seed uint64, model map[int64]uint64) {
	t.Helper()
	bad := 0
	for b, v := range model {
		got, err := conn.pread(replBlock, uint64(b*replBlock))
		if err != nil {
			t.Fatalf("read block %d: %v", b, err)
		}
		if want := blockData(seed, b, v); string(got) != string(want) {
			bad++
			if bad <= 5 {
				t.Errorf("block %d: %s, want version %d", b, describeBlock(got), v)
			}
		}
	}
	if bad > 0 {
		t.Errorf("%d of %d blocks differ from the acknowledged writes", bad, len(model))
	}
}

// describeBlock says what a loadWriter block holds.
func describeBlock(p []byte) string {
	if string(p[:8]) != "BMLOAD01" {
		allZero := true
		for _, c := range p {
			if c != 0 {
				allZero = false
				break
			}
		}
		if allZero {
			return "zeros"
		}
		return fmt.Sprintf("foreign data %x...", p[:16])
	}
	return fmt.Sprintf("block %d version %d", binary.BigEndian.Uint64(p[8:]), binary.BigEndian.Uint64(p[16:]))
}
