package journal

import "fmt"

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
)

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
	}
	return fmt.Sprintf("op(%d)", uint8(o))
}

// Valid reports whether o is a known op.
func (o Op) Valid() bool { return o >= OpWrite && o <= OpEpoch }

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
