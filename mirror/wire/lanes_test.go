package wire_test

import (
	"bytes"
	"testing"

	"github.com/blockmirror/blockmirror/mirror/wire"
)

func TestLanesRoundTrip(t *testing.T) {
	m := wire.Lanes{Token: 0xfeedface12345678, From: 42, Count: 4}
	got, err := wire.DecodeLanes(wire.AppendLanes(nil, m))
	if err != nil || got != m {
		t.Fatalf("lanes: got %+v, %v; want %+v", got, err, m)
	}
	j := wire.LaneJoin{Volume: "vm1", Token: 7, Index: 3}
	b, err := wire.AppendLaneJoin(nil, j)
	if err != nil {
		t.Fatal(err)
	}
	gj, err := wire.DecodeLaneJoin(b)
	if err != nil || gj != j {
		t.Fatalf("lane join: got %+v, %v; want %+v", gj, err, j)
	}
}

func TestLanesRejects(t *testing.T) {
	for _, m := range []wire.Lanes{{Token: 1, From: 1, Count: 0}, {Token: 1, From: 1, Count: wire.MaxLanes + 1}, {Token: 1, From: 0, Count: 2}} {
		if _, err := wire.DecodeLanes(wire.AppendLanes(nil, m)); err == nil {
			t.Errorf("DecodeLanes accepted %+v", m)
		}
	}
	b := wire.AppendLanes(nil, wire.Lanes{Token: 1, From: 1, Count: 2})
	b[3] ^= 1
	if _, err := wire.DecodeLanes(b); err == nil {
		t.Error("DecodeLanes accepted a corrupted payload")
	}
	jb, _ := wire.AppendLaneJoin(nil, wire.LaneJoin{Volume: "v", Token: 1, Index: wire.MaxLanes})
	if _, err := wire.DecodeLaneJoin(jb); err == nil {
		t.Error("DecodeLaneJoin accepted an index past MaxLanes")
	}
}

func FuzzDecodeLanes(f *testing.F) {
	f.Add(uint8(0), wire.AppendLanes(nil, wire.Lanes{Token: 9, From: 3, Count: 2}))
	jb, _ := wire.AppendLaneJoin(nil, wire.LaneJoin{Volume: "a", Token: 9, Index: 1})
	f.Add(uint8(1), jb)
	f.Fuzz(func(t *testing.T, kind uint8, p []byte) {
		var b []byte
		if kind%2 == 0 {
			m, err := wire.DecodeLanes(p)
			if err != nil {
				return
			}
			b = wire.AppendLanes(nil, m)
		} else {
			m, err := wire.DecodeLaneJoin(p)
			if err != nil {
				return
			}
			b, err = wire.AppendLaneJoin(nil, m)
			if err != nil {
				t.Fatal(err)
			}
		}
		if !bytes.Equal(b, p) {
			t.Fatalf("re-encoding differs: %x vs %x", b, p)
		}
	})
}
