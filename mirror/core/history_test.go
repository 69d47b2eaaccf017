package core_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/blockmirror/blockmirror/mirror/core"
	"github.com/blockmirror/blockmirror/mirror/wire"
)

func sampleHello() wire.Hello {
	return wire.Hello{
		Version: wire.ProtoVersion, Role: wire.PeerRolePrimary, Mode: wire.ModeSync,
		AckLevel: wire.AckWritten, Volume: wire.UUID{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16},
		Size: 1 << 30, Epoch: 5, LastSeq: 12345, Node: "alpha", VolumeName: "vol-a",
		History: []wire.EpochStart{{Epoch: 1, FirstSeq: 1}, {Epoch: 5, FirstSeq: 100}},
	}
}

func ident() core.VolumeIdentity {
	h := sampleHello()
	return core.VolumeIdentity{Volume: h.Volume, Size: h.Size, Epoch: h.Epoch, History: h.History}
}

func TestCheckHello(t *testing.T) {
	if err := core.CheckHello(ident(), sampleHello()); err != nil {
		t.Fatalf("identical: %v", err)
	}
	cases := []struct {
		name   string
		local  func(*core.VolumeIdentity)
		remote func(*wire.Hello)
		is     error
		msg    string
	}{
		{"version", nil, func(h *wire.Hello) { h.Version = 2 }, core.ErrVersion, "protocol version differs: local 1 remote 2"},
		{"uuid", nil, func(h *wire.Hello) { h.Volume[0] = 0x56 }, core.ErrVolumeMismatch,
			"volume UUID differs: local 01020304-0506-0708-090a-0b0c0d0e0f10 remote 56020304-0506-0708-090a-0b0c0d0e0f10"},
		{"size", func(l *core.VolumeIdentity) { l.Size = 1073741824 }, func(h *wire.Hello) { h.Size = 2147483648 }, core.ErrSizeMismatch,
			"size differs: local 1073741824 remote 2147483648"},
		{"epoch", nil, func(h *wire.Hello) { h.Epoch = 3; h.History = h.History[:1] }, core.ErrStaleEpoch,
			"peer epoch 3 is lower than ours 5: refusing records"},
		{"first seq", nil, func(h *wire.Hello) {
			h.History = []wire.EpochStart{{Epoch: 1, FirstSeq: 1}, {Epoch: 5, FirstSeq: 120}}
		}, core.ErrHistoryDiverged,
			"epoch 5 starts at seq 100 here but at seq 120 at the peer"},
		{"missing epoch", nil, func(h *wire.Hello) {
			h.Epoch = 6
			h.History = []wire.EpochStart{{Epoch: 1, FirstSeq: 1}, {Epoch: 6, FirstSeq: 100}}
		}, core.ErrHistoryDiverged,
			"our epoch 5 (from seq 100) is not in the peer's history"},
		{"bad history", nil, func(h *wire.Hello) {
			h.History = []wire.EpochStart{{Epoch: 5, FirstSeq: 1}, {Epoch: 1, FirstSeq: 100}}
		}, core.ErrBadHistory, "does not follow"},
		{"history past epoch", nil, func(h *wire.Hello) { h.History = append(h.History, wire.EpochStart{Epoch: 9, FirstSeq: 200}) }, core.ErrBadHistory, "after the current epoch"},
	}
	for _, c := range cases {
		l, r := ident(), sampleHello()
		r.History = append([]wire.EpochStart(nil), r.History...)
		if c.local != nil {
			c.local(&l)
		}
		c.remote(&r)
		err := core.CheckHello(l, r)
		if !errors.Is(err, c.is) || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("%s: got %v, want %v containing %q", c.name, err, c.is, c.msg)
		}
	}
	// A higher remote epoch extending our history is fine.
	r := sampleHello()
	r.Epoch = 8
	r.History = []wire.EpochStart{{Epoch: 1, FirstSeq: 1}, {Epoch: 5, FirstSeq: 100}, {Epoch: 8, FirstSeq: 300}}
	if err := core.CheckHello(ident(), r); err != nil {
		t.Fatalf("newer epoch: %v", err)
	}
}

// ---- fuzz targets: decode(encode(x)) == x, never panic, bounded ----
