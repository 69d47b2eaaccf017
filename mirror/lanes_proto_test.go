package mirror_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/blockmirror/blockmirror/mirror/wire"
	"github.com/blockmirror/blockmirror/transport"
)

// rawPrimary speaks the replication protocol by hand to a mirror host: a
// primary whose frames the test chooses.
type rawPrimary struct {
	t    *testing.T
	addr string
	id   *transport.Identity
	log  *transport.Stream
}

func (p *rawPrimary) dial() *transport.Conn {
	p.t.Helper()
	c, err := transport.Dial(p.t.Context(), p.addr, "m", transport.Config{Identity: p.id})
	if err != nil {
		p.t.Fatal(err)
	}
	p.t.Cleanup(func() { c.Close(0, "test done") })
	return c
}

func (p *rawPrimary) send(st *transport.Stream, typ wire.MsgType, payload []byte) {
	p.t.Helper()
	if err := st.WriteFrame(uint8(typ), payload); err != nil {
		p.t.Fatal(err)
	}
	if err := st.Flush(); err != nil {
		p.t.Fatal(err)
	}
}

// hello opens the log stream of a new volume "a" and returns the reply.
func (p *rawPrimary) hello(c *transport.Conn) wire.HelloReply {
	p.t.Helper()
	st, err := c.OpenStream(p.t.Context())
	if err != nil {
		p.t.Fatal(err)
	}
	p.log = st
	h, err := wire.AppendHello(nil, &wire.Hello{
		Version: wire.ProtoVersion, Role: wire.PeerRolePrimary, Mode: wire.ModeSync, AckLevel: wire.AckReceived,
		Volume: wire.UUID{1, 2, 3}, Size: 1 << 20, Epoch: 1, Node: "p", VolumeName: "a",
		History: []wire.EpochStart{{Epoch: 1, FirstSeq: 1, ID: 77}},
	})
	if err != nil {
		p.t.Fatal(err)
	}
	p.send(st, wire.MsgHello, h)
	typ, b, err := p.read()
	if err != nil || typ != wire.MsgHelloReply {
		p.t.Fatalf("answer to the hello: %v %v", typ, err)
	}
	r, err := wire.DecodeHelloReply(b)
	if err != nil || r.Code != wire.CodeOK {
		p.t.Fatalf("hello reply %+v, %v", r, err)
	}
	return r
}

func (p *rawPrimary) read() (wire.MsgType, []byte, error) {
	p.log.SetReadDeadline(time.Now().Add(10 * time.Second))
	typ, b, err := p.log.ReadFrame(nil)
	return wire.MsgType(typ), b, err
}

// records encodes seqs first..last of epoch 1 as one Records frame.
func records(t *testing.T, first, last uint64) []byte {
	t.Helper()
	var recs []wire.Record
	for s := first; s <= last; s++ {
		recs = append(recs, wire.Record{Epoch: 1, Seq: s, Op: wire.OpWrite, Offset: (s - 1) * 4096, Length: 4096, Data: make([]byte, 4096)})
	}
	b, err := wire.AppendRecords(nil, recs)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestLanesOverQUICReorder: a mirror host offers lanes; records sent on
// two lanes (two connections) with the later frame first are acked as
// received only once the earlier one arrived, then cumulatively.
func TestLanesOverQUICReorder(t *testing.T) {
	ids := identities(t, "p", "m")
	host := newHost(t, ids["m"], t.TempDir(), "a")
	defer runHost(t, host)()
	p := &rawPrimary{t: t, addr: host.Addr(), id: ids["p"]}
	c0 := p.dial()
	if r := p.hello(c0); r.Flags&wire.FlagLanes == 0 {
		t.Fatalf("the mirror did not offer lanes (flags %#x)", r.Flags)
	}
	p.send(p.log, wire.MsgLanes, wire.AppendLanes(nil, wire.Lanes{Token: 99, From: 1, Count: 2}))
	lanes := make([]*transport.Stream, 2)
	for i, c := range []*transport.Conn{c0, p.dial()} {
		st, err := c.OpenStream(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		j, err := wire.AppendLaneJoin(nil, wire.LaneJoin{Volume: "a", Token: 99, Index: uint8(i)})
		if err != nil {
			t.Fatal(err)
		}
		p.send(st, wire.MsgLaneJoin, j)
		lanes[i] = st
	}
	p.send(lanes[1], wire.MsgRecords, records(t, 4, 6)) // overtakes
	time.Sleep(100 * time.Millisecond)
	if got := host.Volume("a").Status().Received; got != 0 {
		t.Fatalf("the mirror received through seq %d before seq 1 arrived", got)
	}
	p.send(lanes[0], wire.MsgRecords, records(t, 1, 3))
	deadline := time.Now().Add(10 * time.Second)
	for {
		typ, b, err := p.read()
		if err != nil {
			t.Fatalf("waiting for the ack of seq 6: %v", err)
		}
		if typ != wire.MsgAck {
			t.Fatalf("mirror sent %v", typ)
		}
		a, err := wire.DecodeAck(b)
		if err != nil {
			t.Fatal(err)
		}
		if a.Received != 3 && a.Received != 6 {
			t.Fatalf("ack received %d: neither frame's end (3 or 6)", a.Received)
		}
		if a.Received == 6 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no ack for seq 6")
		}
	}
}

// TestLanesProtocolErrorEndsSession: records on the log stream after a
// Lanes message are refused with an error, and the mirror ends the
// session at once (it does not wait for the primary's next frame).
func TestLanesProtocolErrorEndsSession(t *testing.T) {
	ids := identities(t, "p", "m")
	host := newHost(t, ids["m"], t.TempDir(), "a")
	defer runHost(t, host)()
	p := &rawPrimary{t: t, addr: host.Addr(), id: ids["p"]}
	p.hello(p.dial())
	p.send(p.log, wire.MsgLanes, wire.AppendLanes(nil, wire.Lanes{Token: 5, From: 1, Count: 2}))
	p.send(p.log, wire.MsgRecords, records(t, 1, 1))
	typ, b, err := p.read()
	if err != nil || typ != wire.MsgError {
		t.Fatalf("answer to records on the log stream after lanes: %v %v", typ, err)
	}
	if e, _ := wire.DecodeError(b); e.Code != wire.CodeProtocol || !strings.Contains(e.Message, "lanes") {
		t.Fatalf("error %+v, want a protocol error about lanes", e)
	}
	d := host.Volume("a")
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	for d.Status().Connected {
		if ctx.Err() != nil {
			t.Fatal("the mirror still holds the session 5 s after refusing its records")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
