package journal

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"slices"

	"github.com/blockmirror/blockmirror/internal/vfs"
)

// recover scans Dir, verifies every segment, truncates a torn tail of the
// last one and opens it for appending. It runs before the flusher starts.
func (j *Journal) recover() error {
	dir := j.opts.Dir
	var err error
	if j.opts.NoSync {
		err = j.fs.MkdirAll(dir, 0o755)
	} else {
		err = vfs.MkdirAllSynced(j.fs, dir, 0o755) // a new journal must not vanish at a power loss
	}
	if err != nil {
		return fmt.Errorf("journal: create %s: %w", dir, err)
	}
	names, err := j.fs.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("journal: read dir %s: %w", dir, err)
	}
	var firsts []uint64
	for _, n := range names {
		if first, ok := parseSegmentName(n); ok {
			firsts = append(firsts, first)
		}
	}
	slices.Sort(firsts)

	start := uint64(1) // first seq of a fresh segment if none survives
	removed := false
	for i, first := range firsts {
		last := i == len(firsts)-1
		path := filepath.Join(dir, segmentName(first))
		seg, torn, err := j.verifySegment(path, first, last)
		if err != nil {
			return err
		}
		if torn {
			// Only possible for the last segment: its header never made it
			// to disk, so it holds nothing.
			j.log.Warn("journal: removing last segment with a torn header", "file", path)
			if err := j.fs.Remove(path); err != nil {
				return fmt.Errorf("journal: remove %s: %w", path, err)
			}
			removed = true
			start = first
			continue
		}
		j.segs = append(j.segs, seg)
	}
	// Empty segments that are not the last carry nothing (they are left by
	// an interrupted SetStart); drop them.
	kept := j.segs[:0]
	for i, s := range j.segs {
		if s.count == 0 && i != len(j.segs)-1 {
			j.log.Warn("journal: removing empty segment", "file", s.path)
			if err := j.fs.Remove(s.path); err != nil {
				return fmt.Errorf("journal: remove %s: %w", s.path, err)
			}
			removed = true
			continue
		}
		kept = append(kept, s)
	}
	j.segs = kept
	for i := 1; i < len(j.segs); i++ {
		p, s := j.segs[i-1], j.segs[i]
		if s.first != p.first+p.count {
			return fmt.Errorf("journal: %s: %w: segment starts at seq %d but %s ends at %d (gap or overlap)",
				s.path, ErrCorrupt, s.first, filepath.Base(p.path), p.last())
		}
	}
	if len(j.segs) == 0 {
		f, seg, err := j.createSegment(start, true)
		if err != nil {
			return fmt.Errorf("journal: %w", err)
		}
		j.active = f
		j.segs = []*segment{seg}
	} else {
		s := j.segs[len(j.segs)-1]
		f, err := j.fs.OpenRW(s.path)
		if err != nil {
			return fmt.Errorf("journal: open %s: %w", s.path, err)
		}
		j.active = f
		if !j.opts.NoSync {
			// Records recovered from the page cache of a crashed process
			// become durable here.
			if err := f.Sync(); err != nil {
				return fmt.Errorf("journal: sync %s: %w", s.path, err)
			}
		}
	}
	if removed && !j.opts.NoSync {
		if err := j.fs.SyncDir(dir); err != nil {
			return fmt.Errorf("journal: sync dir %s: %w", dir, err)
		}
	}
	for _, s := range j.segs {
		j.total += s.size
	}
	last := j.segs[len(j.segs)-1]
	j.next = last.first + last.count
	j.written, j.durable = j.next-1, j.next-1
	j.tailFirst = j.next
	j.log.Info("journal opened", "dir", dir, "segments", len(j.segs),
		"first", j.segs[0].first, "last", j.next-1, "bytes", j.total)
	return nil
}

// verifySegment reads and checks one segment file. For the last segment a
// torn tail is truncated (torn reports a header that never reached disk);
// any other damage is an error wrapping ErrCorrupt naming file and offset.
func (j *Journal) verifySegment(path string, first uint64, last bool) (seg *segment, torn bool, err error) {
	f, err := j.fs.OpenRW(path)
	if err != nil {
		return nil, false, fmt.Errorf("journal: open %s: %w", path, err)
	}
	defer f.Close()
	size, err := f.Size()
	if err != nil {
		return nil, false, fmt.Errorf("journal: stat %s: %w", path, err)
	}
	hb := make([]byte, min(size, SegmentHeaderSize))
	if _, err := f.ReadAt(hb, 0); err != nil && err != io.EOF {
		return nil, false, fmt.Errorf("journal: read %s: %w", path, err)
	}
	if size < SegmentHeaderSize {
		if last {
			return nil, true, nil
		}
		return nil, false, fmt.Errorf("journal: %s at offset 0: %w: segment header cut short (%d bytes)", path, ErrCorrupt, size)
	}
	h, err := DecodeSegmentHeader(hb)
	if err != nil {
		if last && isZero(hb) && j.zeroFile(f, size) {
			return nil, true, nil
		}
		return nil, false, fmt.Errorf("journal: %s at offset 0: %w", path, err)
	}
	if h.Volume != j.opts.Volume {
		return nil, false, fmt.Errorf("journal: %s: %w: volume %x, want %x", path, ErrForeignVolume, h.Volume, j.opts.Volume)
	}
	if h.FirstSeq != first {
		return nil, false, fmt.Errorf("journal: %s at offset 0: %w: header first seq %d does not match the file name", path, ErrCorrupt, h.FirstSeq)
	}
	seg = &segment{path: path, version: h.Version, first: first, size: SegmentHeaderSize}
	it := segIter{f: f, path: path, size: size, off: SegmentHeaderSize, chunk: scanChunk, version: h.Version}
	want := first
	for {
		rec, off, err := it.next()
		if err == io.EOF {
			break
		}
		if err == nil && rec.Seq != want {
			err = fmt.Errorf("journal: %s at offset %d: %w: record seq %d, want %d", path, off, ErrCorrupt, rec.Seq, want)
		}
		if err != nil {
			if !errors.Is(err, ErrCorrupt) && !errors.Is(err, io.ErrUnexpectedEOF) {
				return nil, false, err // an I/O error, not damage
			}
			if !last {
				return nil, false, asCorrupt(err)
			}
			rest := make([]byte, size-off)
			if _, rerr := f.ReadAt(rest, off); rerr != nil && rerr != io.EOF {
				return nil, false, fmt.Errorf("journal: read %s: %w", path, rerr)
			}
			intact := 0
			if h.Version < 2 {
				if later := validAfter(rest, want); later >= 0 {
					return nil, false, fmt.Errorf("%w (a valid record with seq %d follows at offset %d, so this is not a torn tail)", asCorrupt(err), want+1, off+later)
				}
			} else {
				p := durableProof(rest, want)
				if p.at >= 0 {
					return nil, false, fmt.Errorf("%w (the intact record with seq %d at offset %d was written when seq %d was already durable, so this is damage to durable records, not a torn tail)",
						asCorrupt(err), p.seq, off+p.at, want)
				}
				intact = p.intact
			}
			j.log.Warn("journal: truncating torn tail of the last segment", "file", path,
				"offset", off, "bytes", size-off, "reason", err,
				"intact_unsynced_records_discarded", intact)
			if err := f.Truncate(off); err != nil {
				return nil, false, fmt.Errorf("journal: truncate %s to %d: %w", path, off, err)
			}
			if !j.opts.NoSync {
				if err := f.Sync(); err != nil {
					return nil, false, fmt.Errorf("journal: sync %s: %w", path, err)
				}
			}
			break
		}
		seg.addIndex(rec.Seq, off)
		seg.count++
		seg.size = it.off
		want++
	}
	return seg, false, nil
}

// validAfter looks, in the bytes rest of a version-1 segment that follow
// the damaged record with seq want, for a valid record carrying seq
// want+1. Finding one means the damage is not a torn tail (a crash only
// ever loses a suffix) but corruption in the middle of the log. It returns
// that record's offset in rest, or -1.
func validAfter(rest []byte, want uint64) int64 {
	var pat [8]byte
	binary.LittleEndian.PutUint64(pat[:], want+1)
	const seqAt = 16 // offset of seq within the record header
	for from := 1; ; {
		i := bytes.Index(rest[from:], pat[:])
		if i < 0 {
			return -1
		}
		pos := from + i - seqAt
		if pos >= 1 {
			if rec, _, _, err := decodeRecord(rest[pos:], 1); err == nil && rec.Seq == want+1 {
				return int64(pos)
			}
		}
		from += i + 1
	}
}

// proof is what durableProof found beyond a damaged record: the first
// intact record written after the damaged one was durable (at, its offset
// in rest, < 0: none), and how many intact records it looked at.
type proof struct {
	at     int64
	seq    uint64
	intact int
}

// durableProof looks, in the bytes rest of a version-2 segment that follow
// the damaged record with seq want, for an intact record written when want
// was already durable (its seq minus its sync lag reaches want). Finding
// one proves the damage hit durable records. Without one, everything from
// the damage on was written after the last sync that reached the disk: a
// power loss may have written back some of it and not the rest, out of
// order, which is a torn tail however many intact records follow.
//
// Intact records are found by trying every byte offset (cheap checks on
// the header first, the checksum last) and then hopping record by record.
func durableProof(rest []byte, want uint64) proof {
	p := proof{at: -1}
	maxSeq := want + uint64(len(rest))/RecordHeaderSize
	for pos := 1; pos+RecordHeaderSize <= len(rest); {
		b := rest[pos:]
		seq := binary.LittleEndian.Uint64(b[16:24])
		if seq <= want || seq > maxSeq || !plausibleHeader(b) {
			pos++
			continue
		}
		rec, lag, n, err := decodeRecord(b, 2)
		if err != nil {
			pos++
			continue
		}
		p.intact++
		if lag != 0 && lag != MaxSyncLag && rec.Seq-uint64(lag) >= want {
			p.at, p.seq = int64(pos), rec.Seq
			return p
		}
		pos += n
	}
	return p
}

// plausibleHeader is a cheap filter before a record's checksum is
// computed: lengths within bounds and consistent with a known op.
func plausibleHeader(b []byte) bool {
	n := recordDataLen(b)
	length := binary.LittleEndian.Uint32(b[32:36])
	switch Op(b[36]) {
	case OpWrite:
		return n <= MaxRecordData && n == length && int(n) <= len(b)-RecordHeaderSize
	case OpTrim, OpZero:
		return n == 0
	case OpEpoch:
		return n == 0 && length == 0
	}
	return false
}

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// zeroFile reports whether the whole file reads as zeroes.
func (j *Journal) zeroFile(f vfs.File, size int64) bool {
	buf := make([]byte, 64<<10)
	for off := int64(0); off < size; {
		n := min(int64(len(buf)), size-off)
		if _, err := f.ReadAt(buf[:n], off); err != nil && err != io.EOF {
			return false
		}
		if !isZero(buf[:n]) {
			return false
		}
		off += n
	}
	return true
}

// asCorrupt makes damage reported as a short record wrap ErrCorrupt too.
func asCorrupt(err error) error {
	if errors.Is(err, ErrCorrupt) {
		return err
	}
	return fmt.Errorf("%w: %w", ErrCorrupt, err)
}
