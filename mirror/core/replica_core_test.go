package core_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/blockmirror/blockmirror/mirror/core"
	"github.com/blockmirror/blockmirror/mirror/wire"
)

func replicaConfig() core.ReplicaConfig {
	h := sampleHello()
	return core.ReplicaConfig{
		Identity: core.VolumeIdentity{Volume: h.Volume, Size: h.Size, Epoch: 5, History: h.History},
		Node:     "m1", LastSeq: 100, DurableSeq: 100, AppliedSeq: 100, SyncEveryTicks: 4, CheckpointEvery: 3,
	}
}

func newReplica(t *testing.T, cfg core.ReplicaConfig) *core.ReplicaCore {
	t.Helper()
	r, err := core.NewReplicaCore(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func primaryHello(level wire.AckLevel) wire.Hello {
	h := sampleHello()
	h.AckLevel = level
	h.LastSeq = 200
	return h
}

func recs(epoch, from, through uint64) []wire.Record {
	var rs []wire.Record
	for s := from; s <= through; s++ {
		rs = append(rs, wire.Record{Epoch: epoch, Seq: s, Op: wire.OpZero, Length: 512})
	}
	return rs
}

func TestReplicaConfigValidation(t *testing.T) {
	for name, mut := range map[string]func(*core.ReplicaConfig){
		"durable > last": func(c *core.ReplicaConfig) { c.DurableSeq = 101 },
		"applied > dur":  func(c *core.ReplicaConfig) { c.DurableSeq = 90 },
		"no epoch":       func(c *core.ReplicaConfig) { c.Identity.Epoch = 0 },
		"bad history": func(c *core.ReplicaConfig) {
			c.Identity.History = []wire.EpochStart{{Epoch: 5, FirstSeq: 1}, {Epoch: 2, FirstSeq: 3}}
		},
		"negative ticks:": func(c *core.ReplicaConfig) { c.SyncEveryTicks = -1 },
	} {
		c := replicaConfig()
		mut(&c)
		if _, err := core.NewReplicaCore(c); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestReplicaHello(t *testing.T) {
	r := newReplica(t, replicaConfig())
	reply := r.Hello(primaryHello(wire.AckWritten), 0)
	if reply.Code != wire.CodeOK || reply.LastSeq != 100 || reply.DurableSeq != 100 || reply.AppliedSeq != 100 ||
		reply.Epoch != 5 || reply.Role != wire.PeerRoleMirror || reply.Node != "m1" || reply.Flags != 0 {
		t.Fatalf("reply %+v", reply)
	}
	if rd := r.Ready(); rd.NewEpoch != 0 {
		t.Fatalf("epoch change without a newer epoch: %+v", rd)
	}
	// Stale epoch: fenced.
	h := primaryHello(wire.AckWritten)
	h.Epoch, h.History = 4, h.History[:1]
	reply = r.Hello(h, 0)
	if reply.Code != wire.CodeFenced || !strings.Contains(reply.Reason, "peer epoch 4 is lower than ours 5") || reply.Epoch != 5 {
		t.Fatalf("stale epoch reply %+v", reply)
	}
	if err := r.Receive(recs(5, 101, 101)); !errors.Is(err, core.ErrProtocol) {
		t.Fatalf("records after a refused hello: %v", err)
	}
	// Wrong volume.
	h = primaryHello(wire.AckWritten)
	h.Volume[3] ^= 1
	if reply = r.Hello(h, 0); reply.Code != wire.CodeRefused || !strings.Contains(reply.Reason, "volume UUID differs") {
		t.Fatalf("wrong volume reply %+v", reply)
	}
	// Not a primary.
	h = primaryHello(wire.AckWritten)
	h.Role = wire.PeerRoleMirror
	if reply = r.Hello(h, 0); reply.Code != wire.CodeRefused {
		t.Fatalf("mirror-role hello accepted: %+v", reply)
	}
	// Newer epoch: adopted and reported for persisting.
	h = primaryHello(wire.AckWritten)
	h.Epoch = 7
	h.History = append(h.History, wire.EpochStart{Epoch: 7, FirstSeq: 150})
	if reply = r.Hello(h, 0); reply.Code != wire.CodeOK || reply.Epoch != 7 {
		t.Fatalf("newer epoch reply %+v", reply)
	}
	if rd := r.Ready(); rd.NewEpoch != 7 || len(rd.NewHistory) != 3 {
		t.Fatalf("epoch adoption %+v", rd)
	}
}

func TestReplicaDivergedNeedsResync(t *testing.T) {
	r := newReplica(t, replicaConfig())
	h := primaryHello(wire.AckWritten)
	h.LastSeq = 90 // we hold records the primary does not have
	if reply := r.Hello(h, 0); reply.Code != wire.CodeOK || reply.Flags&wire.FlagNeedsResync == 0 {
		t.Fatalf("reply %+v", reply)
	}
	if err := r.Receive(recs(5, 101, 101)); !errors.Is(err, core.ErrProtocol) {
		t.Fatalf("records to a diverged mirror: %v", err)
	}
	// Our seq 100 is in epoch 5 (from seq 100); the primary says epoch 5
	// began at 100 too but it has epoch 6 from 100 on... simulate a primary
	// whose history puts seq 100 in another epoch.
	r = newReplica(t, replicaConfig())
	h = primaryHello(wire.AckWritten)
	h.Epoch = 6
	h.History = []wire.EpochStart{{Epoch: 1, FirstSeq: 1}, {Epoch: 5, FirstSeq: 100}, {Epoch: 6, FirstSeq: 100}}
	if reply := r.Hello(h, 0); reply.Flags&wire.FlagNeedsResync == 0 {
		t.Fatalf("diverged epoch of last record not flagged: %+v", reply)
	}
}

func TestReplicaReceiveRules(t *testing.T) {
	r := newReplica(t, replicaConfig())
	if err := r.Receive(recs(5, 101, 101)); !errors.Is(err, core.ErrProtocol) {
		t.Fatalf("records before hello: %v", err)
	}
	r.Hello(primaryHello(wire.AckWritten), 0)
	bad := map[string][]wire.Record{
		"gap":              recs(5, 102, 103),
		"repeat":           recs(5, 100, 100),
		"gap inside":       append(recs(5, 101, 101), recs(5, 103, 103)...),
		"epoch too high":   recs(6, 101, 101),
		"epoch too low":    recs(4, 101, 101),
		"history mismatch": {{Epoch: 1, Seq: 101, Op: wire.OpZero}},
		"bad op":           {{Epoch: 5, Seq: 101, Op: 0}},
	}
	for name, batch := range bad {
		if err := r.Receive(batch); !errors.Is(err, core.ErrProtocol) {
			t.Errorf("%s: %v", name, err)
		}
	}
	if rd := r.Ready(); !rd.Persist.Empty() || rd.SendAck {
		t.Fatalf("rejected batches left outputs: %+v", rd)
	}
	if st := r.Status(); st.Received != 100 {
		t.Fatalf("rejected batches advanced received to %d", st.Received)
	}
	if err := r.Receive(recs(5, 101, 103)); err != nil {
		t.Fatal(err)
	}
	if err := r.Receive(recs(5, 104, 104)); err != nil {
		t.Fatal(err)
	}
	rd := r.Ready()
	if rd.Persist != (core.SeqRange{From: 101, Through: 104}) || !rd.SendAck || rd.Ack.Received != 104 || rd.Ack.Written != 100 {
		t.Fatalf("ready %+v", rd)
	}
}

func TestReplicaWrittenLevelSyncPolicy(t *testing.T) {
	r := newReplica(t, replicaConfig())
	r.Hello(primaryHello(wire.AckWritten), 0)
	r.Receive(recs(5, 101, 105))
	r.Tick()
	r.Ready()
	r.LocalProgress(105, 100)
	rd := r.Ready()
	if rd.SyncLocal != 0 || !rd.SendAck || rd.Ack.Written != 105 || rd.ApplyThrough != 0 {
		t.Fatalf("after write: %+v", rd)
	}
	// A flush asks for a sync.
	r.Flush(105)
	if rd = r.Ready(); rd.SyncLocal != 105 {
		t.Fatalf("flush: %+v", rd)
	}
	r.Receive(recs(5, 106, 106))
	r.LocalProgress(106, 100)
	r.Flush(106)
	if rd = r.Ready(); rd.SyncLocal != 0 {
		t.Fatalf("second sync requested while one is in flight: %+v", rd)
	}
	r.LocalProgress(106, 105)
	rd = r.Ready()
	if rd.SyncLocal != 106 || rd.ApplyThrough != 105 || rd.Ack.Durable != 105 {
		t.Fatalf("after first sync: %+v", rd)
	}
	r.LocalProgress(106, 106)
	r.Applied(105)
	rd = r.Ready()
	if rd.ApplyThrough != 106 || rd.Checkpoint != 105 || rd.Ack.Applied != 105 {
		t.Fatalf("after second sync: %+v", rd)
	}
	// Without flushes the journal is synced every SyncEveryTicks.
	r.Receive(recs(5, 107, 107))
	r.LocalProgress(107, 106)
	r.Ready()
	for i := 0; i < 3; i++ {
		r.Tick()
		if rd = r.Ready(); rd.SyncLocal != 0 {
			t.Fatalf("synced after %d ticks: %+v", i+1, rd)
		}
	}
	r.Tick()
	if rd = r.Ready(); rd.SyncLocal != 107 {
		t.Fatalf("no periodic sync: %+v", rd)
	}
}

func TestReplicaDurableLevelGroupCommit(t *testing.T) {
	r := newReplica(t, replicaConfig())
	r.Hello(primaryHello(wire.AckDurable), 0)
	r.Receive(recs(5, 101, 102))
	r.LocalProgress(102, 100)
	if rd := r.Ready(); rd.SyncLocal != 102 {
		t.Fatalf("no sync after a batch: %+v", rd)
	}
	r.Receive(recs(5, 103, 110))
	r.LocalProgress(110, 100)
	if rd := r.Ready(); rd.SyncLocal != 0 {
		t.Fatalf("overlapping sync: %+v", rd)
	}
	r.LocalProgress(110, 102)
	if rd := r.Ready(); rd.SyncLocal != 110 || rd.Ack.Durable != 102 {
		t.Fatalf("group commit: %+v", rd)
	}
}

func TestReplicaDisconnectForgetsUnpersisted(t *testing.T) {
	r := newReplica(t, replicaConfig())
	r.Hello(primaryHello(wire.AckWritten), 0)
	r.Receive(recs(5, 101, 104))
	r.Ready() // persist 101..104 handed out
	r.Receive(recs(5, 105, 108))
	r.LocalProgress(102, 100)
	r.Disconnect()
	if rd := r.Ready(); !rd.Persist.Empty() || rd.SendAck {
		t.Fatalf("outputs after disconnect: %+v", rd)
	}
	r.LocalProgress(104, 100) // the handed-out append finished
	reply := r.Hello(primaryHello(wire.AckWritten), 0)
	if reply.LastSeq != 104 {
		t.Fatalf("reconnect reports last seq %d, want 104", reply.LastSeq)
	}
	if err := r.Receive(recs(5, 105, 105)); err != nil {
		t.Fatalf("resent record after reconnect: %v", err)
	}
}

func TestReplicaRestartReplays(t *testing.T) {
	c := replicaConfig()
	c.LastSeq, c.DurableSeq, c.AppliedSeq = 120, 110, 100
	r := newReplica(t, c)
	if rd := r.Ready(); rd.ApplyThrough != 110 {
		t.Fatalf("restart does not replay durable records: %+v", rd)
	}
}

func BenchmarkReplicaBatch(b *testing.B) {
	c := replicaConfig()
	r, _ := core.NewReplicaCore(c)
	h := primaryHello(wire.AckDurable)
	h.LastSeq = 1 << 62
	r.Hello(h, 0)
	batch := recs(5, 101, 164)
	b.ReportAllocs()
	for b.Loop() {
		if err := r.Receive(batch); err != nil {
			b.Fatal(err)
		}
		last := batch[len(batch)-1].Seq
		r.LocalProgress(last, last)
		r.Applied(last)
		r.Ready()
		for i := range batch {
			batch[i].Seq += uint64(len(batch))
		}
	}
}
