package wire_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"reflect"
	"runtime"
	"strings"
	"testing"

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

func sampleReply() wire.HelloReply {
	return wire.HelloReply{
		Version: wire.ProtoVersion, Code: wire.CodeRefused, Flags: wire.FlagNeedsResync,
		Role: wire.PeerRoleMirror, Volume: wire.UUID{9: 9}, Size: 4096, Epoch: 7,
		LastSeq: 10, DurableSeq: 9, AppliedSeq: 8, Node: "beta", Reason: "size differs",
		History: []wire.EpochStart{{Epoch: 7, FirstSeq: 3}},
	}
}

func sampleRecords() []wire.Record {
	return []wire.Record{
		{Epoch: 1, Seq: 1, Op: wire.OpWrite, Offset: 4096, Length: 5, Data: []byte("hello")},
		{Epoch: 1, Seq: 2, Op: wire.OpTrim, Offset: 0, Length: 1 << 20},
		{Epoch: 2, Seq: 3, Op: wire.OpEpoch},
		{Epoch: 2, Seq: 4, Op: wire.OpZero, Offset: 8192, Length: 512},
		{Epoch: 2, Seq: 5, Op: wire.OpWrite, Offset: 0, Length: 0, Data: []byte{}},
	}
}

func mustMalformed(t *testing.T, err error, what string) {
	t.Helper()
	if err == nil {
		t.Fatalf("%s: decoded without error", what)
	}
	if !errors.Is(err, wire.ErrMalformed) {
		t.Fatalf("%s: error %v does not wrap ErrMalformed", what, err)
	}
}

func TestHelloRoundTrip(t *testing.T) {
	h := sampleHello()
	b, err := wire.AppendHello([]byte("prefix"), &h)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(b, []byte("prefix")) {
		t.Fatal("AppendHello clobbered the prefix")
	}
	got, err := wire.DecodeHello(b[len("prefix"):])
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, h) {
		t.Fatalf("round trip: got %+v want %+v", got, h)
	}
}

func TestHelloReplyRoundTrip(t *testing.T) {
	h := sampleReply()
	b, err := wire.AppendHelloReply(nil, &h)
	if err != nil {
		t.Fatal(err)
	}
	got, err := wire.DecodeHelloReply(b)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, h) {
		t.Fatalf("round trip: got %+v want %+v", got, h)
	}
}

func TestSmallMessagesRoundTrip(t *testing.T) {
	a := wire.Ack{Received: 10, Written: 9, Durable: 8, Applied: 7}
	if got, err := wire.DecodeAck(wire.AppendAck(nil, a)); err != nil || got != a {
		t.Fatalf("ack: %+v %v", got, err)
	}
	f := wire.Flush{Through: 1<<63 + 5}
	if got, err := wire.DecodeFlush(wire.AppendFlush(nil, f)); err != nil || got != f {
		t.Fatalf("flush: %+v %v", got, err)
	}
	h := wire.Heartbeat{Time: 123456789, LastSeq: 42}
	if got, err := wire.DecodeHeartbeat(wire.AppendHeartbeat(nil, h)); err != nil || got != h {
		t.Fatalf("heartbeat: %+v %v", got, err)
	}
	e := wire.ErrorMsg{Code: wire.CodeFenced, Message: "epoch 9 > 5"}
	if got, err := wire.DecodeError(wire.AppendError(nil, e)); err != nil || got != e {
		t.Fatalf("error: %+v %v", got, err)
	}
	long := wire.ErrorMsg{Code: wire.CodeProtocol, Message: strings.Repeat("x", wire.MaxString+10)}
	got, err := wire.DecodeError(wire.AppendError(nil, long))
	if err != nil || len(got.Message) != wire.MaxString {
		t.Fatalf("long error message: len %d, %v", len(got.Message), err)
	}
}

func TestAckOrderChecked(t *testing.T) {
	_, err := wire.DecodeAck(wire.AppendAck(nil, wire.Ack{Received: 1, Written: 2}))
	mustMalformed(t, err, "written > received")
}

func TestRecordsRoundTripAndAliasing(t *testing.T) {
	recs := sampleRecords()
	b, err := wire.AppendRecords(nil, recs)
	if err != nil {
		t.Fatal(err)
	}
	want := 4
	for i := range recs {
		want += wire.RecordSize(&recs[i])
	}
	if len(b) != want {
		t.Fatalf("encoded %d bytes, RecordSize sums to %d", len(b), want)
	}
	got, err := wire.DecodeRecords(nil, b)
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
	got2, err := wire.DecodeRecords(got[:1], b)
	if err != nil || len(got2) != 1+len(recs) || got2[0].Seq != 1 || got2[1].Seq != 1 {
		t.Fatalf("append to dst: %d records, %v", len(got2), err)
	}
}

func TestRecordsEncodeRejects(t *testing.T) {
	bad := [][]wire.Record{
		nil,
		{{Seq: 1, Op: 9}},
		{{Seq: 1, Op: wire.OpWrite, Length: 3, Data: []byte("ab")}},
		{{Seq: 1, Op: wire.OpTrim, Length: 3, Data: []byte("abc")}},
		{{Seq: 1, Op: wire.OpEpoch, Length: 3}},
	}
	for i, recs := range bad {
		if b, err := wire.AppendRecords([]byte("x"), recs); err == nil || string(b) != "x" {
			t.Errorf("case %d: encoded %q, err %v", i, b, err)
		}
	}
}

func TestRecordsDecodeRejects(t *testing.T) {
	good, _ := wire.AppendRecords(nil, sampleRecords())
	// Every truncation fails.
	for n := 0; n < len(good); n++ {
		_, err := wire.DecodeRecords(nil, good[:n])
		mustMalformed(t, err, "truncated")
	}
	// Trailing bytes fail.
	_, err := wire.DecodeRecords(nil, append(append([]byte(nil), good...), 0))
	mustMalformed(t, err, "trailing")
	// Every single bit flip fails (CRC or structure).
	for i := 0; i < len(good); i++ {
		for bit := 0; bit < 8; bit++ {
			c := append([]byte(nil), good...)
			c[i] ^= 1 << bit
			if _, err := wire.DecodeRecords(nil, c); err == nil {
				t.Fatalf("flip of bit %d in byte %d not detected", bit, i)
			}
		}
	}
	// A corrupted data byte is reported as a checksum error.
	c := append([]byte(nil), good...)
	c[bytes.Index(c, []byte("hello"))] ^= 0xff
	if _, err := wire.DecodeRecords(nil, c); !errors.Is(err, wire.ErrChecksum) {
		t.Fatalf("data corruption: %v, want ErrChecksum", err)
	}
	// Huge counts are refused before allocating.
	huge := []byte{0xff, 0xff, 0xff, 0xff}
	_, err = wire.DecodeRecords(nil, huge)
	mustMalformed(t, err, "huge count")
	over := []byte{0, 1, 0, 1} // 65537 records
	over = append(over, make([]byte, 65537*33)...)
	_, err = wire.DecodeRecords(nil, over)
	mustMalformed(t, err, "too many records")
	// A short payload claiming 65535 records must not allocate room for them.
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for i := 0; i < 10; i++ {
		wire.DecodeRecords(nil, []byte{0, 0, 0xff, 0xff, 1, 2, 3})
	}
	runtime.ReadMemStats(&after)
	if d := after.TotalAlloc - before.TotalAlloc; d > 64<<10 {
		t.Fatalf("10 decodes of a lying count allocated %d bytes", d)
	}
}

func TestDecodeRejectsTruncatedAndTrailing(t *testing.T) {
	h := sampleHello()
	hb, _ := wire.AppendHello(nil, &h)
	r := sampleReply()
	rb, _ := wire.AppendHelloReply(nil, &r)
	msgs := map[string]struct {
		b   []byte
		dec func([]byte) error
	}{
		"hello":     {hb, func(p []byte) error { _, err := wire.DecodeHello(p); return err }},
		"reply":     {rb, func(p []byte) error { _, err := wire.DecodeHelloReply(p); return err }},
		"ack":       {wire.AppendAck(nil, wire.Ack{3, 2, 1, 0}), func(p []byte) error { _, err := wire.DecodeAck(p); return err }},
		"flush":     {wire.AppendFlush(nil, wire.Flush{7}), func(p []byte) error { _, err := wire.DecodeFlush(p); return err }},
		"heartbeat": {wire.AppendHeartbeat(nil, wire.Heartbeat{1, 2}), func(p []byte) error { _, err := wire.DecodeHeartbeat(p); return err }},
		"error":     {wire.AppendError(nil, wire.ErrorMsg{1, "no"}), func(p []byte) error { _, err := wire.DecodeError(p); return err }},
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
		if !errors.Is(err, wire.ErrChecksum) {
			t.Fatalf("%s: corrupted first byte: %v, want ErrChecksum", name, err)
		}
	}
}

func TestOversizedFieldsRefused(t *testing.T) {
	h := sampleHello()
	h.Node = strings.Repeat("n", wire.MaxString+1)
	if _, err := wire.AppendHello(nil, &h); err == nil {
		t.Fatal("long node name encoded")
	}
	h = sampleHello()
	h.History = make([]wire.EpochStart, wire.MaxHistory+1)
	if _, err := wire.AppendHello(nil, &h); err == nil {
		t.Fatal("long history encoded")
	}
	// A well-formed (checksummed) Hello claiming a huge history is refused.
	h = sampleHello()
	h.History = nil
	b, _ := wire.AppendHello(nil, &h)
	body := b[:len(b)-4]
	body = body[:len(body)-4]
	body = append(body, 0, 1, 0, 0) // 65536 entries
	b = appendCRC(body)
	_, err := wire.DecodeHello(b)
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
		b, _ = wire.AppendHello(b, &h)
		b, _ = wire.AppendHelloReply(b, &r)
		b, _ = wire.AppendRecords(b, recs)
		b = wire.AppendAck(b, wire.Ack{})
		b = wire.AppendFlush(b, wire.Flush{})
		b = wire.AppendHeartbeat(b, wire.Heartbeat{})
		_ = wire.AppendError(b, wire.ErrorMsg{Message: "x"})
	})
	if allocs != 0 {
		t.Fatalf("encoders allocate %.1f times per run with enough capacity", allocs)
	}
	enc, _ := wire.AppendRecords(nil, recs)
	dst := make([]wire.Record, 0, 16)
	allocs = testing.AllocsPerRun(100, func() { dst, _ = wire.DecodeRecords(dst[:0], enc) })
	if allocs != 0 {
		t.Fatalf("DecodeRecords into a reused slice allocates %.1f times", allocs)
	}
}

func FuzzDecodeHello(f *testing.F) {
	h := sampleHello()
	b, _ := wire.AppendHello(nil, &h)
	f.Add(b)
	h.History = nil
	h.Node = ""
	b, _ = wire.AppendHello(nil, &h)
	f.Add(b)
	h.VolumeName = ""
	b, _ = wire.AppendHello(nil, &h)
	f.Add(b)
	f.Fuzz(func(t *testing.T, p []byte) {
		h, err := wire.DecodeHello(p)
		if err != nil {
			return
		}
		b, err := wire.AppendHello(nil, &h)
		if err != nil || !bytes.Equal(b, p) {
			t.Fatalf("re-encoding differs: %v", err)
		}
		h2, err := wire.DecodeHello(b)
		if err != nil || !reflect.DeepEqual(h, h2) {
			t.Fatalf("decode(encode(x)) != x: %v", err)
		}
	})
}

func FuzzDecodeHelloReply(f *testing.F) {
	r := sampleReply()
	b, _ := wire.AppendHelloReply(nil, &r)
	f.Add(b)
	f.Fuzz(func(t *testing.T, p []byte) {
		r, err := wire.DecodeHelloReply(p)
		if err != nil {
			return
		}
		b, err := wire.AppendHelloReply(nil, &r)
		if err != nil || !bytes.Equal(b, p) {
			t.Fatalf("re-encoding differs: %v", err)
		}
		r2, err := wire.DecodeHelloReply(b)
		if err != nil || !reflect.DeepEqual(r, r2) {
			t.Fatalf("decode(encode(x)) != x: %v", err)
		}
	})
}

func FuzzDecodeRecords(f *testing.F) {
	b, _ := wire.AppendRecords(nil, sampleRecords())
	f.Add(b)
	b, _ = wire.AppendRecords(nil, sampleRecords()[:1])
	f.Add(b)
	f.Fuzz(func(t *testing.T, p []byte) {
		recs, err := wire.DecodeRecords(nil, p)
		if err != nil {
			if len(recs) != 0 {
				t.Fatalf("error %v but %d records returned", err, len(recs))
			}
			return
		}
		if len(recs) > wire.MaxRecordsPerFrame || len(recs)*33 > len(p) {
			t.Fatalf("%d records from %d bytes", len(recs), len(p))
		}
		b, err := wire.AppendRecords(nil, recs)
		if err != nil || !bytes.Equal(b, p) {
			t.Fatalf("re-encoding differs: %v", err)
		}
	})
}

func FuzzDecodeSmall(f *testing.F) {
	f.Add(uint8(0), wire.AppendAck(nil, wire.Ack{4, 3, 2, 1}))
	f.Add(uint8(1), wire.AppendFlush(nil, wire.Flush{9}))
	f.Add(uint8(2), wire.AppendHeartbeat(nil, wire.Heartbeat{5, 6}))
	f.Add(uint8(3), wire.AppendError(nil, wire.ErrorMsg{2, "fenced"}))
	f.Fuzz(func(t *testing.T, kind uint8, p []byte) {
		var b []byte
		switch kind % 4 {
		case 0:
			a, err := wire.DecodeAck(p)
			if err != nil {
				return
			}
			b = wire.AppendAck(nil, a)
		case 1:
			x, err := wire.DecodeFlush(p)
			if err != nil {
				return
			}
			b = wire.AppendFlush(nil, x)
		case 2:
			x, err := wire.DecodeHeartbeat(p)
			if err != nil {
				return
			}
			b = wire.AppendHeartbeat(nil, x)
		case 3:
			x, err := wire.DecodeError(p)
			if err != nil {
				return
			}
			b = wire.AppendError(nil, x)
		}
		if !bytes.Equal(b, p) {
			t.Fatalf("decode(encode(x)) != x")
		}
	})
}

func BenchmarkRecordsEncodeDecode(b *testing.B) {
	data := make([]byte, 4096)
	recs := make([]wire.Record, 64)
	for i := range recs {
		recs[i] = wire.Record{Epoch: 1, Seq: uint64(i + 1), Op: wire.OpWrite, Offset: uint64(i) * 4096, Length: 4096, Data: data}
	}
	buf, _ := wire.AppendRecords(nil, recs)
	dst := make([]wire.Record, 0, 64)
	b.SetBytes(int64(len(buf)))
	b.ReportAllocs()
	for b.Loop() {
		buf, _ = wire.AppendRecords(buf[:0], recs)
		var err error
		dst, err = wire.DecodeRecords(dst[:0], buf)
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
	for _, name := range []string{"", "vol-a", strings.Repeat("v", wire.MaxString)} {
		b, err := wire.AppendStreamVolume([]byte("x"), wire.StreamVolume{Name: name})
		if err != nil {
			t.Fatal(err)
		}
		m, err := wire.DecodeStreamVolume(b[1:])
		if err != nil || m.Name != name {
			t.Fatalf("round trip of %q: got %q, %v", name, m.Name, err)
		}
		for cut := 0; cut < len(b)-1; cut++ {
			mustMalformed(t, errOf(wire.DecodeStreamVolume(b[1:1+cut])), "truncated stream volume")
		}
		bad := append([]byte(nil), b[1:]...)
		bad[0] ^= 1
		mustMalformed(t, errOf(wire.DecodeStreamVolume(bad)), "corrupt stream volume")
	}
	if _, err := wire.AppendStreamVolume(nil, wire.StreamVolume{Name: strings.Repeat("v", wire.MaxString+1)}); err == nil {
		t.Fatal("over-long volume name encoded")
	}
}

func errOf(_ wire.StreamVolume, err error) error { return err }

func FuzzDecodeStreamVolume(f *testing.F) {
	for _, name := range []string{"", "vol-a"} {
		b, _ := wire.AppendStreamVolume(nil, wire.StreamVolume{Name: name})
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, p []byte) {
		m, err := wire.DecodeStreamVolume(p)
		if err != nil {
			return
		}
		b, err := wire.AppendStreamVolume(nil, m)
		if err != nil || !bytes.Equal(b, p) {
			t.Fatalf("re-encoding differs: %v", err)
		}
	})
}
