package journal

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
)

// On-disk format constants. Changing any of them changes the format and
// requires bumping FormatVersion.
const (
	// FormatVersion is the segment format version written into every
	// new segment header (format). Version 2 adds the record's sync lag
	// (bytes 37..39 of the record header, zero in version 1). Version 3
	// (same record layout) no longer syncs a segment when the next one
	// starts, so recovery may find a torn tail in any segment of the last
	// sync window, and adds the header flag FlagOlderDurable. Version 4
	// (same layouts) adds OpIndirect records: a large write's data is
	// in the disk image, the record holds its piece checksums. Segments of
	// all four versions are read; an OpIndirect record in a segment of an
	// older version is damage.
	FormatVersion = 4

	// FlagOlderDurable (segment header flags, version 3): when the header
	// was written, every record with a lower seq than the segment's first
	// was durable (or its segment's removal was). A sync sets it on the
	// active segment before its fdatasync, once it has synced every older
	// segment (format).
	FlagOlderDurable = 1 << 0

	// MaxSyncLag is the largest sync lag a record header holds (format):
	// a record written MaxSyncLag or more seqs after the durable one says
	// MaxSyncLag, i.e. "at least that".
	MaxSyncLag = 1<<24 - 1

	// SegmentHeaderSize is the size of the header at the start of every
	// segment file (format).
	SegmentHeaderSize = 40

	// RecordHeaderSize is the size of the header preceding every record's
	// payload (format).
	RecordHeaderSize = 40

	// MaxRecordData is the largest payload a record may carry (format). The
	// decoder rejects larger lengths before allocating anything.
	MaxRecordData = 32 << 20

	// segmentMagic opens every segment file (format).
	segmentMagic = "BMJS"

	// segmentSuffix and segmentNameLen describe segment file names:
	// the first seq as 20 decimal digits followed by ".seg" (format).
	segmentSuffix  = ".seg"
	segmentNameLen = 20 + len(segmentSuffix)
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// errShort reports that a buffer ends inside a record or header; it wraps
// io.ErrUnexpectedEOF so callers can tell "need more bytes" from damage.
var errShort = fmt.Errorf("journal: truncated record: %w", io.ErrUnexpectedEOF)

// SegmentHeader is the decoded header of a segment file.
type SegmentHeader struct {
	Version  uint16
	Volume   [16]byte
	FirstSeq uint64
	// OlderDurable is FlagOlderDurable (version 3 only).
	OlderDurable bool
}

// AppendSegmentHeader appends the encoding of h (always SegmentHeaderSize
// bytes) to dst. A zero Version means FormatVersion.
func AppendSegmentHeader(dst []byte, h SegmentHeader) []byte {
	var b [SegmentHeaderSize]byte
	copy(b[0:4], segmentMagic)
	if h.Version == 0 {
		h.Version = FormatVersion
	}
	binary.LittleEndian.PutUint16(b[4:6], h.Version)
	if h.OlderDurable {
		binary.LittleEndian.PutUint16(b[6:8], FlagOlderDurable)
	}
	copy(b[8:24], h.Volume[:])
	binary.LittleEndian.PutUint64(b[24:32], h.FirstSeq)
	// b[32:36] reserved, zero.
	binary.LittleEndian.PutUint32(b[36:40], crc32.Checksum(b[0:36], castagnoli))
	return append(dst, b[:]...)
}

// DecodeSegmentHeader decodes a segment header from the start of b. Errors
// wrap ErrCorrupt (bad magic, checksum, reserved bits), ErrVersion
// (unknown format version) or io.ErrUnexpectedEOF (b too short).
func DecodeSegmentHeader(b []byte) (SegmentHeader, error) {
	var h SegmentHeader
	if len(b) < SegmentHeaderSize {
		return h, errShort
	}
	if string(b[0:4]) != segmentMagic {
		return h, fmt.Errorf("%w: bad segment magic %q", ErrCorrupt, b[0:4])
	}
	if got, want := binary.LittleEndian.Uint32(b[36:40]), crc32.Checksum(b[0:36], castagnoli); got != want {
		return h, fmt.Errorf("%w: segment header checksum %08x, want %08x", ErrCorrupt, got, want)
	}
	h.Version = binary.LittleEndian.Uint16(b[4:6])
	if h.Version < 1 || h.Version > FormatVersion {
		return h, fmt.Errorf("%w: segment format version %d, this build reads 1 to %d", ErrVersion, h.Version, FormatVersion)
	}
	flags := binary.LittleEndian.Uint16(b[6:8])
	known := uint16(0)
	if h.Version >= 3 {
		known = FlagOlderDurable
	}
	if flags&^known != 0 || binary.LittleEndian.Uint32(b[32:36]) != 0 {
		return h, fmt.Errorf("%w: segment header has unknown flags", ErrCorrupt)
	}
	h.OlderDurable = flags&FlagOlderDurable != 0
	copy(h.Volume[:], b[8:24])
	h.FirstSeq = binary.LittleEndian.Uint64(b[24:32])
	return h, nil
}

// checkRecord validates the fields of rec that the format constrains; the
// caller wraps the error in the sentinel that fits (ErrInvalid, ErrCorrupt).
func checkRecord(rec *Record) error {
	switch rec.Op {
	case OpWrite:
		if len(rec.Data) > MaxRecordData {
			return fmt.Errorf("seq %d: %d bytes of data exceeds the maximum %d", rec.Seq, len(rec.Data), MaxRecordData)
		}
		if uint64(rec.Length) != uint64(len(rec.Data)) {
			return fmt.Errorf("seq %d: write Length %d != len(Data) %d", rec.Seq, rec.Length, len(rec.Data))
		}
		if rec.Sums != nil && len(rec.Sums) != 4*IndirectPieces(rec.Offset, uint64(rec.Length)) {
			return fmt.Errorf("seq %d: write of %d bytes at %d with %d bytes of indirect sums, want %d", rec.Seq, rec.Length, rec.Offset, len(rec.Sums), 4*IndirectPieces(rec.Offset, uint64(rec.Length)))
		}
	case OpIndirect:
		if len(rec.Data) != 0 || rec.Length == 0 || len(rec.Sums) != 4*IndirectPieces(rec.Offset, uint64(rec.Length)) {
			return fmt.Errorf("seq %d: indirect record of %d bytes at %d must carry no data and %d bytes of sums (has %d, %d)",
				rec.Seq, rec.Length, rec.Offset, 4*IndirectPieces(rec.Offset, uint64(rec.Length)), len(rec.Data), len(rec.Sums))
		}
	case OpTrim, OpZero:
		if len(rec.Data) != 0 || rec.Sums != nil {
			return fmt.Errorf("seq %d: %s record carries data", rec.Seq, rec.Op)
		}
	case OpEpoch:
		if len(rec.Data) != 0 || rec.Sums != nil || rec.Length != 0 || rec.Offset != 0 {
			return fmt.Errorf("seq %d: epoch record must not carry offset, length or data", rec.Seq)
		}
	default:
		return fmt.Errorf("seq %d: unknown op %d", rec.Seq, uint8(rec.Op))
	}
	if rec.Seq == 0 {
		return errors.New("seq 0 is reserved")
	}
	return nil
}

// encodedSize is the number of bytes rec occupies in memory (the queue
// and tail bounds).
func encodedSize(rec *Record) int { return RecordHeaderSize + len(rec.Data) + len(rec.Sums) }

// fileSize is the number of bytes rec occupies in a segment of format
// version: an OpWrite with Sums is written indirect in version 4 (its
// data went to the image before), directly in older segments.
func fileSize(rec *Record, version uint16) int {
	if indirectIn(rec, version) || rec.Op == OpIndirect {
		return RecordHeaderSize + len(rec.Sums)
	}
	return RecordHeaderSize + len(rec.Data)
}

// indirectIn reports whether the OpWrite rec is written in its indirect
// form into a segment of format version.
func indirectIn(rec *Record, version uint16) bool {
	return rec.Op == OpWrite && rec.Sums != nil && version >= 4
}

// AppendRecord appends the encoding of rec to dst (sync lag 0: unknown).
// It fails (wrapping ErrInvalid) if rec violates the format's constraints.
func AppendRecord(dst []byte, rec Record) ([]byte, error) {
	if err := checkRecord(&rec); err != nil {
		return dst, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	return appendRecord(dst, &rec, 0, false), nil
}

// appendRecord encodes an already validated record with the given sync
// lag (0 for version-1 segments and records outside segments); indirect:
// an OpWrite with Sums is encoded as an OpIndirect record. An OpIndirect
// record is always encoded as one.
func appendRecord(dst []byte, rec *Record, lag uint32, indirect bool) []byte {
	start := len(dst)
	var h [RecordHeaderSize]byte
	op, payload := rec.Op, rec.Data
	if indirect || op == OpIndirect {
		op, payload = OpIndirect, rec.Sums
	}
	binary.LittleEndian.PutUint32(h[4:8], uint32(len(payload)))
	binary.LittleEndian.PutUint64(h[8:16], rec.Epoch)
	binary.LittleEndian.PutUint64(h[16:24], rec.Seq)
	binary.LittleEndian.PutUint64(h[24:32], rec.Offset)
	binary.LittleEndian.PutUint32(h[32:36], rec.Length)
	h[36] = byte(op)
	h[37], h[38], h[39] = byte(lag), byte(lag>>8), byte(lag>>16)
	dst = append(dst, h[:]...)
	dst = append(dst, payload...)
	crc := crc32.Checksum(dst[start+4:], castagnoli)
	binary.LittleEndian.PutUint32(dst[start:start+4], crc)
	return dst
}

// recordDataLen returns the payload length announced by the record header
// at the start of b (which must hold at least RecordHeaderSize bytes).
func recordDataLen(b []byte) uint32 { return binary.LittleEndian.Uint32(b[4:8]) }

// DecodeRecord decodes the record at the start of b and returns it with the
// number of bytes it occupies. The returned Data aliases b. Errors wrap
// io.ErrUnexpectedEOF when b ends inside the record, or ErrCorrupt when the
// bytes are not a valid record (checksum, lengths, op). No length is
// trusted before it has been checked against MaxRecordData, and nothing is
// allocated. The sync lag is not returned (see SyncLag).
func DecodeRecord(b []byte) (Record, int, error) {
	rec, _, n, err := decodeRecord(b, FormatVersion)
	return rec, n, err
}

// SyncLag returns the sync lag stored in the header of the record at the
// start of b (at least RecordHeaderSize bytes): how many seqs the record
// was ahead of the durable one when it was written; 0 means unknown.
func SyncLag(b []byte) uint32 {
	return uint32(b[37]) | uint32(b[38])<<8 | uint32(b[39])<<16
}

// decodeRecord is DecodeRecord for a segment of format version, also
// returning the sync lag; version 1 requires it to be zero.
func decodeRecord(b []byte, version uint16) (Record, uint32, int, error) {
	var rec Record
	if len(b) < RecordHeaderSize {
		return rec, 0, 0, errShort
	}
	n := recordDataLen(b)
	if n > MaxRecordData {
		return rec, 0, 0, fmt.Errorf("%w: record data length %d exceeds the maximum %d", ErrCorrupt, n, MaxRecordData)
	}
	total := RecordHeaderSize + int(n)
	if len(b) < total {
		return rec, 0, 0, errShort
	}
	if got, want := binary.LittleEndian.Uint32(b[0:4]), crc32.Checksum(b[4:total], castagnoli); got != want {
		return rec, 0, 0, fmt.Errorf("%w: record checksum %08x, want %08x", ErrCorrupt, got, want)
	}
	lag := SyncLag(b)
	if version < 2 && lag != 0 {
		return rec, 0, 0, fmt.Errorf("%w: record has reserved bits set", ErrCorrupt)
	}
	rec.Epoch = binary.LittleEndian.Uint64(b[8:16])
	rec.Seq = binary.LittleEndian.Uint64(b[16:24])
	rec.Offset = binary.LittleEndian.Uint64(b[24:32])
	rec.Length = binary.LittleEndian.Uint32(b[32:36])
	rec.Op = Op(b[36])
	if rec.Op == OpIndirect && version < 4 {
		return Record{}, 0, 0, fmt.Errorf("%w: seq %d: indirect record in a segment of format %d", ErrCorrupt, rec.Seq, version)
	}
	if n > 0 && rec.Op == OpIndirect {
		rec.Sums = b[RecordHeaderSize:total:total]
	} else if n > 0 {
		rec.Data = b[RecordHeaderSize:total:total]
	}
	if err := checkRecord(&rec); err != nil {
		return Record{}, 0, 0, fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	return rec, lag, total, nil
}

// segmentName is the file name of the segment whose first seq is first.
func segmentName(first uint64) string { return fmt.Sprintf("%020d%s", first, segmentSuffix) }

// parseSegmentName returns the first seq encoded in a segment file name.
func parseSegmentName(name string) (uint64, bool) {
	if len(name) != segmentNameLen || name[20:] != segmentSuffix {
		return 0, false
	}
	var v uint64
	for _, c := range name[:20] {
		if c < '0' || c > '9' {
			return 0, false
		}
		d := uint64(c - '0')
		if v > (^uint64(0)-d)/10 {
			return 0, false
		}
		v = v*10 + d
	}
	return v, true
}
