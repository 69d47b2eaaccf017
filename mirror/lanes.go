package mirror

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/blockmirror/blockmirror/mirror/wire"
)

// Record lanes (wire.MsgLanes): a primary may send a session's records on
// several lane streams, each on its own QUIC connection, so that the
// replication is not bounded by one connection's congestion window or
// stalled by one connection's lost packets. Ordering and acks:
//
//   - The primary reads the journal in seq order and cuts it into Records
//     frames; each frame goes, whole, to whichever lane is free next, so
//     frames on one lane ascend but lanes overtake each other.
//   - The mirror decodes each lane's frames and hands them to the
//     session's laneMerge, which releases them strictly in seq order: the
//     replica core sees exactly the sequence a single stream would carry
//     (it still rejects any gap) and its cumulative acks keep their
//     meaning — an ack for seq N covers every record ≤ N, whichever lane
//     brought it.
//   - Memory is bounded: a lane whose next frame is not the one the merge
//     waits for stops reading once laneMergeLimit bytes wait, so its
//     connection's flow control holds the primary back; the frame the
//     merge waits for is always taken, so the merge cannot deadlock.

// laneMergeLimit bounds the record bytes the merge holds out of order
// (beyond it a lane waits, see above).
const laneMergeLimit = 32 << 20

// laneFrame is one decoded Records message from a lane.
type laneFrame struct {
	recs  []wire.Record
	bytes int // encoded size, what the merge's bound counts
}

func (f laneFrame) first() uint64 { return f.recs[0].Seq }
func (f laneFrame) last() uint64  { return f.recs[len(f.recs)-1].Seq }

// errLaneProtocol marks a lane frame that breaks the lane rules.
var errLaneProtocol = errors.New("lane protocol violation")

// laneMerge orders one session's lane frames. Safe for concurrent use.
type laneMerge struct {
	limit int
	// activated is closed by activate; token, count and joined are set
	// before (and, for joined, guarded by mu).
	activated chan struct{}
	token     uint64
	count     int
	// ready (capacity 1) is signalled when the frame the merge waits for
	// arrives.
	ready chan struct{}

	mu      sync.Mutex
	joined  [wire.MaxLanes]bool
	next    uint64               // first seq of the frame to release next
	pending map[uint64]laneFrame // by first seq
	held    int                  // bytes in pending
	room    chan struct{}        // closed (and replaced) when pending shrinks
}

func newLaneMerge(limit int) *laneMerge {
	return &laneMerge{
		limit: limit, activated: make(chan struct{}), ready: make(chan struct{}, 1),
		pending: make(map[uint64]laneFrame), room: make(chan struct{}),
	}
}

// activate starts the merge at seq m.From; called once, by the session.
func (m *laneMerge) activate(l wire.Lanes) {
	m.mu.Lock()
	m.token, m.count, m.next = l.Token, int(l.Count), l.From
	m.mu.Unlock()
	close(m.activated)
}

// join admits lane index of the session whose token is token, once.
func (m *laneMerge) join(token uint64, index uint8) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	switch {
	case token != m.token:
		return fmt.Errorf("%w: lane token does not match the session's", errLaneProtocol)
	case int(index) >= m.count:
		return fmt.Errorf("%w: lane %d of a session with %d lanes", errLaneProtocol, index, m.count)
	case m.joined[index]:
		return fmt.Errorf("%w: lane %d joined twice", errLaneProtocol, index)
	}
	m.joined[index] = true
	return nil
}

// put adds f, waiting while the merge is full and f is not the frame it
// waits for.
func (m *laneMerge) put(ctx context.Context, f laneFrame) error {
	m.mu.Lock()
	for {
		first := f.first()
		if first < m.next {
			m.mu.Unlock()
			return fmt.Errorf("%w: frame from seq %d, but the merge released records through %d", errLaneProtocol, first, m.next-1)
		}
		if _, dup := m.pending[first]; dup {
			m.mu.Unlock()
			return fmt.Errorf("%w: two frames from seq %d", errLaneProtocol, first)
		}
		if first == m.next || m.held == 0 || m.held+f.bytes <= m.limit {
			m.pending[first] = f
			m.held += f.bytes
			awaited := first == m.next // read under mu: pop moves it
			m.mu.Unlock()
			if awaited {
				select {
				case m.ready <- struct{}{}:
				default:
				}
			}
			return nil
		}
		room := m.room
		m.mu.Unlock()
		select {
		case <-room:
		case <-ctx.Done():
			return ctx.Err()
		}
		m.mu.Lock()
	}
}

// pop returns the next frame in seq order, if it arrived.
func (m *laneMerge) pop() (laneFrame, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	f, ok := m.pending[m.next]
	if !ok {
		return laneFrame{}, false
	}
	delete(m.pending, m.next)
	m.held -= f.bytes
	m.next = f.last() + 1
	close(m.room)
	m.room = make(chan struct{})
	return f, true
}
