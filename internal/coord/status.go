package coord

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// ClusterStatus is a volume's coordination state as etcd holds it, for
// `blockmirror cluster status` (table or JSON) and metrics.
type ClusterStatus struct {
	Volume string `json:"volume"`
	Prefix string `json:"prefix"`
	// Leader is the node holding the leader key ("" if none).
	Leader string `json:"leader"`
	// LeaseTTL is the leader lease's granted TTL, LeaseRemaining what is
	// left of it (etcd's view), LeaseAge their difference: the time since
	// the last renewal etcd saw.
	LeaseTTL       time.Duration     `json:"lease_ttl_ns"`
	LeaseRemaining time.Duration     `json:"lease_remaining_ns"`
	LeaseAge       time.Duration     `json:"lease_age_ns"`
	Epoch          uint64            `json:"epoch"`
	EpochNode      string            `json:"epoch_node,omitempty"`
	Sync           *SyncSet          `json:"sync_set,omitempty"`
	Paused         *PauseRecord      `json:"paused,omitempty"`
	LastFailover   *FailoverRecord   `json:"last_failover,omitempty"`
	Switchover     *SwitchoverRecord `json:"switchover,omitempty"`
	Members        []MemberStatus    `json:"members"`
	// Problems lists records that could not be read.
	Problems []string `json:"problems,omitempty"`
}

// MemberStatus is one member record with the primary's view of it.
type MemberStatus struct {
	Member
	InSync *bool  `json:"in_sync,omitempty"`
	Lag    uint64 `json:"lag_records"`
	// InSyncSet: the member may be promoted automatically.
	InSyncSet bool `json:"in_sync_set"`
}

// ReadStatus reads the cluster status of volume under prefix.
func ReadStatus(ctx context.Context, cli *clientv3.Client, prefix, volume string) (*ClusterStatus, error) {
	k, err := KeysFor(prefix, volume)
	if err != nil {
		return nil, err
	}
	snap, err := readSnapshot(ctx, cli, k)
	if err != nil {
		return nil, err
	}
	cs := &ClusterStatus{Volume: volume, Prefix: prefix, Sync: snap.sync, Paused: snap.pause,
		LastFailover: snap.failover, Switchover: snap.switchover, Problems: snap.bad}
	if cs.Prefix == "" {
		cs.Prefix = DefaultPrefix
	}
	if snap.epoch != nil {
		cs.Epoch, cs.EpochNode = snap.epoch.Epoch, snap.epoch.Node
	}
	var primary *Member
	if l := snap.leader; l != nil {
		cs.Leader = l.node
		ttl, err := cli.TimeToLive(ctx, l.lease)
		if err != nil {
			return nil, fmt.Errorf("read the leader lease: %w", err)
		}
		if ttl.TTL > 0 {
			cs.LeaseTTL = time.Duration(ttl.GrantedTTL) * time.Second
			cs.LeaseRemaining = time.Duration(ttl.TTL) * time.Second
			cs.LeaseAge = cs.LeaseTTL - cs.LeaseRemaining
		}
		if m, ok := snap.members[l.node]; ok {
			primary = &m
		}
	}
	for _, m := range snap.members {
		ms := MemberStatus{Member: m, InSyncSet: snap.sync.Has(m.Node)}
		if primary != nil {
			for _, p := range primary.Peers {
				if p.Name == m.Node {
					ms.InSync, ms.Lag = &p.InSync, p.Lag
				}
			}
		}
		cs.Members = append(cs.Members, ms)
	}
	slices.SortFunc(cs.Members, func(a, b MemberStatus) int { return strings.Compare(a.Node, b.Node) })
	return cs, nil
}

// WriteText prints the status as a table.
func (cs *ClusterStatus) WriteText(w io.Writer) error {
	leader := cs.Leader
	if leader == "" {
		leader = "none"
	} else if cs.LeaseTTL > 0 {
		leader += fmt.Sprintf(" (lease renewed %v ago, %v left of %v)", cs.LeaseAge, cs.LeaseRemaining, cs.LeaseTTL)
	}
	fmt.Fprintf(w, "volume %s  leader %s  epoch %d", cs.Volume, leader, cs.Epoch)
	if cs.EpochNode != "" {
		fmt.Fprintf(w, " (taken by %s)", cs.EpochNode)
	}
	fmt.Fprintln(w)
	if s := cs.Sync; s != nil {
		if s.Mode == ModeSync {
			fmt.Fprintf(w, "sync set %v, every acknowledged write on %d of them\n", s.Members, s.K)
		} else {
			fmt.Fprintf(w, "failover candidates %v (async)\n", s.Members)
		}
	}
	if p := cs.Paused; p != nil {
		fmt.Fprintf(w, "AUTOMATIC FAILOVER PAUSED since %s: %s (resume: blockmirror cluster resume)\n", fromUnixNano(p.Since).Format(time.RFC3339), p.Reason)
	}
	if f := cs.LastFailover; f != nil {
		kind := "switchover"
		if f.Automatic {
			kind = "automatic failover"
		}
		fmt.Fprintf(w, "last change: %s from %s to %s (epoch %d) at %s\n", kind, orNone(f.From), f.To, f.Epoch, fromUnixNano(f.Time).Format(time.RFC3339))
	}
	if s := cs.Switchover; s != nil {
		fmt.Fprintf(w, "SWITCHOVER under way: %s demoted at seq %d, handing over to %s\n", s.From, s.Seq, s.To)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tROLE\tEPOCH\tSEQ\tDURABLE\tSTATE\tIN SYNC\tLAG\tSYNC SET")
	for _, m := range cs.Members {
		state := "consistent"
		switch {
		case !m.Consistent:
			state = "INCONSISTENT"
		case m.Fenced != "":
			state = "FENCED: " + m.Fenced
		case m.Role == RoleMirror && m.Following:
			state = "following"
		case m.Role == RoleMirror:
			state = "no primary"
		}
		inSync := "-"
		if m.InSync != nil {
			inSync = fmt.Sprint(*m.InSync)
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%s\t%s\t%d\t%v\n", m.Node, m.Role, m.Epoch, m.Seq, m.DurableSeq, state, inSync, m.Lag, m.InSyncSet)
	}
	for _, p := range cs.Problems {
		fmt.Fprintf(tw, "problem: %s\n", p)
	}
	return tw.Flush()
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

// Pause stops automatic failover of volume (the primary keeps its lease
// rules; planned switchovers still work).
func Pause(ctx context.Context, cli *clientv3.Client, prefix, volume, reason string) error {
	k, err := KeysFor(prefix, volume)
	if err != nil {
		return err
	}
	if _, err := cli.Put(ctx, k.Pause(), encode(PauseRecord{Reason: reason, Since: time.Now().UnixNano()})); err != nil {
		return fmt.Errorf("pause failover: %w", err)
	}
	return nil
}

// Resume lets automatic failover of volume happen again.
func Resume(ctx context.Context, cli *clientv3.Client, prefix, volume string) error {
	k, err := KeysFor(prefix, volume)
	if err != nil {
		return err
	}
	if _, err := cli.Delete(ctx, k.Pause()); err != nil {
		return fmt.Errorf("resume failover: %w", err)
	}
	return nil
}

// LocalStatus is one coordinator's own view, for the node's status and
// metrics.
type LocalStatus struct {
	Node   string `json:"node"`
	Leader bool   `json:"leader"`
	// LeaseAge: time since the last renewal etcd confirmed was sent
	// (leader only; -1 if none).
	LeaseAge time.Duration `json:"lease_age_ns"`
	// WritesUntil: how long the node may still complete writes (0 if
	// fenced); Fenced: why not, when it may not.
	WritesUntil time.Duration `json:"writes_until_ns"`
	Fenced      string        `json:"fenced,omitempty"`
	Failsafe    bool          `json:"failsafe"`
	// Decision is the last failover decision (mirrors), EtcdError the
	// last etcd failure ("" while etcd answers).
	Decision  string `json:"decision,omitempty"`
	EtcdError string `json:"etcd_error,omitempty"`
}

// Status is this coordinator's view now.
func (c *Coordinator) Status() LocalStatus {
	primary := c.node.Status().Role == RolePrimary
	now := c.clock.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	ls := LocalStatus{Node: c.cfg.Node, Leader: c.elect != nil, LeaseAge: -1, Failsafe: c.failsafe,
		Decision: c.verdict, EtcdError: c.etcdErr}
	if !c.renewed.IsZero() {
		ls.LeaseAge = now.Sub(c.renewed)
	}
	if c.granted.After(now) {
		ls.WritesUntil = c.granted.Sub(now)
	} else if primary {
		ls.Fenced = c.grantReason
	}
	return ls
}
