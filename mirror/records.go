package mirror

import (
	"github.com/blockmirror/blockmirror/journal"
	"github.com/blockmirror/blockmirror/mirror/wire"
)

// Records cross between the journal and the wire unchanged: the two Op
// types share their values (TestOpValuesMatch).

// wireRecords appends recs, as Records message entries, to dst[:0]. The
// data is shared, not copied.
func wireRecords(dst []wire.Record, recs []journal.Record) []wire.Record {
	dst = dst[:0]
	for i := range recs {
		r := &recs[i]
		dst = append(dst, wire.Record{Epoch: r.Epoch, Seq: r.Seq, Op: wire.Op(r.Op), Offset: r.Offset, Length: r.Length, Data: r.Data})
	}
	return dst
}

// journalRecord is r as a journal record (sharing its data).
func journalRecord(r *wire.Record) journal.Record {
	return journal.Record{Epoch: r.Epoch, Seq: r.Seq, Op: journal.Op(r.Op), Offset: r.Offset, Length: r.Length, Data: r.Data}
}

// AppendRecords appends a Records message holding the journal records
// recs to b (see wire.AppendRecords).
func AppendRecords(b []byte, recs []journal.Record) ([]byte, error) {
	return wire.AppendRecords(b, wireRecords(nil, recs))
}
