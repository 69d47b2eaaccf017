package faultproxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
)

// TCPProxy forwards TCP connections from a listen address to a target and
// can cut them off: Partition stalls every connection in both directions
// (nothing is read or written, nothing is closed) and holds new ones
// without dialling the target, so that to both ends the network looks
// gone, as a pulled cable does until their own timeouts fire; Heal lets
// bytes flow again. (Tests put one between a node and etcd.)
//
// Run owns every goroutine (the accept loop and two pumps per connection)
// and returns once all have stopped. Methods are safe for concurrent use.
type TCPProxy struct {
	ln     net.Listener
	target string

	mu sync.Mutex
	// open is closed while traffic flows; a partition replaces it with an
	// open channel that Heal closes.
	open  chan struct{}
	conns map[net.Conn]struct{}
}

// NewTCP listens on listen (loopback only, as the target) for connections
// to forward to target; nothing is accepted until Run.
func NewTCP(listen, target string) (*TCPProxy, error) {
	for _, a := range []string{listen, target} {
		host, _, err := net.SplitHostPort(a)
		if err != nil {
			return nil, fmt.Errorf("faultproxy: address %q: %w", a, err)
		}
		if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
			return nil, fmt.Errorf("faultproxy: %s → %s: only loopback addresses are allowed", listen, target)
		}
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return nil, fmt.Errorf("faultproxy: listen %s: %w", listen, err)
	}
	open := make(chan struct{})
	close(open)
	return &TCPProxy{ln: ln, target: target, open: open, conns: map[net.Conn]struct{}{}}, nil
}

// Addr is the address clients connect to.
func (p *TCPProxy) Addr() string { return p.ln.Addr().String() }

// Partition stalls every connection, and new ones, until Heal.
func (p *TCPProxy) Partition() {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.open:
		p.open = make(chan struct{})
	default: // partitioned already
	}
}

// Heal lets traffic flow again.
func (p *TCPProxy) Heal() {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.open:
	default:
		close(p.open)
	}
}

// wait returns once traffic may flow, or false when ctx ends.
func (p *TCPProxy) wait(ctx context.Context) bool {
	p.mu.Lock()
	open := p.open
	p.mu.Unlock()
	select {
	case <-open:
		return true
	case <-ctx.Done():
		return false
	}
}

func (p *TCPProxy) track(c net.Conn, add bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if add {
		p.conns[c] = struct{}{}
	} else {
		delete(p.conns, c)
	}
}

// Run forwards connections until ctx ends, then closes the listener and
// every connection.
func (p *TCPProxy) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() {
		<-ctx.Done()
		p.ln.Close()
		p.mu.Lock()
		for c := range p.conns {
			c.Close()
		}
		p.mu.Unlock()
	})
	for {
		c, err := p.ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, net.ErrClosed) {
				return err
			}
			continue
		}
		p.track(c, true)
		wg.Go(func() { p.serve(ctx, c) })
	}
}

// serve forwards one connection.
func (p *TCPProxy) serve(ctx context.Context, c net.Conn) {
	defer func() { c.Close(); p.track(c, false) }()
	if !p.wait(ctx) {
		return
	}
	var d net.Dialer
	up, err := d.DialContext(ctx, "tcp", p.target)
	if err != nil {
		return
	}
	p.track(up, true)
	defer func() { up.Close(); p.track(up, false) }()
	var wg sync.WaitGroup
	wg.Go(func() { p.pump(ctx, up, c); up.Close() })
	wg.Go(func() { p.pump(ctx, c, up); c.Close() })
	wg.Wait()
}

// pump copies src to dst, holding what it read while partitioned.
func (p *TCPProxy) pump(ctx context.Context, dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for p.wait(ctx) {
		n, err := src.Read(buf)
		if n > 0 {
			if !p.wait(ctx) {
				return
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}
