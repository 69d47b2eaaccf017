package journal

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"

	"github.com/blockmirror/blockmirror/internal/vfs"
)

// Reader reads records in seq order, from the in-memory tail when they are
// recent and from the segment files otherwise. Many readers may be open at
// once and are independent. A Reader is not safe for concurrent use.
type Reader struct {
	j      *Journal
	next   uint64 // next seq to return (j.mu)
	broken bool   // records past next were truncated (j.mu)
	closed bool   // (j.mu)

	// File cache, owned by the goroutine calling Next.
	f      vfs.File
	fPath  string
	fGen   uint64
	posSeq uint64 // seq of the record at posOff in fPath; 0 if unknown
	posOff int64
}

// NewReader returns a reader positioned at seq from. It fails with ErrGone
// if from < FirstSeq(). from may be LastSeq()+1 (or beyond: the reader then
// waits for those seqs).
func (j *Journal) NewReader(from uint64) (*Reader, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if err := j.usableLocked(); err != nil {
		return nil, err
	}
	if from < j.firstLocked() {
		return nil, fmt.Errorf("journal: reader from %d: %w (first seq %d)", from, ErrGone, j.firstLocked())
	}
	r := &Reader{j: j, next: from}
	j.readers[r] = struct{}{}
	return r, nil
}

// Close releases the reader's resources.
func (r *Reader) Close() {
	r.j.mu.Lock()
	r.closed = true
	delete(r.j.readers, r)
	r.j.mu.Unlock()
	r.closeFile()
}

func (r *Reader) closeFile() {
	if r.f != nil {
		r.f.Close()
		r.f, r.fPath, r.posSeq = nil, "", 0
	}
}

// Position returns the seq the next record returned will carry.
func (r *Reader) Position() uint64 {
	r.j.mu.Lock()
	defer r.j.mu.Unlock()
	return r.next
}

// Next returns at least one record, in seq order, blocking until one is
// submitted or ctx ends. It returns at most maxRecords records (no limit if
// <= 0) and stops before exceeding maxBytes of data (no limit if <= 0)
// unless that would return nothing; an OpIndirect record counts as its
// Length (the data its reader reads back). Records submitted but not yet written
// are returned too; a reader that must not run ahead of durability should
// Wait. Returned records share the journal's buffers and are read-only.
// Errors: ErrGone if the records were removed by retention, ErrTruncated
// if they were removed by TruncateAfter, ErrClosed, the sticky failure,
// or an ErrCorrupt naming file and offset.
func (r *Reader) Next(ctx context.Context, maxRecords int, maxBytes int) ([]Record, error) {
	return r.read(ctx, maxRecords, maxBytes, true)
}

// read is Next; without block it returns io.EOF instead of waiting.
func (r *Reader) read(ctx context.Context, maxRecords, maxBytes int, block bool) ([]Record, error) {
	if maxRecords <= 0 {
		maxRecords = int(^uint(0) >> 1)
	}
	if maxBytes <= 0 {
		maxBytes = int(^uint(0) >> 1)
	}
	j := r.j
	for {
		j.mu.Lock()
		for {
			if err := r.checkLocked(); err != nil {
				j.mu.Unlock()
				return nil, err
			}
			if r.next < j.next {
				break
			}
			if j.closing {
				j.mu.Unlock()
				return nil, ErrClosed
			}
			if !block {
				j.mu.Unlock()
				return nil, io.EOF
			}
			ch := j.sigLocked()
			j.mu.Unlock()
			select {
			case <-ch:
			case <-ctx.Done():
				return nil, fmt.Errorf("journal: reader at %d: %w", r.Position(), ctx.Err())
			}
			j.mu.Lock()
		}
		if len(j.tail) > 0 && r.next >= j.tailFirst {
			i := int(r.next - j.tailFirst)
			n, bytes := 0, 0
			for i+n < len(j.tail) && n < maxRecords {
				sz := len(j.tail[i+n].Data)
				if n > 0 && bytes+sz > maxBytes {
					break
				}
				bytes += sz
				n++
			}
			out := make([]Record, n)
			copy(out, j.tail[i:i+n])
			r.next += uint64(n)
			j.mu.Unlock()
			return out, nil
		}
		// From the files: the records below tailFirst are all written.
		k := sort.Search(len(j.segs), func(i int) bool { return j.segs[i].first > r.next }) - 1
		seg := j.segs[k]
		path, size, end := seg.path, seg.size, seg.first+seg.count
		idxSeq, idxOff := seg.lookup(r.next)
		gen, want := j.gen, r.next
		j.mu.Unlock()

		out, pos, err := r.readFile(path, size, end, gen, want, idxSeq, idxOff, maxRecords, maxBytes)

		j.mu.Lock()
		if err2 := r.checkLocked(); err2 != nil {
			j.mu.Unlock()
			return nil, err2
		}
		if j.gen != gen || r.next != want {
			j.mu.Unlock() // truncated or reset meanwhile: start over
			r.closeFile()
			continue
		}
		if err != nil {
			j.mu.Unlock()
			if errors.Is(err, io.ErrUnexpectedEOF) {
				err = fmt.Errorf("%w: %w", ErrCorrupt, err)
			}
			return nil, err
		}
		r.next += uint64(len(out))
		j.mu.Unlock()
		r.posSeq, r.posOff = r.next, pos
		return out, nil
	}
}

func (r *Reader) checkLocked() error {
	j := r.j
	switch {
	case r.closed:
		return fmt.Errorf("journal: reader: %w", ErrClosed)
	case r.broken:
		return fmt.Errorf("journal: reader at %d: %w (last seq %d)", r.next, ErrTruncated, j.next-1)
	case j.err != nil:
		return j.err
	case j.stopped && j.closing:
		return ErrClosed
	case r.next < j.firstLocked():
		return fmt.Errorf("journal: reader at %d: %w (first seq %d)", r.next, ErrGone, j.firstLocked())
	}
	return nil
}

// readFile reads records want.. (below end) from segment path. It returns
// them and the offset following the last one.
func (r *Reader) readFile(path string, size int64, end, gen, want, idxSeq uint64, idxOff int64, maxRecords, maxBytes int) ([]Record, int64, error) {
	if r.f == nil || r.fPath != path || r.fGen != gen {
		r.closeFile()
		f, err := r.j.fs.Open(path)
		if err != nil {
			return nil, 0, fmt.Errorf("journal: open %s: %w", path, err)
		}
		r.f, r.fPath, r.fGen = f, path, gen
	}
	seq, off := idxSeq, idxOff
	if r.posSeq == want && r.posOff >= off {
		seq, off = want, r.posOff
	}
	chunk := min(max(maxBytes, 64<<10)+RecordHeaderSize, 4<<20)
	it := segIter{f: r.f, path: path, size: size, off: off, chunk: chunk, fresh: true}
	var out []Record
	bytes := 0
	for seq < end && len(out) < maxRecords {
		// Stop before a read would be needed once we have something.
		if len(out) > 0 && it.off+RecordHeaderSize > it.bufOff+int64(len(it.buf)) {
			break
		}
		rec, roff, err := it.next()
		if err == io.EOF {
			err = fmt.Errorf("journal: %s at offset %d: %w: expected record %d", path, roff, io.ErrUnexpectedEOF, seq)
		}
		if err != nil {
			return nil, 0, err
		}
		if rec.Seq != seq {
			return nil, 0, fmt.Errorf("journal: %s at offset %d: %w: record seq %d, want %d", path, roff, ErrCorrupt, rec.Seq, seq)
		}
		seq++
		if rec.Seq < want {
			continue
		}
		sz := len(rec.Data)
		if rec.Op == OpIndirect {
			sz = int(rec.Length) // what its reader turns it back into
		}
		if len(out) > 0 && bytes+sz > maxBytes {
			it.off = roff
			break
		}
		bytes += sz
		out = append(out, rec)
	}
	return out, it.off, nil
}

// Scan calls fn for every record from seq from up to the last one
// submitted, in order, stopping at fn's first error (returned as is). It is
// the replay helper for recovery. Records passed to fn are read-only; they
// may be retained (their buffers are never reused) but not modified. Scan
// never blocks waiting for new records.
func (j *Journal) Scan(from uint64, fn func(Record) error) error {
	r, err := j.NewReader(from)
	if err != nil {
		return err
	}
	defer r.Close()
	for {
		recs, err := r.read(context.Background(), 0, 4<<20, false)
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		for _, rec := range recs {
			if err := fn(rec); err != nil {
				return err
			}
		}
	}
}
