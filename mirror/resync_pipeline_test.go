package mirror

import (
	"context"
	"errors"
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

// gatedStream is a stream whose writes wait for the gate, then record the
// frame or fail with failWith.
type gatedStream struct {
	scriptedResyncStream
	gate     chan struct{}
	mu       sync.Mutex
	frames   [][]byte
	flushes  int
	failWith error
}

func (g *gatedStream) WriteFrame(_ uint8, parts ...[]byte) error {
	<-g.gate
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.failWith != nil {
		return g.failWith
	}
	g.frames = append(g.frames, append([]byte(nil), parts[0]...))
	return nil
}

func (g *gatedStream) Flush() error {
	g.mu.Lock()
	g.flushes++
	g.mu.Unlock()
	return nil
}

// TestFrameSenderPipelines: while a write waits for the link, the owner
// goes on reading and encoding into the sender's buffers (up to their
// number), the frames leave in order, and a failed write fails the
// owner's next call and close.
func TestFrameSenderPipelines(t *testing.T) {
	g := &gatedStream{gate: make(chan struct{})}
	const bufs = 4
	fs := newFrameSender(g, bufs)
	ctx := t.Context()
	// The first write blocks at the gate; the other buffers are encoded
	// and queued meanwhile.
	queued := make(chan error, 1)
	go func() {
		for i := range bufs {
			b, err := fs.buffer(ctx)
			if err != nil {
				queued <- err
				return
			}
			if err := fs.sendPooled(ctx, wire.MsgSyncChunk, append(b, byte(i))); err != nil {
				queued <- err
				return
			}
		}
		queued <- nil
	}()
	select {
	case err := <-queued:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the owner blocked while one write waited: no pipelining")
	}
	// With every buffer queued or in the write, the next buffer waits.
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	b, err := fs.buffer(short)
	if err == nil {
		t.Fatalf("got a %d-byte buffer while all %d were queued", cap(b), bufs)
	}
	close(g.gate)
	if err := fs.send(ctx, wire.MsgSyncHashReq, []byte{0xff}); err != nil {
		t.Fatal(err)
	}
	if err := fs.close(); err != nil {
		t.Fatal(err)
	}
	if len(g.frames) != bufs+1 {
		t.Fatalf("%d frames written, want %d", len(g.frames), bufs+1)
	}
	for i, f := range g.frames[:bufs] {
		if len(f) != 1 || f[0] != byte(i) {
			t.Fatalf("frame %d is %x: out of order", i, f)
		}
	}
	if g.flushes == 0 || g.flushes > bufs+1 {
		t.Fatalf("%d flushes for %d frames", g.flushes, bufs+1)
	}

	// A failed write: the next call and close report it.
	boom := errors.New("link gone")
	g2 := &gatedStream{gate: make(chan struct{}), failWith: boom}
	close(g2.gate)
	fs2 := newFrameSender(g2, bufs)
	if err := fs2.send(ctx, wire.MsgSyncHashReq, []byte{1}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := fs2.send(ctx, wire.MsgSyncHashReq, []byte{2})
		if errors.Is(err, boom) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("send after a failed write: %v, want %v", err, boom)
		}
		time.Sleep(time.Millisecond)
	}
	if err := fs2.close(); !errors.Is(err, boom) {
		t.Fatalf("close: %v, want %v", err, boom)
	}
}
