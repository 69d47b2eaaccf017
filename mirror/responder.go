package mirror

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/blockmirror/blockmirror/mirror/wire"
	"github.com/blockmirror/blockmirror/transport"
)

// Responder answers other primaries' handshakes at a primary's QUIC
// address (e.g. the address it listened on as a mirror before it was
// promoted): an old primary learns it is fenced, a primary of the same
// epoch learns of the split brain (and so does this node), and a primary
// of a higher epoch makes this node stale (OnStale fences its volume).
type Responder struct {
	ln      streamListener
	node    *Node
	name    string
	log     *slog.Logger
	onStale func(epoch uint64)
}

// NewResponder listens on addr.
func NewResponder(addr, name string, node *Node, tc transport.Config, onStale func(uint64), log *slog.Logger) (*Responder, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ln, err := quicListen(addr, tc)
	if err != nil {
		return nil, fmt.Errorf("mirror: responder listen %s: %w", addr, err)
	}
	return newResponderOn(ln, name, node, onStale, log), nil
}

// newResponderOn answers on ln.
func newResponderOn(ln streamListener, name string, node *Node, onStale func(uint64), log *slog.Logger) *Responder {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Responder{ln: ln, node: node, name: name, log: log, onStale: onStale}
}

// Addr is the address the responder listens on.
func (r *Responder) Addr() string { return r.ln.Addr().String() }

// SplitBrain returns the node's unresolved split-brain report, if a
// contact (here or by the replication) showed one.
func (r *Responder) SplitBrain() string { return r.node.SplitBrain() }

// Run answers until ctx ends.
func (r *Responder) Run(ctx context.Context) {
	defer r.ln.Close()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		conn, err := r.ln.Accept(ctx)
		if err != nil {
			return
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.answer(ctx, conn)
		}()
	}
}

func (r *Responder) answer(ctx context.Context, conn streamConn) {
	defer conn.Close(0, "answered")
	ctx, cancel := context.WithTimeout(ctx, handshakeTimeout)
	defer cancel()
	st, err := conn.AcceptStream(ctx)
	if err != nil {
		return
	}
	defer st.Cancel(0)
	st.SetReadDeadline(time.Now().Add(handshakeTimeout))
	typ, p, err := st.ReadFrame(nil)
	if err != nil || wire.MsgType(typ) != wire.MsgHello {
		return
	}
	h, err := wire.DecodeHello(p)
	if err != nil {
		return
	}
	m := r.node.Meta()
	reply, stale := primaryAnswer(m, r.name, r.node.Journal.LastSeq(), h)
	if buf, err := wire.AppendHelloReply(nil, &reply); err == nil && st.WriteFrame(uint8(wire.MsgHelloReply), buf) == nil {
		st.Flush()
	}
	// Let the reply reach the peer before the connection closes.
	linger(st)
	r.log.Warn("another primary contacted this primary", "peer", conn.PeerName(), "their_epoch", h.Epoch,
		"our_epoch", m.Epoch, "answer", reply.Code, "reason", reply.Reason)
	if reply.Code == wire.CodeSplitBrain {
		r.node.NoteSplitBrain(conn.PeerName(), reply.Reason)
	}
	if stale {
		if err := r.node.Fence(h.Epoch); err != nil {
			r.log.Error("recording the fence in the metadata failed", "err", err)
		}
		if r.onStale != nil {
			r.onStale(h.Epoch)
		}
	}
}
