package core_test

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/blockmirror/blockmirror/mirror/core"
	"github.com/blockmirror/blockmirror/mirror/wire"
)

// The handshake answer of a mirror (ReplicaCore.Hello), one row per kind
// of answer: the reply's code and flags, and what Ready orders before the
// reply leaves (quarantine, a new epoch to persist, a split brain note).
func TestReplicaHandshakeAnswers(t *testing.T) {
	branch := func(h *wire.Hello) { // the primary restarted uncleanly at 151
		h.History = append(h.History, wire.EpochStart{Epoch: 5, FirstSeq: 151, ID: 9})
		h.LastSeq = 160
	}
	type want struct {
		code        wire.ErrCode
		needsResync bool
		reason      string
		quarantine  int64 // fork point; -1: none
		adopt       []wire.EpochStart
		newEpoch    uint64
		splitBrain  bool
		limit       int64 // ApplyLimit after the answer; -1: none
	}
	for _, c := range []struct {
		name        string
		local       func(*core.ReplicaConfig)
		journalLast uint64
		hello       func(*wire.Hello)
		want        want
	}{
		{name: "accept: catch up from the mirror's next seq", hello: func(h *wire.Hello) {},
			want: want{code: wire.CodeOK, quarantine: -1, limit: -1}},
		{name: "refuse: not a primary", hello: func(h *wire.Hello) { h.Role = wire.PeerRoleMirror },
			want: want{code: wire.CodeRefused, reason: "not primary", quarantine: -1, limit: -1}},
		{name: "refuse: unknown ack level", hello: func(h *wire.Hello) { h.AckLevel = 9 },
			want: want{code: wire.CodeRefused, reason: "unknown ack level", quarantine: -1, limit: -1}},
		{name: "refuse: another volume", hello: func(h *wire.Hello) { h.Volume[0] ^= 1 },
			want: want{code: wire.CodeRefused, reason: "volume UUID differs", quarantine: -1, limit: -1}},
		{name: "fenced: the primary's epoch is stale", hello: func(h *wire.Hello) { h.Epoch = 4; h.History = h.History[:1] },
			want: want{code: wire.CodeFenced, reason: "lower than ours", quarantine: -1, limit: -1}},
		{name: "split brain: same epoch, other history",
			hello: func(h *wire.Hello) {
				h.History = []wire.EpochStart{{Epoch: 1, FirstSeq: 1}, {Epoch: 5, FirstSeq: 100, ID: 77}}
			},
			want: want{code: wire.CodeSplitBrain, reason: "split-brain-loser", splitBrain: true, quarantine: -1, limit: -1}},
		{name: "split brain loser: quarantine after the fork, follow the winner",
			local: func(c *core.ReplicaConfig) { c.AcceptDivergence = true },
			hello: func(h *wire.Hello) {
				h.History = []wire.EpochStart{{Epoch: 1, FirstSeq: 1}, {Epoch: 5, FirstSeq: 100, ID: 77}}
			},
			want: want{code: wire.CodeOK, needsResync: true, quarantine: 99, adopt: []wire.EpochStart{{Epoch: 1, FirstSeq: 1}},
				newEpoch: 5, limit: 99}},
		{name: "mirror ahead of a primary restarted on a new branch: quarantine after its last",
			local: func(c *core.ReplicaConfig) { c.LastSeq, c.DurableSeq, c.AppliedSeq = 170, 170, 140 },
			hello: branch, want: want{code: wire.CodeOK, needsResync: true, quarantine: 150, limit: 150}},
		{name: "journal ahead of the written watermark counts",
			journalLast: 155, hello: branch, want: want{code: wire.CodeOK, needsResync: true, quarantine: 150, limit: 150}},
		{name: "new branch after our last: adopt it",
			hello: branch, want: want{code: wire.CodeOK, quarantine: -1, newEpoch: 5, limit: -1}},
		{name: "higher epoch extending ours: adopt it",
			hello: func(h *wire.Hello) {
				h.Epoch = 6
				h.History = append(h.History, wire.EpochStart{Epoch: 6, FirstSeq: 150, ID: 3})
			},
			want: want{code: wire.CodeOK, quarantine: -1, newEpoch: 6, limit: -1}},
		{name: "mirror ahead of the primary's last seq in the same history",
			local: func(c *core.ReplicaConfig) { c.LastSeq, c.DurableSeq, c.AppliedSeq = 300, 300, 300 },
			hello: func(h *wire.Hello) {}, want: want{code: wire.CodeOK, needsResync: true, quarantine: 200, limit: 200}},
		{name: "needs a resync already: flags say so",
			local: func(c *core.ReplicaConfig) { c.Flags = wire.FlagNeedsResync },
			hello: func(h *wire.Hello) {}, want: want{code: wire.CodeOK, needsResync: true, quarantine: -1, limit: -1}},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg := replicaConfig()
			if c.local != nil {
				c.local(&cfg)
			}
			r := newReplica(t, cfg)
			h := primaryHello(wire.AckWritten)
			c.hello(&h)
			reply := r.Hello(h, c.journalLast)
			rd := r.Ready()
			w := c.want
			if reply.Code != w.code || !strings.Contains(reply.Reason, w.reason) {
				t.Fatalf("reply %v %q, want %v containing %q", reply.Code, reply.Reason, w.code, w.reason)
			}
			if got := reply.Flags&wire.FlagNeedsResync != 0; got != w.needsResync {
				t.Errorf("needs resync %v, want %v", got, w.needsResync)
			}
			switch q := rd.Quarantine; {
			case w.quarantine < 0 && q != nil:
				t.Errorf("quarantine after %d, want none", q.After)
			case w.quarantine >= 0 && (q == nil || q.After != uint64(w.quarantine)):
				t.Errorf("quarantine %+v, want after %d", q, w.quarantine)
			case q != nil && !slices.Equal(q.Adopt, w.adopt):
				t.Errorf("quarantine adopts %v, want %v", q.Adopt, w.adopt)
			}
			if rd.NewEpoch != w.newEpoch {
				t.Errorf("new epoch %d, want %d", rd.NewEpoch, w.newEpoch)
			}
			if (rd.SplitBrain != "") != w.splitBrain {
				t.Errorf("split brain note %q, want %v", rd.SplitBrain, w.splitBrain)
			}
			limit, capped := r.ApplyLimit()
			if capped != (w.limit >= 0) || capped && limit != uint64(w.limit) {
				t.Errorf("apply limit %d (%v), want %d", limit, capped, w.limit)
			}
			if st := r.Status(); st.Connected != (reply.Code == wire.CodeOK) {
				t.Errorf("connected %v after a %v reply", st.Connected, reply.Code)
			}
		})
	}
}

// Records after a fork point are never released to the store, however
// durable they are; a resync's Restart lifts the limit.
func TestReplicaQuarantinedNeverApplied(t *testing.T) {
	cfg := replicaConfig()
	cfg.LastSeq, cfg.DurableSeq, cfg.AppliedSeq = 170, 150, 140
	r := newReplica(t, cfg)
	if rd := r.Ready(); rd.ApplyThrough != 150 {
		t.Fatalf("start: apply through %d, want 150", rd.ApplyThrough)
	}
	h := primaryHello(wire.AckWritten)
	h.History = append(h.History, wire.EpochStart{Epoch: 5, FirstSeq: 146, ID: 9})
	h.LastSeq = 145
	if reply := r.Hello(h, 170); reply.Flags&wire.FlagNeedsResync == 0 {
		t.Fatal("no resync asked")
	}
	if q := r.Ready().Quarantine; q == nil || q.After != 145 {
		t.Fatalf("quarantine %+v, want after 145", q)
	}
	r.LocalProgress(170, 170)
	if rd := r.Ready(); rd.ApplyThrough != 0 {
		t.Fatalf("released %d past the fork at 145", rd.ApplyThrough)
	}
	if err := r.Receive(recs(5, 171, 171)); !errors.Is(err, core.ErrProtocol) {
		t.Fatalf("records accepted by a node that needs a resync: %v", err)
	}
	if reset, err := r.BeginResync(wire.ResyncBegin{From: 146, Reset: true, Chunk: 65536}); !reset || err != nil {
		t.Fatalf("reset resync: %v %v", reset, err)
	}
	r.Restart(146)
	if _, capped := r.ApplyLimit(); capped {
		t.Fatal("the limit outlived the journal reset")
	}
	if st := r.Status(); st.Written != 145 || st.NeedsResync || r.Flags()&wire.FlagInconsistent == 0 {
		t.Fatalf("after restart: %+v flags %b", st, r.Flags())
	}
}

// A mirror whose journal diverged acknowledges nothing until its resync
// resets the journal: its watermarks count records the primary does not
// have at those seqs.
func TestReplicaNoAcksWhileDiverged(t *testing.T) {
	cfg := replicaConfig()
	cfg.LastSeq, cfg.DurableSeq, cfg.AppliedSeq = 170, 150, 140
	r := newReplica(t, cfg)
	h := primaryHello(wire.AckWritten)
	h.History = append(h.History, wire.EpochStart{Epoch: 5, FirstSeq: 146, ID: 9})
	h.LastSeq = 145
	if reply := r.Hello(h, 170); reply.Flags&wire.FlagNeedsResync == 0 {
		t.Fatal("no resync asked")
	}
	r.Ready()
	r.LocalProgress(170, 170) // the old journal's tail becomes durable
	r.Applied(150)
	if rd := r.Ready(); rd.SendAck {
		t.Fatalf("a diverged mirror acknowledged %+v", rd.Ack)
	}
	r.BeginResync(wire.ResyncBegin{From: 146, Reset: true, Chunk: 65536})
	r.Restart(146)
	if err := r.Receive(recs(5, 146, 146)); err != nil {
		t.Fatal(err)
	}
	r.LocalProgress(146, 146)
	if rd := r.Ready(); !rd.SendAck || rd.Ack.Durable != 146 {
		t.Fatalf("after the reset: %+v", rd)
	}
}

func TestReplicaBeginResync(t *testing.T) {
	r := newReplica(t, replicaConfig())
	r.Hello(primaryHello(wire.AckWritten), 100)
	if _, err := r.BeginResync(wire.ResyncBegin{From: 90, Chunk: 65536}); err == nil {
		t.Fatal("a resumed resync that does not start at our next seq was accepted")
	}
	if reset, err := r.BeginResync(wire.ResyncBegin{From: 101, Chunk: 65536}); reset || err != nil {
		t.Fatalf("resume at our next seq: reset %v err %v", reset, err)
	}
	if r.Flags()&wire.FlagInconsistent == 0 {
		t.Fatal("a resumed resync leaves the store consistent")
	}
}

// "Ack now": at ack level received the ack of a frame leaves before the
// records are persisted; at the other levels after.
func TestReplicaAckNow(t *testing.T) {
	for _, c := range []struct {
		level wire.AckLevel
		now   bool
	}{{wire.AckReceived, true}, {wire.AckWritten, false}, {wire.AckDurable, false}} {
		r := newReplica(t, replicaConfig())
		r.Hello(primaryHello(c.level), 100)
		r.Ready()
		if err := r.Receive(recs(5, 101, 103)); err != nil {
			t.Fatal(err)
		}
		rd := r.Ready()
		if !rd.SendAck || rd.AckNow != c.now || rd.Ack.Received != 103 || rd.Ack.Written != 100 {
			t.Errorf("level %v: send %v now %v ack %+v, want now %v, received 103, written 100", c.level, rd.SendAck, rd.AckNow, rd.Ack, c.now)
		}
		r.LocalProgress(103, 100)
		if rd := r.Ready(); !rd.SendAck || rd.AckNow || rd.Ack.Written != 103 {
			t.Errorf("level %v after the write: %+v", c.level, rd)
		}
	}
}

// The primary's side of the handshake (PrimaryCore.PeerReply): one row per
// session decision.
func TestPrimaryPeerReply(t *testing.T) {
	vol := wire.UUID{7}
	ok := func(last uint64) wire.HelloReply {
		return wire.HelloReply{Version: wire.ProtoVersion, Code: wire.CodeOK, Role: wire.PeerRoleMirror, Volume: vol, Size: 1 << 20,
			Epoch: 3, LastSeq: last, DurableSeq: last}
	}
	type want struct {
		session    core.Session
		err        error
		from       uint64 // StartStreams From (0: none)
		needResync bool
		fenced     uint64
		splitBrain string // substring of the note; "-" for a clearing note
	}
	for _, c := range []struct {
		name  string
		reply wire.HelloReply
		dirty bool
		want  want
	}{
		{"catch up from the mirror's next seq", ok(40), false, want{session: core.SessionStream, from: 41, splitBrain: "-"}},
		{"in sync", ok(50), false, want{session: core.SessionStream, from: 51, splitBrain: "-"}},
		{"behind the journal: resync", ok(5), false, want{session: core.SessionResync, needResync: true, splitBrain: "-"}},
		{"ahead of us: resync", ok(60), false, want{session: core.SessionResync, needResync: true, splitBrain: "-"}},
		{"it asks for a resync", func() wire.HelloReply { r := ok(40); r.Flags = wire.FlagNeedsResync; return r }(), false,
			want{session: core.SessionResync, needResync: true, splitBrain: "-"}},
		{"a dirty bitmap is pending: resync, no catch-up stream", ok(40), true,
			want{session: core.SessionResync, needResync: true, splitBrain: "-"}},
		{"split brain", wire.HelloReply{Code: wire.CodeSplitBrain, Epoch: 3, Reason: "split brain: m1 and p"}, false,
			want{err: core.ErrSplitBrain, splitBrain: "split brain: m1"}},
		{"a primary of our epoch", wire.HelloReply{Code: wire.CodeNotMirror, Epoch: 3}, false,
			want{err: core.ErrSplitBrain, splitBrain: "split-brain-loser"}},
		{"a primary of a lower epoch", wire.HelloReply{Code: wire.CodeNotMirror, Epoch: 2}, false, want{err: core.ErrRefused}},
		{"fenced", wire.HelloReply{Code: wire.CodeFenced, Epoch: 4}, false, want{err: core.ErrFenced, fenced: 4}},
		{"fenced without an epoch", wire.HelloReply{Code: wire.CodeFenced}, false, want{err: core.ErrFenced, fenced: 4}},
		{"refused by a node of a higher epoch", wire.HelloReply{Code: wire.CodeRefused, Epoch: 7}, false,
			want{err: core.ErrFenced, fenced: 7}},
		{"refused", wire.HelloReply{Code: wire.CodeRefused, Epoch: 3, Reason: "size differs"}, false, want{err: core.ErrRefused}},
		{"accepted by a mirror of a higher epoch", func() wire.HelloReply { r := ok(40); r.Epoch = 5; return r }(), false,
			want{err: core.ErrFenced, fenced: 5, splitBrain: "-"}},
		{"another volume", func() wire.HelloReply { r := ok(40); r.Volume = wire.UUID{8}; return r }(), false,
			want{err: errAny}},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := newPrimary(t, core.PrimaryConfig{Peers: []string{"m1"}, Epoch: 3, NextSeq: 51, JournalFirst: 10,
				Node: "p", Volume: vol, Size: 1 << 20})
			p.Ready()
			s, err := p.PeerReply("m1", c.reply, c.dirty)
			rd := p.Ready()
			w := c.want
			switch {
			case w.err == nil && err != nil, w.err != nil && err == nil, w.err != nil && w.err != errAny && !errors.Is(err, w.err):
				t.Fatalf("error %v, want %v", err, w.err)
			}
			if w.err != nil {
				w.session = core.SessionRefused
			}
			if s != w.session {
				t.Errorf("session %v, want %v", s, w.session)
			}
			var from uint64
			for _, ss := range rd.StartStreams {
				from = ss.From
			}
			if from != w.from {
				t.Errorf("stream from %d, want %d", from, w.from)
			}
			if got := len(rd.NeedResync) > 0; got != w.needResync {
				t.Errorf("need resync %v, want %v", got, w.needResync)
			}
			if rd.Fenced != w.fenced || p.Fenced() != (w.fenced > 0) {
				t.Errorf("fenced %d (%v), want %d", rd.Fenced, p.Fenced(), w.fenced)
			}
			switch {
			case w.splitBrain == "" && len(rd.SplitBrain) > 0:
				t.Errorf("split brain notes %+v, want none", rd.SplitBrain)
			case w.splitBrain == "-" && (len(rd.SplitBrain) != 1 || rd.SplitBrain[0].Reason != ""):
				t.Errorf("split brain notes %+v, want one clearing note", rd.SplitBrain)
			case w.splitBrain != "" && w.splitBrain != "-" && (len(rd.SplitBrain) != 1 || !strings.Contains(rd.SplitBrain[0].Reason, w.splitBrain)):
				t.Errorf("split brain notes %+v, want one containing %q", rd.SplitBrain, w.splitBrain)
			}
		})
	}
}

var errAny = errors.New("any error")

// Fencing is an explicit event: pending and later requests fail, the
// driver is told once per higher epoch to record it, and a fence from an
// earlier run (PrimaryConfig.FencedBy) starts the core fenced without
// asking to record it again.
func TestPrimaryFenceEvent(t *testing.T) {
	p := newPrimary(t, core.PrimaryConfig{Peers: []string{"m1"}, Epoch: 3})
	up(t, p, "m1")
	if _, err := p.ProposeWrite(1, false); err != nil {
		t.Fatal(err)
	}
	p.Ready()
	p.Fence(2) // not higher: ignored
	if p.Fenced() {
		t.Fatal("fenced by a lower epoch")
	}
	p.Fence(0)
	rd := p.Ready()
	if rd.Fenced != 4 || len(rd.Completions) != 1 || !errors.Is(rd.Completions[0].Err, core.ErrFenced) {
		t.Fatalf("after Fence(0): fenced %d, completions %+v", rd.Fenced, rd.Completions)
	}
	p.Fence(4)
	if rd := p.Ready(); rd.Fenced != 0 {
		t.Fatalf("the same fence reported twice: %d", rd.Fenced)
	}
	p.Fence(6)
	if rd := p.Ready(); rd.Fenced != 6 || p.FencedBy() != 6 {
		t.Fatalf("a higher epoch: reported %d, fenced by %d", rd.Fenced, p.FencedBy())
	}
	if _, err := p.ProposeWrite(2, false); !errors.Is(err, core.ErrFenced) {
		t.Fatalf("write after the fence: %v", err)
	}

	q := newPrimary(t, core.PrimaryConfig{Peers: []string{"m1"}, Epoch: 3, FencedBy: 5})
	if rd := q.Ready(); !q.Fenced() || rd.Fenced != 0 || q.FencedBy() != 5 {
		t.Fatalf("restarted fenced: fenced %v by %d, reported %d", q.Fenced(), q.FencedBy(), rd.Fenced)
	}
	if err := q.PeerError("m1", wire.ErrorMsg{Code: wire.CodeFenced, Message: "x"}); !errors.Is(err, core.ErrFenced) {
		t.Fatalf("PeerError(fenced) = %v", err)
	}
}

func TestPlanResync(t *testing.T) {
	for _, c := range []struct {
		name string
		in   core.ResyncInput
		want core.ResyncPlan
	}{
		{"interrupted resync resumes at the mirror's next seq",
			core.ResyncInput{MirrorLast: 40, JournalFirst: 10, LastSeq: 50, Bitmap: true, Tracked: true, TrackedFrom: 1},
			core.ResyncPlan{From: 41}},
		{"no bitmap: reset and compare the whole disk",
			core.ResyncInput{MirrorLast: 40, JournalFirst: 10, LastSeq: 50, Tracked: true, TrackedFrom: 1},
			core.ResyncPlan{From: 10, Reset: true, WholeDisk: true}},
		{"behind the journal, bitmap covers the gap",
			core.ResyncInput{MirrorLast: 5, JournalFirst: 10, LastSeq: 50, Bitmap: true, Tracked: true, TrackedFrom: 3},
			core.ResyncPlan{From: 10, Reset: true}},
		{"behind what the bitmap tracks: whole disk",
			core.ResyncInput{MirrorLast: 5, JournalFirst: 10, LastSeq: 50, Bitmap: true, Tracked: true, TrackedFrom: 8},
			core.ResyncPlan{From: 10, Reset: true, WholeDisk: true, BitmapIgnored: true}},
		{"diverged mirror: whole disk even with a bitmap",
			core.ResyncInput{MirrorLast: 40, MirrorFlags: wire.FlagNeedsResync, JournalFirst: 10, LastSeq: 50, Bitmap: true, Tracked: true, TrackedFrom: 1},
			core.ResyncPlan{From: 10, Reset: true, WholeDisk: true, BitmapIgnored: true}},
		{"unknown mirror: whole disk",
			core.ResyncInput{MirrorLast: 5, JournalFirst: 10, LastSeq: 50, Bitmap: true},
			core.ResyncPlan{From: 10, Reset: true, WholeDisk: true, BitmapIgnored: true}},
		{"inconsistent mirror, resync begun by this primary: resumes",
			core.ResyncInput{MirrorLast: 40, MirrorFlags: wire.FlagInconsistent, JournalFirst: 10, LastSeq: 50, Bitmap: true, Tracked: true, TrackedFrom: 1, Resyncing: true},
			core.ResyncPlan{From: 41}},
		{"inconsistent mirror, resync begun by another primary: whole disk even with a bitmap",
			core.ResyncInput{MirrorLast: 40, MirrorFlags: wire.FlagInconsistent, JournalFirst: 10, LastSeq: 50, Bitmap: true, Tracked: true, TrackedFrom: 1},
			core.ResyncPlan{From: 10, Reset: true, WholeDisk: true, BitmapIgnored: true}},
		{"ahead of us: reset",
			core.ResyncInput{MirrorLast: 60, JournalFirst: 10, LastSeq: 50, Bitmap: true, Tracked: true, TrackedFrom: 1},
			core.ResyncPlan{From: 10, Reset: true}},
	} {
		if got := core.PlanResync(c.in); got != c.want {
			t.Errorf("%s: %+v, want %+v", c.name, got, c.want)
		}
	}
}

// PlanTail: a bitmap resync marks the journal tail's chunks instead of
// replaying it when they are fewer bytes (issue 18 item 3).
func TestPlanTail(t *testing.T) {
	bitmap := core.ResyncPlan{From: 10, Reset: true}
	for _, c := range []struct {
		name                    string
		plan                    core.ResyncPlan
		through, tail, newChunk uint64
		want                    core.ResyncPlan
		marked                  bool
	}{
		{"a tail rewriting marked chunks is skipped", bitmap, 50, 32 << 20, 0, core.ResyncPlan{From: 51, Reset: true}, true},
		{"fewer chunk bytes than tail bytes: skipped", bitmap, 50, 32 << 20, 8 << 20, core.ResyncPlan{From: 51, Reset: true}, true},
		{"small scattered writes are cheaper replayed", bitmap, 50, 41 * 4096, 41 << 16, bitmap, false},
		{"equal: replayed", bitmap, 50, 1 << 20, 1 << 20, bitmap, false},
		{"empty tail", bitmap, 9, 0, 0, bitmap, false},
		{"a resumed resync is reset when it skips", core.ResyncPlan{From: 41}, 50, 1 << 20, 0, core.ResyncPlan{From: 51, Reset: true}, true},
		{"whole disk: left alone", core.ResyncPlan{From: 10, Reset: true, WholeDisk: true}, 50, 32 << 20, 0,
			core.ResyncPlan{From: 10, Reset: true, WholeDisk: true}, false},
	} {
		got, marked := c.plan.PlanTail(c.through, c.tail, c.newChunk)
		if got != c.want || marked != c.marked {
			t.Errorf("%s: %+v %v, want %+v %v", c.name, got, marked, c.want, c.marked)
		}
	}
}

func TestFailoverRules(t *testing.T) {
	hist := []wire.EpochStart{{Epoch: 1, FirstSeq: 1, ID: 1}, {Epoch: 2, FirstSeq: 50, ID: 2}}
	mirror := core.NodeState{Epoch: 2, History: hist}
	t.Run("promotion", func(t *testing.T) {
		for _, c := range []struct {
			name  string
			s     core.NodeState
			force bool
			epoch uint64
			err   error
		}{
			{"next epoch", mirror, false, 3, nil},
			{"past a known fence", core.NodeState{Epoch: 2, History: hist, FencedBy: 5}, false, 6, nil},
			{"inconsistent", core.NodeState{Epoch: 2, History: hist, Inconsistent: true}, false, 0, core.ErrInconsistent},
			{"inconsistent, forced", core.NodeState{Epoch: 2, History: hist, Inconsistent: true}, true, 3, nil},
			{"diverged", core.NodeState{Epoch: 2, History: hist, NeedsResync: true}, false, 0, core.ErrDiverged},
			{"a primary", core.NodeState{Primary: true, Epoch: 2, History: hist}, true, 0, core.ErrNotMirror},
		} {
			epoch, h, err := core.Promotion(c.s, 80, 42, c.force)
			if !errors.Is(err, c.err) || (c.err == nil) != (err == nil) || epoch != c.epoch {
				t.Errorf("%s: epoch %d err %v, want %d %v", c.name, epoch, err, c.epoch, c.err)
				continue
			}
			if err == nil && (len(h) != 3 || h[2] != (wire.EpochStart{Epoch: c.epoch, FirstSeq: 81, ID: 42}) || !slices.Equal(h[:2], hist)) {
				t.Errorf("%s: history %v", c.name, h)
			}
		}
	})
	t.Run("demotion", func(t *testing.T) {
		for _, c := range []struct {
			name                string
			s                   core.NodeState
			writing, loser      bool
			needsResync, accept bool
			err                 error
		}{
			{"clean", core.NodeState{Primary: true}, false, false, false, false, nil},
			{"while serving", core.NodeState{Primary: true, WritesOpen: true}, true, false, false, false, nil},
			{"after an unclean stop", core.NodeState{Primary: true, WritesOpen: true}, false, false, true, false, nil},
			{"split brain loser", core.NodeState{Primary: true}, false, true, false, true, nil},
			{"a mirror", core.NodeState{}, false, false, false, false, core.ErrNotPrimary},
			{"a mirror as a loser", core.NodeState{}, false, true, false, true, nil},
		} {
			needs, accept, err := core.Demotion(c.s, c.writing, c.loser)
			if !errors.Is(err, c.err) || (c.err == nil) != (err == nil) || needs != c.needsResync || accept != c.accept {
				t.Errorf("%s: needs %v accept %v err %v", c.name, needs, accept, err)
			}
		}
	})
	t.Run("restart branch", func(t *testing.T) {
		if h, b := core.RestartBranch(core.NodeState{Primary: true, Epoch: 2, History: hist}, 70, 9); b || !slices.Equal(h, hist) {
			t.Errorf("clean restart: %v %v", h, b)
		}
		h, b := core.RestartBranch(core.NodeState{Primary: true, Epoch: 2, History: hist, WritesOpen: true}, 70, 9)
		if !b || len(h) != 3 || h[2] != (wire.EpochStart{Epoch: 2, FirstSeq: 71, ID: 9}) || &h[0] == &hist[0] {
			t.Errorf("unclean restart: %v %v", h, b)
		}
	})
}

func TestPrimaryAnswer(t *testing.T) {
	p := core.PrimaryIdentity{Name: "m1", Volume: wire.UUID{1}, Size: 4096, Epoch: 5, LastSeq: 10}
	h := wire.Hello{Volume: wire.UUID{1}, Size: 4096, Node: "p"}
	for _, c := range []struct {
		epoch  uint64
		volume byte
		code   wire.ErrCode
		stale  bool
	}{{4, 1, wire.CodeFenced, false}, {5, 1, wire.CodeSplitBrain, false}, {6, 1, wire.CodeNotMirror, true}, {5, 2, wire.CodeRefused, false}} {
		h.Epoch, h.Volume[0] = c.epoch, c.volume
		reply, stale := core.PrimaryAnswer(p, h)
		if reply.Code != c.code || stale != c.stale || reply.Epoch != 5 || reply.Role != wire.PeerRolePrimary {
			t.Errorf("epoch %d volume %d: %v stale %v, want %v %v", c.epoch, c.volume, reply.Code, stale, c.code, c.stale)
		}
	}
}

// A second Hello after a quarantine never raises the fork point: the node
// took the primary's history in the first (a higher epoch), so in the
// second its quarantined records look like that history's, and a primary
// that has written further (LastSeq 150) puts the fork past records that
// were set aside at 145. They must stay unapplied until the resync's
// Restart.
func TestReplicaQuarantineLimitNeverRises(t *testing.T) {
	cfg := replicaConfig()
	cfg.LastSeq, cfg.DurableSeq, cfg.AppliedSeq = 170, 150, 140
	r := newReplica(t, cfg)
	r.Ready()
	h := primaryHello(wire.AckWritten)
	h.Epoch = 6
	h.History = append(h.History, wire.EpochStart{Epoch: 6, FirstSeq: 146, ID: 9})
	h.LastSeq = 145
	r.Hello(h, 170)
	rd := r.Ready()
	if q := rd.Quarantine; q == nil || q.After != 145 {
		t.Fatalf("quarantine %+v, want after 145", q)
	}
	if rd.NewEpoch != 6 {
		t.Fatalf("history not adopted (new epoch %d): the case this test is about needs it", rd.NewEpoch)
	}
	r.Disconnect()
	h.LastSeq = 160
	r.Hello(h, 170)
	r.Ready()
	if limit, capped := r.ApplyLimit(); !capped || limit != 145 {
		t.Fatalf("apply limit %d (capped %v) after the second Hello, want 145", limit, capped)
	}
	r.LocalProgress(170, 170)
	if rd := r.Ready(); rd.ApplyThrough > 145 {
		t.Fatalf("released %d past the fork at 145", rd.ApplyThrough)
	}
}
