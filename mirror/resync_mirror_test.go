package mirror

import (
	"bytes"
	"io"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/blockmirror/blockmirror/internal/vfs"
	"github.com/blockmirror/blockmirror/mirror/resync"
	"github.com/blockmirror/blockmirror/mirror/wire"
)

// framesIn is a resync stream as the mirror reads it: the frames given, in
// order, then EOF. Like transport.FrameReader, ReadFrame fills the
// caller's buffer when it is large enough, so a message kept across reads
// would be overwritten by the next frame. Written frames are discarded.
type framesIn struct {
	mu      sync.Mutex
	frames  [][]byte // type byte, then payload
	written [][]byte // what the mirror sent: type byte, then payload
}

func (s *framesIn) ReadFrame(buf []byte) (uint8, []byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.frames) == 0 {
		return 0, nil, io.EOF
	}
	f := s.frames[0]
	s.frames = s.frames[1:]
	p := make([]byte, len(f)-1)
	if cap(buf) >= len(p) {
		p = buf[:len(p)]
	}
	copy(p, f[1:])
	return f[0], p, nil
}

func (s *framesIn) WriteFrame(typ uint8, p ...[]byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	f := []byte{typ}
	for _, b := range p {
		f = append(f, b...)
	}
	s.written = append(s.written, f)
	return nil
}

func (s *framesIn) Flush() error                    { return nil }
func (s *framesIn) CloseWrite() error               { return nil }
func (s *framesIn) Cancel(uint64)                   {}
func (s *framesIn) SetReadDeadline(time.Time) error { return nil }

// TestServeResyncWritesEachChunkFromItsFrame: the mirror's resync reader
// reuses one frame buffer; every chunk must still land in the image with
// its own bytes — data chunks of different contents back to back, a hash
// request (a small frame) between them, a zero chunk, and a short last
// chunk at the end of the volume.
func TestServeResyncWritesEachChunkFromItsFrame(t *testing.T) {
	const chunk = resync.DefaultSyncChunk
	size := int64(4*chunk - 4096)
	node, err := OpenNode(t.Context(), NodeOptions{Dir: filepath.Join(t.TempDir(), "m"), Size: size, Role: RoleMirror})
	if err != nil {
		t.Fatal(err)
	}
	defer node.Close()
	// The image starts non-zero, so the zero chunk has to be written.
	junk := bytes.Repeat([]byte{0x5a}, int(size))
	if _, err := node.Store.WriteAt(junk, 0); err != nil {
		t.Fatal(err)
	}
	fill := func(b byte, n int) []byte { return bytes.Repeat([]byte{b}, n) }
	want := [][]byte{fill(0xa1, chunk), fill(0xb2, chunk), fill(0, chunk), fill(0xc3, chunk-4096)}
	in := &framesIn{}
	add := func(typ wire.MsgType, p []byte) { in.frames = append(in.frames, append([]byte{uint8(typ)}, p...)) }
	for i, data := range want {
		if i == 1 {
			add(wire.MsgSyncHashReq, wire.AppendSyncHashReq(nil, wire.SyncHashReq{Off: 0, Len: chunk, Leaves: true}))
		}
		m := wire.SyncChunk{Off: uint64(i * chunk), Len: uint32(len(data)), Tag: 0}
		if data[0] == 0 {
			m.Zero = true
		} else {
			m.Data = data
		}
		p, err := wire.AppendSyncChunk(nil, &m)
		if err != nil {
			t.Fatal(err)
		}
		add(wire.MsgSyncChunk, p)
	}
	d := &Replica{node: node}
	if err := d.serveResync(t.Context(), in, make(chan struct{})); err != nil {
		t.Fatal(err)
	}
	for i, data := range want {
		got := make([]byte, len(data))
		if _, err := node.Store.ReadAt(got, int64(i*chunk)); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, data) {
			t.Errorf("chunk %d: the image holds other bytes than its frame carried (first %#x, want %#x)", i, got[0], data[0])
		}
	}
}

// TestResyncHashIsOfDurableData: a hash the mirror answers in a resync
// must be of what its image keeps through a power loss, since a primary
// that finds it equal clears the chunk from its bitmap without a durable
// ack. A chunk written by an earlier resync session (interrupted before
// the mirror made it durable) is in the page cache only; answered from
// there, the primary counts it as copied, and a power loss then leaves
// the mirror in sync without it (simulation seed 5035: n0 ended with a
// torn block the primary did not have).
func TestResyncHashIsOfDurableData(t *testing.T) {
	const chunk = resync.DefaultSyncChunk
	m := vfs.NewCrashableMem()
	opts := NodeOptions{Dir: "/m", Size: 2 * chunk, Role: RoleMirror, FS: m}
	node, err := OpenNode(t.Context(), opts)
	if err != nil {
		t.Fatal(err)
	}
	defer node.Close()
	d := &Replica{node: node}
	frame := func(typ wire.MsgType, p []byte) []byte { return append([]byte{uint8(typ)}, p...) }

	// Session 1: one chunk, then the stream ends before the mirror's
	// durable ack (its sync runs only after 20 ms of quiet).
	c, err := wire.AppendSyncChunk(nil, &wire.SyncChunk{Off: 0, Len: chunk, Data: bytes.Repeat([]byte{0xa1}, chunk)})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.serveResync(t.Context(), &framesIn{frames: [][]byte{frame(wire.MsgSyncChunk, c)}}, make(chan struct{})); err != nil {
		t.Fatal(err)
	}
	// Session 2 (the primary reconnected): the hash of that chunk.
	in := &framesIn{frames: [][]byte{frame(wire.MsgSyncHashReq, wire.AppendSyncHashReq(nil, wire.SyncHashReq{Off: 0, Len: chunk, Leaves: true}))}}
	if err := d.serveResync(t.Context(), in, make(chan struct{})); err != nil {
		t.Fatal(err)
	}
	var answered []resync.Hash
	for _, f := range in.written {
		if wire.MsgType(f[0]) == wire.MsgSyncHashes {
			h, err := wire.DecodeSyncHashes(f[1:])
			if err != nil {
				t.Fatal(err)
			}
			answered = h.Hashes
		}
	}
	if len(answered) != 1 {
		t.Fatalf("the mirror answered %d hashes for one chunk, want 1", len(answered))
	}

	// Power loss: what was not synced is gone.
	lost := m.CrashCloneDropUnsynced()
	opts.FS = lost
	after, err := OpenNode(t.Context(), opts)
	if err != nil {
		t.Fatal(err)
	}
	defer after.Close()
	kept, err := resync.NewHasher(after.Store, chunk).HashRange(0, chunk, nil)
	if err != nil {
		t.Fatal(err)
	}
	if kept[0] != answered[0] {
		t.Fatal("the mirror answered the hash of a chunk a power loss then took from its image: the primary would count it as copied")
	}
}
