package journal_test

import (
	"bytes"
	"context"
	"errors"
	"sync/atomic"
	"testing"

	"github.com/blockmirror/blockmirror/internal/vfs"
	"github.com/blockmirror/blockmirror/journal"
)

// indirectRec is an indirect write of n bytes at off for seq (data from
// payload).
func indirectRec(seq, off uint64, n int) journal.Record {
	d := payload(seq, n)
	return journal.Record{Epoch: 7, Seq: seq, Op: journal.OpWrite, Offset: off, Length: uint32(n), Data: d,
		Sums: journal.IndirectSums(nil, off, d)}
}

// TestIndirectRecord: an OpWrite submitted with Sums reaches the segment
// as an OpIndirect record holding only the sums (a 1 MiB write takes 104
// bytes of journal), readers of the memory tail still get the data, a
// reopened journal returns the OpIndirect record whose sums verify the
// data, and every sync that covers an indirect record calls BeforeSync
// first (one that covers only direct records does not).
func TestIndirectRecord(t *testing.T) {
	m := vfs.NewCrashableMem()
	var before atomic.Int32
	o := journal.Options{FS: m, Dir: "/j", Volume: testVolume, BeforeSync: func() error { before.Add(1); return nil }}
	j := mustOpen(t, o)
	ctx := context.Background()
	r1 := indirectRec(1, 3<<20+4096, 1<<20) // not piece-aligned: 17 pieces
	if err := j.Append(ctx, r1, journal.Durable); err != nil {
		t.Fatal(err)
	}
	if got := before.Load(); got != 1 {
		t.Fatalf("BeforeSync called %d times for a sync covering an indirect record, want 1", got)
	}
	if err := j.Append(ctx, rec(2, 4096), journal.Durable); err != nil {
		t.Fatal(err)
	}
	if got := before.Load(); got != 1 {
		t.Fatalf("BeforeSync called again (%d) for a sync covering only a direct record", got)
	}
	if st := j.Stats(); st.BytesWritten != uint64(2*journal.RecordHeaderSize+17*4+4096) {
		t.Fatalf("%d bytes written, want %d (the indirect record holds sums only)", st.BytesWritten, 2*journal.RecordHeaderSize+17*4+4096)
	}
	rd, err := j.NewReader(1)
	if err != nil {
		t.Fatal(err)
	}
	recs, err := rd.Next(ctx, 1, 1<<30)
	rd.Close()
	if err != nil || len(recs) != 1 || recs[0].Op != journal.OpWrite || !bytes.Equal(recs[0].Data, r1.Data) {
		t.Fatalf("tail read: %v %+v", err, recs)
	}
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	j = mustOpen(t, o)
	defer j.Close()
	var got []journal.Record
	if err := j.Scan(1, func(r journal.Record) error {
		r.Sums = bytes.Clone(r.Sums)
		got = append(got, r)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Op != journal.OpIndirect || got[0].Data != nil || got[0].Offset != r1.Offset || got[0].Length != r1.Length {
		t.Fatalf("reopened: %+v", got)
	}
	// A reader's byte bound counts an indirect record as the data it
	// becomes: one at a time with a 4 KiB bound.
	rd, err = j.NewReader(1)
	if err != nil {
		t.Fatal(err)
	}
	recs, err = rd.Next(ctx, 100, 4096)
	rd.Close()
	if err != nil || len(recs) != 1 || recs[0].Op != journal.OpIndirect {
		t.Fatalf("read from the files with a 4 KiB bound: %v, %d records", err, len(recs))
	}
	if at := journal.VerifyIndirect(&got[0], r1.Data); at >= 0 {
		t.Fatalf("sums of the reopened record do not verify the data (piece at %d)", at)
	}
	torn := bytes.Clone(r1.Data)
	torn[5<<16] ^= 1
	if at := journal.VerifyIndirect(&got[0], torn); at != int64(r1.Offset)&^(journal.IndirectPiece-1)+5<<16 {
		t.Fatalf("a changed byte in the 6th piece: VerifyIndirect = %d", at)
	}
}

// TestIndirectNeedsBeforeSync: a journal without BeforeSync refuses
// indirect writes (it could make their records durable before their
// data), and nobody may submit an OpIndirect record directly.
func TestIndirectNeedsBeforeSync(t *testing.T) {
	j := mustOpen(t, journal.Options{FS: vfs.NewCrashableMem(), Dir: "/j", Volume: testVolume})
	defer j.Close()
	ctx := context.Background()
	if err := j.Submit(ctx, indirectRec(1, 0, 1<<16)); !errors.Is(err, journal.ErrInvalid) {
		t.Fatalf("indirect write without BeforeSync: %v, want ErrInvalid", err)
	}
	r := indirectRec(1, 0, 1<<16)
	r.Op, r.Data = journal.OpIndirect, nil
	if err := j.Submit(ctx, r); !errors.Is(err, journal.ErrInvalid) {
		t.Fatalf("OpIndirect submitted: %v, want ErrInvalid", err)
	}
}

// TestIndirectInOlderSegment: appended to a segment of format 3 (left by
// an earlier build), an indirect write is written with its data, since a
// version-3 reader would not know OpIndirect; and an OpIndirect record
// found in a version-3 segment is damage, not a record.
func TestIndirectInOlderSegment(t *testing.T) {
	m := vfs.NewCrashableMem()
	if err := vfs.MkdirAllSynced(m, "/j", 0o755); err != nil {
		t.Fatal(err)
	}
	hdr := journal.AppendSegmentHeader(nil, journal.SegmentHeader{Version: 3, Volume: testVolume, FirstSeq: 1})
	if err := writeFile(m, "/j/00000000000000000001.seg", hdr); err != nil {
		t.Fatal(err)
	}
	o := journal.Options{FS: m, Dir: "/j", Volume: testVolume, BeforeSync: func() error { return nil }}
	j := mustOpen(t, o)
	r1 := indirectRec(1, 0, 1<<16)
	if err := j.Append(context.Background(), r1, journal.Durable); err != nil {
		t.Fatal(err)
	}
	j.Close()
	j = mustOpen(t, o)
	var got journal.Record
	j.Scan(1, func(r journal.Record) error { got = r; return nil })
	j.Close()
	if got.Op != journal.OpWrite || !bytes.Equal(got.Data, r1.Data) {
		t.Fatalf("indirect write in a version-3 segment came back as %v with %d bytes", got.Op, len(got.Data))
	}
	// An OpIndirect record in a version-3 segment.
	r := indirectRec(2, 0, 1<<16)
	r.Op, r.Data = journal.OpIndirect, nil
	b, err := journal.AppendRecord(nil, r)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := journal.DecodeRecord(b); err != nil {
		t.Fatalf("format 4 decode: %v", err)
	}
	raw, _ := vfs.ReadFile(m, "/j/00000000000000000001.seg")
	if err := writeFile(m, "/j/00000000000000000001.seg", append(raw, b...)); err != nil {
		t.Fatal(err)
	}
	j = mustOpen(t, o) // the tail is cut (it was never synced: a torn tail)
	defer j.Close()
	if last := j.LastSeq(); last != 1 {
		t.Fatalf("an OpIndirect record in a version-3 segment was kept (last seq %d)", last)
	}
}

// writeFile writes b to path durably.
func writeFile(m vfs.FS, path string, b []byte) error {
	f, err := m.OpenRW(path)
	if err != nil {
		f, err = m.Create(path, 0o644)
	}
	if err != nil {
		return err
	}
	if _, err = f.WriteAt(b, 0); err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = m.SyncDir("/j")
	}
	return err
}
