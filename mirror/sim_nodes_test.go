package mirror

// The whole-node simulation: real drivers (Node, Replication, Volume,
// Mirror, Responder, promotion and demotion) over the in-memory network
// (simnet_test.go) and crashable in-memory disks (simfs_test.go), in a
// testing/synctest bubble with fake time. A seed draws the cluster (1
// primary and 1-3 mirrors, mode, K, ack level, timings) and a schedule of
// events: client writes, flushes and cancellations, time passing, cut
// connections, partitions, slow links, process crashes, power losses,
// crashes in the middle of a node's file operations, restarts, failovers,
// split brains, demotions. Every event is applied at a quiescent point
// (synctest.Wait: every goroutine durably blocked), so a schedule replays.
// After the schedule the faults heal, an operator's resolution follows
// (one primary, the others mirrors) and the cluster must converge.
//
// Invariants (sim_check_test.go): see simWorld.check and the functions it
// calls.
//
//	go test ./mirror -run TestSimNodes                      # the CI seed set
//	go test ./mirror -run TestSimNodes -sim.seed=N -sim.v   # replay one seed, with its events
//	go test ./mirror -run TestSimNodes -sim.seed=N -sim.schedule='...'  # replay a (shrunk) schedule
//	go test ./mirror -run TestSimSoak -sim.soak=10m         # random seeds for ten minutes

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"time"

	"github.com/blockmirror/blockmirror/internal/vfs"
	"github.com/blockmirror/blockmirror/journal"
	"github.com/blockmirror/blockmirror/mirror/core"
	"github.com/blockmirror/blockmirror/mirror/wire"
)

var (
	simSeedFlag      = flag.Uint64("sim.seed", 0, "TestSimNodes: run only this seed")
	simCountFlag     = flag.Int("sim.n", 0, "TestSimNodes: number of seeds (default simCISeeds, fewer with -short)")
	simFirstFlag     = flag.Uint64("sim.first", 1, "TestSimNodes: the first seed of the -sim.n seeds (a sweep past the ones CI runs)")
	simIndirectFlag  = flag.Int("sim.indirect", -1, "TestSimNodes: VolumeOptions.IndirectMin for every seed (0: the path off) instead of the seed's draw")
	simScheduleFlag  = flag.String("sim.schedule", "", "TestSimNodes: with -sim.seed, replay this schedule instead of the seed's")
	simVerboseFlag   = flag.Bool("sim.v", false, "TestSimNodes: log every event and the nodes' log lines")
	simSoakFlag      = flag.Duration("sim.soak", 0, "TestSimSoak: run random seeds for this long")
	simShrinkFlag    = flag.Bool("sim.shrink", true, "TestSimNodes: shrink a failing schedule")
	simProcsFlag     = flag.Int("sim.procs", 1, "TestSimNodes: GOMAXPROCS while it runs (above 1 goroutines race for real: more interleavings, replays not exact)")
	simLeaksFlag     = flag.Bool("sim.leaks", false, "TestSimNodes: at the end of a run, print the goroutines still in its bubble")
	simKeepGoingFlag = flag.Bool("sim.keepgoing", false, "TestSimNodes: run every seed and list the failing ones (no shrinking)")
)

const (
	simCISeeds   = 500
	simShortSeed = 60
	simBlock     = 4096
	simBlocks    = 64 // the volume: 256 KiB, four resync chunks
	simSize      = simBlocks * simBlock
	simHot       = 24 // writes go to the first simHot blocks
	// simActivityExtent: four blocks, so an unclean start marks the
	// extents its last writes touched, not the whole disk (production's
	// 64 MiB extent would), and a resync after it uses a partial bitmap.
	simActivityExtent = 4 * simBlock
	simDir            = "/d"
	simVolName        = "v"
)

// simParams is the cluster a seed draws.
type simParams struct {
	mirrors    int
	k          int
	mode       wire.Mode
	level      wire.AckLevel
	degraded   bool
	maxLag     time.Duration
	journalMax int64         // > 0: small, so records a mirror lacks are dropped
	queueBytes int64         // > 0: small, so writes wait for room
	ckpt       time.Duration // the volume's checkpoint interval
	mirrorCkpt time.Duration
	indirect   int   // VolumeOptions.IndirectMin (0: off)
	tailBytes  int64 // > 0: a small journal memory tail, so senders read records (indirect ones too) from the files
	// lanes is the primaries' ReplicationOptions.Lanes (0: 1). Lanes on
	// separate simulated connections, each with its own delays, bring
	// frames out of order to the mirror's merge.
	lanes int
	// inFlight is the primaries' ReplicationOptions.MaxInFlight (0: the
	// default); small, writers wait for the mirrors' acks.
	inFlight int
}

func (p simParams) String() string {
	return fmt.Sprintf("mirrors=%d k=%d mode=%v level=%v degraded=%v maxlag=%v journalmax=%d queue=%d ckpt=%v/%v indirect=%d tail=%d lanes=%d inflight=%d",
		p.mirrors, p.k, p.mode, p.level, p.degraded, p.maxLag, p.journalMax, p.queueBytes, p.ckpt, p.mirrorCkpt, p.indirect, p.tailBytes, max(p.lanes, 1), p.inFlight)
}

func drawParams(rng *rand.Rand) simParams {
	var p simParams
	p.mirrors = 1 + rng.IntN(3)
	p.k = 1 + rng.IntN(p.mirrors)
	p.mode = wire.ModeSync
	if rng.IntN(3) == 0 {
		p.mode = wire.ModeAsync
		p.maxLag = []time.Duration{0, 50 * time.Millisecond, time.Second}[rng.IntN(3)]
	}
	p.level = wire.AckLevel(1 + rng.IntN(3))
	p.degraded = p.mode == wire.ModeSync && rng.IntN(4) == 0
	if rng.IntN(4) == 0 {
		p.journalMax = 96 << 10
	}
	if rng.IntN(4) == 0 {
		p.queueBytes = 8 << 10
	}
	p.ckpt = []time.Duration{50 * time.Millisecond, 300 * time.Millisecond, 2 * time.Second}[rng.IntN(3)]
	p.mirrorCkpt = []time.Duration{100 * time.Millisecond, time.Second}[rng.IntN(2)]
	if rng.IntN(3) != 0 {
		p.indirect = []int{simBlock, 2 * simBlock}[rng.IntN(2)]
	}
	if rng.IntN(3) == 0 {
		p.tailBytes = 8 << 10
	}
	return p
}

// simWrite is one client request and what became of it.
type simWrite struct {
	id     uint64
	node   string
	inc    int
	epoch  uint64 // the primary's epoch when it was issued
	kind   simKind
	block  int
	blocks int
	fua    bool
	data   []byte

	cancel context.CancelFunc
	issued time.Time
	// issuedN and doneN order requests logically (many happen at one
	// instant of fake time): a tick of simWorld.clock each.
	issuedN, doneN uint64

	// set by the volume's onSubmit
	seq    uint64
	branch uint64 // the history entry (epoch branch) its seq belongs to
	// barrier (flush): the highest seq submitted before it was issued
	barrier uint64

	finished  bool
	stale     bool // acknowledged while a higher epoch than its primary's existed
	done      time.Time
	err       error
	cancelled bool
	// heldBy: the nodes whose journal held it durably, true where it
	// got there as a mirror's (received, not written as primary).
	heldBy map[string]bool
}

type simKind uint8

const (
	kWrite simKind = iota
	kZero
	kTrim
	kFlush
)

func (k simKind) String() string { return [...]string{"write", "zero", "trim", "flush"}[k] }

type simWriteKey struct{}

// simNode is one machine: its disk survives every incarnation of its
// process; a power loss replaces it by what the disk held durably.
type simNode struct {
	w    *simWorld
	name string
	mem  *vfs.MemFS
	role string // "primary", "mirror" or "down"
	cur  *simInc
	ninc int

	prev      *simInc // the incarnation before, if it crashed
	prevPower bool    // ... with a power loss
	// powerLostN is simWorld.clock when it last lost power as a mirror:
	// what it had acknowledged at level written before may be gone.
	powerLostN uint64
	fencedIn   uint64 // the epoch in which it was seen fenced as primary
	armedPower bool   // the armed crash is a power loss
	resynced   int64  // resync chunks its finished mirror incarnations wrote
	splitBrain bool   // it reported a split brain (as a mirror)
	ioErr      bool   // an I/O error was injected: the operator restarts it when the faults heal
}

// simInc is one incarnation of a node's process. Its hooks run in the
// process's goroutines; once it is dead (w.mu) they are ignored: a
// crashed process does nothing more.
type simInc struct {
	n    *simNode
	id   int
	disk *simDisk
	dead bool

	// as primary
	node     *Node
	repl     *Replication
	vol      *Volume
	respStop context.CancelFunc
	hist     []wire.EpochStart
	epoch    uint64
	lastSub  uint64 // highest seq submitted
	clients  sync.WaitGroup

	// promoting: the node of a mirror whose promotion is starting it as a
	// primary (neither m nor node is set meanwhile); a crash there leaves
	// it the only view of what this incarnation's journal held.
	promoting *Node

	// as mirror
	m       *Replica
	mStop   context.CancelFunc
	mDone   chan struct{} // closed when Run returned (with runErr)
	runErr  error
	applied uint64 // the applier's last applied seq (onApply)
	fork    uint64 // records after it were quarantined (forked); none may be applied until a reset
	forked  bool
	// quarantines: what quarantines since the last quiescent point had to
	// set aside (checkQuarantines checks the files there).
	quarantines []simQuarantine
	// armAtResync (under w.mu): arms its disk when its next resync begins
	// (an armresync event).
	armAtResync func()

	heldScan     uint64 // durable seqs already credited to the writes' heldBy
	ackedWritten uint64 // highest seq counted on it as acked at level written (I1')
	ackedDurable uint64
}

// simWorld is one schedule's cluster and model.
type simWorld struct {
	seed  uint64
	p     simParams
	net   *simNet
	nodes []*simNode
	log   *slog.Logger
	trace []string
	start time.Time

	mu          sync.Mutex // guards the model below (clients and hooks update it)
	fail        string     // the first invariant violation
	writes      []*simWrite
	truth       map[[2]uint64]*simWrite // (branch id, seq) → the record
	nextID      uint64
	clock       uint64                     // logical time of issues and completions
	ackers      map[uint64]map[string]bool // epoch → nodes that acknowledged writes in it
	split       map[uint64]bool            // epochs deliberately held by two primaries (split brain)
	powered     bool                       // a primary lost power: its image may hold strays
	lossy       bool                       // a failover chose a mirror lacking acked writes
	cutoff      map[uint64]time.Time       // branch → when a failover away from it began
	failovers   int
	lastHist    []wire.EpochStart // the history of the primary started last
	maxEpoch    uint64            // the highest epoch a primary has started in
	holders     map[uint64]string // epoch → the node that became primary in it
	quarantined int               // records found quarantined (checkQuarantines)
	reaped      sync.WaitGroup

	// armResync: an armresync event (and its index) that found no mirror
	// waiting for a resync; the first mirror that waits later is armed.
	armResync *simPendingArm
}

type simPendingArm struct {
	e simEvent
	i int
}

func (w *simWorld) failf(format string, args ...any) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.failLocked(format, args...)
}

func (w *simWorld) failLocked(format string, args ...any) {
	if w.fail == "" {
		w.fail = fmt.Sprintf("t=%v: ", time.Since(w.start).Truncate(time.Millisecond)) + fmt.Sprintf(format, args...)
	}
}

func (w *simWorld) failed() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.fail
}

func (w *simWorld) tracef(format string, args ...any) {
	line := fmt.Sprintf("%9v ", time.Since(w.start).Truncate(time.Millisecond)) + fmt.Sprintf(format, args...)
	w.trace = append(w.trace, line)
}

func (w *simWorld) primaries() []*simNode {
	var ps []*simNode
	for _, n := range w.nodes {
		if n.role == "primary" {
			ps = append(ps, n)
		}
	}
	return ps
}

func (w *simWorld) mirrors() []*simNode {
	var ms []*simNode
	for _, n := range w.nodes {
		if n.role == "mirror" {
			ms = append(ms, n)
		}
	}
	return ms
}

// current is the primary clients write to: the one of the highest epoch.
func (w *simWorld) current() *simNode {
	var best *simNode
	for _, n := range w.primaries() {
		if best == nil || n.cur.epoch > best.cur.epoch {
			best = n
		}
	}
	return best
}

// simParamsOf is the cluster seed draws.
// simParamsOf draws a seed's parameters. Its lane count comes from the
// seed itself, not from the generator, so that the other parameters (and
// the schedules) of the seeds found before lanes existed stay the same.
func simParamsOf(seed uint64) simParams {
	p := drawParams(rand.New(rand.NewPCG(seed, 0xb10c)))
	p.lanes = []int{1, 2, 4}[seed%3]
	if seed%2 == 0 {
		p.inFlight = 32 << 10
	}
	if *simIndirectFlag >= 0 {
		p.indirect = *simIndirectFlag
	}
	return p
}

func newSimWorld(seed uint64, p simParams, logw *strings.Builder) *simWorld {
	w := &simWorld{
		seed: seed, p: p, net: newSimNet(seed), start: time.Now(),
		truth: map[[2]uint64]*simWrite{}, ackers: map[uint64]map[string]bool{}, split: map[uint64]bool{},
		cutoff: map[uint64]time.Time{}, holders: map[uint64]string{},
	}
	w.log = slog.New(slog.DiscardHandler)
	if logw != nil {
		w.log = slog.New(slog.NewTextHandler(&lockedWriter{b: logw}, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	for i := 0; i <= w.p.mirrors; i++ {
		w.nodes = append(w.nodes, &simNode{w: w, name: fmt.Sprintf("n%d", i), mem: vfs.NewCrashableMem(), role: "down"})
	}
	return w
}

type lockedWriter struct {
	mu sync.Mutex
	b  *strings.Builder
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (c *simInc) nodeOptions(create bool) NodeOptions {
	w := c.n.w
	o := NodeOptions{Dir: simDir, FS: c.disk.fs, JournalSegment: 4 << 10, JournalMax: w.p.journalMax,
		Logger: w.log.With("node", c.n.name, "inc", c.id)}
	if create {
		o.Size, o.Role = simSize, RolePrimary
	}
	o.journalQueueBytes = w.p.queueBytes
	o.journalTailBytes = w.p.tailBytes
	o.activityExtent = simActivityExtent
	return o
}

// newInc starts a new incarnation of n's process on its disk.
func (n *simNode) newInc() *simInc {
	n.ninc++
	c := &simInc{n: n, id: n.ninc, disk: newSimDisk(n.mem)}
	n.w.mu.Lock()
	n.cur = c
	n.w.mu.Unlock()
	n.w.net.revive(n.name)
	return c
}

// boot starts n as its metadata says: primary, or mirror (also a node
// without a volume yet, which the first primary's hello defines).
func (n *simNode) boot() error {
	c := n.newInc()
	m, err := LoadMetaFS(c.disk.fs, simDir)
	switch {
	case errors.Is(err, ErrNoMeta):
		n.prev = nil
		return c.startMirror()
	case err != nil:
		return fmt.Errorf("%s: load metadata: %w", n.name, err)
	case m.Role == RolePrimary:
		node, err := OpenNode(context.Background(), c.nodeOptions(false))
		if err != nil {
			return fmt.Errorf("%s: open as primary: %w", n.name, err)
		}
		return c.startPrimary(node)
	}
	if err := c.startMirror(); err != nil {
		return err
	}
	n.w.checkRestart(n, n.prev, n.prevPower)
	n.prev = nil
	return nil
}

// createPrimary makes the volume on n and serves it.
func (n *simNode) createPrimary() error {
	c := n.newInc()
	node, err := OpenNode(context.Background(), c.nodeOptions(true))
	if err != nil {
		return err
	}
	return c.startPrimary(node)
}

// startPrimary serves node as cmd's serveNode does: replication to every
// other node, the volume, and a responder at the node's address that
// fences the volume when a primary of a higher epoch calls.
func (c *simInc) startPrimary(node *Node) error {
	n, w := c.n, c.n.w
	var peers []PeerAddr
	for _, o := range w.nodes {
		if o != n {
			peers = append(peers, PeerAddr{Name: o.name, Addr: o.name})
		}
	}
	log := w.log.With("node", n.name, "inc", c.id)
	repl, err := StartReplication(node, ReplicationOptions{
		Peers: peers, Mode: w.p.mode, SyncAcks: w.p.k, AckLevel: w.p.level, AllowDegraded: w.p.degraded,
		AckTimeout: time.Second, MaxLag: w.p.maxLag, NodeName: n.name, VolumeName: simVolName, Lanes: max(w.p.lanes, 1), MaxInFlight: w.p.inFlight, spreadAll: true,
		Pool: newConnPool(w.net.dialer(n.name, c.disk.isDead)), Resync: ResyncOptions{Window: 128 << 10}, Logger: log,
	})
	if err != nil {
		node.Close()
		return fmt.Errorf("%s: start replication: %w", n.name, err)
	}
	vol, err := NewVolume(node, repl, VolumeOptions{CheckpointInterval: w.p.ckpt, Logger: log, onSubmit: c.onSubmit, IndirectMin: w.p.indirect})
	if err != nil {
		repl.Close()
		node.Close()
		return fmt.Errorf("%s: new volume: %w", n.name, err)
	}
	m := node.Meta()
	w.mu.Lock()
	c.node, c.repl, c.vol = node, repl, vol
	c.hist, c.epoch, c.lastSub = m.History, m.Epoch, node.Journal.LastSeq()
	w.lastHist = m.History
	w.maxEpoch = max(w.maxEpoch, m.Epoch)
	// A promotion into an epoch another node already became primary in
	// (a mirror that did not know the newest epoch yet): a split brain by
	// the operator's choice; both sides may acknowledge in it.
	if h, ok := w.holders[m.Epoch]; ok && h != n.name {
		w.split[m.Epoch] = true
		w.tracef("%s primary in epoch %d, which %s held already: split brain", n.name, m.Epoch, h)
	}
	w.holders[m.Epoch] = n.name
	w.mu.Unlock()
	n.role = "primary"
	c.respStop = func() {}
	if ln, err := w.net.listen(n.name, n.name); err == nil {
		fence := func(epoch uint64) {
			vol.SetReadOnly(fmt.Errorf("%w (a node is primary in epoch %d)", ErrFenced, epoch))
			repl.Fence(epoch)
		}
		resp := newResponderOn(ln, n.name, node, fence, log)
		ctx, stop := context.WithCancel(context.Background())
		done := make(chan struct{})
		c.respStop = func() { stop(); <-done }
		go func() { defer close(done); resp.Run(ctx) }()
	}
	w.tracef("%s#%d up as primary: epoch %d, history %v, journal %d..%d", n.name, c.id, m.Epoch, m.History,
		node.Journal.FirstSeq(), node.Journal.LastSeq())
	return nil
}

func (c *simInc) startMirror() error {
	n, w := c.n, c.n.w
	ln, err := w.net.listen(n.name, n.name)
	if err != nil {
		return err
	}
	ctx, stop := context.WithCancel(context.Background())
	d, err := newReplicaOn(ctx, ln, ReplicaOptions{
		Name: n.name, Node: c.nodeOptions(false), Tick: 10 * time.Millisecond, CheckpointInterval: w.p.mirrorCkpt,
		Logger: w.log.With("node", n.name, "inc", c.id), onApply: c.onApply, onReset: c.onReset, onEmpty: c.onEmpty, onQuarantine: c.onQuarantine,
		onResyncBegin: c.onResyncBegin,
	})
	if err != nil {
		stop()
		ln.Close()
		return fmt.Errorf("%s: open as mirror: %w", n.name, err)
	}
	w.mu.Lock()
	c.m, c.mStop, c.mDone = d, stop, make(chan struct{})
	if d.Node() != nil {
		c.applied = d.applied()
	}
	w.mu.Unlock()
	n.role = "mirror"
	go func() {
		err := d.Run(ctx)
		w.mu.Lock()
		c.runErr = err
		w.mu.Unlock()
		close(c.mDone)
	}()
	w.tracef("%s#%d up as mirror", n.name, c.id)
	return nil
}

// onSubmit records a record the primary submitted: the ground truth of
// its branch. A (branch, seq) names one record forever.
func (c *simInc) onSubmit(ctx context.Context, rec journal.Record) {
	w := c.n.w
	wr, _ := ctx.Value(simWriteKey{}).(*simWrite)
	w.mu.Lock()
	defer w.mu.Unlock()
	if c.dead {
		return
	}
	e, _ := core.EntryOfSeq(c.hist, rec.Seq)
	c.lastSub = max(c.lastSub, rec.Seq)
	if wr == nil {
		w.failLocked("%s submitted seq %d without a client request", c.n.name, rec.Seq)
		return
	}
	key := [2]uint64{e.ID, rec.Seq}
	if old := w.truth[key]; old != nil && old != wr {
		w.failLocked("%s reused seq %d of branch %x (epoch %d): write %d had it, now write %d (a record is named by its branch and seq)",
			c.n.name, rec.Seq, e.ID, e.Epoch, old.id, wr.id)
		return
	}
	if rec.Epoch != e.Epoch {
		w.failLocked("%s submitted seq %d in epoch %d, its history says epoch %d", c.n.name, rec.Seq, rec.Epoch, e.Epoch)
	}
	wr.seq, wr.branch = rec.Seq, e.ID
	w.truth[key] = wr
}

// onApply checks each record a mirror applies: consecutive, and the very
// record its history names at that seq (never a quarantined one).
func (c *simInc) onApply(rec journal.Record) {
	w := c.n.w
	w.mu.Lock()
	d := c.m
	w.mu.Unlock()
	if d == nil {
		return
	}
	hist := d.Node().Meta().History
	e, _ := core.EntryOfSeq(hist, rec.Seq)
	w.mu.Lock()
	defer w.mu.Unlock()
	if c.dead {
		return
	}
	if c.forked && rec.Seq > c.fork {
		w.failLocked("%s applied seq %d, after the fork point %d it quarantined the journal's records after", c.n.name, rec.Seq, c.fork)
	}
	if c.applied != 0 && rec.Seq != c.applied+1 {
		w.failLocked("%s applied seq %d after %d: a record skipped or applied twice", c.n.name, rec.Seq, c.applied)
	}
	c.applied = rec.Seq
	wr := w.truth[[2]uint64{e.ID, rec.Seq}]
	if wr == nil || rec.Epoch != e.Epoch || !simSameRecord(wr, rec) {
		w.failLocked("%s applied seq %d (epoch %d) that is not its history's record there (branch %x of epoch %d; history %v)",
			c.n.name, rec.Seq, rec.Epoch, e.ID, e.Epoch, hist)
	}
}

// simQuarantine is a quarantine decision and the records it must keep.
type simQuarantine struct {
	fork uint64
	held []simHeld
}

type simHeld struct {
	wr       *simWrite
	asMirror bool // received as a mirror
}

func (c *simInc) onQuarantine(fork uint64) {
	w := c.n.w
	w.mu.Lock()
	if !c.forked || fork < c.fork {
		c.fork, c.forked = fork, true
	}
	// What the journal held durably after the fork, as of now (the file
	// is written already): all of it must be in the quarantine.
	q := simQuarantine{fork: fork}
	for _, wr := range w.writes {
		if asMirror, ok := wr.heldBy[c.n.name]; ok && wr.seq > fork {
			q.held = append(q.held, simHeld{wr, asMirror})
		}
	}
	c.quarantines = append(c.quarantines, q)
	w.mu.Unlock()
}

// onResyncBegin arms the power loss an armresync event left for this
// incarnation's next resync.
func (c *simInc) onResyncBegin() {
	w := c.n.w
	w.mu.Lock()
	arm := c.armAtResync
	c.armAtResync = nil
	w.mu.Unlock()
	if arm != nil {
		arm()
	}
}

// onEmpty: a resync's reset empties the journal next. What it held is
// the session primary's (up to the fork) or was quarantined already; a
// crash before the reset completes may leave the journal empty (the
// restart then continues after the checkpoint), so the node no longer
// counts as holding those records from here on.
func (c *simInc) onEmpty() {
	w := c.n.w
	w.mu.Lock()
	for _, wr := range w.writes {
		delete(wr.heldBy, c.n.name)
	}
	w.mu.Unlock()
}

func (c *simInc) onReset(from, applied uint64) {
	w := c.n.w
	w.mu.Lock()
	c.forked = false
	c.applied, c.heldScan = applied, from-1
	// The journal is empty now: what it held is the primary's (up to the
	// fork) or quarantined (checked when it was).
	for _, wr := range w.writes {
		delete(wr.heldBy, c.n.name)
	}
	c.ackedWritten, c.ackedDurable = 0, 0
	w.mu.Unlock()
}

func simSameRecord(wr *simWrite, rec journal.Record) bool {
	switch wr.kind {
	case kWrite:
		return rec.Op == journal.OpWrite && rec.Offset == uint64(wr.block*simBlock) && string(rec.Data) == string(wr.data)
	case kZero:
		return rec.Op == journal.OpZero && rec.Offset == uint64(wr.block*simBlock)
	case kTrim:
		return rec.Op == journal.OpTrim && rec.Offset == uint64(wr.block*simBlock)
	}
	return false
}

// stop ends n's incarnation: cleanly (client requests end first, as the
// NBD server waits for them; then the same shutdown as the daemon's) or
// as a crash (nothing it does from now on reaches its disk or the
// network; its goroutines are reaped in the background). With power, the
// disk keeps only what was durable (unsynced writes lost or torn,
// directory entries not synced gone).
func (n *simNode) stop(clean, power bool, rng *rand.Rand) {
	w, c := n.w, n.cur
	if n.role == "down" || c == nil {
		return
	}
	if !clean {
		c.disk.kill()
		w.net.silence(n.name, rng)
	}
	w.mu.Lock()
	c.dead = !clean
	if power && n.role == "primary" {
		w.powered = true
	}
	if power && n.role == "mirror" {
		w.clock++
		n.powerLostN = w.clock
	}
	for _, wr := range w.writes {
		if wr.node == n.name && wr.inc == c.id && !wr.finished {
			wr.cancel()
		}
	}
	w.mu.Unlock()
	var finish func()
	switch n.role {
	case "primary":
		finish = func() {
			c.clients.Wait()
			c.respStop()
			c.vol.Close()
			c.repl.Close()
			c.node.Close()
		}
	case "mirror":
		if c.m != nil {
			n.resynced += c.m.Status().ResyncChunks
		}
		finish = func() { c.mStop(); <-c.mDone }
	}
	if clean {
		finish()
		w.mu.Lock()
		c.dead = true
		w.mu.Unlock()
	} else {
		w.reaped.Add(1)
		go func() { defer w.reaped.Done(); finish() }()
	}
	if power {
		n.mem = n.mem.CrashClone(rng)
	}
	n.prev, n.prevPower = nil, false
	if !clean && n.role == "mirror" {
		n.prev, n.prevPower = c, power
	}
	n.role = "down"
}
