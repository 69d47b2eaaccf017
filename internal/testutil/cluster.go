package testutil

// Helpers for replication tests: free UDP addresses for QUIC listeners, an
// in-process UDP fault proxy that can partition a primary from a mirror,
// JSON over HTTP for admin endpoints, polling, and image comparison.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// FreeUDPAddr returns "127.a.b.c:port" with a random loopback address and a
// UDP port the kernel reported free on it a moment ago (for QUIC
// listeners).
func FreeUDPAddr(t testing.TB) string {
	t.Helper()
	for range 20 {
		ip := net.IPv4(127, byte(rand.IntN(250)), byte(rand.IntN(250)), byte(2+rand.IntN(250)))
		c, err := net.ListenUDP("udp", &net.UDPAddr{IP: ip})
		if err != nil {
			continue
		}
		addr := c.LocalAddr().String()
		c.Close()
		return addr
	}
	t.Fatal("testutil: no free loopback UDP port")
	return ""
}

// Direction selects which packets a [UDPProxy] drops.
type Direction uint8

// Directions for [UDPProxy.Partition].
const (
	// ToTarget drops packets from clients to the target.
	ToTarget Direction = 1 << iota
	// ToClient drops packets from the target back to clients.
	ToClient
	// Both drops everything.
	Both = ToTarget | ToClient
)

// UDPProxy forwards UDP datagrams between clients and one target on
// loopback, one upstream socket per client address, and drops them on
// demand to simulate a network partition. It is safe for concurrent use.
// Its goroutines are stopped by Close (registered as a test cleanup by
// [StartUDPProxy]).
type UDPProxy struct {
	ln     *net.UDPConn
	target *net.UDPAddr
	drop   atomic.Uint32 // Direction bits

	mu     sync.Mutex
	flows  map[string]*net.UDPConn // client addr → upstream socket
	closed bool
	wg     sync.WaitGroup

	// Forwarded and Dropped count datagrams (both directions).
	Forwarded, Dropped atomic.Int64
	// ToTarget and ToClient count the UDP payload bytes forwarded from
	// clients to the target and back (QUIC headers, acks and
	// retransmissions included): an independent measure of what crossed.
	ToTarget, ToClient atomic.Int64
}

// StartUDPProxy listens on listen ("127.x.y.z:port"; port 0 picks one) and
// forwards to target. Both must be loopback addresses.
func StartUDPProxy(t testing.TB, listen, target string) *UDPProxy {
	t.Helper()
	la, err := net.ResolveUDPAddr("udp", listen)
	if err != nil {
		t.Fatalf("testutil: proxy listen address %q: %v", listen, err)
	}
	ta, err := net.ResolveUDPAddr("udp", target)
	if err != nil {
		t.Fatalf("testutil: proxy target %q: %v", target, err)
	}
	if !la.IP.IsLoopback() || !ta.IP.IsLoopback() {
		t.Fatalf("testutil: proxy %s → %s: loopback addresses only", listen, target)
	}
	ln, err := net.ListenUDP("udp", la)
	if err != nil {
		t.Fatalf("testutil: proxy listen %s: %v", listen, err)
	}
	_ = ln.SetReadBuffer(8 << 20)
	_ = ln.SetWriteBuffer(8 << 20)
	p := &UDPProxy{ln: ln, target: ta, flows: make(map[string]*net.UDPConn)}
	p.wg.Add(1)
	go p.clientLoop()
	t.Cleanup(p.Close)
	return p
}

// Addr is the address clients send to.
func (p *UDPProxy) Addr() string { return p.ln.LocalAddr().String() }

// Partition starts dropping datagrams in the given directions (replacing
// any previous setting); Partition(0) is Heal.
func (p *UDPProxy) Partition(d Direction) { p.drop.Store(uint32(d)) }

// Heal forwards everything again.
func (p *UDPProxy) Heal() { p.drop.Store(0) }

// Close stops forwarding and waits for the proxy's goroutines.
func (p *UDPProxy) Close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	p.ln.Close()
	for _, up := range p.flows {
		up.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

func (p *UDPProxy) clientLoop() {
	defer p.wg.Done()
	buf := make([]byte, 64<<10)
	for {
		n, from, err := p.ln.ReadFromUDP(buf)
		if err != nil {
			return // closed
		}
		if Direction(p.drop.Load())&ToTarget != 0 {
			p.Dropped.Add(1)
			continue
		}
		up := p.flow(from)
		if up == nil {
			return
		}
		if _, err := up.Write(buf[:n]); err == nil {
			p.Forwarded.Add(1)
			p.ToTarget.Add(int64(n))
		}
	}
}

// flow returns the upstream socket for a client, creating it and its reader
// goroutine on first use; nil once closed.
func (p *UDPProxy) flow(client *net.UDPAddr) *net.UDPConn {
	key := client.String()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil
	}
	if up := p.flows[key]; up != nil {
		return up
	}
	up, err := net.DialUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}, p.target)
	if err != nil {
		return nil
	}
	_ = up.SetReadBuffer(8 << 20)
	_ = up.SetWriteBuffer(8 << 20)
	p.flows[key] = up
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		buf := make([]byte, 64<<10)
		for {
			n, err := up.Read(buf)
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				continue // e.g. ECONNREFUSED while the target is down
			}
			if Direction(p.drop.Load())&ToClient != 0 {
				p.Dropped.Add(1)
				continue
			}
			if _, err := p.ln.WriteToUDP(buf[:n], client); err == nil {
				p.Forwarded.Add(1)
				p.ToClient.Add(int64(n))
			}
		}
	}()
	return up
}

// GetJSON fetches url (a loopback admin endpoint) and decodes its JSON body
// into v.
func GetJSON(ctx context.Context, url string, v any) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return fmt.Errorf("GET %s: %w", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s: %s", url, resp.Status, bytes.TrimSpace(b))
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("GET %s: decode: %w", url, err)
	}
	return nil
}

// WaitFor polls cond every 50 ms until it returns true or timeout passes;
// then it fails the test with what and cond's last explanation.
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, why := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %s: %s", timeout, what, why)
		}
		select {
		case <-t.Context().Done():
			t.Fatalf("%s: test ended", what)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// CompareFiles reports the first offset at which two files differ (a file
// shorter than the other differs at its end), or -1 if they are identical.
func CompareFiles(a, b string) (int64, error) {
	fa, err := os.Open(a)
	if err != nil {
		return 0, err
	}
	defer fa.Close()
	fb, err := os.Open(b)
	if err != nil {
		return 0, err
	}
	defer fb.Close()
	ba := make([]byte, 1<<20)
	bb := make([]byte, 1<<20)
	var off int64
	for {
		na, ea := io.ReadFull(fa, ba)
		nb, eb := io.ReadFull(fb, bb)
		n := min(na, nb)
		if !bytes.Equal(ba[:n], bb[:n]) {
			for i := range n {
				if ba[i] != bb[i] {
					return off + int64(i), nil
				}
			}
		}
		if na != nb {
			return off + int64(n), nil
		}
		off += int64(n)
		aEOF := errors.Is(ea, io.EOF) || errors.Is(ea, io.ErrUnexpectedEOF)
		bEOF := errors.Is(eb, io.EOF) || errors.Is(eb, io.ErrUnexpectedEOF)
		if ea != nil && !aEOF {
			return 0, ea
		}
		if eb != nil && !bEOF {
			return 0, eb
		}
		if aEOF || bEOF {
			return -1, nil
		}
	}
}
