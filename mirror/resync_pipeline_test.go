package mirror

import (
	"context"
	"io"
	"log/slog"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/blockmirror/blockmirror/mirror/resync"
	"github.com/blockmirror/blockmirror/mirror/wire"
)

// scriptedResyncStream plays the mirror's side of a resync stream inside
// the test: every hash answer differs from the primary's hashes (the
// mirror is empty) and every chunk is written and confirmed at once. It
// records the frames in the order the primary sent them.
type scriptedResyncStream struct {
	rs *resyncer

	mu    sync.Mutex
	order []sentFrame
	err   error
}

type sentFrame struct {
	typ wire.MsgType
	off uint64
}

func (s *scriptedResyncStream) WriteFrame(typ uint8, parts ...[]byte) error {
	var p []byte
	for _, x := range parts {
		p = append(p, x...)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	switch wire.MsgType(typ) {
	case wire.MsgSyncHashReq:
		q, err := wire.DecodeSyncHashReq(p)
		if err != nil {
			s.err = err
			return err
		}
		s.order = append(s.order, sentFrame{wire.MsgSyncHashReq, q.Off})
		n := 1
		if q.Leaves {
			n = int((q.Len + resync.DefaultSyncChunk - 1) / resync.DefaultSyncChunk)
		}
		ans := wire.SyncHashes{Off: q.Off, Len: q.Len, Leaves: q.Leaves, Hashes: make([]resync.Hash, n)}
		for i := range ans.Hashes {
			ans.Hashes[i][0] = 0xee // no chunk of the primary hashes to this
		}
		go func() { s.rs.hashes <- ans }() // answered later, as over a link
	case wire.MsgSyncChunk:
		m, err := wire.DecodeSyncChunk(p)
		if err != nil {
			s.err = err
			return err
		}
		s.order = append(s.order, sentFrame{wire.MsgSyncChunk, m.Off})
		res := []wire.SyncChunkResult{{Off: m.Off, Len: m.Len, OK: true}}
		s.rs.mu.Lock()
		s.rs.win.Answered(&wire.SyncChunkAck{Results: res}, s.rs.bm, nil)
		s.rs.win.Answered(&wire.SyncChunkAck{Durable: true, Results: res}, s.rs.bm, nil)
		s.rs.cond.Broadcast()
		s.rs.mu.Unlock()
	}
	return nil
}

func (s *scriptedResyncStream) Flush() error                            { return nil }
func (s *scriptedResyncStream) ReadFrame([]byte) (uint8, []byte, error) { return 0, nil, io.EOF }
func (s *scriptedResyncStream) CloseWrite() error                       { return nil }
func (s *scriptedResyncStream) Cancel(uint64)                           {}
func (s *scriptedResyncStream) SetReadDeadline(time.Time) error         { return nil }

// zeroSource is a primary volume of zeros.
type zeroSource struct{ size int64 }

func (z zeroSource) ReadStable(_ context.Context, p []byte, _ int64) (uint64, error) {
	clear(p)
	return 1, nil
}
func (z zeroSource) Size() int64 { return z.size }

// TestResyncRequestsNextHashesBeforeSendingChunks: the hash request of the
// next marked segment leaves before the current segment's chunks, so the
// mirror hashes it while they cross the link, and the link does not idle
// for a round trip plus the mirror's hashing at every 64 MiB segment. The
// answers still come in request order and every chunk is sent once.
func TestResyncRequestsNextHashesBeforeSendingChunks(t *testing.T) {
	const segs = 3
	seg := int64(resync.DefaultSyncChunk * resync.ChunksPerSegment)
	size := segs * seg
	node, err := OpenNode(t.Context(), NodeOptions{Dir: filepath.Join(t.TempDir(), "p"), Size: size, Role: RolePrimary})
	if err != nil {
		t.Fatal(err)
	}
	defer node.Close()
	bm := resync.NewBitmap(size, resync.DefaultSyncChunk)
	bm.SetAll()
	// Segment 1 only partly marked: its request asks for leaves at once.
	for c := int64(resync.ChunksPerSegment); c < resync.ChunksPerSegment+512; c++ {
		bm.ClearChunk(c)
	}
	want := bm.Count()
	r := &Replication{node: node}
	l := &peerLink{r: r, addr: PeerAddr{Name: "m"}, log: slog.New(slog.DiscardHandler)}
	rs := &resyncer{l: l, vol: zeroSource{size}, bm: bm, win: resync.Window{Limit: 4 << 20},
		hashes: make(chan wire.SyncHashes, 4), complete: make(chan struct{}), start: time.Now()}
	rs.cond = sync.NewCond(&rs.mu)
	st := &scriptedResyncStream{rs: rs}
	rs.st = st
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	if err := rs.copy(ctx); err != nil {
		t.Fatal(err)
	}
	if st.err != nil {
		t.Fatal(st.err)
	}
	if n := bm.Count(); n != 0 {
		t.Fatalf("%d chunks still marked after the copy", n)
	}
	chunks := 0
	firstChunk := map[int64]int{}  // segment -> index of its first chunk
	hashReqAt := map[int64][]int{} // segment -> indices of its hash requests
	for i, f := range st.order {
		s := int64(f.off) / seg
		switch f.typ {
		case wire.MsgSyncChunk:
			chunks++
			if _, ok := firstChunk[s]; !ok {
				firstChunk[s] = i
			}
		case wire.MsgSyncHashReq:
			hashReqAt[s] = append(hashReqAt[s], i)
		}
	}
	if int64(chunks) != want {
		t.Fatalf("sent %d chunks, want every marked one once (%d)", chunks, want)
	}
	for s := int64(1); s < segs; s++ {
		reqs := hashReqAt[s]
		if len(reqs) == 0 {
			t.Fatalf("no hash request for segment %d", s)
		}
		if prev, ok := firstChunk[s-1]; !ok || reqs[0] > prev {
			t.Errorf("segment %d's hashes requested at frame %d, after segment %d's first chunk (frame %d): not requested ahead", s, reqs[0], s-1, prev)
		}
	}
}
