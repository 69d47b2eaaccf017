package journal

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
)

// Op is the kind of change a record carries. The numeric values are part of
// the on-disk and on-wire format and must not be changed.
type Op uint8

const (
	// OpWrite stores Data at Offset; Length == len(Data).
	OpWrite Op = 1
	// OpTrim discards Length bytes at Offset (they read back as zeroes).
	OpTrim Op = 2
	// OpZero writes Length zero bytes at Offset.
	OpZero Op = 3
	// OpEpoch is a control record marking the start of a new epoch at Seq;
	// it touches no data.
	OpEpoch Op = 4
	// OpIndirect (format 4, on disk only) is a write whose data was
	// written to the disk image before the record, and is not in the
	// journal: Length bytes at Offset, Sums holding the CRC-32C of each
	// IndirectPiece-aligned piece of the range (IndirectSums). Replay
	// verifies the image against Sums; a reader turns it back into data
	// from the image. It is never sent to mirrors.
	OpIndirect Op = 5
)

// IndirectPiece is the size of the pieces an indirect record checksums
// (format): pieces are aligned on multiples of it in the disk, so that a
// later overlapping write leaves the pieces it does not touch checkable.
const IndirectPiece = 64 << 10

func (o Op) String() string {
	switch o {
	case OpWrite:
		return "write"
	case OpTrim:
		return "trim"
	case OpZero:
		return "zero"
	case OpEpoch:
		return "epoch"
	case OpIndirect:
		return "indirect"
	}
	return fmt.Sprintf("op(%d)", uint8(o))
}

// Valid reports whether o is a known op.
// OpIndirect is valid only in segments of format 4 (see checkRecord).
func (o Op) Valid() bool { return o >= OpWrite && o <= OpIndirect }

// Record is one entry of the journal. (Epoch, Seq) identifies it; Seq is
// gapless and never reused within a volume.
type Record struct {
	Epoch  uint64
	Seq    uint64
	Op     Op
	Offset uint64
	// Length is the number of bytes of the disk the record covers. For
	// OpWrite it equals len(Data); for OpTrim and OpZero Data is empty.
	Length uint32
	// Data is the payload of an OpWrite. Ownership: once a record is handed
	// to the journal, the journal owns Data and the caller must not modify
	// it; records returned by readers share the journal's buffers and must
	// be treated as read-only.
	Data []byte
	// Sums, when set on a submitted OpWrite (IndirectSums of Offset and
	// Data), asks for the indirect form: the caller wrote Data to the disk
	// image before submitting, and the segment gets an OpIndirect record
	// holding Sums instead of Data (the memory tail keeps Data for
	// readers). On a decoded OpIndirect record Sums is the stored sums and
	// Data is empty.
	Sums []byte
}

// IndirectPieces is the number of IndirectPiece-aligned pieces of
// [off, off+n).
func IndirectPieces(off, n uint64) int {
	if n == 0 {
		return 0
	}
	return int((off+n-1)/IndirectPiece - off/IndirectPiece + 1)
}

// IndirectSums appends to dst the CRC-32C (Castagnoli) of every
// IndirectPiece-aligned piece of data written at off, 4 bytes each, little
// endian: the Sums of an indirect record.
func IndirectSums(dst []byte, off uint64, data []byte) []byte {
	for len(data) > 0 {
		n := min(uint64(len(data)), IndirectPiece-off%IndirectPiece)
		dst = binary.LittleEndian.AppendUint32(dst, crc32.Checksum(data[:n], castagnoli))
		data, off = data[n:], off+n
	}
	return dst
}

// VerifyIndirect checks data, read from the image over the range of the
// indirect record rec (len(data) == rec.Length), against rec.Sums. It
// returns the disk offset of the first piece that does not match, or -1.
func VerifyIndirect(rec *Record, data []byte) int64 {
	off, end := rec.Offset, rec.Offset+uint64(rec.Length)
	for i := 0; off < end; i++ {
		n := min(end-off, IndirectPiece-off%IndirectPiece)
		if 4*i+4 > len(rec.Sums) || uint64(len(data)) < end-rec.Offset {
			return int64(off)
		}
		if crc32.Checksum(data[off-rec.Offset:off-rec.Offset+n], castagnoli) != binary.LittleEndian.Uint32(rec.Sums[4*i:]) {
			return int64(off)
		}
		off += n
	}
	return -1
}

// Region is a byte range of the disk.
type Region struct {
	Offset uint64
	Length uint64
}

// Level is how far an appended record has got.
type Level uint8

const (
	// Written: handed to the operating system (survives a process crash).
	Written Level = 1
	// Durable: fdatasync'd (survives a power loss).
	Durable Level = 2
)
