package mirror

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/blockmirror/blockmirror/mirror/wire"
)

// simOp is the kind of a schedule event.
type simOp uint8

const (
	evWrite     simOp = iota // a write of n blocks at block a (FUA with f)
	evZero                   // write zeroes at block a
	evTrim                   // trim block a
	evFlush                  // a flush
	evCancel                 // cancel the a-th request in flight
	evSleep                  // let d pass
	evCut                    // cut the connections between nodes a and b
	evPart                   // partition nodes a and b (until heal)
	evHeal                   // heal every partition
	evSlow                   // add d to the delay between a and b
	evCrash                  // crash node a's process (power loss with f)
	evArm                    // node a dies at its n-th next file change (power loss with f)
	evRestart                // start node a again if it is down
	evBounce                 // stop node a cleanly and start it again
	evFailover               // promote the best mirror (crash the primary first with f)
	evDemote                 // demote a primary older than the current one, or a split brain's loser
	evSplit                  // split brain: cut two mirrors off and promote both
	evIOErr                  // node a's next store write (journal write with f) fails with EIO
	evArmResync              // a mirror waiting for a resync loses power at the n-th file change of that resync
	simOps
)

var simOpNames = [...]string{"w", "z", "t", "flush", "cancel", "s", "cut", "part", "heal", "slow", "crash", "arm", "restart",
	"bounce", "failover", "demote", "split", "eio", "armresync"}

// simEvent is one event of a schedule. Node and block arguments are taken
// modulo what exists when it is applied; an event that does not apply
// then (a crash of a node that is down) does nothing, so any sub-list of
// a schedule is a schedule (the shrinker relies on it).
type simEvent struct {
	op   simOp
	a, b int
	n    int
	d    time.Duration
	f    bool
}

func (e simEvent) String() string {
	s := simOpNames[e.op]
	switch e.op {
	case evWrite:
		s += strconv.Itoa(e.a)
		if e.n > 1 {
			s += "x" + strconv.Itoa(e.n)
		}
	case evZero, evTrim, evCancel, evRestart, evBounce, evFailover, evDemote, evIOErr:
		s += strconv.Itoa(e.a)
	case evSleep:
		s += e.d.String()
	case evCut, evPart:
		s += fmt.Sprintf("%d-%d", e.a, e.b)
	case evSlow:
		s += fmt.Sprintf("%d-%d:%v", e.a, e.b, e.d)
	case evCrash:
		s += strconv.Itoa(e.a)
	case evArm, evArmResync:
		s += fmt.Sprintf("%d:%d", e.a, e.n)
	}
	if e.f {
		s += "!"
	}
	return s
}

func formatSchedule(evs []simEvent) string {
	parts := make([]string, len(evs))
	for i, e := range evs {
		parts[i] = e.String()
	}
	return strings.Join(parts, " ")
}

// parseSchedule reads what formatSchedule wrote.
func parseSchedule(s string) ([]simEvent, error) {
	var evs []simEvent
	for _, tok := range strings.Fields(s) {
		var e simEvent
		if strings.HasSuffix(tok, "!") {
			e.f, tok = true, strings.TrimSuffix(tok, "!")
		}
		op := -1
		for i, name := range simOpNames { // longest name that prefixes tok
			if strings.HasPrefix(tok, name) && (op < 0 || len(name) > len(simOpNames[op])) {
				op = i
			}
		}
		if op < 0 {
			return nil, fmt.Errorf("schedule: unknown event %q", tok)
		}
		e.op = simOp(op)
		arg := tok[len(simOpNames[op]):]
		var err error
		switch e.op {
		case evWrite:
			a, n, _ := strings.Cut(arg, "x")
			if e.a, err = strconv.Atoi(a); err == nil {
				e.n = 1
				if n != "" {
					e.n, err = strconv.Atoi(n)
				}
			}
		case evZero, evTrim, evCancel, evRestart, evBounce, evFailover, evDemote, evCrash, evIOErr:
			e.a, err = strconv.Atoi(arg)
		case evSleep:
			e.d, err = time.ParseDuration(arg)
		case evCut, evPart:
			_, err = fmt.Sscanf(arg, "%d-%d", &e.a, &e.b)
		case evSlow:
			pair, d, _ := strings.Cut(arg, ":")
			if _, err = fmt.Sscanf(pair, "%d-%d", &e.a, &e.b); err == nil {
				e.d, err = time.ParseDuration(d)
			}
		case evArm, evArmResync:
			_, err = fmt.Sscanf(arg, "%d:%d", &e.a, &e.n)
		}
		if err != nil {
			return nil, fmt.Errorf("schedule: event %q: %v", tok, err)
		}
		evs = append(evs, e)
	}
	return evs, nil
}

// drawSchedule is the seed's schedule.
func drawSchedule(seed uint64) []simEvent {
	rng := rand.New(rand.NewPCG(seed, 0x5c4ed))
	faults := []int{0, 1, 3, 6}[rng.IntN(4)] // how faulty this schedule is
	// A third of the schedules are about failover: promotions, crashes and
	// restarts of primaries, demotions, more often.
	failovers := rng.IntN(3) == 0
	if failovers {
		faults = max(faults, 3)
	}
	n := 40 + rng.IntN(120)
	evs := make([]simEvent, 0, n)
	for len(evs) < n {
		var e simEvent
		e.a, e.b = rng.IntN(4), rng.IntN(4)
		x := rng.IntN(100)
		if x >= 100-faults*4 {
			y := rng.IntN(100)
			if failovers && y < 30 {
				y = 84 + y%16 // failover, demote, split
			}
			switch {
			case y < 18:
				e.op = evCut
			case y < 27:
				e.op = evPart
			case y < 33:
				e.op = evHeal
			case y < 37:
				e.op, e.d = evSlow, time.Duration(1+rng.IntN(50))*time.Millisecond
			case y < 51:
				e.op, e.f = evCrash, rng.IntN(2) == 0
			case y < 57:
				e.op, e.n, e.f = evArm, 1+rng.IntN(30), rng.IntN(2) == 0
			case y < 63:
				e.op, e.n = evArmResync, 1+rng.IntN(40)
			case y < 66:
				e.op, e.f = evIOErr, rng.IntN(3) == 0
			case y < 77:
				e.op = evRestart
			case y < 84:
				e.op = evBounce
			case y < 92:
				e.op, e.f = evFailover, rng.IntN(2) == 0
			case y < 97:
				e.op = evDemote
			default:
				e.op = evSplit
			}
			evs = append(evs, e)
			continue
		}
		switch {
		case x < 38:
			e.op, e.a, e.n, e.f = evWrite, rng.IntN(simHot), 1+rng.IntN(4)/3, rng.IntN(6) == 0
		case x < 41:
			e.op, e.a = evZero, rng.IntN(simHot)
		case x < 43:
			e.op, e.a = evTrim, rng.IntN(simHot)
		case x < 47:
			e.op = evFlush
		case x < 51:
			e.op, e.a = evCancel, rng.IntN(8)
		default:
			e.op = evSleep
			e.d = []time.Duration{time.Millisecond, 3 * time.Millisecond, 10 * time.Millisecond, 50 * time.Millisecond,
				200 * time.Millisecond, 700 * time.Millisecond, 3 * time.Second}[rng.IntN(7)]
		}
		evs = append(evs, e)
	}
	return evs
}

// simResult is how one schedule ended.
type simResult struct {
	err      string // the first violated invariant ("" if none)
	events   int    // events applied
	writes   int
	acked    int
	failover int
	crashes  int
	resyncs  int64
	quar     int
	simTime  time.Duration // simulated (fake) time the schedule took
	// the end state, for scenarios (sim_scenario_test.go)
	nodes map[string]simNodeEnd
	epoch uint64 // the final primary's
}

// simNodeEnd is what a scenario can assert about a node at the end.
type simNodeEnd struct {
	role        string
	fenced      bool  // seen fenced as a primary
	quarantined int   // quarantine reports on its disk
	resynced    int64 // resync chunks it wrote (all incarnations)
	splitBrain  bool  // it reported a split brain as a mirror
}

// runSchedule runs one schedule in its own synctest bubble. It reports
// through its result, never through t (the shrinker runs failing
// schedules on purpose); a bubble that deadlocks is a result too.
func runSchedule(t *testing.T, seed uint64, p simParams, evs []simEvent, logw *strings.Builder) (res simResult) {
	var trace []string
	defer func() {
		if r := recover(); r != nil {
			if res.err != "" {
				res.err += "\n(and then: " + fmt.Sprint(r) + ")"
			} else {
				res.err = fmt.Sprintf("panic: %v", r)
			}
		}
		if logw != nil {
			logw.WriteString("---- schedule trace\n" + strings.Join(trace, "\n") + "\n")
		}
	}()
	synctest.Test(t, func(*testing.T) {
		w := newSimWorld(seed, p, logw)
		defer func() { trace = w.trace }()
		t0 := time.Now() // the bubble's fake clock
		res = w.run(evs)
		res.simTime = time.Since(t0)
	})
	return res
}

func (w *simWorld) run(evs []simEvent) (res simResult) {
	defer func() {
		res.err = w.failed()
		res.nodes = map[string]simNodeEnd{}
		if cur := w.current(); cur != nil {
			res.epoch = cur.cur.epoch
		}
		for _, n := range w.nodes {
			e := simNodeEnd{role: n.role, fenced: n.fencedIn != 0, resynced: n.resynced, splitBrain: n.splitBrain}
			if n.role == "mirror" && n.cur.m != nil {
				e.resynced += n.cur.m.Status().ResyncChunks
			}
			names, _ := n.mem.ReadDir(filepath.Join(simDir, "quarantine"))
			for _, name := range names {
				if strings.HasSuffix(name, ".json") {
					e.quarantined++
				}
			}
			res.nodes[n.name] = e
		}
		w.mu.Lock()
		res.writes = len(w.writes)
		for _, wr := range w.writes {
			if wr.finished && wr.err == nil {
				res.acked++
			}
		}
		w.mu.Unlock()
		w.teardown()
		if res.err == "" {
			res.err = w.failed()
		}
	}()
	if err := w.nodes[0].createPrimary(); err != nil {
		w.failf("create the primary: %v", err)
		return res
	}
	for _, n := range w.nodes[1:] {
		if err := n.boot(); err != nil {
			w.failf("start %s: %v", n.name, err)
			return res
		}
	}
	for i, e := range evs {
		synctest.Wait()
		w.observe()
		if w.failed() != "" {
			return res
		}
		if a := w.armResync; a != nil && w.armWaitingMirror(a.e, a.i) {
			w.armResync = nil
		}
		res.events++
		w.apply(i, e, &res)
	}
	synctest.Wait()
	w.observe()
	if w.failed() != "" {
		return res
	}
	w.settle(&res)
	return res
}

func (w *simWorld) eventRand(i int) *rand.Rand {
	return rand.New(rand.NewPCG(w.seed, uint64(i)*0x9e3779b9+7))
}

func (w *simWorld) apply(i int, e simEvent, res *simResult) {
	rng := w.eventRand(i)
	node := func(k int) *simNode { return w.nodes[k%len(w.nodes)] }
	if e.op != evSleep {
		w.tracef("event %d: %v", i, e)
	}
	switch e.op {
	case evWrite:
		w.issue(kWrite, e.a%simHot, max(1, e.n), e.f, rng)
	case evZero:
		w.issue(kZero, e.a%simHot, 1, e.f, rng)
	case evTrim:
		w.issue(kTrim, e.a%simHot, 1, e.f, rng)
	case evFlush:
		w.issue(kFlush, 0, 0, false, rng)
	case evCancel:
		w.mu.Lock()
		var open []*simWrite
		for _, wr := range w.writes {
			if !wr.finished && !wr.cancelled {
				open = append(open, wr)
			}
		}
		if len(open) > 0 {
			wr := open[e.a%len(open)]
			wr.cancelled = true
			wr.cancel()
		}
		w.mu.Unlock()
	case evSleep:
		time.Sleep(e.d)
	case evCut:
		a, b := node(e.a), node(e.b)
		if a != b {
			w.net.cut(a.name, b.name)
		}
	case evPart:
		a, b := node(e.a), node(e.b)
		if a != b {
			w.net.partition(a.name, b.name, rng)
		}
	case evHeal:
		w.net.heal()
	case evSlow:
		a, b := node(e.a), node(e.b)
		if a != b {
			w.net.slow(a.name, b.name, e.d)
		}
	case evCrash:
		n := node(e.a)
		if n.role != "down" {
			res.crashes++
			n.stop(false, e.f, rng)
			w.tracef("%s crashed (power loss %v)", n.name, e.f)
		}
	case evArm:
		n := node(e.a)
		if n.role != "down" {
			n.armedPower = e.f
			c := n.cur
			// The process dies at that operation: from then on nothing it
			// does is seen, on its disk (simDisk) or on the network.
			n.cur.disk.arm(e.n, func() {
				w.mu.Lock()
				c.dead = true
				w.mu.Unlock()
				w.net.silence(n.name, rand.New(rand.NewPCG(w.seed, uint64(c.id)<<8|uint64(i))))
			})
		}
	case evRestart:
		n := node(e.a)
		if n.role == "down" {
			if err := n.boot(); err != nil {
				w.failf("%v", err)
			}
		}
	case evBounce:
		n := node(e.a)
		if n.role != "down" && w.current() != n {
			n.stop(true, false, rng)
			if err := n.boot(); err != nil {
				w.failf("restart %s after a clean stop: %v", n.name, err)
			}
		}
	case evFailover:
		if w.failover(e, rng) {
			res.failover++
		}
	case evDemote:
		w.demoteOne(e.a)
	case evSplit:
		w.splitBrain(rng)
	case evIOErr:
		n := node(e.a)
		if n.role != "down" {
			target := "disk.img"
			if e.f {
				target = "journal"
			}
			n.cur.disk.failNextWrite(target)
			n.ioErr = true
		}
	case evArmResync:
		// If no mirror waits for a resync now, the first that does before
		// a later event is armed then (the event would rarely find one).
		if !w.armWaitingMirror(e, i) {
			w.armResync = &simPendingArm{e: e, i: i}
			w.tracef("armresync pending: no mirror waits for a resync yet")
		}
	}
}

// armWaitingMirror arms a mirror about to be resynced — it waits for one
// (diverged, or interrupted), or its primary has not got it in sync — to
// lose power at the e.n-th file change from the start of its next resync
// (counted from then, so that the reset's steps — checkpoint, journal
// emptied and restarted, metadata — are where it lands, whatever the
// mirror does before). It reports whether one was.
func (w *simWorld) armWaitingMirror(e simEvent, i int) bool {
	notInSync := map[string]bool{}
	if p := w.current(); p != nil {
		for _, ps := range p.cur.repl.Status().Peers {
			notInSync[ps.Name] = ps.State != "in-sync"
		}
	}
	var waiting []*simNode
	for _, m := range w.mirrors() {
		if m.cur.m != nil && m.cur.m.Node() != nil {
			if meta := m.cur.m.Node().Meta(); meta.NeedsResync || meta.Inconsistent || notInSync[m.name] {
				waiting = append(waiting, m)
			}
		}
	}
	if len(waiting) == 0 {
		return false
	}
	n := waiting[e.a%len(waiting)]
	c := n.cur
	arm := func() {
		c.disk.arm(e.n, func() {
			w.mu.Lock()
			c.dead = true
			w.mu.Unlock()
			w.net.silence(n.name, rand.New(rand.NewPCG(w.seed, uint64(c.id)<<8|uint64(i))))
		})
	}
	n.armedPower = true
	w.mu.Lock()
	c.armAtResync = arm
	w.mu.Unlock()
	w.tracef("%s armed to lose power at the %d-th file change of its next resync", n.name, e.n)
	return true
}

// issue sends a client request to a primary: the current one mostly,
// sometimes an older one still serving (its clients do not know).
func (w *simWorld) issue(kind simKind, block, blocks int, fua bool, rng *rand.Rand) {
	p := w.current()
	if ps := w.primaries(); len(ps) > 1 && rng.IntN(4) == 0 {
		p = ps[rng.IntN(len(ps))]
	}
	if p == nil {
		return
	}
	c := p.cur
	w.mu.Lock()
	w.nextID++
	w.clock++
	wr := &simWrite{id: w.nextID, issuedN: w.clock, node: p.name, inc: c.id, epoch: c.epoch, kind: kind, block: block, blocks: blocks,
		fua: fua, issued: time.Now(), barrier: c.lastSub, heldBy: map[string]bool{}}
	if block+blocks > simBlocks {
		wr.blocks = simBlocks - block
	}
	if kind == kWrite {
		wr.data = simData(wr.id, wr.blocks*simBlock)
	}
	ctx, cancel := context.WithCancel(context.WithValue(context.Background(), simWriteKey{}, wr))
	wr.cancel = cancel
	w.writes = append(w.writes, wr)
	w.mu.Unlock()
	vol := c.vol
	c.clients.Add(1)
	go func() {
		defer c.clients.Done()
		off, n := int64(wr.block*simBlock), int64(wr.blocks*simBlock)
		var err error
		switch kind {
		case kWrite:
			err = vol.WriteAt(ctx, wr.data, off, fua)
		case kZero:
			err = vol.WriteZeroes(ctx, off, n, ZeroFlagsView{FUA: fua})
		case kTrim:
			err = vol.Trim(ctx, off, n, fua)
		case kFlush:
			err = vol.Flush(ctx)
		}
		cancel()
		w.complete(c, wr, err)
	}()
}

// simData is a write's content: its id in every 8 bytes, so a sector of
// it names its write.
func simData(id uint64, n int) []byte {
	b := make([]byte, n)
	for i := 0; i+8 <= n; i += 8 {
		b[i], b[i+1], b[i+2], b[i+3] = byte(id), byte(id>>8), byte(id>>16), byte(id>>24)
		b[i+4], b[i+5], b[i+6], b[i+7] = byte(id>>32), byte(i>>3), 0xb1, 0x0c
	}
	return b
}

// best is the mirror an operator promotes: consistent, not waiting for a
// resync, of the highest epoch, and the furthest along (the most
// acknowledged writes).
func (w *simWorld) best(exclude ...*simNode) *simNode {
	var best *simNode
	var bestSeq, bestEpoch uint64
	for _, n := range w.mirrors() {
		if slices.Contains(exclude, n) || n.cur.m == nil || n.cur.m.Node() == nil {
			continue
		}
		m := n.cur.m.Node().Meta()
		if m.Inconsistent || m.NeedsResync || m.Role != RoleMirror {
			continue
		}
		written, durable := n.cur.m.Node().Journal.Watermarks()
		seq := durable
		if w.p.level != wire.AckDurable {
			seq = written
		}
		if best == nil || m.Epoch > bestEpoch || m.Epoch == bestEpoch && seq > bestSeq {
			best, bestSeq, bestEpoch = n, seq, m.Epoch
		}
	}
	return best
}

// promote makes mirror n primary online (as `blockmirror promote --admin`
// does) and serves it.
func (w *simWorld) promote(n *simNode) error {
	c := n.cur
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := c.m.Promote(ctx, false); err != nil {
		return err
	}
	var err error
	select {
	case <-c.mDone:
		w.mu.Lock()
		err = c.runErr
		w.mu.Unlock()
	case <-ctx.Done():
		return fmt.Errorf("the mirror did not stop after its promotion")
	}
	if !errors.Is(err, ErrPromoted) {
		return fmt.Errorf("the mirror stopped with %v after its promotion", err)
	}
	node := c.m.Node()
	w.mu.Lock()
	c.m, c.promoting = nil, node
	w.mu.Unlock()
	err = c.startPrimary(node)
	w.mu.Lock()
	c.promoting = nil
	if err != nil && c.node == nil {
		c.promoting = node // it died starting: keep what its journal had
	}
	w.mu.Unlock()
	return err
}

// failover promotes the best mirror, after crashing the current primary
// (with e.f) or while it may still be serving (an operator who promotes
// during a partition).
func (w *simWorld) failover(e simEvent, rng *rand.Rand) bool {
	old := w.current()
	target := w.best()
	if target == nil {
		return false
	}
	if old != nil && e.f {
		old.stop(false, false, rng)
	}
	w.noteFailover(target)
	if err := w.promote(target); err != nil {
		w.tracef("promote %s refused: %v", target.name, err)
		return false
	}
	w.tracef("%s promoted to epoch %d", target.name, target.cur.epoch)
	return true
}

// noteFailover records a promotion of target: the branches of the primary
// it replaces may be cut from now on, and an acknowledged write the target
// lacks is lost by this choice (a mirror that had it is down, or is the
// other side of a split brain): not the promise's fault.
func (w *simWorld) noteFailover(target *simNode) {
	written, _ := target.cur.m.Node().Journal.Watermarks()
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, b := range w.lastHist {
		if _, ok := w.cutoff[b.ID]; !ok {
			w.cutoff[b.ID] = time.Now()
		}
	}
	w.failovers++
	for _, wr := range w.writes {
		if wr.finished && wr.err == nil && wr.seq > written && wr.node != target.name {
			w.lossy = true
		}
	}
}

// splitBrain cuts the two best mirrors off from each other and from the
// primary and promotes both: two primaries of one epoch.
func (w *simWorld) splitBrain(rng *rand.Rand) {
	a := w.best()
	if a == nil {
		return
	}
	b := w.best(a)
	if b == nil {
		return
	}
	w.net.partition(a.name, b.name, rng)
	for _, p := range w.primaries() {
		w.net.partition(a.name, p.name, rng)
		w.net.partition(b.name, p.name, rng)
	}
	hist := w.lastHist
	for _, n := range []*simNode{a, b} {
		w.lastHist = hist
		w.noteFailover(n)
		if err := w.promote(n); err != nil {
			w.tracef("split brain: promote %s refused: %v", n.name, err)
			return
		}
	}
	w.mu.Lock()
	if a.cur.epoch == b.cur.epoch {
		w.split[a.cur.epoch] = true
	}
	w.mu.Unlock()
	w.tracef("split brain: %s and %s primary in epochs %d and %d", a.name, b.name, a.cur.epoch, b.cur.epoch)
}

// demoteOne demotes a primary that is not the current one (an older
// epoch, as the fence advice says), or the loser of a split brain.
func (w *simWorld) demoteOne(k int) bool {
	cur := w.current()
	var cands []*simNode
	for _, p := range w.primaries() {
		if p != cur {
			cands = append(cands, p)
		}
	}
	if len(cands) == 0 {
		return false
	}
	p := cands[k%len(cands)]
	loser := p.cur.epoch == cur.cur.epoch
	return w.demote(p, loser)
}

// demote turns primary p into a mirror online (vol.Demote, as the admin
// endpoint does), stops it and starts it as a mirror.
func (w *simWorld) demote(p *simNode, loser bool) bool {
	c := p.cur
	w.mu.Lock()
	for _, wr := range w.writes {
		if wr.node == p.name && wr.inc == c.id && !wr.finished {
			wr.cancel()
		}
	}
	w.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.vol.Demote(ctx, loser); err != nil {
		w.tracef("demote %s: %v", p.name, err)
		return false
	}
	p.stop(true, false, nil)
	if err := p.boot(); err != nil {
		w.failf("start %s as a mirror after its demotion: %v", p.name, err)
		return false
	}
	w.tracef("%s demoted (split brain loser %v)", p.name, loser)
	return true
}

// observe runs at every quiescent point: a process whose armed crash
// fired is restarted later, a promoted mirror's Run end is noticed, and
// the state the invariants follow is updated.
func (w *simWorld) observe() {
	for _, n := range w.nodes {
		if n.role != "down" && n.cur.disk.isDead() {
			w.tracef("%s crashed at an armed file operation (power loss %v)", n.name, n.armedPower)
			n.stop(false, n.armedPower, rand.New(rand.NewPCG(w.seed, uint64(n.cur.id)<<8|uint64(len(w.trace)))))
			continue
		}
		if n.role == "mirror" && n.cur.m != nil && n.cur.m.Status().SplitBrain != "" {
			n.splitBrain = true
		}
		if n.role == "mirror" {
			select {
			case <-n.cur.mDone:
				w.mu.Lock()
				err := n.cur.runErr
				w.mu.Unlock()
				w.failf("%s stopped mirroring on its own: %v", n.name, err)
			default:
			}
		}
	}
	w.observeFences()
	w.observeHeld()
	w.quarantined += w.checkQuarantines()
}

// settle heals every fault, lets an operator resolve the roles (one
// primary, every other node its mirror) and waits for convergence: every
// request finished, every mirror in sync and consistent, every image the
// same. Then the final invariants.
func (w *simWorld) settle(res *simResult) {
	w.net.heal()
	for _, n := range w.nodes {
		if n.role != "down" {
			n.cur.disk.arm(0, nil)
		}
	}
	const rounds = 600 // 60 s of fake time
	var why string
	for round := 0; round < rounds; round++ {
		synctest.Wait()
		w.observe()
		if w.failed() != "" {
			return
		}
		for _, n := range w.nodes {
			if n.role != "down" && n.ioErr {
				// The operator restarts a daemon that an I/O error stopped
				// (its journal or volume fails every later write).
				n.stop(true, false, nil)
				w.tracef("settle: %s restarted after its I/O error", n.name)
			}
			n.ioErr = false
			if n.role == "down" {
				if err := n.boot(); err != nil {
					w.failf("restart %s after the faults healed: %v", n.name, err)
					return
				}
			}
		}
		w.resolve()
		if why = w.converged(); why == "" {
			w.finalChecks(res)
			res.quar = w.quarantined
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	w.failf("no convergence %v after the faults healed: %s\n%s", time.Duration(rounds)*100*time.Millisecond, why, w.describe())
}

// resolve is the operator: one primary (the highest epoch; the first
// name among a split brain's), every other primary demoted, every mirror
// that reports a split brain given up as its loser, and a primary
// promoted if there is none.
func (w *simWorld) resolve() {
	ps := w.primaries()
	if len(ps) == 0 {
		if b := w.best(); b != nil {
			if err := w.promote(b); err != nil {
				w.tracef("settle: promote %s: %v", b.name, err)
			}
		}
		return
	}
	cur := w.current()
	for _, p := range ps {
		if p != cur {
			w.demote(p, p.cur.epoch == cur.cur.epoch)
		}
	}
	for _, n := range w.mirrors() {
		if n.cur.m != nil && n.cur.m.Status().SplitBrain != "" {
			w.tracef("settle: %s reports a split brain; demoting it as the loser", n.name)
			n.stop(true, false, nil)
			if err := w.offlineDemote(n, true); err != nil {
				w.failf("demote %s as a split brain's loser: %v", n.name, err)
				return
			}
			if err := n.boot(); err != nil {
				w.failf("start %s after its demotion: %v", n.name, err)
				return
			}
		}
	}
}

// offlineDemote runs `blockmirror demote` on a stopped node.
func (w *simWorld) offlineDemote(n *simNode, loser bool) error {
	c := n.newInc()
	node, err := OpenNode(context.Background(), c.nodeOptions(false))
	if err != nil {
		return err
	}
	defer node.Close()
	return Demote(node, loser)
}

// teardown stops every process, so the bubble's goroutines end.
func (w *simWorld) teardown() {
	for _, n := range w.nodes {
		if n.role != "down" {
			n.stop(true, false, nil)
		}
	}
	done := make(chan struct{})
	go func() { w.reaped.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Minute):
		w.failf("the goroutines of a crashed process never ended")
	}
	if *simLeaksFlag {
		time.Sleep(time.Minute) // whatever is still running now is stuck
		buf := make([]byte, 1<<22)
		buf = buf[:runtime.Stack(buf, true)]
		for _, g := range strings.Split(string(buf), "\n\n") {
			if strings.Contains(g, "synctest bubble") && !strings.Contains(g, "simWorld).teardown") && !strings.Contains(g, "synctest.Run") &&
				!strings.Contains(g, "testingSynctestTest") {
				fmt.Println(g + "\n")
			}
		}
	}
}

func (w *simWorld) describe() string {
	var b strings.Builder
	for _, n := range w.nodes {
		fmt.Fprintf(&b, "  %s: %s", n.name, n.role)
		switch {
		case n.role == "primary":
			st := n.cur.repl.Status()
			fmt.Fprintf(&b, " epoch %d last %d durable %d fenced %v pending %d;", st.Epoch, st.LastSeq, st.LocalDurable, st.Fenced, st.Pending)
			for _, p := range st.Peers {
				fmt.Fprintf(&b, " %s=%s(%d/%d/%d/%d %s)", p.Name, p.State, p.Received, p.Written, p.Durable, p.Applied, p.LastError)
			}
		case n.role == "mirror" && n.cur.m != nil:
			st := n.cur.m.Status()
			fmt.Fprintf(&b, " epoch %d connected %v primary %s needs-resync %v inconsistent %v r/w/d/a %d/%d/%d/%d split %q",
				st.Epoch, st.Connected, st.Primary, st.NeedsResync, st.Inconsistent, st.Received, st.Written, st.Durable, st.Applied, st.SplitBrain)
			if d := n.cur.m; d.node != nil {
				w, du := d.node.Journal.Watermarks()
				d.mu.Lock()
				limit, capped := d.core.ApplyLimit()
				fmt.Fprintf(&b, " journal %d..%d w/d %d/%d core %+v flags %b limit %d/%v", d.node.Journal.FirstSeq(), d.node.Journal.LastSeq(),
					w, du, d.core.Status(), d.core.Flags(), limit, capped)
				d.mu.Unlock()
			}
		}
		b.WriteString("\n")
	}
	return b.String()
}
