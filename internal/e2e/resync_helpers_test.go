package e2e

// Shared setup for the resync tests (resync_*_test.go): a 1 GiB primary
// filled with random 1 MiB extents while it has no mirror, so that its
// journal drops the first segment and a new mirror has to be resynced;
// log parsing for the primary's "resync started/complete" lines; byte
// accounting for the bounds the tests assert.

import (
	"context"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/blockmirror/blockmirror/internal/testutil"
	"github.com/blockmirror/blockmirror/mirror"
)

const (
	resyncDiskSize = 1 << 30
	resyncChunk    = int64(mirror.DefaultSyncChunk)
	resyncExtent   = 1 << 20
)

// resyncSetup is a cluster whose primary holds random data that a new,
// empty mirror m1 lacks, and whose journal no longer starts at seq 1.
type resyncSetup struct {
	c    *replCluster
	seed uint64
	data testutil.Extents // what the primary wrote (the mirror has zeros)
}

// DiffBytes is the exact number of bytes the mirror lacks.
func (s *resyncSetup) DiffBytes() int64 { return s.data.Bytes() }

// DiffChunkBytes is the size of the 64 KiB chunks the mirror lacks: what
// a chunk-granular resync has to send at least once.
func (s *resyncSetup) DiffChunkBytes() int64 { return s.data.ChunkBytes(resyncChunk, resyncDiskSize) }

// newResyncSetup creates the cluster, starts the primary without mirrors
// (and without the indirect path, so that the journal holds the data),
// writes extents random 1 MiB extents (4 KiB-aligned, so most touch 17
// chunks) through NBD, then more until the journal rolls over to a new
// segment, waits until the journal dropped the older segments (a primary
// without mirrors has no consumer holding them) and stops the primary.
// Mirror m1 is not started.
func newResyncSetup(t *testing.T, extents int) *resyncSetup {
	t.Helper()
	s := &resyncSetup{c: newReplCluster(t, "1G", "m1"), seed: rand.Uint64()}
	t.Logf("seed %d (data: %d random 1 MiB extents)", s.seed, extents)
	c := s.c
	// The journal must hold the data to fill segments and drop them: the
	// indirect path (on by default) would journal 104 bytes per 1 MiB
	// write. The resync tests start the primary again with the default.
	c.StartPrimary(primaryOpts{Mirrors: []string{}, Args: []string{"--indirect-min", "0"}})
	s.fill(t, 0, extents, true)
	// More extents until the journal starts a new segment, so that what a
	// new mirror gets from the journal is at most a record or two and the
	// rest goes through the resync stream.
	written := extents
	for ; ; written++ {
		segs := journalSegments(t, c.Primary.Data)
		if newest := segs[len(segs)-1]; newest > 1 && newest >= uint64(written) {
			break
		}
		if written > extents+80 {
			t.Fatalf("after %d records of 1 MiB the journal segments start at %v", written, segs)
		}
		s.fill(t, written, 1, true)
	}
	if written > extents {
		t.Logf("wrote %d more extents until the journal started a new segment", written-extents)
	}
	testutil.WaitFor(t, 20*time.Second, "the primary's journal dropped all but its newest segment", func() (bool, string) {
		segs := journalSegments(t, c.Primary.Data)
		return len(segs) == 1, fmt.Sprintf("segments start at %v", segs)
	})
	c.StopPrimary()
	return s
}

// journalSegments returns the first seqs of the journal segments of the
// node in dataDir, ascending (segment files are named by their first seq).
func journalSegments(t *testing.T, dataDir string) []uint64 {
	t.Helper()
	names, err := filepath.Glob(filepath.Join(dataDir, "journal", "*.seg"))
	if err != nil || len(names) == 0 {
		t.Fatalf("journal segments in %s: %v %v", dataDir, names, err)
	}
	var seqs []uint64
	for _, n := range names {
		seq, err := strconv.ParseUint(strings.TrimSuffix(filepath.Base(n), ".seg"), 10, 64)
		if err != nil {
			t.Fatalf("journal segment name %s: %v", n, err)
		}
		seqs = append(seqs, seq)
	}
	slices.Sort(seqs)
	return seqs
}

// fill writes n random extents through the primary (the i-th from
// random stream first+i) and records them; flush adds an NBD flush.
func (s *resyncSetup) fill(t *testing.T, first, n int, flush bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	conn, err := rawDial(ctx, s.c.Primary.NBD, defaultExport)
	cancel()
	if err != nil {
		t.Fatalf("fill: %v", err)
	}
	defer conn.disconnect()
	rng := rand.New(rand.NewPCG(s.seed, uint64(first)+1))
	buf := make([]byte, resyncExtent)
	for i := range n {
		off := rng.Int64N((resyncDiskSize-resyncExtent)/4096+1) * 4096
		fillRandom(buf, s.seed, uint64(first+i))
		if err := conn.pwrite(buf, uint64(off), 0); err != nil {
			t.Fatalf("fill: write %d bytes at %d: %v", len(buf), off, err)
		}
		s.data.Add(off, resyncExtent)
	}
	if !flush {
		return
	}
	if err := conn.flush(); err != nil {
		t.Fatalf("fill: flush: %v", err)
	}
}

// fillRandom fills p with incompressible bytes from (seed, stream).
func fillRandom(p []byte, seed, stream uint64) {
	var key [32]byte
	for i := range 8 {
		key[i] = byte(seed >> (8 * i))
		key[8+i] = byte(stream >> (8 * i))
	}
	r := rand.NewChaCha8(key)
	_, _ = r.Read(p)
}

// resyncRun is one resync session as the primary logged it.
type resyncRun struct {
	Compare  int64 // bytes_to_compare
	Sent     int64 // sent_bytes (0 until complete)
	Complete bool
	Seconds  float64
}

// resyncRuns parses the primary's "resync started"/"resync complete" lines
// for peer.
func resyncRuns(t testing.TB, log, peer string) []resyncRun {
	t.Helper()
	var runs []resyncRun
	for line := range strings.SplitSeq(log, "\n") {
		if testutil.LogField(line, "peer") != peer {
			continue
		}
		switch testutil.LogField(line, "msg") {
		case "resync started":
			n, err := testutil.LogInt(line, "bytes_to_compare")
			if err != nil {
				t.Fatal(err)
			}
			runs = append(runs, resyncRun{Compare: n})
		case "resync complete":
			if len(runs) == 0 {
				t.Fatalf("resync complete before it started: %s", line)
			}
			n, err := testutil.LogInt(line, "sent_bytes")
			if err != nil {
				t.Fatal(err)
			}
			r := &runs[len(runs)-1]
			r.Sent, r.Complete = n, true
			r.Seconds, _ = strconv.ParseFloat(testutil.LogField(line, "seconds"), 64)
		}
	}
	return runs
}

// waitResyncComplete waits (10 s) until the last resync of peer that
// proc logged is complete, and returns the runs.
func waitResyncComplete(t testing.TB, proc *testutil.Proc, peer string) []resyncRun {
	t.Helper()
	var runs []resyncRun
	testutil.WaitFor(t, 10*time.Second, "the resync of "+peer+" logged complete", func() (bool, string) {
		runs = resyncRuns(t, proc.Log(), peer)
		return len(runs) > 0 && runs[len(runs)-1].Complete, fmt.Sprintf("runs %+v", runs)
	})
	return runs
}

// resyncLines returns the primary's and mirror's resync log lines, for
// test logs.
func resyncLines(p ...*testutil.Proc) string {
	var b strings.Builder
	for _, pr := range p {
		if pr == nil {
			continue
		}
		for line := range strings.SplitSeq(pr.Log(), "\n") {
			if strings.Contains(line, "resync") {
				b.WriteString(line)
				b.WriteByte('\n')
			}
		}
	}
	return b.String()
}

// peerResync returns a mirror's resync progress and state from the primary.
func peerResync(c *replCluster, name string) (mirror.ResyncProgress, string, error) {
	st, err := c.PrimaryStatus()
	if err != nil {
		return mirror.ResyncProgress{}, "", err
	}
	p := replPeer(st, name)
	if p == nil {
		return mirror.ResyncProgress{}, "", fmt.Errorf("no peer %s in %+v", name, st.Peers)
	}
	var r mirror.ResyncProgress
	if p.Resync != nil {
		r = *p.Resync
	}
	return r, p.State, nil
}

// mib formats a byte count.
func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }
