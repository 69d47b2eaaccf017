package wire

import "fmt"

// Op is the kind of change a record carries. The values are part of the
// wire format and equal journal.Op's (the journal's on-disk format), so a
// record crosses between the two unchanged.
type Op uint8

// Record ops.
const (
	OpWrite Op = 1 // stores Data at Offset
	OpTrim  Op = 2 // discards Length bytes at Offset (they read back as zeroes)
	OpZero  Op = 3 // writes Length zero bytes at Offset
	OpEpoch Op = 4 // marks the start of an epoch at Seq; touches no data
)

// Valid reports whether o is a known op.
func (o Op) Valid() bool { return o >= OpWrite && o <= OpEpoch }

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

// Record is one replicated change as it travels in a Records message:
// (Epoch, Seq) identify it, Op says what it does to [Offset, Offset+Length)
// and Data holds an OpWrite's bytes (len(Data) == Length).
type Record struct {
	Epoch  uint64
	Seq    uint64
	Op     Op
	Offset uint64
	Length uint32
	Data   []byte
}
