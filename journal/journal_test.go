package journal_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/blockmirror/blockmirror/internal/vfs"
	"github.com/blockmirror/blockmirror/journal"
)

var testVolume = [16]byte{0xb1, 0x0c, 0x4d, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd}

// payload returns n bytes derived from seq, so content can be checked
// without keeping it.
func payload(seq uint64, n int) []byte {
	b := make([]byte, n)
	x := seq*0x9E3779B97F4A7C15 + 1
	for i := 0; i < n; i += 8 {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		var w [8]byte
		binary.LittleEndian.PutUint64(w[:], x)
		copy(b[i:], w[:])
	}
	return b
}

// rec builds a record for seq; its kind and size derive from seq and size.
func rec(seq uint64, size int) journal.Record {
	r := journal.Record{Epoch: 7, Seq: seq, Offset: (seq * 4096) % (1 << 30)}
	switch {
	case size < 0:
		r.Op, r.Length = journal.OpTrim, uint32(-size)
	default:
		r.Op, r.Length, r.Data = journal.OpWrite, uint32(size), payload(seq, size)
	}
	return r
}

func checkRec(t testing.TB, got journal.Record, seq uint64) {
	t.Helper()
	if got.Seq != seq {
		t.Fatalf("got seq %d, want %d", got.Seq, seq)
	}
	if got.Op == journal.OpWrite {
		if !bytes.Equal(got.Data, payload(seq, len(got.Data))) || int(got.Length) != len(got.Data) {
			t.Fatalf("seq %d: payload mismatch (len %d)", seq, len(got.Data))
		}
	}
	if got.Epoch != 7 || got.Offset != (seq*4096)%(1<<30) {
		t.Fatalf("seq %d: header mismatch %+v", seq, got)
	}
}

func opts(dir string) journal.Options {
	return journal.Options{Dir: dir, Volume: testVolume, SegmentBytes: 16 << 10, NoSync: true}
}

func mustOpen(t testing.TB, o journal.Options) *journal.Journal {
	t.Helper()
	j, err := journal.Open(o)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	return j
}

func appendN(t testing.TB, j *journal.Journal, from, to uint64, size func(uint64) int) {
	t.Helper()
	ctx := context.Background()
	for s := from; s <= to; s++ {
		if err := j.Submit(ctx, rec(s, size(s))); err != nil {
			t.Fatalf("submit %d: %v", s, err)
		}
	}
	if err := j.Sync(ctx); err != nil {
		t.Fatalf("sync: %v", err)
	}
}

func scanAll(t testing.TB, j *journal.Journal, from uint64) []uint64 {
	t.Helper()
	var seqs []uint64
	err := j.Scan(from, func(r journal.Record) error {
		checkRec(t, r, from+uint64(len(seqs)))
		seqs = append(seqs, r.Seq)
		return nil
	})
	if err != nil {
		t.Fatalf("scan from %d: %v", from, err)
	}
	return seqs
}

func sizeMix(s uint64) int {
	switch s % 5 {
	case 0:
		return -4096 // trim
	case 1:
		return 0
	case 2:
		return 3000
	default:
		return int(s % 700)
	}
}

func TestAppendReadReopen(t *testing.T) {
	dir := t.TempDir()
	j := mustOpen(t, opts(dir))
	if j.FirstSeq() != 1 || j.LastSeq() != 0 {
		t.Fatalf("new journal: first %d last %d", j.FirstSeq(), j.LastSeq())
	}
	appendN(t, j, 1, 300, sizeMix)
	if w, d := j.Watermarks(); w != 300 || d != 300 {
		t.Fatalf("watermarks %d %d", w, d)
	}
	st := j.Stats()
	if st.Segments < 5 {
		t.Fatalf("expected rotation, got %d segments", st.Segments)
	}
	if got := scanAll(t, j, 1); len(got) != 300 {
		t.Fatalf("scan got %d records", len(got))
	}
	if got := scanAll(t, j, 157); len(got) != 144 {
		t.Fatalf("scan from 157 got %d records", len(got))
	}
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	o := opts(dir)
	o.TailBytes = 1 // force file reads
	j = mustOpen(t, o)
	defer j.Close()
	if j.FirstSeq() != 1 || j.LastSeq() != 300 {
		t.Fatalf("reopened: first %d last %d", j.FirstSeq(), j.LastSeq())
	}
	for _, from := range []uint64{1, 2, 77, 150, 299, 300} {
		if got := scanAll(t, j, from); len(got) != int(301-from) {
			t.Fatalf("scan from %d got %d", from, len(got))
		}
	}
	// Continue appending after reopen.
	appendN(t, j, 301, 320, sizeMix)
	if got := scanAll(t, j, 290); len(got) != 31 {
		t.Fatalf("got %d", len(got))
	}
}

func TestBigRecordOwnSegment(t *testing.T) {
	dir := t.TempDir()
	o := opts(dir)
	o.SegmentBytes = 4096
	j := mustOpen(t, o)
	appendN(t, j, 1, 6, func(s uint64) int {
		if s == 3 {
			return 100 << 10
		}
		return 1000
	})
	j.Close()
	j = mustOpen(t, o)
	defer j.Close()
	if got := scanAll(t, j, 1); len(got) != 6 {
		t.Fatalf("got %d", len(got))
	}
}

func TestSeqRulesAndSetStart(t *testing.T) {
	dir := t.TempDir()
	j := mustOpen(t, opts(dir))
	ctx := context.Background()
	if err := j.Submit(ctx, rec(5, 10)); !errors.Is(err, journal.ErrSeq) {
		t.Fatalf("submit 5 to new journal: %v", err)
	}
	if err := j.SetStart(100); err != nil {
		t.Fatal(err)
	}
	if j.FirstSeq() != 100 || j.LastSeq() != 99 {
		t.Fatalf("after SetStart: %d %d", j.FirstSeq(), j.LastSeq())
	}
	if err := j.Wait(ctx, 99, journal.Durable); err != nil {
		t.Fatalf("wait below start: %v", err)
	}
	appendN(t, j, 100, 110, sizeMix)
	if err := j.SetStart(500); !errors.Is(err, journal.ErrNotEmpty) {
		t.Fatalf("SetStart on non-empty: %v", err)
	}
	if err := j.Submit(ctx, rec(110, 1)); !errors.Is(err, journal.ErrSeq) {
		t.Fatalf("duplicate seq: %v", err)
	}
	bad := rec(111, 10)
	bad.Length = 11
	if err := j.Submit(ctx, bad); !errors.Is(err, journal.ErrInvalid) {
		t.Fatalf("bad length: %v", err)
	}
	seq, err := j.SubmitNext(ctx, rec(0, 0))
	if err != nil || seq != 111 {
		t.Fatalf("SubmitNext: %d %v", seq, err)
	}
	j.Close()
	j = mustOpen(t, opts(dir))
	defer j.Close()
	if j.FirstSeq() != 100 || j.LastSeq() != 111 {
		t.Fatalf("reopen after SetStart: %d %d", j.FirstSeq(), j.LastSeq())
	}
	// An empty journal keeps its start across reopen.
	dir2 := t.TempDir()
	j2 := mustOpen(t, opts(dir2))
	if err := j2.SetStart(42); err != nil {
		t.Fatal(err)
	}
	j2.Close()
	j2 = mustOpen(t, opts(dir2))
	defer j2.Close()
	if j2.FirstSeq() != 42 || j2.LastSeq() != 41 {
		t.Fatalf("empty reopen: %d %d", j2.FirstSeq(), j2.LastSeq())
	}
}

func TestReaderBlocksAndTail(t *testing.T) {
	j := mustOpen(t, opts(t.TempDir()))
	defer j.Close()
	r, err := j.NewReader(1)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	if _, err := r.Next(ctx, 10, 0); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Next on empty: %v", err)
	}
	got := make(chan []journal.Record, 1)
	go func() {
		recs, err := r.Next(context.Background(), 10, 0)
		if err != nil {
			t.Error(err)
		}
		got <- recs
	}()
	time.Sleep(10 * time.Millisecond)
	appendN(t, j, 1, 3, func(uint64) int { return 100 })
	recs := <-got
	if len(recs) < 1 || recs[0].Seq != 1 {
		t.Fatalf("got %v", recs)
	}
	// maxBytes limits but never returns nothing.
	r2, _ := j.NewReader(1)
	defer r2.Close()
	recs, err = r2.Next(context.Background(), 0, 1)
	if err != nil || len(recs) != 1 {
		t.Fatalf("maxBytes=1: %d %v", len(recs), err)
	}
	recs, err = r2.Next(context.Background(), 0, 200)
	if err != nil || len(recs) != 2 || recs[1].Seq != 3 {
		t.Fatalf("maxBytes=200: %d %v", len(recs), err)
	}
}

func TestReaderFromFiles(t *testing.T) {
	dir := t.TempDir()
	o := opts(dir)
	o.TailBytes = 1
	j := mustOpen(t, o)
	defer j.Close()
	appendN(t, j, 1, 2000, func(s uint64) int { return int(s % 300) })
	rng := rand.New(rand.NewPCG(1, 2))
	for range 50 {
		from := 1 + rng.Uint64N(2000)
		r, err := j.NewReader(from)
		if err != nil {
			t.Fatal(err)
		}
		want := from
		for want <= 2000 {
			recs, err := r.Next(context.Background(), 1+rng.IntN(50), 1+rng.IntN(20000))
			if err != nil {
				t.Fatalf("from %d at %d: %v", from, want, err)
			}
			for _, x := range recs {
				checkRec(t, x, want)
				want++
			}
		}
		r.Close()
	}
}

func TestRetentionRelease(t *testing.T) {
	dir := t.TempDir()
	j := mustOpen(t, opts(dir))
	defer j.Close()
	if err := j.AddConsumer("store", 1, false); err != nil {
		t.Fatal(err)
	}
	if err := j.AddConsumer("peer:m1", 1, true); err != nil {
		t.Fatal(err)
	}
	if err := j.AddConsumer("store", 1, false); !errors.Is(err, journal.ErrConsumer) {
		t.Fatalf("duplicate consumer: %v", err)
	}
	appendN(t, j, 1, 400, func(uint64) int { return 500 })
	segs := j.Stats().Segments
	r, _ := j.NewReader(1)
	defer r.Close()
	j.Release("store", 300)
	waitFor(t, func() bool { return j.Stats().Segments == segs }) // peer:m1 still holds everything
	j.Release("peer:m1", 200)
	waitFor(t, func() bool { return j.FirstSeq() > 1 })
	if f := j.FirstSeq(); f > 201 {
		t.Fatalf("first seq %d beyond the release point", f)
	}
	if _, err := j.NewReader(1); !errors.Is(err, journal.ErrGone) {
		t.Fatalf("reader below first: %v", err)
	}
	if _, err := r.Next(context.Background(), 1, 0); !errors.Is(err, journal.ErrGone) {
		t.Fatalf("reader overtaken by retention: %v", err)
	}
	// Retention may still be removing the other released segments: scan
	// from wherever it has got to.
	for {
		first, n := j.FirstSeq(), 0
		err := j.Scan(first, func(r journal.Record) error {
			checkRec(t, r, first+uint64(n))
			n++
			return nil
		})
		if errors.Is(err, journal.ErrGone) {
			continue
		}
		if err != nil {
			t.Fatalf("scan from %d: %v", first, err)
		}
		if n != int(401-first) {
			t.Fatalf("scan from %d got %d records", first, n)
		}
		break
	}
	j.RemoveConsumer("peer:m1")
	waitFor(t, func() bool { return j.FirstSeq() > 250 })
	if j.FirstSeq() > 301 {
		t.Fatalf("first %d beyond store's release", j.FirstSeq())
	}
}

func waitFor(t testing.TB, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached")
		}
		time.Sleep(time.Millisecond)
	}
}

func TestSizeBoundDrop(t *testing.T) {
	dir := t.TempDir()
	o := opts(dir)
	o.SegmentBytes = 8 << 10
	o.MaxBytes = 32 << 10
	var mu sync.Mutex
	drops := map[string][]journal.Region{}
	through := map[string]uint64{}
	o.OnDrop = func(c string, th uint64, regs []journal.Region) {
		mu.Lock()
		defer mu.Unlock()
		drops[c] = append(drops[c], regs...)
		through[c] = th
	}
	j := mustOpen(t, o)
	defer j.Close()
	j.AddConsumer("peer:a", 1, true)
	j.AddConsumer("peer:b", 1, true)
	j.Release("peer:b", 10)
	ctx := context.Background()
	// Records 1..100 overwrite 4 KiB blocks 0..9 of the disk in a cycle,
	// with 1000 bytes each: regions [k*4096, k*4096+1000).
	for s := uint64(1); s <= 100; s++ {
		r := journal.Record{Seq: s, Op: journal.OpWrite, Offset: (s % 10) * 4096, Length: 1000, Data: payload(s, 1000)}
		if err := j.Append(ctx, r, journal.Written); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, func() bool { return j.Stats().Bytes <= 32<<10 })
	mu.Lock()
	ra, rb := drops["peer:a"], drops["peer:b"]
	ta := through["peer:a"]
	mu.Unlock()
	if len(ra) == 0 || len(rb) == 0 {
		t.Fatalf("expected OnDrop for both consumers: %v %v", ra, rb)
	}
	if first := j.FirstSeq(); ta != first-1 {
		t.Fatalf("peer:a dropped through %d, first seq now %d", ta, first)
	}
	if rel, _ := j.Consumer("peer:a"); rel != ta {
		t.Fatalf("peer:a position %d, want %d", rel, ta)
	}
	for _, reg := range ra {
		if reg.Offset%4096 != 0 || reg.Length != 1000 {
			t.Fatalf("unexpected region %+v", reg)
		}
	}
	// peer:b had released 1..10: its first drop must not include block
	// offsets of seqs 1..10 only — all 10 blocks recur in 11..20 anyway, so
	// check the coalescing instead: regions are sorted and disjoint.
	for i := 1; i < len(ra); i++ {
		if ra[i].Offset <= ra[i-1].Offset+ra[i-1].Length && i > 0 && ra[i].Offset > ra[i-1].Offset {
			t.Fatalf("regions not coalesced: %v", ra)
		}
	}
	if st := j.Stats(); st.SegmentsDropped == 0 {
		t.Fatalf("stats: %+v", st)
	}

	// A non-droppable consumer stops the size bound.
	j.AddConsumer("store", j.FirstSeq(), false)
	first := j.FirstSeq()
	for s := uint64(101); s <= 200; s++ {
		r := journal.Record{Seq: s, Op: journal.OpZero, Offset: s * 4096, Length: 4096}
		if err := j.Append(ctx, r, journal.Written); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(20 * time.Millisecond)
	if j.FirstSeq() != first {
		t.Fatalf("non-droppable consumer dropped past: first %d -> %d", first, j.FirstSeq())
	}
	j.Release("store", 150)
	waitFor(t, func() bool { return j.FirstSeq() > first })
}

func TestCoalesceRegions(t *testing.T) {
	in := []journal.Region{{100, 10}, {0, 10}, {10, 5}, {105, 20}, {200, 1}, {50, 0}, {3, 2}}
	got := journal.CoalesceRegions(in)
	want := []journal.Region{{0, 15}, {50, 0}, {100, 25}, {200, 1}}
	if !slices.Equal(got, want) {
		t.Fatalf("got %v want %v", got, want)
	}
}

func TestTruncateAfter(t *testing.T) {
	dir := t.TempDir()
	j := mustOpen(t, opts(dir))
	appendN(t, j, 1, 300, sizeMix)
	r, _ := j.NewReader(250)
	defer r.Close()
	r.Next(context.Background(), 10, 0) // now at 260
	rLow, _ := j.NewReader(100)
	defer rLow.Close()
	if err := j.TruncateAfter(120); err != nil {
		t.Fatal(err)
	}
	if j.LastSeq() != 120 {
		t.Fatalf("last %d", j.LastSeq())
	}
	if w, d := j.Watermarks(); w != 120 || d != 120 {
		t.Fatalf("watermarks %d %d", w, d)
	}
	if _, err := r.Next(context.Background(), 1, 0); !errors.Is(err, journal.ErrTruncated) {
		t.Fatalf("reader past the truncation: %v", err)
	}
	// Append different content after the fork.
	appendN(t, j, 121, 130, func(uint64) int { return 77 })
	want := uint64(100)
	for want <= 130 {
		recs, err := rLow.Next(context.Background(), 0, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, x := range recs {
			checkRec(t, x, want)
			if want > 120 && len(x.Data) != 77 {
				t.Fatalf("seq %d: old record after truncation", want)
			}
			want++
		}
	}
	j.Close()
	j = mustOpen(t, opts(dir))
	if got := scanAll(t, j, 1); len(got) != 130 {
		t.Fatalf("after reopen got %d", len(got))
	}
	// Truncate everything.
	if err := j.TruncateAfter(0); err != nil {
		t.Fatal(err)
	}
	if j.FirstSeq() != 1 || j.LastSeq() != 0 {
		t.Fatalf("after truncating all: %d %d", j.FirstSeq(), j.LastSeq())
	}
	j.Close()
	j = mustOpen(t, opts(dir))
	defer j.Close()
	if j.LastSeq() != 0 {
		t.Fatalf("reopen after truncating all: last %d", j.LastSeq())
	}
}

func TestForeignVolumeAndOptions(t *testing.T) {
	dir := t.TempDir()
	j := mustOpen(t, opts(dir))
	appendN(t, j, 1, 3, sizeMix)
	j.Close()
	o := opts(dir)
	o.Volume[0] ^= 1
	if _, err := journal.Open(o); !errors.Is(err, journal.ErrForeignVolume) {
		t.Fatalf("foreign volume: %v", err)
	}
	for _, bad := range []journal.Options{
		{Volume: testVolume},
		{Dir: dir},
		{Dir: dir, Volume: testVolume, SegmentBytes: 10},
	} {
		if _, err := journal.Open(bad); err == nil {
			t.Fatalf("options %+v accepted", bad)
		}
	}
}

func segFiles(t testing.TB, dir string) []string {
	t.Helper()
	m, _ := filepath.Glob(filepath.Join(dir, "*.seg"))
	slices.Sort(m)
	return m
}

func flipBit(t testing.TB, path string, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	f.ReadAt(b, off)
	b[0] ^= 0x10
	f.WriteAt(b, off)
}

func fileSize(t testing.TB, path string) int64 {
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st.Size()
}

func TestBitFlips(t *testing.T) {
	build := func(t *testing.T) string {
		dir := t.TempDir()
		j := mustOpen(t, opts(dir))
		appendN(t, j, 1, 100, func(uint64) int { return 1000 })
		j.Close()
		return dir
	}
	t.Run("middle of non-last segment", func(t *testing.T) {
		dir := build(t)
		segs := segFiles(t, dir)
		off := fileSize(t, segs[1]) / 2
		flipBit(t, segs[1], off)
		_, err := journal.Open(opts(dir))
		if !errors.Is(err, journal.ErrCorrupt) {
			t.Fatalf("want ErrCorrupt, got %v", err)
		}
		if !strings.Contains(err.Error(), filepath.Base(segs[1])) || !strings.Contains(err.Error(), "offset ") {
			t.Fatalf("error does not name the file and offset: %v", err)
		}
	})
	t.Run("header of non-last segment", func(t *testing.T) {
		dir := build(t)
		segs := segFiles(t, dir)
		flipBit(t, segs[0], 30)
		if _, err := journal.Open(opts(dir)); !errors.Is(err, journal.ErrCorrupt) || !strings.Contains(err.Error(), filepath.Base(segs[0])) {
			t.Fatalf("want ErrCorrupt naming %s, got %v", segs[0], err)
		}
	})
	t.Run("last record of last segment", func(t *testing.T) {
		dir := build(t)
		segs := segFiles(t, dir)
		last := segs[len(segs)-1]
		flipBit(t, last, fileSize(t, last)-10)
		j := mustOpen(t, opts(dir))
		defer j.Close()
		if j.LastSeq() != 99 {
			t.Fatalf("last seq %d, want 99", j.LastSeq())
		}
		if got := scanAll(t, j, 1); len(got) != 99 {
			t.Fatalf("got %d", len(got))
		}
		appendN(t, j, 100, 101, sizeMix) // the journal continues
	})
	t.Run("middle of last segment", func(t *testing.T) {
		// Records written after the flipped one was durable prove that the
		// damage hit durable data rather than an unsynced tail.
		dir := build(t)
		j := mustOpen(t, opts(dir))
		appendN(t, j, 101, 103, func(uint64) int { return 1000 })
		j.Close()
		segs := segFiles(t, dir)
		last := segs[len(segs)-1]
		if fileSize(t, last) < 3000 {
			t.Skip("last segment too small")
		}
		flipBit(t, last, journal.SegmentHeaderSize+journal.RecordHeaderSize+10)
		if _, err := journal.Open(opts(dir)); !errors.Is(err, journal.ErrCorrupt) || !strings.Contains(err.Error(), filepath.Base(last)) {
			t.Fatalf("want ErrCorrupt naming %s, got %v", last, err)
		}
	})
	t.Run("zeroed tail", func(t *testing.T) {
		dir := build(t)
		segs := segFiles(t, dir)
		last := segs[len(segs)-1]
		size := fileSize(t, last)
		f, _ := os.OpenFile(last, os.O_RDWR, 0)
		f.WriteAt(make([]byte, 8192), size-500) // zero the last record's end and extend
		f.Close()
		j := mustOpen(t, opts(dir))
		defer j.Close()
		if j.LastSeq() != 99 {
			t.Fatalf("last seq %d", j.LastSeq())
		}
		if s := fileSize(t, last); s != size-1040 {
			t.Fatalf("tail not truncated: size %d, want %d", s, size-1040)
		}
	})
	t.Run("torn new segment", func(t *testing.T) {
		dir := build(t)
		segs := segFiles(t, dir)
		last := segs[len(segs)-1]
		os.WriteFile(filepath.Join(dir, "00000000000000000101.seg"), []byte{'B', 'M'}, 0o644)
		j := mustOpen(t, opts(dir))
		defer j.Close()
		if j.LastSeq() != 100 {
			t.Fatalf("last %d", j.LastSeq())
		}
		if segs2 := segFiles(t, dir); segs2[len(segs2)-1] != last {
			t.Fatalf("torn segment not removed: %v", segs2)
		}
	})
	t.Run("gap between segments", func(t *testing.T) {
		dir := build(t)
		segs := segFiles(t, dir)
		os.Remove(segs[1])
		if _, err := journal.Open(opts(dir)); !errors.Is(err, journal.ErrCorrupt) {
			t.Fatalf("gap: %v", err)
		}
	})
}

// faultFS wraps the OS file system and fails writes (short) or syncs on
// demand.
type faultFS struct {
	vfs.FS
	mu        sync.Mutex
	failWrite bool
	failSync  bool
}

var errInjected = errors.New("injected I/O error")

func (f *faultFS) set(write, sync bool) {
	f.mu.Lock()
	f.failWrite, f.failSync = write, sync
	f.mu.Unlock()
}

func (f *faultFS) Create(p string, perm os.FileMode) (vfs.File, error) {
	file, err := f.FS.Create(p, perm)
	if err != nil {
		return nil, err
	}
	return &faultFile{file, f}, nil
}

func (f *faultFS) OpenRW(p string) (vfs.File, error) {
	file, err := f.FS.OpenRW(p)
	if err != nil {
		return nil, err
	}
	return &faultFile{file, f}, nil
}

type faultFile struct {
	vfs.File
	fs *faultFS
}

func (f *faultFile) WriteAt(b []byte, off int64) (int, error) {
	f.fs.mu.Lock()
	fail := f.fs.failWrite
	f.fs.mu.Unlock()
	if fail {
		n, _ := f.File.WriteAt(b[:len(b)/2], off) // a short write
		return n, errInjected
	}
	return f.File.WriteAt(b, off)
}

func (f *faultFile) Sync() error {
	f.fs.mu.Lock()
	fail := f.fs.failSync
	f.fs.mu.Unlock()
	if fail {
		return errInjected
	}
	return f.File.Sync()
}

func TestFaultsAreSticky(t *testing.T) {
	for _, tc := range []struct {
		name        string
		write, sync bool
		level       journal.Level
		through     bool // SubmitDeferred + WriteThrough: the caller's own write fails
	}{
		{"write", true, false, journal.Written, false},
		{"fsync", false, true, journal.Durable, false},
		{"write-through", true, false, journal.Written, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			fs := &faultFS{FS: vfs.OS}
			o := opts(dir)
			o.NoSync = false
			o.FS = fs
			j := mustOpen(t, o)
			ctx := context.Background()
			appendN(t, j, 1, 10, sizeMix)
			fs.set(tc.write, tc.sync)
			var err error
			if tc.through {
				if err = j.SubmitDeferred(ctx, rec(11, 100)); err == nil {
					err = j.WriteThrough(ctx, 11)
				}
			} else {
				err = j.Append(ctx, rec(11, 100), tc.level)
			}
			if !errors.Is(err, journal.ErrFailed) || !errors.Is(err, errInjected) {
				t.Fatalf("append during fault: %v", err)
			}
			fs.set(false, false)
			// Sticky: later calls fail even though the fault is gone.
			if err := j.Submit(ctx, rec(12, 1)); !errors.Is(err, journal.ErrFailed) {
				t.Fatalf("submit after failure: %v", err)
			}
			if err := j.Wait(ctx, 11, journal.Written); !errors.Is(err, journal.ErrFailed) {
				t.Fatalf("wait after failure: %v", err)
			}
			if err := j.Sync(ctx); !errors.Is(err, journal.ErrFailed) {
				t.Fatalf("sync after failure: %v", err)
			}
			if err := j.Close(); !errors.Is(err, journal.ErrFailed) {
				t.Fatalf("close after failure: %v", err)
			}
			// Reopen recovers what was acknowledged.
			j = mustOpen(t, opts(dir))
			defer j.Close()
			if l := j.LastSeq(); l < 10 {
				t.Fatalf("lost acknowledged records: last %d", l)
			}
			scanAll(t, j, 1)
		})
	}
}

func TestWaitersAndSyncCount(t *testing.T) {
	dir := t.TempDir()
	o := opts(dir)
	o.NoSync = false
	o.SegmentBytes = 1 << 20 // no rotation (rotation syncs)
	j := mustOpen(t, o)
	defer j.Close()
	ctx := context.Background()
	const writers, per = 16, 50
	var wg sync.WaitGroup
	for range writers {
		wg.Go(func() {
			for range per {
				seq, err := j.SubmitNext(ctx, rec(0, 0))
				if err != nil {
					t.Error(err)
					return
				}
				if err := j.Wait(ctx, seq, journal.Durable); err != nil {
					t.Error(err)
					return
				}
				if _, d := j.Watermarks(); d < seq {
					t.Errorf("durable %d < acked %d", d, seq)
				}
			}
		})
	}
	wg.Wait()
	st := j.Stats()
	if st.LastSeq != writers*per || st.Durable != writers*per {
		t.Fatalf("stats %+v", st)
	}
	if st.Syncs >= writers*per {
		t.Fatalf("no group commit: %d syncs for %d records", st.Syncs, writers*per)
	}
	t.Logf("%d records, %d writes, %d syncs", st.RecordsWritten, st.Writes, st.Syncs)
	// Written-only appends do not sync.
	before := j.Stats().Syncs
	for range 20 {
		seq, _ := j.SubmitNext(ctx, rec(0, 0))
		if err := j.Wait(ctx, seq, journal.Written); err != nil {
			t.Fatal(err)
		}
	}
	if s := j.Stats().Syncs; s != before {
		t.Fatalf("Written appends synced: %d -> %d", before, s)
	}
	// A Durable wait after the write triggers a sync-only pass.
	if err := j.Wait(ctx, j.LastSeq(), journal.Durable); err != nil {
		t.Fatal(err)
	}
	if s := j.Stats().Syncs; s != before+1 {
		t.Fatalf("sync-only pass: %d -> %d", before, s)
	}
	// Changed fires when the watermarks advance.
	ch := j.Changed()
	j.SubmitNext(ctx, rec(0, 0))
	select {
	case <-ch:
	case <-time.After(5 * time.Second):
		t.Fatal("Changed did not fire")
	}
}

func TestQueueBound(t *testing.T) {
	o := opts(t.TempDir())
	o.QueueBytes = 1
	j := mustOpen(t, o)
	defer j.Close()
	// Each Submit beyond the first waits for the queue to drain; all succeed.
	appendN(t, j, 1, 200, func(uint64) int { return 1000 })
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	// With a cancelled context a Submit still succeeds when the queue is empty.
	j.Sync(context.Background())
	if err := j.Submit(ctx, rec(201, 10)); err != nil {
		t.Fatalf("submit to empty queue: %v", err)
	}
}

func TestClose(t *testing.T) {
	dir := t.TempDir()
	j := mustOpen(t, opts(dir))
	ctx := context.Background()
	for s := uint64(1); s <= 50; s++ {
		j.Submit(ctx, rec(s, 100))
	}
	r, _ := j.NewReader(51)
	done := make(chan error, 1)
	go func() { _, err := r.Next(ctx, 1, 0); done <- err }()
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; !errors.Is(err, journal.ErrClosed) {
		t.Fatalf("blocked reader after close: %v", err)
	}
	if err := j.Close(); !errors.Is(err, journal.ErrClosed) {
		t.Fatalf("second close: %v", err)
	}
	if err := j.Submit(ctx, rec(51, 1)); !errors.Is(err, journal.ErrClosed) {
		t.Fatalf("submit after close: %v", err)
	}
	j = mustOpen(t, opts(dir))
	defer j.Close()
	if j.LastSeq() != 50 {
		t.Fatalf("close did not flush: last %d", j.LastSeq())
	}
}

func ExampleJournal_Append() {
	dir, _ := os.MkdirTemp("", "journal-example")
	defer os.RemoveAll(dir)
	j, err := journal.Open(journal.Options{Dir: dir, Volume: testVolume})
	if err != nil {
		panic(err)
	}
	defer j.Close()
	ctx := context.Background()
	err = j.Append(ctx, journal.Record{Seq: 1, Op: journal.OpWrite, Offset: 4096, Length: 5, Data: []byte("hello")}, journal.Durable)
	fmt.Println(err, j.LastSeq())
	// Output: <nil> 1
}

// TestWriteThroughConcurrent has many writers queue records without waking
// the flusher and write them through themselves, as the volume does; small
// segments make writers rotate under each other. Every record must be
// written when its writer returns, and all of them must read back in order
// after a reopen.
func TestWriteThroughConcurrent(t *testing.T) {
	dir := t.TempDir()
	j := mustOpen(t, opts(dir))
	ctx := context.Background()
	var mu sync.Mutex // orders seqs, as Volume's lock does
	next := uint64(1)
	var wg sync.WaitGroup
	const writers, each = 16, 200
	for range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range each {
				mu.Lock()
				seq := next
				next++
				err := j.SubmitDeferred(ctx, rec(seq, 100+int(seq%900)))
				mu.Unlock()
				if err == nil {
					err = j.WriteThrough(ctx, seq)
				}
				if err != nil {
					t.Errorf("seq %d: %v", seq, err)
					return
				}
				if w, _ := j.Watermarks(); w < seq {
					t.Errorf("seq %d returned with written watermark %d", seq, w)
					return
				}
			}
		}()
	}
	wg.Wait()
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	j = mustOpen(t, opts(dir))
	defer j.Close()
	if got := scanAll(t, j, 1); len(got) != writers*each {
		t.Fatalf("read back %d records, want %d", len(got), writers*each)
	}
}

// TestSegmentPreallocated checks that segments reserve their disk blocks up
// front without growing the file: recovery reads a segment up to its size,
// so the size must stay the end of the last record.
func TestSegmentPreallocated(t *testing.T) {
	dir := t.TempDir()
	o := opts(dir)
	o.SegmentBytes = 1 << 20
	j := mustOpen(t, o)
	appendN(t, j, 1, 3, func(uint64) int { return 1000 })
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "00000000000000000001.seg")
	var st syscall.Stat_t
	if err := syscall.Stat(p, &st); err != nil {
		t.Fatal(err)
	}
	want := int64(journal.SegmentHeaderSize + 3*(journal.RecordHeaderSize+1000))
	if st.Size != want {
		t.Fatalf("segment size %d, want %d (preallocation must not change the size)", st.Size, want)
	}
	if st.Blocks*512 < o.SegmentBytes {
		t.Logf("file system did not preallocate (%d bytes reserved); fine, it is best effort", st.Blocks*512)
	}
	j = mustOpen(t, o)
	defer j.Close()
	if got := scanAll(t, j, 1); len(got) != 3 {
		t.Fatalf("read back %d records after reopen, want 3", len(got))
	}
}
