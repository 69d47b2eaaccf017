package coord

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// Defaults of Config.
const (
	DefaultTTL               = 5 * time.Second
	DefaultMinInterval       = 5 * time.Minute
	DefaultSettle            = 300 * time.Millisecond
	DefaultDelayPerRecord    = time.Millisecond
	DefaultSwitchoverTimeout = 30 * time.Second
)

// Config configures a Coordinator. Zero values take the defaults.
type Config struct {
	// Client is the etcd client (see Connect); the coordinator does not
	// close it.
	Client *clientv3.Client
	// Prefix (default DefaultPrefix), Volume and Node name the keys.
	Prefix, Volume, Node string
	// TTL of the session lease (whole seconds, at least 2 s; default 5 s).
	// It is also the contact window (Rules.ContactWindow).
	TTL time.Duration
	// Margin (default TTL/5) is taken off the primary's deadlines.
	Margin time.Duration
	// MinInterval between automatic failovers (default 5 min; negative:
	// none).
	MinInterval time.Duration
	// Settle, DelayPerRecord, MaxDelay (default TTL), StaleAfter
	// (default TTL): see Rules.
	Settle, DelayPerRecord, MaxDelay, StaleAfter time.Duration
	// Poll is how often the node's status is read and the records are
	// refreshed (default TTL/10).
	Poll time.Duration
	// NoFailsafe: when etcd cannot be reached, fence at the lease's end
	// even if every mirror of the sync set still confirms contact.
	NoFailsafe bool
	// SwitchoverTimeout bounds Switchover (default 30 s).
	SwitchoverTimeout time.Duration
	// OnEvent, if set, is called (from the coordinator's goroutine; it
	// must not block) on every promotion, demotion, fence and unfence.
	OnEvent func(Event)
	Clock   Clock
	Logger  *slog.Logger
}

// Event reports a change the coordinator made or saw.
type Event struct {
	Kind   string // "promoted", "demoted", "fenced", "unfenced", "leader"
	Epoch  uint64
	Reason string
}

func (c *Config) setDefaults() error {
	if c.Client == nil {
		return errors.New("coord: no etcd client")
	}
	if err := validName("node", c.Node); err != nil {
		return err
	}
	if c.TTL == 0 {
		c.TTL = DefaultTTL
	}
	if c.TTL < 2*time.Second || c.TTL%time.Second != 0 {
		return fmt.Errorf("failover TTL %v: must be whole seconds, at least 2s", c.TTL)
	}
	if c.Margin == 0 {
		c.Margin = c.TTL / 5
	}
	if c.Margin <= 0 || c.Margin >= c.TTL/2 {
		return fmt.Errorf("failover margin %v: must be above 0 and below TTL/2 (%v)", c.Margin, c.TTL/2)
	}
	if c.MinInterval == 0 {
		c.MinInterval = DefaultMinInterval
	}
	if c.Settle == 0 {
		c.Settle = DefaultSettle
	}
	if c.DelayPerRecord == 0 {
		c.DelayPerRecord = DefaultDelayPerRecord
	}
	if c.MaxDelay == 0 {
		c.MaxDelay = c.TTL
	}
	if c.StaleAfter == 0 {
		c.StaleAfter = c.TTL
	}
	if c.Poll == 0 {
		c.Poll = c.TTL / 10
	}
	if c.SwitchoverTimeout == 0 {
		c.SwitchoverTimeout = DefaultSwitchoverTimeout
	}
	if c.Clock == nil {
		c.Clock = RealClock
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

func (c *Config) rules() Rules {
	return Rules{ContactWindow: c.TTL, Margin: c.Margin, MinInterval: max(c.MinInterval, 0),
		Settle: c.Settle, DelayPerRecord: c.DelayPerRecord, MaxDelay: c.MaxDelay, StaleAfter: c.StaleAfter}
}

// Coordinator runs automatic failover for one node of one volume. Run
// owns its goroutines: the etcd loop (records, campaigns, epochs, sync
// set), the lease loop (renewals and the write deadline, independent of
// etcd being reachable) and a watch that wakes the etcd loop.
type Coordinator struct {
	cfg   Config
	keys  Keys
	node  Node
	log   *slog.Logger
	clock Clock
	cli   *clientv3.Client

	// opMu serializes etcd-loop steps and Switchover.
	opMu sync.Mutex

	wake chan struct{}

	mu sync.Mutex
	// sess is the current session (nil: none); elect is set while this
	// node holds the leader key through sess.
	sess  *concurrency.Session
	elect *concurrency.Election
	// renewed: send time of the last renewal etcd confirmed while leader;
	// ttl: the TTL etcd granted; lost: why the leadership is known gone.
	renewed time.Time
	ttl     time.Duration
	lost    string
	// hold, when set, fences writes whatever the lease (switchover).
	hold string
	// syncOK: the recorded sync set covers the node's ack set.
	syncOK    bool
	switchSeq uint64
	// granted is the last write lease given to the node.
	granted     time.Time
	grantReason string
	failsafe    bool
	// gone: when (monotonic) and at which revision the leader key was
	// first seen absent; zero while it is held.
	goneAt         time.Time
	goneRev        int64
	lastPrimarySeq uint64
	published      Member
	publishedAt    time.Time
	verdict        string
	etcdErr        string
	lastSnap       *snapshot
}

// New checks cfg and returns a coordinator for node; Run starts it.
func New(cfg Config, node Node) (*Coordinator, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	keys, err := KeysFor(cfg.Prefix, cfg.Volume)
	if err != nil {
		return nil, err
	}
	return &Coordinator{cfg: cfg, keys: keys, node: node, cli: cfg.Client, clock: cfg.Clock,
		log:  cfg.Logger.With("volume", cfg.Volume, "node", cfg.Node),
		wake: make(chan struct{}, 1)}, nil
}

// Run coordinates until ctx ends, then revokes its session (the leader
// key and member record go at once) and returns ctx's error.
func (c *Coordinator) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); c.leaseLoop(ctx) }()
	go func() { defer wg.Done(); c.watchLoop(ctx) }()
	c.etcdLoop(ctx)
	cancel()
	wg.Wait()
	c.mu.Lock()
	sess := c.sess
	c.sess, c.elect = nil, nil
	c.mu.Unlock()
	if sess != nil {
		rctx, rcancel := context.WithTimeout(context.Background(), c.cfg.TTL/3)
		_, err := c.cli.Revoke(rctx, sess.Lease())
		rcancel()
		if err != nil {
			c.log.Warn("could not revoke the session lease; its keys expire within the TTL", "err", err)
		}
	}
	return ctx.Err()
}

func (c *Coordinator) poke() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

func (c *Coordinator) sleep(ctx context.Context, d time.Duration) bool {
	select {
	case <-ctx.Done():
		return false
	case <-c.clock.After(d):
		return true
	case <-c.wake:
		return true
	}
}

// watchLoop wakes the etcd loop on every change under the volume's keys.
func (c *Coordinator) watchLoop(ctx context.Context) {
	for ctx.Err() == nil {
		wch := c.cli.Watch(clientv3.WithRequireLeader(ctx), c.keys.Base+"/", clientv3.WithPrefix())
		for range wch {
			c.poke()
		}
		select {
		case <-ctx.Done():
		case <-time.After(c.cfg.Poll):
		}
	}
}

// opCtx bounds one etcd request.
func (c *Coordinator) opCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, c.cfg.TTL/3)
}

func (c *Coordinator) etcdLoop(ctx context.Context) {
	for ctx.Err() == nil {
		err := c.step(ctx)
		c.mu.Lock()
		prev := c.etcdErr
		c.etcdErr = ""
		if err != nil {
			c.etcdErr = err.Error()
		}
		c.mu.Unlock()
		if err != nil && ctx.Err() == nil && err.Error() != prev {
			c.log.Warn("coordination step failed; retrying", "err", err)
		} else if err == nil && prev != "" {
			c.log.Info("etcd reachable again")
		}
		c.sleep(ctx, c.cfg.Poll)
	}
}

// session returns the live session, making one if needed.
func (c *Coordinator) session(ctx context.Context) (*concurrency.Session, error) {
	c.mu.Lock()
	s := c.sess
	c.mu.Unlock()
	if s != nil {
		select {
		case <-s.Done():
			// The client gave the lease up (no keepalive answer for a
			// TTL): etcd did not say it is gone, so the renewal stamp and
			// the failsafe still apply until etcd answers.
			c.mu.Lock()
			c.sess, c.elect = nil, nil
			c.mu.Unlock()
			c.log.Warn("etcd session lease lost (no keepalive answer within the TTL)")
		default:
			return s, nil
		}
	}
	gctx, cancel := c.opCtx(ctx)
	lease, err := c.cli.Grant(gctx, int64(c.cfg.TTL/time.Second))
	cancel()
	if err != nil {
		return nil, fmt.Errorf("grant session lease: %w", err)
	}
	s, err = concurrency.NewSession(c.cli, concurrency.WithLease(lease.ID), concurrency.WithTTL(int(c.cfg.TTL/time.Second)), concurrency.WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("start session: %w", err)
	}
	c.mu.Lock()
	c.sess = s
	c.published = Member{}
	c.mu.Unlock()
	return s, nil
}

// loseLocked records that the leadership is gone (c.mu held).
func (c *Coordinator) loseLocked(why string) {
	c.elect = nil
	c.lost = why
	c.renewed = time.Time{}
	c.syncOK = false
}

// step is one round of the etcd loop.
func (c *Coordinator) step(ctx context.Context) error {
	c.opMu.Lock()
	defer c.opMu.Unlock()
	sess, err := c.session(ctx)
	if err != nil {
		return err
	}
	rctx, cancel := c.opCtx(ctx)
	snap, err := readSnapshot(rctx, c.cli, c.keys)
	cancel()
	if err != nil {
		return err
	}
	st := c.node.Status()
	c.mu.Lock()
	c.lastSnap = snap
	forced := false
	switch {
	case snap.leader != nil:
		c.goneAt, c.goneRev = time.Time{}, 0
		if p, ok := snap.members[snap.leader.node]; ok && p.Role == RolePrimary {
			c.lastPrimarySeq = p.Seq
		}
	case c.goneAt.IsZero():
		c.goneAt, c.goneRev = c.clock.Now(), snap.rev
		forced = true // every member republishes: its record becomes final
	}
	c.mu.Unlock()
	if err := c.publish(ctx, sess, st, forced); err != nil {
		return err
	}
	if st.Role == RolePrimary {
		return c.stepPrimary(ctx, sess, st, snap)
	}
	return c.stepMirror(ctx, sess, st, snap)
}

// record is the member record for st.
func (c *Coordinator) record(st NodeStatus) Member {
	m := Member{Node: c.cfg.Node, Role: st.Role, Epoch: st.Epoch, Seq: st.LastSeq, DurableSeq: st.DurableSeq,
		Consistent: st.Consistent}
	if st.Role == RoleMirror {
		m.Following = st.SincePrimaryContact < c.cfg.TTL
	}
	c.mu.Lock()
	if st.Role == RolePrimary && !c.granted.After(c.clock.Now()) {
		m.Fenced = c.grantReason
	}
	c.mu.Unlock()
	for _, p := range st.Peers {
		m.Peers = append(m.Peers, PeerView{Name: p.Name, InSync: p.InSync, Acked: p.Acked, Lag: p.Lag})
	}
	return m
}

// publish writes this node's member record, bound to the session lease,
// when it changed or when forced. Changes of seqs and lag alone are
// written at most every TTL/3 (under load they change every poll); a
// candidate never relies on those: it compares only records written with
// following false, which a mirror writes at once and only after a contact
// window without a primary, when its seq no longer moves.
func (c *Coordinator) publish(ctx context.Context, sess *concurrency.Session, st NodeStatus, forced bool) error {
	m := c.record(st)
	now := c.clock.Now()
	c.mu.Lock()
	same := reflect.DeepEqual(m, c.published)
	p := c.published
	p.Seq, p.DurableSeq, p.Peers = m.Seq, m.DurableSeq, m.Peers
	minor := reflect.DeepEqual(m, p) && now.Sub(c.publishedAt) < c.cfg.TTL/3
	c.mu.Unlock()
	if !forced && (same || minor) {
		return nil
	}
	w := m
	w.Written = unixNano(time.Now())
	pctx, cancel := c.opCtx(ctx)
	_, err := c.cli.Put(pctx, c.keys.Member(c.cfg.Node), encode(w), clientv3.WithLease(sess.Lease()))
	cancel()
	if err != nil {
		return fmt.Errorf("publish member record: %w", err)
	}
	c.mu.Lock()
	c.published, c.publishedAt = m, now
	c.mu.Unlock()
	return nil
}

func (c *Coordinator) event(kind string, epoch uint64, reason string) {
	if c.cfg.OnEvent != nil {
		c.cfg.OnEvent(Event{Kind: kind, Epoch: epoch, Reason: reason})
	}
}

// setVerdict records the last decision for Status and logs it when it
// changed other than in its numbers (a wait counting down is one
// decision, not one log line per poll).
func (c *Coordinator) setVerdict(v string) {
	c.mu.Lock()
	changed := strings.Map(noDigits, v) != strings.Map(noDigits, c.verdict)
	c.verdict = v
	c.mu.Unlock()
	if changed && v != "" {
		c.log.Info("failover decision", "verdict", v)
	}
}

func noDigits(r rune) rune {
	if r >= '0' && r <= '9' || r == '.' {
		return -1
	}
	return r
}

// campaignInput gathers DecideCampaign's input.
func (c *Coordinator) campaignInput(st NodeStatus, snap *snapshot, leaderHeld bool) CampaignInput {
	c.mu.Lock()
	defer c.mu.Unlock()
	in := CampaignInput{
		Self:         Member{Node: c.cfg.Node, Role: st.Role, Epoch: st.Epoch, Seq: st.LastSeq, DurableSeq: st.DurableSeq, Consistent: st.Consistent},
		SinceContact: st.SincePrimaryContact,
		LeaderHeld:   leaderHeld,
		GoneRev:      c.goneRev,
		Epoch:        snap.epoch, Sync: snap.sync, Paused: snap.pause, LastFailover: snap.failover, Switchover: snap.switchover,
		Others:         snap.others(c.cfg.Node),
		LastPrimarySeq: c.lastPrimarySeq,
		Now:            time.Now(),
		Rules:          c.cfg.rules(),
	}
	if !c.goneAt.IsZero() {
		in.SinceGone = c.clock.Now().Sub(c.goneAt)
	}
	return in
}

func (c *Coordinator) stepMirror(ctx context.Context, sess *concurrency.Session, st NodeStatus, snap *snapshot) error {
	c.mu.Lock()
	wasLeader := c.elect != nil
	c.mu.Unlock()
	if wasLeader {
		// Demoted (switchover, or by hand) while holding the key: give it
		// up so that a candidate can take it.
		c.resign(ctx, "this node is a mirror now")
	}
	if snap.leader != nil {
		c.setVerdict("")
		return nil
	}
	v := DecideCampaign(c.campaignInput(st, snap, false))
	if !v.Campaign {
		c.setVerdict("not campaigning: " + v.Reason)
		return nil
	}
	if v.Wait > 0 {
		c.setVerdict(fmt.Sprintf("campaigning in %v: %s", v.Wait.Round(time.Millisecond), v.Reason))
		// Come back when the wait is over (the loop polls more often).
		return nil
	}
	c.setVerdict("campaigning: " + v.Reason)
	return c.campaign(ctx, sess)
}

// campaign runs for the leader key and, having won it, re-checks the
// decision on a fresh read and takes the next epoch (or, for a primary,
// confirms its own) in one Txn that fails if anything it decided on
// changed.
func (c *Coordinator) campaign(ctx context.Context, sess *concurrency.Session) error {
	// Campaign returns once this key is the oldest; a candidate queued
	// behind another that got there first gives up after TTL/3 (Campaign
	// then withdraws its key) and decides again on the next round.
	e := concurrency.NewElection(sess, c.keys.Election())
	cctx, cancel := context.WithTimeout(ctx, c.cfg.TTL/3)
	err := e.Campaign(cctx, c.cfg.Node)
	cancel()
	if err != nil && ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded) {
		c.setVerdict("another candidate holds the leader key")
		return nil
	}
	if err != nil {
		return fmt.Errorf("campaign: %w", err)
	}
	rctx, cancel := c.opCtx(ctx)
	snap, err := readSnapshot(rctx, c.cli, c.keys)
	cancel()
	if err != nil {
		c.resignElection(ctx, e)
		return err
	}
	if snap.leader == nil || snap.leader.key != e.Key() {
		c.resignElection(ctx, e)
		return errors.New("campaign: won the election but the leader key is not ours")
	}
	st := c.node.Status()
	v := DecideCampaign(c.campaignInput(st, snap, false))
	if !v.Campaign {
		c.resignElection(ctx, e)
		c.setVerdict("won the key but no longer eligible: " + v.Reason)
		return nil
	}
	cur := uint64(0)
	if snap.epoch != nil {
		cur = snap.epoch.Epoch
	}
	next := st.Epoch
	if st.Role == RoleMirror {
		next = max(cur, st.Epoch) + 1
	}
	cmps := []clientv3.Cmp{
		clientv3.Compare(clientv3.CreateRevision(e.Key()), "=", e.Rev()),
		unchanged(c.keys.Epoch(), snap.epoch.modRev()),
		unchanged(c.keys.Sync(), snap.sync.modRev()),
		unchanged(c.keys.Failover(), snap.failover.modRev()),
		unchanged(c.keys.Switchover(), snap.switchover.modRev()),
	}
	for _, m := range snap.others(c.cfg.Node) {
		cmps = append(cmps, unchanged(c.keys.Member(m.Node), m.Rev))
	}
	ops := []clientv3.Op{clientv3.OpPut(c.keys.Epoch(), encode(EpochRecord{Epoch: next, Node: c.cfg.Node}))}
	if st.Role == RoleMirror {
		if snap.switchover == nil {
			cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(c.keys.Pause()), "=", 0))
		} else {
			ops = append(ops, clientv3.OpDelete(c.keys.Switchover()))
		}
		from := ""
		if snap.epoch != nil {
			from = snap.epoch.Node
		}
		ops = append(ops, clientv3.OpPut(c.keys.Failover(), encode(FailoverRecord{Time: time.Now().UnixNano(),
			From: from, To: c.cfg.Node, Epoch: next, Automatic: snap.switchover == nil})))
	} else if cur == st.Epoch {
		ops = nil // the epoch is ours already: holding the key is all
	}
	tctx, cancel := c.opCtx(ctx)
	resp, err := c.cli.Txn(tctx).If(cmps...).Then(ops...).Commit()
	cancel()
	if err != nil {
		c.resignElection(ctx, e)
		return fmt.Errorf("take epoch %d: %w", next, err)
	}
	if !resp.Succeeded {
		c.resignElection(ctx, e)
		c.setVerdict("the state changed while campaigning; deciding again")
		return nil
	}
	if st.Role == RoleMirror {
		c.log.Warn("automatic failover: this mirror won the leader key and took the next epoch; promoting", "epoch", next, "reason", v.Reason)
		if err := c.node.Promote(ctx, next); err != nil {
			c.resignElection(ctx, e)
			return fmt.Errorf("promote to epoch %d: %w", next, err)
		}
		c.event("promoted", next, v.Reason)
	} else {
		c.log.Info("holding the leader key", "epoch", next)
		c.event("leader", next, v.Reason)
	}
	c.mu.Lock()
	// A primary that reclaims its key keeps its last renewal stamp (and
	// so its failsafe) until the new term's first renewal, moments away.
	c.elect, c.lost, c.syncOK, c.switchSeq = e, "", false, 0
	c.mu.Unlock()
	c.setVerdict("")
	return nil
}

// resignElection gives up a key this node won (or queued for).
func (c *Coordinator) resignElection(ctx context.Context, e *concurrency.Election) {
	rctx, cancel := c.opCtx(ctx)
	defer cancel()
	if err := e.Resign(rctx); err != nil {
		c.log.Warn("could not resign the leader key; it expires with the session", "err", err)
	}
}

// resign gives up the leadership this node holds.
func (c *Coordinator) resign(ctx context.Context, why string) {
	c.mu.Lock()
	e := c.elect
	c.loseLocked(why)
	c.mu.Unlock()
	if e != nil {
		c.resignElection(ctx, e)
	}
	c.grant()
}

func (c *Coordinator) stepPrimary(ctx context.Context, sess *concurrency.Session, st NodeStatus, snap *snapshot) error {
	c.mu.Lock()
	e := c.elect
	c.mu.Unlock()
	if snap.epoch != nil && snap.epoch.Epoch > st.Epoch {
		why := fmt.Sprintf("node %s is primary in epoch %d (this node: epoch %d)", snap.epoch.Node, snap.epoch.Epoch, st.Epoch)
		c.resign(ctx, why)
		c.node.SetWriteLease(time.Time{}, why)
		c.log.Warn("a newer primary exists: demoting this node to mirror", "reason", why)
		if err := c.node.Demote(ctx); err != nil {
			return fmt.Errorf("demote: %w", err)
		}
		c.event("demoted", st.Epoch, why)
		return nil
	}
	if e != nil && (snap.leader == nil || snap.leader.key != e.Key()) {
		c.mu.Lock()
		c.loseLocked("the leader key is gone from etcd (lease expired)")
		c.mu.Unlock()
		c.grant()
		e = nil
	}
	if e == nil {
		if snap.leader != nil {
			c.mu.Lock()
			if c.lost == "" {
				c.lost = fmt.Sprintf("node %s holds the leader key", snap.leader.node)
			}
			c.mu.Unlock()
			c.grant()
			c.setVerdict("not the leader: " + snap.leader.node + " holds the key")
			return nil
		}
		v := DecideCampaign(c.campaignInput(st, snap, false))
		if !v.Campaign {
			c.setVerdict("not reclaiming the leader key: " + v.Reason)
			return nil
		}
		return c.campaign(ctx, sess)
	}
	return c.maintainSync(ctx, e, st, snap)
}

// maintainSync moves the recorded sync set and the node's ack set towards
// WantAckSet, one PlanSync step per round.
func (c *Coordinator) maintainSync(ctx context.Context, e *concurrency.Election, st NodeStatus, snap *snapshot) error {
	acked := map[string]uint64{}
	var peers []PeerView
	for _, p := range st.Peers {
		acked[p.Name] = p.Acked
		peers = append(peers, PeerView{Name: p.Name, InSync: p.InSync})
	}
	c.mu.Lock()
	if c.switchSeq == 0 {
		c.switchSeq = st.LastSeq
	}
	in := SyncInput{Mode: st.Mode, Recorded: snap.sync, Current: st.AckSet,
		Want: WantAckSet(st.Mode, st.SyncAcks, st.AllowDegraded, peers), Acked: acked, SwitchSeq: c.switchSeq}
	c.mu.Unlock()
	covered := Covers(snap.sync, st.Mode, st.AckSet)
	c.mu.Lock()
	changed := c.syncOK != covered
	c.syncOK = covered
	c.mu.Unlock()
	if changed {
		c.grant()
	}
	step := PlanSync(in)
	switch {
	case step.Write != nil:
		w := *step.Write
		w.Epoch = st.Epoch
		tctx, cancel := c.opCtx(ctx)
		resp, err := c.cli.Txn(tctx).If(
			clientv3.Compare(clientv3.CreateRevision(e.Key()), "=", e.Rev()),
			unchanged(c.keys.Sync(), snap.sync.modRev()),
		).Then(clientv3.OpPut(c.keys.Sync(), encode(w))).Commit()
		cancel()
		if err != nil {
			return fmt.Errorf("write sync set: %w", err)
		}
		if resp.Succeeded {
			c.log.Info("sync set recorded", "members", w.Members, "k", w.K, "why", step.Reason)
			c.poke()
		}
	case step.SetAck != nil:
		if err := c.node.SetAckSet(ctx, *step.SetAck); err != nil {
			return fmt.Errorf("set ack set: %w", err)
		}
		c.mu.Lock()
		c.switchSeq = c.node.Status().LastSeq
		c.mu.Unlock()
		c.log.Info("ack set changed", "members", step.SetAck.Members, "k", step.SetAck.K)
		c.poke()
	}
	return nil
}

// leaseLoop renews the leader's lease every TTL/3 (retrying every Poll
// after a failure), stamping each renewal with the time it was sent, and
// re-grants the node's write deadline every Poll whether or not etcd
// answers.
func (c *Coordinator) leaseLoop(ctx context.Context) {
	var next time.Time
	var term *concurrency.Election
	for {
		c.mu.Lock()
		e, sess := c.elect, c.sess
		c.mu.Unlock()
		if e != term {
			term, next = e, time.Time{} // a new term renews at once
		}
		now := c.clock.Now()
		if e != nil && sess != nil && !now.Before(next) {
			rctx, cancel := c.opCtx(ctx)
			resp, err := c.cli.KeepAliveOnce(rctx, sess.Lease())
			cancel()
			c.mu.Lock()
			switch {
			case c.elect != e:
			case err == nil:
				c.renewed = now
				c.ttl = time.Duration(resp.TTL) * time.Second
				next = now.Add(c.cfg.TTL / 3)
			case errors.Is(err, rpctypes.ErrLeaseNotFound):
				c.loseLocked("etcd says the leader lease expired")
			default:
				next = now.Add(c.cfg.Poll)
			}
			c.mu.Unlock()
		}
		c.grant()
		select {
		case <-ctx.Done():
			return
		case <-c.clock.After(c.cfg.Poll):
		}
	}
}

// grant computes the write deadline (DecideLease) and gives it to the
// node when it changed.
func (c *Coordinator) grant() {
	st := c.node.Status()
	if st.Role != RolePrimary {
		return
	}
	now := c.clock.Now()
	c.mu.Lock()
	in := LeaseInput{Now: now, Renewed: c.renewed, TTL: c.ttl, Lost: c.lost, Failsafe: !c.cfg.NoFailsafe,
		Confirmed: map[string]time.Time{}, Rules: c.cfg.rules()}
	if c.lastSnap != nil {
		in.Sync = c.lastSnap.sync
	}
	if in.TTL == 0 || in.TTL > c.cfg.TTL {
		in.TTL = c.cfg.TTL
	}
	for _, p := range st.Peers {
		if p.SinceConfirm >= 0 {
			in.Confirmed[p.Name] = now.Add(-p.SinceConfirm)
		}
	}
	var v LeaseVerdict
	switch {
	case c.hold != "":
		v = LeaseVerdict{Reason: c.hold}
	case c.lost == "" && c.renewed.IsZero():
		v = LeaseVerdict{Reason: "not (yet) the leader in etcd"}
	case c.elect != nil && !c.syncOK:
		v = LeaseVerdict{Reason: "the sync set in etcd does not cover the ack set yet"}
	default:
		v = DecideLease(in)
	}
	if v.Until.Equal(c.granted) && v.Reason == c.grantReason {
		c.mu.Unlock()
		return
	}
	wasServing := c.granted.After(now)
	serving := v.Until.After(now)
	fs := v.Failsafe && !c.failsafe
	c.granted, c.grantReason, c.failsafe = v.Until, v.Reason, v.Failsafe
	c.mu.Unlock()
	c.node.SetWriteLease(v.Until, v.Reason)
	switch {
	case wasServing && !serving:
		c.log.Error("fenced: this primary completes no writes", "reason", v.Reason)
		c.event("fenced", st.Epoch, v.Reason)
	case !wasServing && serving:
		c.log.Info("writes allowed", "until", v.Until.Sub(now).Round(time.Millisecond), "failsafe", v.Failsafe)
		c.event("unfenced", st.Epoch, "")
	}
	if fs {
		c.log.Warn("failsafe: etcd does not confirm the lease; serving on the confirmations of every mirror of the sync set", "members", in.Sync.Members)
	}
}

// sessionLease is the current session's lease (tests).
func (c *Coordinator) sessionLease() clientv3.LeaseID {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.sess == nil {
		return clientv3.NoLease
	}
	return c.sess.Lease()
}
