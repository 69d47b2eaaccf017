package coord

import (
	"context"
	"time"
)

// Node is what the coordinator needs from the node that serves (or
// mirrors) one volume. The node assembly implements it; tests use a fake.
//
// Contract beyond the signatures:
//   - Status is cheap and never blocks on I/O (it is called every poll).
//   - A primary completes a write, FLUSH or FUA only while its monotonic
//     clock, read at completion, is before the deadline of the last
//     SetWriteLease (the zero time: never). It checks at completion, not
//     at admission, so a process frozen past its deadline (SIGSTOP, a long
//     pause) completes nothing when it resumes. Held requests fail with EIO
//     after the node's ack timeout; status says why (the reason given).
//   - A primary sends heartbeats to its mirrors only while it is before its
//     write deadline; a mirror counts only heartbeats as contact
//     (Status.SincePrimaryContact), so a fenced primary stops counting as
//     serving. (Records may go on flowing, as during a switchover: they
//     were never acknowledged to a client.) The primary's failsafe rests
//     on the echoes of those heartbeats (PeerStatus.SinceConfirm).
//   - With a coordinator the node never changes its ack set by itself (no
//     automatic degrading): it reports which mirrors are in sync and waits
//     for SetAckSet.
type Node interface {
	// Status is the node's state now.
	Status() NodeStatus
	// Promote makes this mirror the primary of exactly epoch (online: it
	// keeps every record in its journal, starts epoch at LastSeq+1 and
	// serves NBD). epoch is above the node's epoch. Writes stay held until
	// SetWriteLease grants a deadline.
	Promote(ctx context.Context, epoch uint64) error
	// Demote makes this primary a mirror of whichever primary contacts it
	// with a higher epoch (quarantining its divergent records as usual).
	// It completes no write from the moment it is called.
	Demote(ctx context.Context) error
	// SetWriteLease sets the deadline on the monotonic clock before which
	// the primary may complete writes; reason is what status and logs say
	// once the deadline has passed (fenced). A zero until fences now.
	SetWriteLease(until time.Time, reason string)
	// SetAckSet makes only the acknowledgements of set.Members count
	// toward set.K (sync mode), effective for every request not yet
	// complete when it returns.
	SetAckSet(ctx context.Context, set AckSet) error
}

// NodeStatus is the node's view of itself.
type NodeStatus struct {
	Role  Role
	Epoch uint64
	// LastSeq: last seq in the journal; DurableSeq: fdatasync'd part.
	LastSeq    uint64
	DurableSeq uint64
	// Consistent: no resync under way (a promotable store).
	Consistent bool

	// Primary only.
	Mode          Mode
	SyncAcks      int
	AllowDegraded bool
	AckSet        AckSet
	Peers         []PeerStatus

	// Mirror only: time since the last heartbeat from a primary of at
	// least this node's epoch (a primary sends them only while serving).
	// A node that has had none since it started reports the time since
	// it started.
	SincePrimaryContact time.Duration
}

// PeerStatus is one mirror as the primary sees it.
type PeerStatus struct {
	Name   string
	InSync bool
	// Acked: the mirror's acknowledged seq at the ack level.
	Acked uint64
	// Lag: assigned seqs not yet acknowledged at the ack level.
	Lag uint64
	// SinceConfirm: age of the send time of the last heartbeat the mirror
	// echoed (negative: none yet).
	SinceConfirm time.Duration
}

// Clock is the coordinator's time source. Now must carry a monotonic
// reading (time.Now does); the node reads the same clock when it checks
// the write deadline.
type Clock interface {
	Now() time.Time
	// After is time.After on this clock.
	After(d time.Duration) <-chan time.Time
}

type realClock struct{}

func (realClock) Now() time.Time                         { return time.Now() }
func (realClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// RealClock is the system's monotonic clock.
var RealClock Clock = realClock{}
