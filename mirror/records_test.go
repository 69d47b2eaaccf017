package mirror

import (
	"testing"

	"github.com/blockmirror/blockmirror/journal"
	"github.com/blockmirror/blockmirror/mirror/wire"
)

// TestOpValuesMatch: records cross between the journal and the wire by
// converting their ops, so both formats must give every op the same value
// (except the journal's OpIndirect, which never crosses).
func TestOpValuesMatch(t *testing.T) {
	pairs := []struct {
		j journal.Op
		w wire.Op
	}{{journal.OpWrite, wire.OpWrite}, {journal.OpTrim, wire.OpTrim}, {journal.OpZero, wire.OpZero}, {journal.OpEpoch, wire.OpEpoch}}
	for _, p := range pairs {
		if uint8(p.j) != uint8(p.w) || p.j.String() != p.w.String() {
			t.Errorf("journal op %v = %d, wire op %v = %d", p.j, p.j, p.w, p.w)
		}
	}
	for v := 0; v < 256; v++ {
		if journal.Op(v) == journal.OpIndirect {
			// Journal only: a sender turns it into a write (resolveIndirect).
			if wire.Op(v).Valid() {
				t.Errorf("op %d (journal's indirect) is valid on the wire", v)
			}
			continue
		}
		if journal.Op(v).Valid() != wire.Op(v).Valid() {
			t.Errorf("op %d: journal valid %v, wire valid %v", v, journal.Op(v).Valid(), wire.Op(v).Valid())
		}
	}
	rec := journal.Record{Epoch: 3, Seq: 9, Op: journal.OpWrite, Offset: 4096, Length: 2, Data: []byte("ab")}
	w := wireRecords(nil, []journal.Record{rec})
	if back := journalRecord(&w[0]); back.Epoch != rec.Epoch || back.Seq != rec.Seq || back.Op != rec.Op ||
		back.Offset != rec.Offset || back.Length != rec.Length || string(back.Data) != string(rec.Data) {
		t.Fatalf("round trip: %+v became %+v", rec, back)
	}
}
