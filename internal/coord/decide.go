package coord

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// This file holds the coordinator's decisions as pure functions: no etcd,
// no clock, no I/O. The driver (coordinator.go) gathers their inputs and
// acts on their answers; decide_test.go tests them as tables.

// Rules are the timing rules of automatic failover.
type Rules struct {
	// ContactWindow: a mirror does not campaign until it has heard
	// nothing from a serving primary for this long, and a primary in
	// failsafe serves only while every mirror of the sync set confirmed
	// contact more recently than this (minus Margin). It equals the TTL.
	ContactWindow time.Duration
	// Margin is taken off every deadline the primary computes (lease and
	// failsafe), to cover clock-rate differences, the time to stop
	// completions, and scheduling delays.
	Margin time.Duration
	// MinInterval is the least time between two automatic failovers.
	MinInterval time.Duration
	// Settle is the least wait between the leader key vanishing and a
	// campaign, so every mirror can report its final seq.
	Settle time.Duration
	// DelayPerRecord and MaxDelay: a candidate that is behind the best
	// seq it knows of waits Settle + behind × DelayPerRecord (at most
	// MaxDelay more), so a better mirror gets there first.
	DelayPerRecord time.Duration
	MaxDelay       time.Duration
	// StaleAfter: once the leader key has been gone this long, a member
	// record that was not rewritten since is treated as unreachable.
	StaleAfter time.Duration
}

// CampaignInput is what a node knows when it considers campaigning for
// the leader key.
type CampaignInput struct {
	// Self is this node's state now (as its Status says, not its record).
	Self Member
	// SinceContact (mirrors): time since the last contact with a serving
	// primary.
	SinceContact time.Duration
	// LeaderHeld: some other session holds the leader key.
	LeaderHeld bool
	// SinceGone: how long the leader key has been seen absent; GoneRev:
	// the etcd revision at which that was seen. Only records written
	// after GoneRev (Rev > GoneRev) are final.
	SinceGone time.Duration
	GoneRev   int64
	// Epoch, Sync, Paused, LastFailover, Switchover: the records read
	// from etcd (nil when absent).
	Epoch        *EpochRecord
	Sync         *SyncSet
	Paused       *PauseRecord
	LastFailover *FailoverRecord
	Switchover   *SwitchoverRecord
	// Others are the member records of the other nodes.
	Others []Member
	// LastPrimarySeq is the highest seq the last primary's record showed
	// (0 if none was seen).
	LastPrimarySeq uint64
	// Now is the wall clock (only compared with LastFailover.Time).
	Now   time.Time
	Rules Rules
}

// Verdict is a decision to campaign (after Wait) or not (Reason says why;
// Wait, when not 0, is when the answer may change).
type Verdict struct {
	Campaign bool
	Wait     time.Duration
	Reason   string
}

func no(wait time.Duration, format string, args ...any) Verdict {
	return Verdict{Wait: wait, Reason: fmt.Sprintf(format, args...)}
}

// ahead reports whether (e1, s1) is later in the volume's history than
// (e2, s2): a higher epoch, or the same epoch and a higher seq.
func ahead(e1, s1, e2, s2 uint64) bool {
	return e1 > e2 || e1 == e2 && s1 > s2
}

// DecideCampaign says whether this node may campaign for the leader key.
//
// A mirror may, only if: the leader key is gone; no switchover names
// another node; failover is not paused; its store is consistent; no
// serving primary contacted it for a ContactWindow; the last automatic
// failover is MinInterval ago; in sync mode it is in the sync set and sees
// enough of the set (Need) to be sure one of them holds every acknowledged
// write; every other member it sees has reported its final state (written
// after the leader vanished, not following a primary) and none is ahead
// of it. It then waits Settle, plus longer the further behind the best seq
// it knows of it is.
//
// A primary (restarted, its old lease gone) may reclaim the key at its own
// epoch if etcd's epoch is not higher, no other node took its epoch, and no
// member is ahead of it; pause and the failover interval do not apply, as
// this is not a failover.
func DecideCampaign(in CampaignInput) Verdict {
	self, r := in.Self, in.Rules
	if in.LeaderHeld {
		return no(0, "the leader key is held")
	}
	if in.Epoch != nil && in.Epoch.Epoch > self.Epoch && self.Role == RolePrimary {
		return no(0, "etcd's epoch %d (node %s) is newer than this primary's %d: it must rejoin as a mirror", in.Epoch.Epoch, in.Epoch.Node, self.Epoch)
	}
	if in.Epoch != nil && in.Epoch.Epoch == self.Epoch && self.Role == RolePrimary && in.Epoch.Node != self.Node {
		return no(0, "epoch %d was taken by %s, not this node: split brain, resolve it by hand", self.Epoch, in.Epoch.Node)
	}
	if sw := in.Switchover; sw != nil {
		if sw.To != self.Node {
			return no(0, "a switchover from %s to %s is under way", sw.From, sw.To)
		}
		if self.Role != RoleMirror {
			return no(0, "switchover target is not a mirror (role %s)", self.Role)
		}
		if !self.Consistent {
			return no(0, "switchover target is inconsistent (resync under way)")
		}
		if self.Seq < sw.Seq {
			return no(r.Settle, "switchover target has seq %d, waiting for %d", self.Seq, sw.Seq)
		}
		return Verdict{Campaign: true, Reason: fmt.Sprintf("switchover from %s at seq %d", sw.From, sw.Seq)}
	}
	if self.Role == RoleMirror {
		if in.Paused != nil {
			return no(0, "automatic failover is paused (%s)", in.Paused.Reason)
		}
		if !self.Consistent {
			return no(0, "this mirror is inconsistent (a resync is under way); promote it by hand with --force if it is the only copy left")
		}
		if in.SinceContact < r.ContactWindow {
			return no(r.ContactWindow-in.SinceContact, "a serving primary contacted this mirror %v ago (contact window %v)", in.SinceContact.Round(time.Millisecond), r.ContactWindow)
		}
		if f := in.LastFailover; f != nil && f.Automatic && r.MinInterval > 0 {
			if since := in.Now.Sub(fromUnixNano(f.Time)); since < r.MinInterval {
				return no(r.MinInterval-since, "the last automatic failover (to %s, epoch %d) was %v ago; the minimum interval is %v", f.To, f.Epoch, since.Round(time.Second), r.MinInterval)
			}
		}
		switch s := in.Sync; {
		case s == nil:
			return no(0, "no sync set is recorded (no primary has published one): promote by hand")
		case !s.Has(self.Node) && s.Mode == ModeSync:
			return no(0, "not in the sync set %v: it may lack acknowledged writes; promote by hand with --force", s.Members)
		case !s.Has(self.Node):
			return no(0, "not among the failover candidates %v (async mode)", s.Members)
		}
	}

	stale := in.SinceGone >= r.StaleAfter
	seen := 1 // self
	var best uint64
	bestEpoch := self.Epoch
	for _, o := range in.Others {
		if o.Node == self.Node {
			continue
		}
		if o.Role == RolePrimary {
			// A primary's record outlives its leader key by nothing (same
			// lease), so this is a primary that has not (re)claimed the
			// key: another candidate.
			if ahead(o.Epoch, o.Seq, self.Epoch, self.Seq) {
				return no(r.Settle, "primary %s (epoch %d, seq %d) is ahead of this node (epoch %d, seq %d)", o.Node, o.Epoch, o.Seq, self.Epoch, self.Seq)
			}
			continue
		}
		if self.Role == RolePrimary {
			// A primary reclaiming its key only needs to hold every record
			// a mirror has: whatever their records' age, they followed it.
			if ahead(o.Epoch, o.Seq, self.Epoch, self.Seq) {
				return no(0, "mirror %s (epoch %d, seq %d) is ahead of this primary (epoch %d, seq %d): it lost records a mirror holds", o.Node, o.Epoch, o.Seq, self.Epoch, self.Seq)
			}
			continue
		}
		final := o.Rev > in.GoneRev && !o.Following
		if !final {
			if ahead(o.Epoch, o.Seq, bestEpoch, best) {
				best, bestEpoch = o.Seq, o.Epoch
			}
			if stale {
				continue // unreachable: neither compared nor counted
			}
			if o.Following {
				return no(r.Settle, "mirror %s is still in contact with a primary", o.Node)
			}
			return no(r.Settle, "waiting for mirror %s to report its final seq", o.Node)
		}
		if ahead(o.Epoch, o.Seq, self.Epoch, self.Seq) {
			return no(0, "mirror %s (epoch %d, seq %d) is ahead of this node (epoch %d, seq %d)", o.Node, o.Epoch, o.Seq, self.Epoch, self.Seq)
		}
		if in.Sync.Has(o.Node) {
			seen++
		}
	}
	if s := in.Sync; self.Role == RoleMirror && s.Mode == ModeSync && seen < s.Need() {
		return no(r.Settle, "sees %d of the sync set %v, needs %d (K=%d): an acknowledged write may be only on the others", seen, s.Members, s.Need(), s.K)
	}
	if self.Role == RolePrimary {
		return Verdict{Campaign: true, Reason: fmt.Sprintf("reclaiming the leader key at epoch %d", self.Epoch)}
	}
	if in.LastPrimarySeq > best && bestEpoch <= self.Epoch {
		best = in.LastPrimarySeq
	}
	wait := max(0, CampaignDelay(self.Seq, best, bestEpoch > self.Epoch, r)-in.SinceGone)
	return Verdict{Campaign: true, Wait: wait, Reason: fmt.Sprintf("eligible: consistent, seq %d, epoch %d", self.Seq, self.Epoch)}
}

// CampaignDelay is how long a candidate at seq waits, counted from the
// leader key vanishing: Settle, plus DelayPerRecord for every record it is
// behind best (MaxDelay more at most, and MaxDelay if the best known is of
// a later epoch).
func CampaignDelay(seq, best uint64, laterEpoch bool, r Rules) time.Duration {
	extra := time.Duration(0)
	switch {
	case laterEpoch:
		extra = r.MaxDelay
	case best > seq:
		behind := best - seq
		if r.DelayPerRecord > 0 && behind > uint64(r.MaxDelay/r.DelayPerRecord) {
			extra = r.MaxDelay
		} else {
			extra = time.Duration(behind) * r.DelayPerRecord
		}
	}
	return r.Settle + min(extra, r.MaxDelay)
}

// LeaseInput is what a primary knows about its right to complete writes.
type LeaseInput struct {
	// Now is the monotonic clock.
	Now time.Time
	// Renewed is when the last renewal that etcd confirmed was sent
	// (zero: none since the leader key was taken).
	Renewed time.Time
	// TTL is the lease's TTL as etcd granted it.
	TTL time.Duration
	// Lost, when set, is etcd's answer that the lease or the leadership
	// is gone: no deadline applies, the primary fences now.
	Lost string
	// Failsafe enables serving past the lease while etcd cannot be
	// reached, on the confirmations of every mirror of Sync.
	Failsafe bool
	Sync     *SyncSet
	// Confirmed: per mirror, when the last heartbeat that it echoed was
	// sent (absent: none).
	Confirmed map[string]time.Time
	Rules     Rules
}

// LeaseVerdict: the primary completes writes only while the monotonic
// clock is before Until. Reason says why writes stop then (or, if Until is
// not after Now, why they stopped); Failsafe says Until comes from the
// mirrors' confirmations, not the lease.
type LeaseVerdict struct {
	Until    time.Time
	Reason   string
	Failsafe bool
}

// DecideLease applies the primary's lease rule: writes complete only
// while the last confirmed renewal is younger than TTL − Margin (counted
// from when it was sent, so the server's expiry is later still). With
// Failsafe, while etcd is unreachable, also while every mirror of the sync
// set confirmed contact within ContactWindow − Margin: such a mirror does
// not campaign, and no other can win.
func DecideLease(in LeaseInput) LeaseVerdict {
	if in.Lost != "" {
		return LeaseVerdict{Reason: in.Lost}
	}
	var v LeaseVerdict
	if !in.Renewed.IsZero() {
		v.Until = in.Renewed.Add(in.TTL - in.Rules.Margin)
		v.Reason = fmt.Sprintf("etcd has not confirmed the lease for %v (TTL %v, margin %v)", in.Now.Sub(in.Renewed).Round(time.Millisecond), in.TTL, in.Rules.Margin)
	} else {
		v.Reason = "the leader lease is not confirmed yet"
	}
	if !in.Failsafe || in.Renewed.IsZero() || in.Sync == nil || len(in.Sync.Members) == 0 {
		// Failsafe only extends a lease this primary held: a node that
		// never confirmed its leadership cannot know it is the primary.
		return v
	}
	var fs time.Time
	var missing []string
	for _, m := range in.Sync.Members {
		c, ok := in.Confirmed[m]
		if !ok || c.IsZero() {
			missing = append(missing, m)
			continue
		}
		u := c.Add(in.Rules.ContactWindow - in.Rules.Margin)
		if fs.IsZero() || u.Before(fs) {
			fs = u
		}
	}
	if len(missing) > 0 {
		if !v.Until.After(in.Now) {
			v.Reason += fmt.Sprintf("; failsafe: no confirmation from %s", strings.Join(missing, ", "))
		}
		return v
	}
	if fs.After(v.Until) && !fs.After(in.Now) {
		v.Reason += "; failsafe: the sync set's confirmations lapsed"
		return v
	}
	if fs.After(v.Until) {
		// While renewals succeed the confirmations usually reach a little
		// further than the lease; that is failsafe only once a renewal is
		// overdue (they come every TTL/3).
		return LeaseVerdict{Until: fs, Failsafe: in.Now.Sub(in.Renewed) > in.TTL/2,
			Reason: fmt.Sprintf("%s; failsafe: a mirror of the sync set %v stopped confirming contact", v.Reason, in.Sync.Members)}
	}
	return v
}

// AckSet is the set of mirrors whose acknowledgements count toward K on
// the primary, and K (0 in async mode).
type AckSet struct {
	Members []string `json:"members"`
	K       int      `json:"k"`
}

// Equal reports whether a and b name the same members and K.
func (a AckSet) Equal(b AckSet) bool {
	return a.K == b.K && sameSet(a.Members, b.Members)
}

func sameSet(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for _, x := range a {
		if !slices.Contains(b, x) {
			return false
		}
	}
	return true
}

func union(sets ...[]string) []string {
	var out []string
	for _, s := range sets {
		for _, x := range s {
			if !slices.Contains(out, x) {
				out = append(out, x)
			}
		}
	}
	slices.Sort(out)
	return out
}

// WantAckSet is the ack set a primary should have: in sync mode every
// mirror with K (allowDegraded: the mirrors in sync, K at most their
// number); in async mode every mirror, K 0 (they are the candidates).
func WantAckSet(mode Mode, k int, allowDegraded bool, peers []PeerView) AckSet {
	var all, inSync []string
	for _, p := range peers {
		all = append(all, p.Name)
		if p.InSync {
			inSync = append(inSync, p.Name)
		}
	}
	switch {
	case mode == ModeAsync:
		return AckSet{Members: union(all)}
	case allowDegraded:
		return AckSet{Members: union(inSync), K: min(k, len(inSync))}
	default:
		return AckSet{Members: union(all), K: k}
	}
}

// SyncInput is what the primary knows when it maintains the sync set.
type SyncInput struct {
	Mode Mode
	// Recorded is the sync set in etcd (nil: none).
	Recorded *SyncSet
	// Current is the node's ack set now, Want the one it should have.
	Current, Want AckSet
	// Acked: per mirror, the seq acknowledged at the ack level.
	Acked map[string]uint64
	// SwitchSeq: the node's last seq when its ack set last changed; every
	// write acknowledged under an earlier ack set is at or below it.
	SwitchSeq uint64
}

// SyncStep is the next step towards Want: write a sync set record first,
// or then change the node's ack set; Done when record, node and Want agree.
type SyncStep struct {
	Write  *SyncSet
	SetAck *AckSet
	Done   bool
	Reason string
}

// PlanSync keeps this invariant: every acknowledged write is on at least
// Recorded.K members of Recorded.Members. A record covers another if it
// has every member of it and a K no larger (a candidate then needs to see
// more of the set). The node's ack set changes only while the record
// covers both the old and the new ack set (Patroni's /sync rule: the
// record is written before the ack set changes); the record narrows to the
// new ack set only once K of its members acknowledged everything acked
// under the old one (SwitchSeq).
func PlanSync(in SyncInput) SyncStep {
	k := func(a AckSet) int {
		if in.Mode != ModeSync {
			return 0
		}
		return a.K
	}
	cons := SyncSet{Mode: in.Mode, Members: union(in.Current.Members, in.Want.Members), K: min(k(in.Current), k(in.Want))}
	if r := in.Recorded; r != nil && r.Mode == in.Mode {
		cons.Members = union(cons.Members, r.Members)
		cons.K = min(cons.K, r.K)
	}
	if !covers(in.Recorded, cons) {
		return SyncStep{Write: &cons, Reason: fmt.Sprintf("record %v with K=%d before the ack set changes", cons.Members, cons.K)}
	}
	if !in.Current.Equal(in.Want) {
		w := in.Want
		return SyncStep{SetAck: &w, Reason: fmt.Sprintf("ack set %v K=%d -> %v K=%d", in.Current.Members, in.Current.K, w.Members, w.K)}
	}
	want := SyncSet{Mode: in.Mode, Members: union(in.Want.Members), K: k(in.Want)}
	if r := in.Recorded; sameSet(r.Members, want.Members) && r.K == want.K {
		return SyncStep{Done: true}
	}
	caught := 0
	for _, m := range want.Members {
		if in.Acked[m] >= in.SwitchSeq {
			caught++
		}
	}
	if caught < want.K {
		return SyncStep{Reason: fmt.Sprintf("waiting for %d of %v to acknowledge seq %d before the sync set narrows", want.K, want.Members, in.SwitchSeq)}
	}
	return SyncStep{Write: &want, Reason: fmt.Sprintf("narrow the sync set to %v K=%d", want.Members, want.K)}
}

// covers reports whether record r covers c: the same mode, every member
// of c, and a K no larger (every write acknowledged under c is then on K
// members of r).
func covers(r *SyncSet, c SyncSet) bool {
	if r == nil || r.Mode != c.Mode || r.K > c.K {
		return false
	}
	for _, m := range c.Members {
		if !r.Has(m) {
			return false
		}
	}
	return true
}

// Covers reports whether the recorded sync set covers the ack set a in
// mode: a primary completes writes only while it does.
func Covers(r *SyncSet, mode Mode, a AckSet) bool {
	k := a.K
	if mode != ModeSync {
		k = 0
	}
	return covers(r, SyncSet{Mode: mode, Members: a.Members, K: k})
}
