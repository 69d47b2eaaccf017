package journal_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/blockmirror/blockmirror/journal"
)

func seedRecords() []journal.Record {
	return []journal.Record{
		rec(1, 0), rec(2, 1), rec(3, 4096), rec(4, -512),
		{Seq: 5, Op: journal.OpZero, Offset: 1 << 40, Length: 1 << 20},
		{Seq: 6, Epoch: 9, Op: journal.OpEpoch},
		rec(^uint64(0), 17),
		{Seq: 7, Op: journal.OpIndirect, Offset: 3 << 16, Length: 1 << 17, Sums: make([]byte, 8)},
		{Seq: 8, Op: journal.OpIndirect, Offset: 100, Length: 1 << 16, Sums: []byte{1, 2, 3, 4, 5, 6, 7, 8}},
	}
}

func FuzzDecodeRecord(f *testing.F) {
	for _, r := range seedRecords() {
		b, err := journal.AppendRecord(nil, r)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
		f.Add(b[:len(b)-1])
		f.Add(append(b, 0xff))
	}
	f.Add(make([]byte, journal.RecordHeaderSize))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, n, err := journal.DecodeRecord(b)
		if err != nil {
			if !errors.Is(err, journal.ErrCorrupt) && !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Fatalf("unexpected error kind: %v", err)
			}
			return
		}
		if n != journal.RecordHeaderSize+len(r.Data)+len(r.Sums) || n > len(b) || len(r.Data) > journal.MaxRecordData {
			t.Fatalf("bad length %d for %d data bytes of %d", n, len(r.Data), len(b))
		}
		again, err := journal.AppendRecord(nil, r)
		if err != nil {
			t.Fatalf("decoded record does not re-encode: %v", err)
		}
		if !bytes.Equal(again, b[:n]) {
			t.Fatalf("decode(encode) mismatch")
		}
	})
}

func TestDecodeRecordDoesNotAllocate(t *testing.T) {
	b, _ := journal.AppendRecord(nil, rec(9, 5000))
	if a := testing.AllocsPerRun(100, func() { journal.DecodeRecord(b) }); a != 0 {
		t.Fatalf("DecodeRecord allocated %v times per call", a)
	}
	// A header announcing more than the maximum is rejected from the header
	// alone.
	big := slices.Clone(b[:journal.RecordHeaderSize])
	binary.LittleEndian.PutUint32(big[4:8], journal.MaxRecordData+1)
	if _, _, err := journal.DecodeRecord(big); !errors.Is(err, journal.ErrCorrupt) {
		t.Fatalf("oversized length: %v", err)
	}
}

func FuzzRecordRoundTrip(f *testing.F) {
	for _, r := range seedRecords() {
		f.Add(r.Epoch, r.Seq, uint8(r.Op), r.Offset, r.Length, r.Data)
	}
	f.Fuzz(func(t *testing.T, epoch, seq uint64, op uint8, off uint64, length uint32, data []byte) {
		in := journal.Record{Epoch: epoch, Seq: seq, Op: journal.Op(op), Offset: off, Length: length, Data: data}
		b, err := journal.AppendRecord([]byte("prefix"), in)
		if err != nil {
			if !errors.Is(err, journal.ErrInvalid) {
				t.Fatalf("unexpected error kind: %v", err)
			}
			return
		}
		out, n, err := journal.DecodeRecord(b[6:])
		if err != nil || n != len(b)-6 {
			t.Fatalf("decode: %v (n %d of %d)", err, n, len(b)-6)
		}
		if out.Epoch != in.Epoch || out.Seq != in.Seq || out.Op != in.Op || out.Offset != in.Offset ||
			out.Length != in.Length || !bytes.Equal(out.Data, in.Data) {
			t.Fatalf("round trip: got %+v want %+v", out, in)
		}
	})
}

func FuzzSegmentHeader(f *testing.F) {
	f.Add(journal.AppendSegmentHeader(nil, journal.SegmentHeader{Volume: testVolume, FirstSeq: 1}))
	f.Add(journal.AppendSegmentHeader(nil, journal.SegmentHeader{FirstSeq: ^uint64(0)}))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := journal.DecodeSegmentHeader(b)
		if err != nil {
			return
		}
		if again := journal.AppendSegmentHeader(nil, h); !bytes.Equal(again, b[:journal.SegmentHeaderSize]) {
			t.Fatalf("decode(encode) mismatch")
		}
	})
}

// FuzzOpenSegment opens a journal whose only segment holds arbitrary bytes:
// Open must fail cleanly or recover a consistent journal.
func FuzzOpenSegment(f *testing.F) {
	dir := f.TempDir()
	j, err := journal.Open(journal.Options{Dir: dir, Volume: testVolume, NoSync: true})
	if err != nil {
		f.Fatal(err)
	}
	appendN(f, j, 1, 5, sizeMix)
	j.Close()
	seg, err := os.ReadFile(filepath.Join(dir, "00000000000000000001.seg"))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(seg)
	f.Add(seg[:len(seg)-3])
	f.Add(seg[:journal.SegmentHeaderSize])
	f.Add(seg[:10])
	f.Fuzz(func(t *testing.T, b []byte) {
		dir := t.TempDir()
		path := filepath.Join(dir, "00000000000000000001.seg")
		if err := os.WriteFile(path, b, 0o644); err != nil {
			t.Fatal(err)
		}
		o := journal.Options{Dir: dir, Volume: testVolume, NoSync: true}
		j, err := journal.Open(o)
		if err != nil {
			if !errors.Is(err, journal.ErrCorrupt) && !errors.Is(err, journal.ErrVersion) && !errors.Is(err, journal.ErrForeignVolume) {
				t.Fatalf("unexpected error kind: %v", err)
			}
			return
		}
		last := j.LastSeq()
		n := uint64(0)
		if err := j.Scan(j.FirstSeq(), func(journal.Record) error { n++; return nil }); err != nil {
			t.Fatalf("scan after successful open: %v", err)
		}
		if j.FirstSeq()+n != last+1 {
			t.Fatalf("scan found %d records, first %d last %d", n, j.FirstSeq(), last)
		}
		j.Close()
		j, err = journal.Open(o)
		if err != nil {
			t.Fatalf("second open: %v", err)
		}
		if j.LastSeq() != last {
			t.Fatalf("second open: last %d, first open %d", j.LastSeq(), last)
		}
		j.Close()
	})
}
