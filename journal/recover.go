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

// recover scans Dir, verifies every segment, cuts the journal at a torn
// tail and opens the last segment for appending. It runs before the
// flusher starts.
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
	var damage []*damaged // per segment of j.segs: nil, or where it is damaged
	for i, first := range firsts {
		last := i == len(firsts)-1
		leading := i == 0 && !last
		path := filepath.Join(dir, segmentName(first))
		seg, dmg, torn, err := j.verifySegment(path, first, last, leading)
		if err != nil {
			return err
		}
		if torn {
			// Its header never made it to disk, so it holds nothing: the
			// last segment (rotation or SetStart interrupted), or the first
			// of several (a SetStart below the old start, interrupted
			// before it removed the old segments, which keep that start).
			j.log.Warn("journal: removing a segment whose header never reached the disk (its creation was interrupted; it held no record)",
				"file", path, "last", last)
			if err := j.fs.Remove(path); err != nil {
				return fmt.Errorf("journal: remove %s: %w", path, err)
			}
			removed = true
			start = first
			continue
		}
		j.segs = append(j.segs, seg)
		damage = append(damage, dmg)
	}
	if cut, err := j.cutTornTail(damage); err != nil {
		return err
	} else if cut {
		removed = true
	}
	if len(j.segs) == 0 {
		f, seg, err := j.createSegment(start, true, true)
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
			// become durable here, in every segment: rotation does not
			// sync, so any of them may hold unsynced records.
			for _, s := range j.segs[:len(j.segs)-1] {
				if err := j.syncFile(s.path); err != nil {
					return err
				}
			}
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

// syncFile fdatasyncs the file at path.
func (j *Journal) syncFile(path string) error {
	f, err := j.fs.OpenRW(path)
	if err != nil {
		return fmt.Errorf("journal: open %s: %w", path, err)
	}
	err = f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("journal: sync %s: %w", path, err)
	}
	return nil
}

// damaged is where a segment's records stop being valid: the offset of
// the first damaged record, what is wrong with it, and the file's size.
type damaged struct {
	off, size int64
	err       error
}

// cutTornTail finds where the chain of records breaks — a damaged record
// (damage[k]), or a segment that does not start where the one before it
// ends — and, when that is a torn tail, cuts the journal there: the
// damaged segment is truncated and every later segment removed.
//
// Format 3 does not sync a segment when it rotates, so a power loss can
// leave the unsynced tail of any segment of the last sync window torn,
// lost or out of order, with later segments (whose headers were synced at
// creation) holding records written after it — none of them ever
// durable, since a sync covering them would have covered the lost record
// too. The break is damage to durable records instead (ErrCorrupt) when
// there is a proof that the first lost seq was durable (proveDurable):
// an intact record after it written once it was durable (its seq minus
// its sync lag reaches it), or a later segment whose header says every
// record before it is durable. Segments of formats 1 and 2 were synced
// when they were closed (by earlier builds, and by this one, see rotate):
// damage inside one that is not the last is ErrCorrupt outright
// (verifySegment), and any intact record after a gap behind one proves
// the gap is not a tear. An empty segment in front of a gap is what an
// interrupted SetStart leaves (the old start and the new one): only a
// record's sync lag can prove that a loss there, and the break keeps the
// earlier start. cut reports whether any file changed.
func (j *Journal) cutTornTail(damage []*damaged) (cut bool, err error) {
	for k, s := range j.segs {
		var off, size int64 // where the records end; the file's size
		var reason error
		switch {
		case damage[k] != nil:
			off, size, reason = damage[k].off, damage[k].size, damage[k].err
		case k+1 < len(j.segs) && j.segs[k+1].first != s.first+s.count:
			off, size = s.size, s.size
			reason = fmt.Errorf("journal: %s: %w: segment starts at seq %d but %s ends at %d (gap or overlap)",
				j.segs[k+1].path, ErrCorrupt, j.segs[k+1].first, filepath.Base(s.path), s.last())
		default:
			continue
		}
		want := s.first + s.count // the first seq lost
		// An empty segment in front of a gap may be a SetStart's leftover.
		leftover := damage[k] == nil && s.count == 0
		p, err := j.proveDurable(s, off, size, j.segs[k+1:], want, leftover)
		if err != nil {
			return false, err
		}
		if p.at >= 0 {
			return false, fmt.Errorf("%w (%s, so this is damage to durable records, not a torn tail)", asCorrupt(reason), p.why)
		}
		later := j.segs[k+1:]
		j.log.Warn("journal: truncating a torn tail (records written after the last sync that reached the disk)",
			"file", s.path, "offset", off, "bytes", size-off, "reason", reason,
			"later_segments_removed", len(later), "intact_unsynced_records_discarded", p.intact)
		// Newest first, so that a crash meanwhile leaves a prefix.
		for i := len(later) - 1; i >= 0; i-- {
			if err := j.fs.Remove(later[i].path); err != nil {
				return false, fmt.Errorf("journal: remove %s: %w", later[i].path, err)
			}
		}
		j.segs = j.segs[:k+1]
		if off < size {
			if err := j.truncateFile(s.path, off); err != nil {
				return false, err
			}
		}
		return true, nil
	}
	return false, nil
}

// truncateFile cuts the file at path to size, durably.
func (j *Journal) truncateFile(path string, size int64) error {
	f, err := j.fs.OpenRW(path)
	if err != nil {
		return fmt.Errorf("journal: open %s: %w", path, err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		return fmt.Errorf("journal: truncate %s to %d: %w", path, size, err)
	}
	if !j.opts.NoSync {
		if err := f.Sync(); err != nil {
			return fmt.Errorf("journal: sync %s: %w", path, err)
		}
	}
	return nil
}

// proveDurable looks for a proof that seq want, lost at offset off of s
// (whose file is size bytes long), was durable: in the rest of s and in
// every segment of later (see cutTornTail). leftover: s is an empty
// segment in front of a gap, which only a sync lag can prove a loss.
func (j *Journal) proveDurable(s *segment, off, size int64, later []*segment, want uint64, leftover bool) (proof, error) {
	total := size - off
	for _, l := range later {
		total += l.size - SegmentHeaderSize
	}
	maxSeq := want + uint64(total)/RecordHeaderSize
	// Behind a segment of an older format (synced when it was closed) any
	// intact record proves it; behind an empty one (see cutTornTail) only
	// a sync lag does.
	anyRecord := s.version < 3 && !leftover
	p := proof{at: -1}
	check := func(seg *segment, from int64) error {
		rest, err := j.readFrom(seg.path, from)
		if err != nil {
			return err
		}
		q := durableProof(rest, want, maxSeq, seg.version, anyRecord)
		p.intact += q.intact
		if q.at >= 0 {
			p.at, p.seq = from+q.at, q.seq
			p.why = fmt.Sprintf("the intact record with seq %d in %s at offset %d was written when seq %d was already durable",
				q.seq, filepath.Base(seg.path), p.at, want)
			if anyRecord {
				p.why = fmt.Sprintf("%s was synced when it was closed, and the intact record with seq %d follows in %s at offset %d",
					filepath.Base(s.path), q.seq, filepath.Base(seg.path), p.at)
			}
		}
		return nil
	}
	if off < size && s.version >= 2 {
		// The damaged record itself (at off) is no proof. (In a version-1
		// segment verifySegment applied that format's rule already.)
		if err := check(s, off+1); err != nil {
			return p, err
		}
	}
	for _, l := range later {
		if p.at >= 0 {
			break
		}
		if l.olderDurable && !leftover {
			p.at = 0
			p.why = fmt.Sprintf("the header of %s says that every record before seq %d was durable when it was written", filepath.Base(l.path), l.first)
			break
		}
		if err := check(l, SegmentHeaderSize); err != nil {
			return p, err
		}
	}
	return p, nil
}

// readFrom reads the file at path from off to its end.
func (j *Journal) readFrom(path string, off int64) ([]byte, error) {
	f, err := j.fs.Open(path)
	if err != nil {
		return nil, fmt.Errorf("journal: open %s: %w", path, err)
	}
	defer f.Close()
	size, err := f.Size()
	if err != nil {
		return nil, fmt.Errorf("journal: stat %s: %w", path, err)
	}
	if off >= size {
		return nil, nil
	}
	b := make([]byte, size-off)
	if _, err := f.ReadAt(b, off); err != nil && err != io.EOF {
		return nil, fmt.Errorf("journal: read %s: %w", path, err)
	}
	return b, nil
}

// verifySegment reads and checks one segment file: its header, then its
// records until the end or the first damaged one, which it reports (dmg)
// for cutTornTail to judge, except where the segment's format decides
// alone: damage in a segment of format 1 or 2 that is not the last one is
// an error wrapping ErrCorrupt (it was synced when it was closed), and so
// is damage in a last version-1 segment followed by a valid record with
// the next seq. torn reports a segment whose header never reached the
// disk: the last one, or with leading the first of several when nothing
// past its header's place was ever written (shorter than a header, or a
// header's worth of zeros) — the new first segment of a SetStart below
// the old start, created before the old segments go. Any other damage to
// a header is an error wrapping ErrCorrupt naming file and offset.
func (j *Journal) verifySegment(path string, first uint64, last, leading bool) (seg *segment, dmg *damaged, torn bool, err error) {
	f, err := j.fs.Open(path)
	if err != nil {
		return nil, nil, false, fmt.Errorf("journal: open %s: %w", path, err)
	}
	defer f.Close()
	size, err := f.Size()
	if err != nil {
		return nil, nil, false, fmt.Errorf("journal: stat %s: %w", path, err)
	}
	hb := make([]byte, min(size, SegmentHeaderSize))
	if _, err := f.ReadAt(hb, 0); err != nil && err != io.EOF {
		return nil, nil, false, fmt.Errorf("journal: read %s: %w", path, err)
	}
	if size < SegmentHeaderSize {
		if last || leading {
			return nil, nil, true, nil
		}
		return nil, nil, false, fmt.Errorf("journal: %s at offset 0: %w: segment header cut short (%d bytes)", path, ErrCorrupt, size)
	}
	h, err := DecodeSegmentHeader(hb)
	if err != nil {
		if isZero(hb) && (last && j.zeroFile(f, size) || leading && size == SegmentHeaderSize) {
			return nil, nil, true, nil
		}
		return nil, nil, false, fmt.Errorf("journal: %s at offset 0: %w", path, err)
	}
	if h.Volume != j.opts.Volume {
		return nil, nil, false, fmt.Errorf("journal: %s: %w: volume %x, want %x", path, ErrForeignVolume, h.Volume, j.opts.Volume)
	}
	if h.FirstSeq != first {
		return nil, nil, false, fmt.Errorf("journal: %s at offset 0: %w: header first seq %d does not match the file name", path, ErrCorrupt, h.FirstSeq)
	}
	seg = &segment{path: path, version: h.Version, first: first, size: SegmentHeaderSize, olderDurable: h.OlderDurable}
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
				return nil, nil, false, err // an I/O error, not damage
			}
			if h.Version < 3 && !last {
				// Synced when it was closed: not a torn tail.
				return nil, nil, false, asCorrupt(err)
			}
			if h.Version < 2 {
				rest := make([]byte, size-off)
				if _, rerr := f.ReadAt(rest, off); rerr != nil && rerr != io.EOF {
					return nil, nil, false, fmt.Errorf("journal: read %s: %w", path, rerr)
				}
				if later := validAfter(rest, want); later >= 0 {
					return nil, nil, false, fmt.Errorf("%w (a valid record with seq %d follows at offset %d, so this is not a torn tail)", asCorrupt(err), want+1, off+later)
				}
			}
			return seg, &damaged{off: off, size: size, err: err}, false, nil
		}
		seg.addIndex(rec.Seq, off)
		seg.count++
		seg.size = it.off
		want++
	}
	return seg, nil, false, nil
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
// in the bytes searched, < 0: none), how many intact records it looked
// at, and (proveDurable) what the proof is, in words.
type proof struct {
	at     int64
	seq    uint64
	intact int
	why    string
}

// durableProof looks, in the bytes rest of a segment of format version
// that follow the damaged record with seq want (or in a later segment),
// for an intact record written when want was already durable: one whose
// seq minus its sync lag reaches want (version 2 and later), or, with
// anyRecord, any intact record with a later seq. Finding one proves the
// damage hit durable records. Without one, everything from the damage on
// was written after the last sync that reached the disk: a power loss may
// have written back some of it and not the rest, out of order, which is a
// torn tail however many intact records follow. Seqs above maxSeq cannot
// be real and are skipped.
//
// Intact records are found by trying every byte offset (cheap checks on
// the header first, the checksum last) and then hopping record by record.
func durableProof(rest []byte, want, maxSeq uint64, version uint16, anyRecord bool) proof {
	p := proof{at: -1}
	for pos := 0; pos+RecordHeaderSize <= len(rest); {
		b := rest[pos:]
		seq := binary.LittleEndian.Uint64(b[16:24])
		if seq <= want || seq > maxSeq || !plausibleHeader(b) {
			pos++
			continue
		}
		rec, lag, n, err := decodeRecord(b, version)
		if err != nil {
			pos++
			continue
		}
		p.intact++
		if anyRecord || version >= 2 && lag != 0 && lag != MaxSyncLag && rec.Seq-uint64(lag) >= want {
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
	case OpIndirect:
		off := binary.LittleEndian.Uint64(b[24:32])
		return length > 0 && int(n) == 4*IndirectPieces(off, uint64(length)) && int(n) <= len(b)-RecordHeaderSize
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
