package mirror_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"reflect"
	"runtime"
	"strings"
	"testing"

	"github.com/blockmirror/blockmirror/journal"
	"github.com/blockmirror/blockmirror/mirror"
)

func sampleHello() mirror.Hello {
	return mirror.Hello{
		Version: mirror.ProtoVersion, Role: mirror.PeerRolePrimary, Mode: mirror.ModeSync,
		AckLevel: mirror.AckWritten, Volume: mirror.UUID{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16},
		Size: 1 << 30, Epoch: 5, LastSeq: 12345, Node: "alpha", VolumeName: "vol-a",
		History: []mirror.EpochStart{{Epoch: 1, FirstSeq: 1}, {Epoch: 5, FirstSeq: 100}},
	}
}

func sampleReply() mirror.HelloReply {
	return mirror.HelloReply{
		Version: mirror.ProtoVersion, Code: mirror.CodeRefused, Flags: mirror.FlagNeedsResync,
		Role: mirror.PeerRoleMirror, Volume: mirror.UUID{9: 9}, Size: 4096, Epoch: 7,
		LastSeq: 10, DurableSeq: 9, AppliedSeq: 8, Node: "beta", Reason: "size differs",
		History: []mirror.EpochStart{{Epoch: 7, FirstSeq: 3}},
	}
}

func sampleRecords() []journal.Record {
	return []journal.Record{
		{Epoch: 1, Seq: 1, Op: journal.OpWrite, Offset: 4096, Length: 5, Data: []byte("hello")},
		{Epoch: 1, Seq: 2, Op: journal.OpTrim, Offset: 0, Length: 1 << 20},
		{Epoch: 2, Seq: 3, Op: journal.OpEpoch},
		{Epoch: 2, Seq: 4, Op: journal.OpZero, Offset: 8192, Length: 512},
		{Epoch: 2, Seq: 5, Op: journal.OpWrite, Offset: 0, Length: 0, Data: []byte{}},
	}
}

func mustMalformed(t *testing.T, err error, what string) {
	t.Helper()
	if err == nil {
		t.Fatalf("%s: decoded without error", what)
	}
	if !errors.Is(err, mirror.ErrMalformed) {
		t.Fatalf("%s: error %v does not wrap ErrMalformed", what, err)
	}
}

func TestHelloRoundTrip(t *testing.T) {
	h := sampleHello()
	b, err := mirror.AppendHello([]byte("prefix"), &h)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(b, []byte("prefix")) {
		t.Fatal("AppendHello clobbered the prefix")
	}
	got, err := mirror.DecodeHello(b[len("prefix"):])
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, h) {
		t.Fatalf("round trip: got %+v want %+v", got, h)
	}
}

func TestHelloReplyRoundTrip(t *testing.T) {
	h := sampleReply()
	b, err := mirror.AppendHelloReply(nil, &h)
	if err != nil {
		t.Fatal(err)
	}
	got, err := mirror.DecodeHelloReply(b)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, h) {
		t.Fatalf("round trip: got %+v want %+v", got, h)
	}
}

func TestSmallMessagesRoundTrip(t *testing.T) {
	a := mirror.Ack{Received: 10, Written: 9, Durable: 8, Applied: 7}
	if got, err := mirror.DecodeAck(mirror.AppendAck(nil, a)); err != nil || got != a {
		t.Fatalf("ack: %+v %v", got, err)
	}
	f := mirror.Flush{Through: 1<<63 + 5}
	if got, err := mirror.DecodeFlush(mirror.AppendFlush(nil, f)); err != nil || got != f {
		t.Fatalf("flush: %+v %v", got, err)
	}
	h := mirror.Heartbeat{Time: 123456789, LastSeq: 42}
	if got, err := mirror.DecodeHeartbeat(mirror.AppendHeartbeat(nil, h)); err != nil || got != h {
		t.Fatalf("heartbeat: %+v %v", got, err)
	}
	e := mirror.ErrorMsg{Code: mirror.CodeFenced, Message: "epoch 9 > 5"}
	if got, err := mirror.DecodeError(mirror.AppendError(nil, e)); err != nil || got != e {
		t.Fatalf("error: %+v %v", got, err)
	}
	long := mirror.ErrorMsg{Code: mirror.CodeProtocol, Message: strings.Repeat("x", mirror.MaxString+10)}
	got, err := mirror.DecodeError(mirror.AppendError(nil, long))
	if err != nil || len(got.Message) != mirror.MaxString {
		t.Fatalf("long error message: len %d, %v", len(got.Message), err)
	}
}

func TestAckOrderChecked(t *testing.T) {
	_, err := mirror.DecodeAck(mirror.AppendAck(nil, mirror.Ack{Received: 1, Written: 2}))
	mustMalformed(t, err, "written > received")
}

func TestRecordsRoundTripAndAliasing(t *testing.T) {
	recs := sampleRecords()
	b, err := mirror.AppendRecords(nil, recs)
	if err != nil {
		t.Fatal(err)
	}
	want := 4
	for i := range recs {
		want += mirror.RecordSize(&recs[i])
	}
	if len(b) != want {
		t.Fatalf("encoded %d bytes, RecordSize sums to %d", len(b), want)
	}
	got, err := mirror.DecodeRecords(nil, b)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(recs) {
		t.Fatalf("got %d records want %d", len(got), len(recs))
	}
	for i := range recs {
		w := recs[i]
		g := got[i]
		if g.Epoch != w.Epoch || g.Seq != w.Seq || g.Op != w.Op || g.Offset != w.Offset || g.Length != w.Length || !bytes.Equal(g.Data, w.Data) {
			t.Fatalf("record %d: got %+v want %+v", i, g, w)
		}
	}
	// Data aliases the payload.
	idx := bytes.Index(b, []byte("hello"))
	b[idx] = 'J'
	if string(got[0].Data) != "Jello" {
		t.Fatalf("record data does not alias the frame: %q", got[0].Data)
	}
	// Appending to a reused dst keeps earlier entries.
	b[idx] = 'h'
	got2, err := mirror.DecodeRecords(got[:1], b)
	if err != nil || len(got2) != 1+len(recs) || got2[0].Seq != 1 || got2[1].Seq != 1 {
		t.Fatalf("append to dst: %d records, %v", len(got2), err)
	}
}

func TestRecordsEncodeRejects(t *testing.T) {
	bad := [][]journal.Record{
		nil,
		{{Seq: 1, Op: 9}},
		{{Seq: 1, Op: journal.OpWrite, Length: 3, Data: []byte("ab")}},
		{{Seq: 1, Op: journal.OpTrim, Length: 3, Data: []byte("abc")}},
		{{Seq: 1, Op: journal.OpEpoch, Length: 3}},
	}
	for i, recs := range bad {
		if b, err := mirror.AppendRecords([]byte("x"), recs); err == nil || string(b) != "x" {
			t.Errorf("case %d: encoded %q, err %v", i, b, err)
		}
	}
}

func TestRecordsDecodeRejects(t *testing.T) {
	good, _ := mirror.AppendRecords(nil, sampleRecords())
	// Every truncation fails.
	for n := 0; n < len(good); n++ {
		_, err := mirror.DecodeRecords(nil, good[:n])
		mustMalformed(t, err, "truncated")
	}
	// Trailing bytes fail.
	_, err := mirror.DecodeRecords(nil, append(append([]byte(nil), good...), 0))
	mustMalformed(t, err, "trailing")
	// Every single bit flip fails (CRC or structure).
	for i := 0; i < len(good); i++ {
		for bit := 0; bit < 8; bit++ {
			c := append([]byte(nil), good...)
			c[i] ^= 1 << bit
			if _, err := mirror.DecodeRecords(nil, c); err == nil {
				t.Fatalf("flip of bit %d in byte %d not detected", bit, i)
			}
		}
	}
	// A corrupted data byte is reported as a checksum error.
	c := append([]byte(nil), good...)
	c[bytes.Index(c, []byte("hello"))] ^= 0xff
	if _, err := mirror.DecodeRecords(nil, c); !errors.Is(err, mirror.ErrChecksum) {
		t.Fatalf("data corruption: %v, want ErrChecksum", err)
	}
	// Huge counts are refused before allocating.
	huge := []byte{0xff, 0xff, 0xff, 0xff}
	_, err = mirror.DecodeRecords(nil, huge)
	mustMalformed(t, err, "huge count")
	over := []byte{0, 1, 0, 1} // 65537 records
	over = append(over, make([]byte, 65537*33)...)
	_, err = mirror.DecodeRecords(nil, over)
	mustMalformed(t, err, "too many records")
	// A short payload claiming 65535 records must not allocate room for them.
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for i := 0; i < 10; i++ {
		mirror.DecodeRecords(nil, []byte{0, 0, 0xff, 0xff, 1, 2, 3})
	}
	runtime.ReadMemStats(&after)
	if d := after.TotalAlloc - before.TotalAlloc; d > 64<<10 {
		t.Fatalf("10 decodes of a lying count allocated %d bytes", d)
	}
}

func TestDecodeRejectsTruncatedAndTrailing(t *testing.T) {
	h := sampleHello()
	hb, _ := mirror.AppendHello(nil, &h)
	r := sampleReply()
	rb, _ := mirror.AppendHelloReply(nil, &r)
	msgs := map[string]struct {
		b   []byte
		dec func([]byte) error
	}{
		"hello":     {hb, func(p []byte) error { _, err := mirror.DecodeHello(p); return err }},
		"reply":     {rb, func(p []byte) error { _, err := mirror.DecodeHelloReply(p); return err }},
		"ack":       {mirror.AppendAck(nil, mirror.Ack{3, 2, 1, 0}), func(p []byte) error { _, err := mirror.DecodeAck(p); return err }},
		"flush":     {mirror.AppendFlush(nil, mirror.Flush{7}), func(p []byte) error { _, err := mirror.DecodeFlush(p); return err }},
		"heartbeat": {mirror.AppendHeartbeat(nil, mirror.Heartbeat{1, 2}), func(p []byte) error { _, err := mirror.DecodeHeartbeat(p); return err }},
		"error":     {mirror.AppendError(nil, mirror.ErrorMsg{1, "no"}), func(p []byte) error { _, err := mirror.DecodeError(p); return err }},
	}
	for name, m := range msgs {
		if err := m.dec(m.b); err != nil {
			t.Fatalf("%s: good message: %v", name, err)
		}
		for n := 0; n < len(m.b); n++ {
			mustMalformed(t, m.dec(m.b[:n]), name+" truncated")
		}
		mustMalformed(t, m.dec(append(append([]byte(nil), m.b...), 0)), name+" trailing")
		c := append([]byte(nil), m.b...)
		c[0] ^= 0x40
		err := m.dec(c)
		if !errors.Is(err, mirror.ErrChecksum) {
			t.Fatalf("%s: corrupted first byte: %v, want ErrChecksum", name, err)
		}
	}
}

func TestOversizedFieldsRefused(t *testing.T) {
	h := sampleHello()
	h.Node = strings.Repeat("n", mirror.MaxString+1)
	if _, err := mirror.AppendHello(nil, &h); err == nil {
		t.Fatal("long node name encoded")
	}
	h = sampleHello()
	h.History = make([]mirror.EpochStart, mirror.MaxHistory+1)
	if _, err := mirror.AppendHello(nil, &h); err == nil {
		t.Fatal("long history encoded")
	}
	// A well-formed (checksummed) Hello claiming a huge history is refused.
	h = sampleHello()
	h.History = nil
	b, _ := mirror.AppendHello(nil, &h)
	body := b[:len(b)-4]
	body = body[:len(body)-4]
	body = append(body, 0, 1, 0, 0) // 65536 entries
	b = appendCRC(body)
	_, err := mirror.DecodeHello(b)
	mustMalformed(t, err, "huge history")
	if !strings.Contains(err.Error(), "more than") {
		t.Fatalf("error does not explain the limit: %v", err)
	}
}

func TestEncodersDoNotAllocate(t *testing.T) {
	h := sampleHello()
	r := sampleReply()
	recs := sampleRecords()
	buf := make([]byte, 0, 4096)
	allocs := testing.AllocsPerRun(100, func() {
		b := buf[:0]
		b, _ = mirror.AppendHello(b, &h)
		b, _ = mirror.AppendHelloReply(b, &r)
		b, _ = mirror.AppendRecords(b, recs)
		b = mirror.AppendAck(b, mirror.Ack{})
		b = mirror.AppendFlush(b, mirror.Flush{})
		b = mirror.AppendHeartbeat(b, mirror.Heartbeat{})
		_ = mirror.AppendError(b, mirror.ErrorMsg{Message: "x"})
	})
	if allocs != 0 {
		t.Fatalf("encoders allocate %.1f times per run with enough capacity", allocs)
	}
	enc, _ := mirror.AppendRecords(nil, recs)
	dst := make([]journal.Record, 0, 16)
	allocs = testing.AllocsPerRun(100, func() { dst, _ = mirror.DecodeRecords(dst[:0], enc) })
	if allocs != 0 {
		t.Fatalf("DecodeRecords into a reused slice allocates %.1f times", allocs)
	}
}

func ident() mirror.VolumeIdentity {
	h := sampleHello()
	return mirror.VolumeIdentity{Volume: h.Volume, Size: h.Size, Epoch: h.Epoch, History: h.History}
}

func TestCheckHello(t *testing.T) {
	if err := mirror.CheckHello(ident(), sampleHello()); err != nil {
		t.Fatalf("identical: %v", err)
	}
	cases := []struct {
		name   string
		local  func(*mirror.VolumeIdentity)
		remote func(*mirror.Hello)
		is     error
		msg    string
	}{
		{"version", nil, func(h *mirror.Hello) { h.Version = 2 }, mirror.ErrVersion, "protocol version differs: local 1 remote 2"},
		{"uuid", nil, func(h *mirror.Hello) { h.Volume[0] = 0x56 }, mirror.ErrVolumeMismatch,
			"volume UUID differs: local 01020304-0506-0708-090a-0b0c0d0e0f10 remote 56020304-0506-0708-090a-0b0c0d0e0f10"},
		{"size", func(l *mirror.VolumeIdentity) { l.Size = 1073741824 }, func(h *mirror.Hello) { h.Size = 2147483648 }, mirror.ErrSizeMismatch,
			"size differs: local 1073741824 remote 2147483648"},
		{"epoch", nil, func(h *mirror.Hello) { h.Epoch = 3; h.History = h.History[:1] }, mirror.ErrStaleEpoch,
			"peer epoch 3 is lower than ours 5: refusing records"},
		{"first seq", nil, func(h *mirror.Hello) {
			h.History = []mirror.EpochStart{{Epoch: 1, FirstSeq: 1}, {Epoch: 5, FirstSeq: 120}}
		}, mirror.ErrHistoryDiverged,
			"epoch 5 starts at seq 100 here but at seq 120 at the peer"},
		{"missing epoch", nil, func(h *mirror.Hello) {
			h.Epoch = 6
			h.History = []mirror.EpochStart{{Epoch: 1, FirstSeq: 1}, {Epoch: 6, FirstSeq: 100}}
		}, mirror.ErrHistoryDiverged,
			"our epoch 5 (from seq 100) is not in the peer's history"},
		{"bad history", nil, func(h *mirror.Hello) {
			h.History = []mirror.EpochStart{{Epoch: 5, FirstSeq: 1}, {Epoch: 1, FirstSeq: 100}}
		}, mirror.ErrBadHistory, "does not follow"},
		{"history past epoch", nil, func(h *mirror.Hello) { h.History = append(h.History, mirror.EpochStart{Epoch: 9, FirstSeq: 200}) }, mirror.ErrBadHistory, "after the current epoch"},
	}
	for _, c := range cases {
		l, r := ident(), sampleHello()
		r.History = append([]mirror.EpochStart(nil), r.History...)
		if c.local != nil {
			c.local(&l)
		}
		c.remote(&r)
		err := mirror.CheckHello(l, r)
		if !errors.Is(err, c.is) || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("%s: got %v, want %v containing %q", c.name, err, c.is, c.msg)
		}
	}
	// A higher remote epoch extending our history is fine.
	r := sampleHello()
	r.Epoch = 8
	r.History = []mirror.EpochStart{{Epoch: 1, FirstSeq: 1}, {Epoch: 5, FirstSeq: 100}, {Epoch: 8, FirstSeq: 300}}
	if err := mirror.CheckHello(ident(), r); err != nil {
		t.Fatalf("newer epoch: %v", err)
	}
}

// ---- fuzz targets: decode(encode(x)) == x, never panic, bounded ----

func FuzzDecodeHello(f *testing.F) {
	h := sampleHello()
	b, _ := mirror.AppendHello(nil, &h)
	f.Add(b)
	h.History = nil
	h.Node = ""
	b, _ = mirror.AppendHello(nil, &h)
	f.Add(b)
	h.VolumeName = ""
	b, _ = mirror.AppendHello(nil, &h)
	f.Add(b)
	f.Fuzz(func(t *testing.T, p []byte) {
		h, err := mirror.DecodeHello(p)
		if err != nil {
			return
		}
		b, err := mirror.AppendHello(nil, &h)
		if err != nil || !bytes.Equal(b, p) {
			t.Fatalf("re-encoding differs: %v", err)
		}
		h2, err := mirror.DecodeHello(b)
		if err != nil || !reflect.DeepEqual(h, h2) {
			t.Fatalf("decode(encode(x)) != x: %v", err)
		}
	})
}

func FuzzDecodeHelloReply(f *testing.F) {
	r := sampleReply()
	b, _ := mirror.AppendHelloReply(nil, &r)
	f.Add(b)
	f.Fuzz(func(t *testing.T, p []byte) {
		r, err := mirror.DecodeHelloReply(p)
		if err != nil {
			return
		}
		b, err := mirror.AppendHelloReply(nil, &r)
		if err != nil || !bytes.Equal(b, p) {
			t.Fatalf("re-encoding differs: %v", err)
		}
		r2, err := mirror.DecodeHelloReply(b)
		if err != nil || !reflect.DeepEqual(r, r2) {
			t.Fatalf("decode(encode(x)) != x: %v", err)
		}
	})
}

func FuzzDecodeRecords(f *testing.F) {
	b, _ := mirror.AppendRecords(nil, sampleRecords())
	f.Add(b)
	b, _ = mirror.AppendRecords(nil, sampleRecords()[:1])
	f.Add(b)
	f.Fuzz(func(t *testing.T, p []byte) {
		recs, err := mirror.DecodeRecords(nil, p)
		if err != nil {
			if len(recs) != 0 {
				t.Fatalf("error %v but %d records returned", err, len(recs))
			}
			return
		}
		if len(recs) > mirror.MaxRecordsPerFrame || len(recs)*33 > len(p) {
			t.Fatalf("%d records from %d bytes", len(recs), len(p))
		}
		b, err := mirror.AppendRecords(nil, recs)
		if err != nil || !bytes.Equal(b, p) {
			t.Fatalf("re-encoding differs: %v", err)
		}
	})
}

func FuzzDecodeSmall(f *testing.F) {
	f.Add(uint8(0), mirror.AppendAck(nil, mirror.Ack{4, 3, 2, 1}))
	f.Add(uint8(1), mirror.AppendFlush(nil, mirror.Flush{9}))
	f.Add(uint8(2), mirror.AppendHeartbeat(nil, mirror.Heartbeat{5, 6}))
	f.Add(uint8(3), mirror.AppendError(nil, mirror.ErrorMsg{2, "fenced"}))
	f.Fuzz(func(t *testing.T, kind uint8, p []byte) {
		var b []byte
		switch kind % 4 {
		case 0:
			a, err := mirror.DecodeAck(p)
			if err != nil {
				return
			}
			b = mirror.AppendAck(nil, a)
		case 1:
			x, err := mirror.DecodeFlush(p)
			if err != nil {
				return
			}
			b = mirror.AppendFlush(nil, x)
		case 2:
			x, err := mirror.DecodeHeartbeat(p)
			if err != nil {
				return
			}
			b = mirror.AppendHeartbeat(nil, x)
		case 3:
			x, err := mirror.DecodeError(p)
			if err != nil {
				return
			}
			b = mirror.AppendError(nil, x)
		}
		if !bytes.Equal(b, p) {
			t.Fatalf("decode(encode(x)) != x")
		}
	})
}

func BenchmarkRecordsEncodeDecode(b *testing.B) {
	data := make([]byte, 4096)
	recs := make([]journal.Record, 64)
	for i := range recs {
		recs[i] = journal.Record{Epoch: 1, Seq: uint64(i + 1), Op: journal.OpWrite, Offset: uint64(i) * 4096, Length: 4096, Data: data}
	}
	buf, _ := mirror.AppendRecords(nil, recs)
	dst := make([]journal.Record, 0, 64)
	b.SetBytes(int64(len(buf)))
	b.ReportAllocs()
	for b.Loop() {
		buf, _ = mirror.AppendRecords(buf[:0], recs)
		var err error
		dst, err = mirror.DecodeRecords(dst[:0], buf)
		if err != nil {
			b.Fatal(err)
		}
	}
}

// appendCRC appends the CRC32C of b (as the messages' trailers do).
func appendCRC(b []byte) []byte {
	return binary.BigEndian.AppendUint32(b, crc32.Checksum(b, crc32.MakeTable(crc32.Castagnoli)))
}

func TestStreamVolumeRoundTrip(t *testing.T) {
	for _, name := range []string{"", "vol-a", strings.Repeat("v", mirror.MaxString)} {
		b, err := mirror.AppendStreamVolume([]byte("x"), mirror.StreamVolume{Name: name})
		if err != nil {
			t.Fatal(err)
		}
		m, err := mirror.DecodeStreamVolume(b[1:])
		if err != nil || m.Name != name {
			t.Fatalf("round trip of %q: got %q, %v", name, m.Name, err)
		}
		for cut := 0; cut < len(b)-1; cut++ {
			mustMalformed(t, errOf(mirror.DecodeStreamVolume(b[1:1+cut])), "truncated stream volume")
		}
		bad := append([]byte(nil), b[1:]...)
		bad[0] ^= 1
		mustMalformed(t, errOf(mirror.DecodeStreamVolume(bad)), "corrupt stream volume")
	}
	if _, err := mirror.AppendStreamVolume(nil, mirror.StreamVolume{Name: strings.Repeat("v", mirror.MaxString+1)}); err == nil {
		t.Fatal("over-long volume name encoded")
	}
}

func errOf(_ mirror.StreamVolume, err error) error { return err }

func FuzzDecodeStreamVolume(f *testing.F) {
	for _, name := range []string{"", "vol-a"} {
		b, _ := mirror.AppendStreamVolume(nil, mirror.StreamVolume{Name: name})
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, p []byte) {
		m, err := mirror.DecodeStreamVolume(p)
		if err != nil {
			return
		}
		b, err := mirror.AppendStreamVolume(nil, m)
		if err != nil || !bytes.Equal(b, p) {
			t.Fatalf("re-encoding differs: %v", err)
		}
	})
}
