package mirror

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/blockmirror/blockmirror/journal"
	"github.com/blockmirror/blockmirror/mirror/wire"

	// Online verify: the primary compares its chunk hashes with each connected
	// mirror's, segment by segment over a stream of its own (the resync hash
	// messages), while I/O goes on. A chunk that differs is checked again a
	// few times after a short pause, so a write still on its way to the mirror
	// is not reported; what differs every time is reported. Verify changes
	// nothing unless asked to resync: then the differing chunks are marked in
	// the mirror's dirty bitmap and the mirror is resynced (on its next
	// session, which verify starts by closing the current one).
	"github.com/blockmirror/blockmirror/mirror/core"
	"github.com/blockmirror/blockmirror/mirror/resync"
)

// VerifyReport is the result of a verify run.
type VerifyReport struct {
	Peers []PeerVerify `json:"peers"`
}

// PeerVerify is one mirror's verify result.
type PeerVerify struct {
	Name           string           `json:"name"`
	ComparedBytes  int64            `json:"compared_bytes"`
	Differing      []journal.Region `json:"differing"`
	DifferingBytes int64            `json:"differing_bytes"`
	Seconds        float64          `json:"seconds"`
	Resync         bool             `json:"resync_started"`
	Error          string           `json:"error,omitempty"`
}

// verifyRechecks is how often a differing chunk is compared again.
const verifyRechecks = 3

// Verify compares the primary with every connected mirror.
func (r *Replication) Verify(ctx context.Context, andResync bool) VerifyReport {
	var rep VerifyReport
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, p := range r.opts.Peers {
		l := r.links[p.Name]
		wg.Add(1)
		go func() {
			defer wg.Done()
			pv := l.verify(ctx, andResync)
			mu.Lock()
			rep.Peers = append(rep.Peers, pv)
			mu.Unlock()
		}()
	}
	wg.Wait()
	return rep
}

func (l *peerLink) verify(ctx context.Context, andResync bool) PeerVerify {
	pv := PeerVerify{Name: l.addr.Name}
	start := time.Now()
	diff, compared, err := l.compare(ctx)
	pv.Seconds = time.Since(start).Seconds()
	pv.ComparedBytes = compared
	if err != nil {
		pv.Error = err.Error()
		return pv
	}
	chunk := int64(resync.DefaultSyncChunk)
	size := l.r.node.Store.Size()
	for _, c := range diff {
		n := min(chunk, size-c*chunk)
		pv.DifferingBytes += n
		pv.Differing = append(pv.Differing, journal.Region{Offset: uint64(c * chunk), Length: uint64(n)})
	}
	pv.Differing = journal.CoalesceRegions(pv.Differing)
	l.log.Info("verify finished", "compared_bytes", compared, "differing_bytes", pv.DifferingBytes, "seconds", pv.Seconds)
	if andResync && len(diff) > 0 {
		err := l.r.node.MarkDirty(l.addr.Name, func(b *resync.Bitmap) {
			for _, c := range diff {
				b.SetChunk(c)
			}
		})
		if err != nil {
			pv.Error = "marking the differing chunks failed: " + err.Error()
			return pv
		}
		l.restartSession()
		pv.Resync = true
	}
	return pv
}

// restartSession ends the current session so the next one starts with
// the pending dirty regions.
func (l *peerLink) restartSession() {
	l.r.mu.Lock()
	s := l.sess
	l.r.mu.Unlock()
	if s != nil {
		s.st.Cancel(0) // ends the session; the connection may be shared
	}
}

// compare returns the chunks that differ on every check.
func (l *peerLink) compare(ctx context.Context) ([]int64, int64, error) {
	r := l.r
	r.mu.Lock()
	s := l.sess
	state := r.core.PeerState(l.addr.Name)
	r.mu.Unlock()
	if s == nil {
		return nil, 0, errors.New("mirror not connected")
	}
	if state == core.PeerResyncing || state == core.PeerNeedsResync {
		return nil, 0, fmt.Errorf("mirror is %v; verify it after the resync", state)
	}
	st, done, err := l.openSideStream(ctx, s.conn)
	if err != nil {
		return nil, 0, fmt.Errorf("verify: %w", err)
	}
	defer done()
	rs := &resyncer{l: l, st: st, hashes: make(chan wire.SyncHashes, 1), complete: make(chan struct{})}
	rs.cond = sync.NewCond(&rs.mu)
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() { rs.readLoop(rctx); cancel() }()
	chunk := int64(resync.DefaultSyncChunk)
	size := r.node.Store.Size()
	mine := resync.NewHasher(r.node.Store, chunk)
	var leaves []resync.Hash
	var diff []int64
	ask := func(off, n int64) ([]resync.Hash, []resync.Hash, error) {
		q := wire.SyncHashReq{Off: uint64(off), Len: uint64(n), Leaves: true}
		if err := rs.send(wire.MsgSyncHashReq, wire.AppendSyncHashReq(nil, q)); err != nil {
			return nil, nil, err
		}
		var err error
		leaves, err = mine.HashRange(off, n, leaves[:0])
		if err != nil {
			return nil, nil, err
		}
		theirs, err := rs.wait(rctx, q)
		if err != nil {
			return nil, nil, err
		}
		if len(theirs.Hashes) != len(leaves) {
			return nil, nil, fmt.Errorf("mirror sent %d hashes for %d chunks", len(theirs.Hashes), len(leaves))
		}
		return leaves, theirs.Hashes, nil
	}
	seg := chunk * resync.ChunksPerSegment
	for off := int64(0); off < size; off += seg {
		n := min(seg, size-off)
		mineH, theirs, err := ask(off, n)
		if err != nil {
			return nil, off, err
		}
		for i := range mineH {
			if mineH[i] != theirs[i] {
				diff = append(diff, off/chunk+int64(i))
			}
		}
	}
	for round := 0; round < verifyRechecks && len(diff) > 0; round++ {
		select {
		case <-ctx.Done():
			return nil, size, ctx.Err()
		case <-time.After(300 * time.Millisecond):
		}
		var still []int64
		for _, c := range diff {
			off := c * chunk
			mineH, theirs, err := ask(off, min(chunk, size-off))
			if err != nil {
				return nil, size, err
			}
			if mineH[0] != theirs[0] {
				still = append(still, c)
			}
		}
		diff = still
	}
	st.CloseWrite()
	return diff, size, nil
}
