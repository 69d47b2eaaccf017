package mirror

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/blockmirror/blockmirror/mirror/core"
	"github.com/blockmirror/blockmirror/mirror/wire"
)

// ErrPromoted is returned by Mirror.Run after an online promotion: the
// daemon stopped mirroring and the caller serves the node as primary.
var ErrPromoted = errors.New("mirror: promoted to primary")

func (d *Replica) sendReply(st frameStream, r *wire.HelloReply) {
	buf, err := wire.AppendHelloReply(nil, r)
	if err == nil && st.WriteFrame(uint8(wire.MsgHelloReply), buf) == nil {
		st.Flush()
	}
	if r.Code != wire.CodeOK {
		linger(st)
	}
}

func (d *Replica) isPromoted() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.promoted
}

// answerAsPrimary answers a primary's Hello after this node was promoted.
func (d *Replica) answerAsPrimary(st frameStream, h wire.Hello, log *slog.Logger) {
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
func (d *Replica) Promote(ctx context.Context, force bool) (*Meta, error) {
	return d.promote(ctx, 0, force)
}

// PromoteTo is Promote to exactly epoch, as a coordinator decided it: it
// fails if the node knows of that epoch or a later one already.
func (d *Replica) PromoteTo(ctx context.Context, epoch uint64) (*Meta, error) {
	if epoch == 0 {
		return nil, errors.New("mirror: promote: no epoch given")
	}
	return d.promote(ctx, epoch, false)
}

func (d *Replica) promote(ctx context.Context, epoch uint64, force bool) (*Meta, error) {
	d.mu.Lock()
	if d.node == nil {
		d.mu.Unlock()
		return nil, errors.New("mirror: no volume to promote yet")
	}
	if d.promoted {
		promoting := d.promoting
		d.mu.Unlock()
		<-promoting // (another call's)
		if d.isPromoted() {
			return d.node.Meta(), nil
		}
		return nil, errors.New("mirror: promote: another promotion failed meanwhile")
	}
	if d.stopping {
		d.mu.Unlock()
		return nil, errors.New("mirror: promote: the volume is stopping")
	}
	if m := d.node.Meta(); m.Role == RoleMirror {
		if _, _, err := core.PromotionTo(m.nodeState(), d.node.Journal.LastSeq(), 1, epoch, force); err != nil {
			d.mu.Unlock()
			return m, fmt.Errorf("mirror: promote: %w; wait for the resync or use force", err)
		}
	}
	d.promoted = true
	done := make(chan struct{})
	d.promoting = done
	s := d.active
	d.mu.Unlock()
	// Until the promotion is recorded the node is a mirror: a failure on
	// the way leaves it one (following its primary again, and closing its
	// volume when it stops; Run's finish waits for done to know which).
	failed := func(m *Meta, err error) (*Meta, error) {
		d.mu.Lock()
		d.promoted = false
		d.mu.Unlock()
		close(done)
		return m, fmt.Errorf("mirror: promote: %w", err)
	}
	if s != nil {
		s.cancel()
		s.st.Cancel(uint64(wire.CodeNotMirror)) // the connection may be shared
		<-s.done
	}
	// Apply everything the journal holds.
	j := d.node.Journal
	if err := j.Sync(ctx); err != nil {
		return failed(nil, fmt.Errorf("sync the journal: %w", err))
	}
	last := j.LastSeq()
	d.mu.Lock()
	d.core.LocalProgress(last, last)
	d.processLocked()
	d.mu.Unlock()
	for d.applied() < last {
		select {
		case <-ctx.Done():
			return failed(nil, fmt.Errorf("the store holds the journal only through seq %d of %d (has the applier stopped? see the log): %w",
				d.applied(), last, ctx.Err()))
		case <-d.halted:
			return failed(nil, errors.New("the volume stopped"))
		case <-time.After(2 * time.Millisecond):
		}
	}
	m, err := promoteTo(d.node, epoch, force)
	if err != nil {
		d.mu.Lock()
		d.promoted = false
		d.mu.Unlock()
		close(done)
		return m, err
	}
	close(done)
	d.log.Info("promoted online; serving as primary", "epoch", m.Epoch)
	d.stopRun()
	return m, nil
}
