package mirror

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/blockmirror/blockmirror/mirror/core"
	"github.com/blockmirror/blockmirror/mirror/wire"
	"github.com/blockmirror/blockmirror/transport"
)

// ErrPromoted is returned by Mirror.Run after an online promotion: the
// daemon stopped mirroring and the caller serves the node as primary.
var ErrPromoted = errors.New("mirror: promoted to primary")

// checkDivergence compares the primary's history with ours before the
// handshake. A split brain (same epoch, other history) is refused unless
// the operator chose this node as the loser; records we hold after the
// fork point are quarantined and the node asks for a resync.
func (d *Mirror) checkDivergence(h wire.Hello, log *slog.Logger) (*wire.HelloReply, error) {
	n := d.node
	m := n.Meta()
	last := n.Journal.LastSeq()
	id := core.VolumeIdentity{Volume: m.Volume, Size: uint64(m.Size), Epoch: m.Epoch, History: m.History}
	herr := core.CheckHello(id, h)
	diverged := errors.Is(herr, core.ErrHistoryDiverged)
	if herr != nil && !diverged {
		return nil, nil // the core refuses with the precise reason
	}
	if diverged && h.Epoch == m.Epoch && !m.AcceptDivergence {
		d.mu.Lock()
		d.splitBrain = splitBrainAdvice(d.opts.Name, h.Node, m.Epoch)
		d.mu.Unlock()
		log.Error("split brain detected", "primary", h.Node, "epoch", m.Epoch, "detail", herr.Error())
		return &wire.HelloReply{Version: wire.ProtoVersion, Code: wire.CodeSplitBrain, Role: wire.PeerRoleMirror, Volume: m.Volume,
			Size: uint64(m.Size), Epoch: m.Epoch, History: m.History, LastSeq: last, Node: d.opts.Name,
			Reason: splitBrainAdvice(d.opts.Name, h.Node, m.Epoch)}, nil
	}
	fork := core.ForkPoint(m.History, h.History, last, h.LastSeq)
	if last <= fork && !diverged {
		return nil, nil
	}
	reason := fmt.Sprintf("primary %s (epoch %d) has a history that forks from ours after seq %d", h.Node, h.Epoch, fork)
	rep, err := n.Quarantine(fork, reason)
	if err != nil {
		return nil, err
	}
	if rep != nil {
		log.Warn("records after the fork point were quarantined, not discarded; the node will be resynced",
			"fork_seq", fork, "records", rep.Records, "bytes", rep.DataBytes, "file", rep.File, "missing_before", rep.MissingBefore)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if rep != nil {
		d.quarantined = append(d.quarantined, *rep)
	}
	// Durably: until a resync resets the journal, its records after the
	// fork must never pass for the primary's.
	common := m.History
	if diverged {
		common = core.HistoryPrefix(m.History, fork)
	}
	err = n.UpdateMeta(func(m *Meta) error {
		m.NeedsResync = true
		if diverged {
			m.History = common
			if len(common) > 0 {
				m.Epoch = common[len(common)-1].Epoch
			}
			m.AcceptDivergence = false
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if diverged {
		d.core.AdoptHistory(common)
		d.splitBrain = ""
	}
	// The records after the fork stay in the journal (and the quarantine
	// file) but are never applied from now on.
	d.capped, d.applyCap = true, fork
	d.core.SetNeedsResync()
	return nil, nil
}

func (d *Mirror) sendReply(st *transport.Stream, r *wire.HelloReply) {
	buf, err := wire.AppendHelloReply(nil, r)
	if err == nil && st.WriteFrame(uint8(wire.MsgHelloReply), buf) == nil {
		st.Flush()
	}
	if r.Code != wire.CodeOK {
		linger(st)
	}
}

func (d *Mirror) isPromoted() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.promoted
}

// answerAsPrimary answers a primary's Hello after this node was promoted.
func (d *Mirror) answerAsPrimary(st *transport.Stream, h wire.Hello, log *slog.Logger) {
	m := d.node.Meta()
	reply, stale := primaryAnswer(m, d.opts.Name, d.node.Journal.LastSeq(), h)
	d.sendReply(st, &reply)
	log.Warn("answered a primary as a primary", "code", reply.Code, "reason", reply.Reason)
	d.mu.Lock()
	if reply.Code == wire.CodeSplitBrain {
		d.splitBrain = reply.Reason
	}
	d.mu.Unlock()
	if stale {
		// The node serves as primary right after this (Run returns
		// ErrPromoted): it starts fenced.
		if err := d.node.Fence(h.Epoch); err != nil {
			log.Error("recording the fence in the metadata failed", "err", err)
		}
	}
}

// Promote stops mirroring and makes the node primary of the next epoch
// (online promotion): the current session ends, every record in the
// journal is applied, and the epoch change is recorded. Run then returns
// ErrPromoted and Node returns the node for serving; the listener stays
// open until Run returns, answering old primaries that they are fenced.
func (d *Mirror) Promote(ctx context.Context, force bool) (*Meta, error) {
	d.mu.Lock()
	if d.node == nil {
		d.mu.Unlock()
		return nil, errors.New("mirror: no volume to promote yet")
	}
	if d.promoted {
		d.mu.Unlock()
		return d.node.Meta(), nil
	}
	if m := d.node.Meta(); m.Inconsistent && !force {
		d.mu.Unlock()
		return m, fmt.Errorf("mirror: promote: %w; wait for the resync or use force", ErrInconsistent)
	} else if m.NeedsResync && !force {
		d.mu.Unlock()
		return m, fmt.Errorf("mirror: promote: %w; wait for the resync or use force", ErrDiverged)
	}
	d.promoted = true
	s := d.active
	d.mu.Unlock()
	if s != nil {
		s.cancel()
		s.st.Cancel(uint64(wire.CodeNotMirror)) // the connection may be shared
		<-s.done
	}
	// Apply everything the journal holds.
	j := d.node.Journal
	if err := j.Sync(ctx); err != nil {
		return nil, err
	}
	last := j.LastSeq()
	d.mu.Lock()
	d.core.LocalProgress(last, last)
	d.processLocked()
	d.mu.Unlock()
	for d.applied() < last {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(2 * time.Millisecond):
		}
	}
	m, err := Promote(d.node, force)
	if err != nil {
		d.mu.Lock()
		d.promoted = false
		d.mu.Unlock()
		return m, err
	}
	d.log.Info("promoted online; serving as primary", "epoch", m.Epoch)
	d.stopRun()
	return m, nil
}
