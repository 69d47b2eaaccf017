package coord

import (
	"context"
	"errors"
	"fmt"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// ErrNotLeader: the operation needs the node that holds the leader key.
var ErrNotLeader = errors.New("this node is not the primary holding the leader key")

// Switchover hands the primary role to the mirror to with no loss: it
// fences this primary's writes, waits until to's journal holds the last
// seq, demotes this node, and in one Txn records the switchover (bound to
// this node's lease) and gives up the leader key; to then takes the next
// epoch (other mirrors stand aside while the record exists) and Switchover
// returns once etcd shows it did. Until the demotion, any failure unfences
// the node and returns an error; after it, the node stays a mirror.
func (c *Coordinator) Switchover(ctx context.Context, to string) error {
	c.opMu.Lock()
	defer c.opMu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, c.cfg.SwitchoverTimeout)
	defer cancel()
	c.mu.Lock()
	e, sess := c.elect, c.sess
	c.mu.Unlock()
	st := c.node.Status()
	if e == nil || sess == nil || st.Role != RolePrimary {
		return ErrNotLeader
	}
	if to == c.cfg.Node {
		return fmt.Errorf("switchover to %s: that is this node", to)
	}
	check := func() (*snapshot, error) {
		rctx, rcancel := c.opCtx(ctx)
		defer rcancel()
		snap, err := readSnapshot(rctx, c.cli, c.keys)
		if err != nil {
			return nil, err
		}
		if snap.leader == nil || snap.leader.key != e.Key() {
			return nil, ErrNotLeader
		}
		m, ok := snap.members[to]
		switch {
		case !ok:
			return nil, fmt.Errorf("switchover to %s: no member record (is its coordinator running and reaching etcd?)", to)
		case m.Role != RoleMirror:
			return nil, fmt.Errorf("switchover to %s: it is a %s", to, m.Role)
		case !m.Consistent:
			return nil, fmt.Errorf("switchover to %s: it is inconsistent (a resync is under way); wait until it is in sync", to)
		}
		return snap, nil
	}
	if _, err := check(); err != nil {
		return err
	}
	unfence := func() {
		c.mu.Lock()
		c.hold = ""
		c.mu.Unlock()
		c.grant()
	}
	c.mu.Lock()
	c.hold = fmt.Sprintf("switchover to %s: writes are held while it catches up", to)
	c.mu.Unlock()
	c.grant()
	last := c.node.Status().LastSeq
	c.log.Info("switchover: writes fenced, waiting for the target to hold every record", "to", to, "seq", last)
	for {
		snap, err := check()
		if err != nil {
			unfence()
			return err
		}
		if m := snap.members[to]; m.Seq >= last && m.Epoch == st.Epoch {
			break
		}
		select {
		case <-ctx.Done():
			unfence()
			return fmt.Errorf("switchover to %s: it did not reach seq %d in time: %w", to, last, ctx.Err())
		case <-c.clock.After(c.cfg.Poll):
		}
	}
	if err := c.node.Demote(ctx); err != nil {
		unfence()
		return fmt.Errorf("switchover: demote this node: %w", err)
	}
	c.event("demoted", st.Epoch, "switchover to "+to)
	rec := SwitchoverRecord{From: c.cfg.Node, To: to, Seq: last, Epoch: st.Epoch}
	tctx, tcancel := c.opCtx(ctx)
	resp, err := c.cli.Txn(tctx).If(clientv3.Compare(clientv3.CreateRevision(e.Key()), "=", e.Rev())).
		Then(clientv3.OpPut(c.keys.Switchover(), encode(rec), clientv3.WithLease(sess.Lease())), clientv3.OpDelete(e.Key())).Commit()
	tcancel()
	c.mu.Lock()
	c.loseLocked("switched over to " + to)
	c.hold = ""
	c.mu.Unlock()
	if err != nil {
		return fmt.Errorf("switchover: hand over the leader key (this node is a mirror now; the key expires with its lease): %w", err)
	}
	if !resp.Succeeded {
		return fmt.Errorf("switchover: lost the leader key before handing it over (this node is a mirror now)")
	}
	c.log.Info("switchover: demoted and handed over the leader key", "to", to, "seq", last)
	for {
		rctx, rcancel := c.opCtx(ctx)
		snap, err := readSnapshot(rctx, c.cli, c.keys)
		rcancel()
		if err == nil && snap.epoch != nil && snap.epoch.Epoch > st.Epoch {
			if snap.epoch.Node != to {
				return fmt.Errorf("switchover: %s took epoch %d, not %s", snap.epoch.Node, snap.epoch.Epoch, to)
			}
			return nil
		}
		select {
		case <-ctx.Done():
			// Withdraw the record so that automatic failover applies again.
			dctx, dcancel := context.WithTimeout(context.Background(), c.cfg.TTL/3)
			_, derr := c.cli.Delete(dctx, c.keys.Switchover())
			dcancel()
			if derr != nil {
				c.log.Warn("switchover: could not withdraw the switchover record; it expires with this node's lease", "err", derr)
			}
			return fmt.Errorf("switchover: %s did not take over in time (this node is a mirror now; automatic failover applies again): %w", to, ctx.Err())
		case <-c.clock.After(c.cfg.Poll):
		}
	}
}
