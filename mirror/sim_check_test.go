package mirror

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/blockmirror/blockmirror/internal/vfs"
	"github.com/blockmirror/blockmirror/journal"
	"github.com/blockmirror/blockmirror/mirror/core"
	"github.com/blockmirror/blockmirror/mirror/wire"
)

// The invariants of the whole-node simulation.
//
//   - Acknowledged ⇒ on ≥ K mirrors at the ack level (sync mode without
//     AllowDegraded; FUA writes and flushes at level durable, and durable
//     in the primary's journal), and there the very record of its branch
//     (checkAck). A mirror restarted after a power loss (process crash)
//     still holds every record counted on it at level durable (written)
//     (checkRestart).
//   - A (branch, seq) names one record: no primary hands out a seq of its
//     branch twice (onSubmit).
//   - A mirror applies its records in seq order, each once, each the
//     record its history names at that seq: never one of another branch
//     or epoch, never a quarantined one (onApply).
//   - At most one node acknowledges writes in an epoch (except an epoch
//     the schedule deliberately gave two primaries), and a node never
//     acknowledges a write after it was seen fenced in its epoch
//     (checkAck, observeFences).
//   - Divergent records are quarantined, never dropped: when a node sets
//     aside its records after a fork point, every one of them its journal
//     held durably is in its quarantine files (checkQuarantines).
//   - Durably acknowledged writes (FUA, or followed by a completed flush)
//     survive: they are in the final history, unless a failover or the
//     mode allows their loss (checkDurableAcks).
//   - Liveness: once the faults heal and an operator resolves the roles,
//     every request finishes, every mirror is in sync and consistent at the
//     primary's last seq, and every image is the same; without a power loss
//     of a primary (whose image may keep sectors of lost records) the image
//     is the history's (converged, finalChecks).

// complete records a request's result and checks what its acknowledgement
// promises.
func (w *simWorld) complete(c *simInc, wr *simWrite, err error) {
	w.mu.Lock()
	w.clock++
	wr.finished, wr.done, wr.doneN, wr.err = true, time.Now(), w.clock, err
	wr.stale = wr.epoch < w.maxEpoch
	dead := c.dead
	n := c.n
	w.mu.Unlock()
	if err != nil || dead {
		return
	}
	w.checkAck(c, wr)
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.ackers[wr.epoch] == nil {
		w.ackers[wr.epoch] = map[string]bool{}
	}
	w.ackers[wr.epoch][n.name] = true
	if len(w.ackers[wr.epoch]) > 1 && !w.split[wr.epoch] {
		w.failLocked("two nodes acknowledged writes in epoch %d: %v", wr.epoch, w.ackers[wr.epoch])
	}
	if n.fencedIn == wr.epoch {
		w.failLocked("%s acknowledged %v %d (seq %d) in epoch %d after it was seen fenced in that epoch", n.name, wr.kind, wr.id, wr.seq, wr.epoch)
	}
}

// checkAck: a completed request is where its mode and level promise.
func (w *simWorld) checkAck(c *simInc, wr *simWrite) {
	p := w.p
	seq, level := wr.seq, p.level
	if wr.kind == kFlush {
		seq = wr.barrier
	}
	durable := wr.fua || wr.kind == kFlush
	if durable {
		level = wire.AckDurable
		if _, d := c.node.Journal.Watermarks(); d < seq {
			w.failf("%s completed %v %d (seq %d) but its journal is durable only through %d", c.n.name, wr.kind, wr.id, seq, d)
		}
	}
	if p.mode != wire.ModeSync || p.degraded || seq == 0 {
		return
	}
	// Every other node counts that holds the record at the level: a
	// mirror promoted since it acknowledged still has it.
	// A node that died since (its ack may still have been on its way)
	// counts with what its journal had reached when it died.
	type view struct {
		inc  *simInc
		node *Node
		d    *Replica
		dead bool
	}
	var vs []view
	w.mu.Lock()
	for _, n := range w.nodes {
		m := n.cur
		if n == c.n || m == nil {
			continue
		}
		switch {
		case m.node != nil:
			vs = append(vs, view{m, m.node, nil, m.dead})
		case m.m != nil:
			vs = append(vs, view{m, nil, m.m, m.dead})
		case m.promoting != nil:
			// Between mirror and primary (a promotion, perhaps one that
			// died): its journal holds what it acknowledged.
			vs = append(vs, view{m, m.promoting, nil, m.dead})
		}
	}
	w.mu.Unlock()
	// Level written promises survival of a mirror's process crash, not of
	// its power loss (docs/operations.md): a mirror that acknowledged the
	// record and lost power since may no longer hold it, and still counts.
	var ackedWritten map[string]uint64
	if level == wire.AckWritten {
		ackedWritten = map[string]uint64{}
		for _, ps := range c.repl.Status().Peers {
			ackedWritten[ps.Name] = ps.Written
		}
	}
	held := 0
	var got []string
	for _, v := range vs {
		if level == wire.AckWritten && v.inc.n.powerLostN > wr.issuedN && ackedWritten[v.inc.n.name] >= seq {
			got = append(got, v.inc.n.name+":power-lost-after-ack")
			held++
			continue
		}
		node := v.node
		if v.d != nil {
			node = v.d.Node()
		}
		if node == nil {
			continue
		}
		written, durable := node.Journal.Watermarks()
		have := map[wire.AckLevel]uint64{wire.AckReceived: written, wire.AckWritten: written, wire.AckDurable: durable}[level]
		if v.d != nil && level == wire.AckReceived {
			have = v.d.Status().Received
		}
		got = append(got, fmt.Sprintf("%s:%d", v.inc.n.name, have))
		if have < seq {
			continue
		}
		if level != wire.AckReceived && wr.kind != kFlush && !v.dead && !simJournalHolds(node.Journal, seq, wr) {
			got[len(got)-1] += "(other record)"
			continue
		}
		held++
		w.mu.Lock()
		switch level {
		case wire.AckWritten:
			v.inc.ackedWritten = max(v.inc.ackedWritten, seq)
		case wire.AckDurable:
			v.inc.ackedDurable = max(v.inc.ackedDurable, seq)
			v.inc.ackedWritten = max(v.inc.ackedWritten, seq)
		}
		w.mu.Unlock()
	}
	if held < p.k {
		st := c.repl.Status()
		var acks []string
		for _, ps := range st.Peers {
			acks = append(acks, fmt.Sprintf("%s=%s(%d/%d/%d)", ps.Name, ps.State, ps.Received, ps.Written, ps.Durable))
		}
		w.failf("%s acknowledged %v %d (seq %d) with %d other nodes holding it at level %v, want %d (nodes at %v; its acks %v)",
			c.n.name, wr.kind, wr.id, seq, held, level, p.k, got, acks)
	}
}

var errSimStop = errors.New("stop")

// simJournalHolds reports whether j holds wr's record at seq (or released
// it already: then the store holds it).
func simJournalHolds(j *journal.Journal, seq uint64, wr *simWrite) bool {
	if seq < j.FirstSeq() {
		return true
	}
	ok := false
	err := j.Scan(seq, func(r journal.Record) error {
		ok = r.Seq == seq && simSameRecord(wr, r)
		return errSimStop
	})
	return ok || (err != nil && !errors.Is(err, errSimStop) && seq < j.FirstSeq())
}

// observeFences notes the primaries that are fenced.
func (w *simWorld) observeFences() {
	for _, n := range w.primaries() {
		if n.cur.repl.Status().Fenced || n.cur.node.Meta().FencedBy > n.cur.epoch {
			if n.fencedIn != n.cur.epoch {
				w.tracef("%s fenced in epoch %d", n.name, n.cur.epoch)
			}
			n.fencedIn = n.cur.epoch
		}
	}
}

// observeHeld credits every record durable in a node's journal to the
// node (checkQuarantines needs to know what a node held).
func (w *simWorld) observeHeld() {
	for _, n := range w.nodes {
		c := n.cur
		if n.role == "down" || c == nil {
			continue
		}
		var node *Node
		var hist []wire.EpochStart
		switch n.role {
		case "primary":
			node, hist = c.node, c.hist
		case "mirror":
			if c.m == nil || c.m.Node() == nil {
				continue
			}
			node = c.m.Node()
			m := node.Meta()
			if m.NeedsResync {
				// Its history is the primary's now, its journal's records
				// after the fork are not: until the reset, nothing new.
				continue
			}
			hist = m.History
		}
		_, durable := node.Journal.Watermarks()
		first := node.Journal.FirstSeq()
		w.mu.Lock()
		for seq := max(c.heldScan+1, first); seq <= durable; seq++ {
			e, ok := core.EntryOfSeq(hist, seq)
			if !ok {
				continue
			}
			if wr := w.truth[[2]uint64{e.ID, seq}]; wr != nil {
				if _, ok := wr.heldBy[n.name]; !ok {
					wr.heldBy[n.name] = n.role == "mirror"
				}
			}
		}
		c.heldScan = max(c.heldScan, durable)
		w.mu.Unlock()
	}
}

// checkRestart: a mirror back after a crash still holds what was counted
// on it (at level durable after a power loss, written after a process
// crash).
func (w *simWorld) checkRestart(n *simNode, prev *simInc, power bool) {
	c := n.cur
	if prev == nil || c.m == nil || c.m.Node() == nil {
		return
	}
	want := prev.ackedWritten
	if power {
		want = prev.ackedDurable
	}
	if last := c.m.Node().Journal.LastSeq(); last < want {
		w.failf("%s restarted (power loss %v) with its journal at %d, but seq %d was acknowledged as on it", n.name, power, last, want)
	}
	c.ackedWritten, c.ackedDurable = prev.ackedWritten, prev.ackedDurable
	if power {
		c.ackedWritten = prev.ackedDurable
	}
}

// converged says why the cluster is not converged yet ("" once it is).
func (w *simWorld) converged() string {
	w.mu.Lock()
	for _, wr := range w.writes {
		if !wr.finished {
			w.mu.Unlock()
			return fmt.Sprintf("request %d (%v on %s) has not finished", wr.id, wr.kind, wr.node)
		}
	}
	w.mu.Unlock()
	ps := w.primaries()
	if len(ps) != 1 {
		return fmt.Sprintf("%d primaries", len(ps))
	}
	p := ps[0]
	st := p.cur.repl.Status()
	if st.Fenced {
		return "the primary is fenced"
	}
	if st.Pending != 0 {
		return fmt.Sprintf("the primary has %d requests pending", st.Pending)
	}
	if through := p.cur.vol.appliedThrough(); through != st.LastSeq {
		return fmt.Sprintf("the primary's store holds through %d of %d", through, st.LastSeq)
	}
	for _, ps := range st.Peers {
		if ps.State != core.PeerInSync.String() {
			return fmt.Sprintf("%s is %s (%s)", ps.Name, ps.State, ps.LastError)
		}
	}
	for _, n := range w.nodes {
		if n == p {
			continue
		}
		if n.role != "mirror" || n.cur.m == nil || n.cur.m.Node() == nil {
			return fmt.Sprintf("%s is %s", n.name, n.role)
		}
		ms := n.cur.m.Status()
		if !ms.Connected || ms.Inconsistent || ms.NeedsResync || ms.Applied != st.LastSeq || ms.Epoch != st.Epoch {
			return fmt.Sprintf("%s: connected %v inconsistent %v needs resync %v applied %d of %d epoch %d of %d",
				n.name, ms.Connected, ms.Inconsistent, ms.NeedsResync, ms.Applied, st.LastSeq, ms.Epoch, st.Epoch)
		}
		if b := simDiffBlocks(p.cur.node, n.cur.m.Node()); len(b) > 0 {
			pi, mi := simImage(p.cur.node), simImage(n.cur.m.Node())
			blk := func(img []byte) string { return simDescribe(img[b[0]*simBlock : (b[0]+1)*simBlock]) }
			return fmt.Sprintf("%s's image differs from the primary's in blocks %v (block %d: %s there, %s on the primary)",
				n.name, b, b[0], blk(mi), blk(pi))
		}
	}
	return ""
}

func simImage(n *Node) []byte {
	b := make([]byte, simSize)
	if _, err := n.Store.ReadAt(b, 0); err != nil {
		return nil
	}
	return b
}

func simDiffBlocks(a, b *Node) []int {
	x, y := simImage(a), simImage(b)
	var d []int
	for i := 0; i < simBlocks; i++ {
		if !bytes.Equal(x[i*simBlock:(i+1)*simBlock], y[i*simBlock:(i+1)*simBlock]) {
			d = append(d, i)
		}
	}
	return d
}

// finalChecks run once the cluster converged.
func (w *simWorld) finalChecks(res *simResult) {
	p := w.primaries()[0]
	final := p.cur.node.Meta().History
	last := p.cur.repl.Status().LastSeq
	w.checkDurableAcks(final, last)
	w.mu.Lock()
	powered := w.powered
	w.mu.Unlock()
	if !powered {
		want := w.historyImage(final, last)
		got := simImage(p.cur.node)
		for i := 0; i < simBlocks; i++ {
			if !bytes.Equal(want[i*simBlock:(i+1)*simBlock], got[i*simBlock:(i+1)*simBlock]) && !w.failedIndirect(i, got[i*simBlock:(i+1)*simBlock]) {
				w.failf("the primary's image differs from its history's at block %d: %s, history %s", i,
					simDescribe(got[i*simBlock:(i+1)*simBlock]), simDescribe(want[i*simBlock:(i+1)*simBlock]))
				break
			}
		}
	}
	for _, n := range w.nodes {
		if n.role == "mirror" && n.cur.m != nil {
			res.resyncs += n.cur.m.Status().ResyncChunks
		}
	}
}

// failedIndirect reports whether block i holds the data of an indirect
// write that failed after its image write (an
// injected journal error): its data stays in the image without a record,
// the volume fails, and the unclean start that follows copies the
// primary's image to the mirrors where the activity log says (documented
// in docs/design.md, "Indirect writes").
func (w *simWorld) failedIndirect(i int, got []byte) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.p.indirect == 0 {
		return false
	}
	for _, wr := range w.writes {
		if wr.kind == kWrite && wr.err != nil && wr.blocks*simBlock >= w.p.indirect &&
			wr.block <= i && i < wr.block+wr.blocks && bytes.Equal(got, wr.data[(i-wr.block)*simBlock:(i-wr.block+1)*simBlock]) {
			return true
		}
	}
	return false
}

// simDescribe names the writes a block's sectors come from.
func simDescribe(b []byte) string {
	var parts []string
	for off := 0; off < len(b); off += vfs.SectorSize {
		sec := b[off : off+vfs.SectorSize]
		name := "0"
		if !bytes.Equal(sec, make([]byte, len(sec))) {
			name = fmt.Sprint(uint64(binary.LittleEndian.Uint32(sec[:4])) | uint64(sec[4])<<32)
		}
		if n := len(parts); n > 0 && strings.HasSuffix(parts[n-1], "="+name) {
			continue
		}
		parts = append(parts, fmt.Sprintf("%d=%s", off/vfs.SectorSize, name))
	}
	return "sectors " + strings.Join(parts, ",")
}

// historyImage is the image the history's records 1..last make.
func (w *simWorld) historyImage(h []wire.EpochStart, last uint64) []byte {
	img := make([]byte, simSize)
	w.mu.Lock()
	defer w.mu.Unlock()
	for seq := uint64(1); seq <= last; seq++ {
		e, _ := core.EntryOfSeq(h, seq)
		wr := w.truth[[2]uint64{e.ID, seq}]
		if wr == nil {
			w.failLocked("the final history names no known record at seq %d (branch %x)", seq, e.ID)
			return img
		}
		off := wr.block * simBlock
		switch wr.kind {
		case kWrite:
			copy(img[off:], wr.data)
		case kZero, kTrim:
			clear(img[off : off+wr.blocks*simBlock])
		}
	}
	return img
}

// inFinal reports whether wr is a record of the final history.
func inFinal(final []wire.EpochStart, last uint64, wr *simWrite) bool {
	e, _ := core.EntryOfSeq(final, wr.seq)
	return wr.seq <= last && e.ID == wr.branch
}

// checkDurableAcks: a write acknowledged with FUA, or followed by a
// flush that completed, is in the final history, unless losing it was
// allowed: async mode or AllowDegraded across a failover (the mirrors
// trail), a failover that chose a mirror without it (the ones with it
// were down), or a write acknowledged by a primary after a failover away
// from its branch began (it was never fenced in time: quarantined), or one
// by either side of a split brain (the operator gives up one).
func (w *simWorld) checkDurableAcks(final []wire.EpochStart, last uint64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	failedOver := w.failovers > 0
	if w.lossy || failedOver && (w.p.mode != wire.ModeSync || w.p.degraded) {
		return
	}
	var flushes []*simWrite
	for _, wr := range w.writes {
		if wr.kind == kFlush && wr.finished && wr.err == nil {
			flushes = append(flushes, wr)
		}
	}
	for _, wr := range w.writes {
		if wr.kind == kFlush || !wr.finished || wr.err != nil || wr.seq == 0 {
			continue
		}
		if t, ok := w.cutoff[wr.branch]; ok && !wr.done.Before(t) {
			continue
		}
		if w.split[wr.epoch] {
			continue // one side of a split brain is given up by the operator
		}
		if wr.stale {
			continue // acknowledged by a primary of an epoch a promotion superseded: fenced later, quarantined
		}
		durable := wr.fua
		for _, f := range flushes {
			if f.node == wr.node && f.inc == wr.inc && f.issuedN > wr.doneN {
				durable = true
				break
			}
		}
		if durable && !inFinal(final, last, wr) {
			w.failLocked("durably acknowledged %v %d (seq %d of branch %x, by %s) is not in the final history %v (last %d)",
				wr.kind, wr.id, wr.seq, wr.branch, wr.node, final, last)
			return
		}
	}
}

// checkQuarantines: when a node quarantines its journal's records after a
// fork point F (onQuarantine), every record after F that its journal held
// durably (observeHeld; a resync's reset forgets them) is in its
// quarantine files, never dropped; the quarantine report may instead say
// it was missing (MissingBefore) for a record the node received as a
// mirror (applied and checkpointed before the fork was known: its data is
// in the store only) or one the journal's size bound dropped
// (--journal-max), both documented. Otherwise a primary keeps its own
// records for its mirrors until it has compared histories (the peer
// guards). It returns how many records it found quarantined.
func (w *simWorld) checkQuarantines() int {
	found := 0
	for _, n := range w.nodes {
		c := n.cur
		w.mu.Lock()
		forks := c.quarantines
		c.quarantines = nil
		w.mu.Unlock()
		if len(forks) == 0 {
			continue
		}
		var reps []QuarantineReport
		recs := map[uint64][]journal.Record{}
		if err := simReadQuarantine(n.mem, recs, &reps); err != nil {
			w.failf("%s: read its quarantine: %v", n.name, err)
			return found
		}
		w.mu.Lock()
		for _, q := range forks {
			fork := q.fork
			for _, h := range q.held {
				wr := h.wr
				ok := false
				for _, r := range recs[wr.seq] {
					ok = ok || simSameRecord(wr, r)
				}
				for _, rep := range reps {
					// An indirect record a later record of the node
					// overwrote in its image: range and sums only.
					for _, r := range recs[wr.seq] {
						ok = ok || r.Op == journal.OpIndirect && slices.Contains(rep.IndirectOverwritten, wr.seq) &&
							r.Offset == uint64(wr.block*simBlock) && int(r.Length) == wr.blocks*simBlock
					}
					// Reported missing: a record it received as a mirror
					// and checkpointed before the fork was known, or one
					// the journal's size bound dropped (both documented).
					sized := w.p.journalMax > 0
					ok = ok || rep.MissingBefore > wr.seq && rep.ForkSeq < wr.seq && (h.asMirror || wr.node != n.name || sized)
				}
				if !ok {
					w.failLocked("%s quarantined its records after seq %d, but not %v %d (seq %d of branch %x), which its journal held durably (%d reports)",
						n.name, fork, wr.kind, wr.id, wr.seq, wr.branch, len(reps))
					w.mu.Unlock()
					return found
				}
				found++
			}
		}
		w.mu.Unlock()
	}
	return found
}

// simReadQuarantine reads every quarantine file of a node.
func simReadQuarantine(fsys vfs.FS, recs map[uint64][]journal.Record, reps *[]QuarantineReport) error {
	dir := filepath.Join(simDir, "quarantine")
	names, err := fsys.ReadDir(dir)
	if err != nil {
		return nil // none
	}
	for _, name := range names {
		b, err := vfs.ReadFile(fsys, filepath.Join(dir, name))
		if err != nil {
			return err
		}
		switch {
		case strings.HasSuffix(name, ".json"):
			var r QuarantineReport
			if err := json.Unmarshal(b, &r); err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			*reps = append(*reps, r)
		case strings.HasSuffix(name, ".rec"):
			const head = len(quarantineMagic) + 2 + 16 + 8
			if len(b) < head || string(b[:4]) != quarantineMagic {
				return fmt.Errorf("%s: not a quarantine file", name)
			}
			count := binary.LittleEndian.Uint64(b[head-8:])
			b = b[head:]
			for i := uint64(0); i < count; i++ {
				r, n, err := journal.DecodeRecord(b)
				if err != nil {
					return fmt.Errorf("%s: record %d: %w", name, i, err)
				}
				r.Data = bytes.Clone(r.Data)
				recs[r.Seq] = append(recs[r.Seq], r)
				b = b[n:]
			}
		}
	}
	return nil
}
