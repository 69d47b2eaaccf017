package mirror

import (
	"context"
	"fmt"
	"sync"

	"github.com/blockmirror/blockmirror/transport"
)

// ConnPool shares one QUIC connection per mirror host among the volumes
// that replicate to it: each volume's peer link opens its own streams on
// the shared connection, so a slow or resyncing volume only fills its own
// streams' flow-control windows and does not stall the others.
//
// A connection is keyed by (address, peer node name), dialed on first use,
// reference counted, closed when its last user releases it, and dropped
// from the pool as soon as it dies (the next Get dials a new one). Safe for
// concurrent use. The zero value is not usable; call NewConnPool.
type ConnPool struct {
	dial  dialFunc
	mu    sync.Mutex
	conns map[poolKey]*poolEntry
	dials int // connections dialed so far (for status and tests)
}

// poolKey names a pooled connection; lane > 0 are a peer's extra record
// lanes (their own connections, shared by the volumes like lane 0).
type poolKey struct {
	addr, name string
	lane       int
}

type poolEntry struct {
	// ready is closed once the dial finished; conn/err are then set.
	ready chan struct{}
	conn  streamConn
	err   error
	refs  int
}

// NewConnPool returns an empty pool.
func NewConnPool() *ConnPool { return newConnPool(quicDial) }

// newConnPool returns an empty pool that dials with dial.
func newConnPool(dial dialFunc) *ConnPool {
	return &ConnPool{dial: dial, conns: make(map[poolKey]*poolEntry)}
}

// get returns the live connection to node name at addr, dialing it with
// cfg if the pool holds none (concurrent callers share one dial). The
// caller must call release exactly once when it no longer uses the
// connection; it must never Close the connection itself (other volumes
// share it), only cancel its own streams.
func (p *ConnPool) get(ctx context.Context, addr, name string, cfg transport.Config) (conn streamConn, release func(), err error) {
	return p.getLane(ctx, addr, name, 0, cfg)
}

// getLane is get for the connection of record lane lane (0: the one get
// returns).
func (p *ConnPool) getLane(ctx context.Context, addr, name string, lane int, cfg transport.Config) (conn streamConn, release func(), err error) {
	key := poolKey{addr, name, lane}
	for {
		p.mu.Lock()
		e := p.conns[key]
		if e != nil && e.conn != nil && e.conn.Err() != nil {
			delete(p.conns, key) // dead: its remaining users hold their own references
			e = nil
		}
		if e == nil {
			e = &poolEntry{ready: make(chan struct{})}
			p.conns[key] = e
			e.refs++
			p.mu.Unlock()
			c, derr := p.dial(ctx, addr, name, cfg)
			p.mu.Lock()
			e.conn, e.err = c, derr
			if derr != nil {
				e.refs--
				if p.conns[key] == e {
					delete(p.conns, key)
				}
			} else {
				p.dials++
			}
			close(e.ready)
			p.mu.Unlock()
			if derr != nil {
				return nil, nil, derr
			}
			return c, p.releaser(key, e), nil
		}
		e.refs++
		p.mu.Unlock()
		select {
		case <-e.ready:
		case <-ctx.Done():
			p.unref(key, e)
			return nil, nil, fmt.Errorf("dial %s: %w", addr, ctx.Err())
		}
		if e.err != nil {
			// Another caller's dial failed; its failure is ours too, but
			// with our own context: try again only if it is still alive.
			p.mu.Lock()
			e.refs--
			p.mu.Unlock()
			if ctx.Err() != nil {
				return nil, nil, ctx.Err()
			}
			return nil, nil, e.err
		}
		if e.conn.Err() != nil {
			p.unref(key, e)
			continue
		}
		return e.conn, p.releaser(key, e), nil
	}
}

func (p *ConnPool) releaser(key poolKey, e *poolEntry) func() {
	var once sync.Once
	return func() {
		once.Do(func() { p.unref(key, e) })
	}
}

// unref drops one reference; the last one closes the connection (outside
// p.mu: closing waits for the connection's goroutines).
func (p *ConnPool) unref(key poolKey, e *poolEntry) {
	p.mu.Lock()
	e.refs--
	last := e.refs == 0
	if last && p.conns[key] == e {
		delete(p.conns, key)
	}
	p.mu.Unlock()
	if last && e.conn != nil {
		e.conn.Close(0, "no volume uses this connection")
	}
}

// PoolStats describes a pool.
type PoolStats struct {
	// Open is the number of connections in the pool now.
	Open int `json:"open"`
	// Dialed counts the connections dialed since the pool was made.
	Dialed int `json:"dialed"`
}

// Stats returns a snapshot.
func (p *ConnPool) Stats() PoolStats {
	p.mu.Lock()
	defer p.mu.Unlock()
	return PoolStats{Open: len(p.conns), Dialed: p.dials}
}
