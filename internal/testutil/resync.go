package testutil

// Helpers for resync tests: a UDP relay that counts the bytes it forwards
// (an independent measure of what a primary sent a mirror, next to the
// primary's own counters), slog field extraction, and extent bookkeeping
// (how many bytes and 64 KiB chunks a set of writes touched).

import (
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

// CountingUDPProxy relays UDP datagrams between clients and one target on
// loopback (one upstream socket per client address) and counts the payload
// bytes forwarded in each direction. It never drops or alters anything. It
// is safe for concurrent use; Close (a test cleanup registered by
// [StartCountingUDPProxy]) stops its goroutines.
type CountingUDPProxy struct {
	ln     *net.UDPConn
	target *net.UDPAddr

	mu     sync.Mutex
	flows  map[string]*net.UDPConn
	closed bool
	wg     sync.WaitGroup

	// ToTarget and ToClient count UDP payload bytes forwarded from clients
	// to the target and back (QUIC headers, acks and retransmissions
	// included).
	ToTarget, ToClient atomic.Int64
}

// StartCountingUDPProxy listens on listen ("127.x.y.z:port"; port 0 picks
// one) and relays to target; both must be loopback addresses.
func StartCountingUDPProxy(t testing.TB, listen, target string) *CountingUDPProxy {
	t.Helper()
	la, err := net.ResolveUDPAddr("udp", listen)
	if err != nil {
		t.Fatalf("testutil: counting proxy listen address %q: %v", listen, err)
	}
	ta, err := net.ResolveUDPAddr("udp", target)
	if err != nil {
		t.Fatalf("testutil: counting proxy target %q: %v", target, err)
	}
	if !la.IP.IsLoopback() || !ta.IP.IsLoopback() {
		t.Fatalf("testutil: counting proxy %s → %s: loopback addresses only", listen, target)
	}
	ln, err := net.ListenUDP("udp", la)
	if err != nil {
		t.Fatalf("testutil: counting proxy listen %s: %v", listen, err)
	}
	_ = ln.SetReadBuffer(8 << 20)
	_ = ln.SetWriteBuffer(8 << 20)
	p := &CountingUDPProxy{ln: ln, target: ta, flows: make(map[string]*net.UDPConn)}
	p.wg.Add(1)
	go p.clientLoop()
	t.Cleanup(p.Close)
	return p
}

// Addr is the address clients send to.
func (p *CountingUDPProxy) Addr() string { return p.ln.LocalAddr().String() }

// Close stops relaying and waits for the proxy's goroutines.
func (p *CountingUDPProxy) Close() {
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

func (p *CountingUDPProxy) clientLoop() {
	defer p.wg.Done()
	buf := make([]byte, 64<<10)
	for {
		n, from, err := p.ln.ReadFromUDP(buf)
		if err != nil {
			return // closed
		}
		up := p.flow(from)
		if up == nil {
			return
		}
		if _, err := up.Write(buf[:n]); err == nil {
			p.ToTarget.Add(int64(n))
		}
	}
}

func (p *CountingUDPProxy) flow(client *net.UDPAddr) *net.UDPConn {
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
			if _, err := p.ln.WriteToUDP(buf[:n], client); err == nil {
				p.ToClient.Add(int64(n))
			}
		}
	}()
	return up
}

// LogField returns key's value in a log/slog text line (quoted or bare),
// or "" when the line has no such key.
func LogField(line, key string) string {
	var v string
	switch {
	case strings.HasPrefix(line, key+"="):
		v = line[len(key)+1:]
	default:
		i := strings.Index(line, " "+key+"=")
		if i < 0 {
			return ""
		}
		v = line[i+len(key)+2:]
	}
	if strings.HasPrefix(v, `"`) {
		if q, err := strconv.QuotedPrefix(v); err == nil {
			u, _ := strconv.Unquote(q)
			return u
		}
	}
	if j := strings.IndexByte(v, ' '); j >= 0 {
		v = v[:j]
	}
	return v
}

// LogInt is [LogField] parsed as an integer.
func LogInt(line, key string) (int64, error) {
	s := LogField(line, key)
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("log field %s=%q in %q: %w", key, s, line, err)
	}
	return n, nil
}

// Extent is a byte range [Off, Off+Len).
type Extent struct{ Off, Len int64 }

// Extents accumulates written byte ranges.
type Extents struct{ list []Extent }

// Add records a write of n bytes at off.
func (e *Extents) Add(off, n int64) { e.list = append(e.list, Extent{off, n}) }

// Merged returns the union of the recorded ranges, sorted and coalesced
// (touching ranges merge).
func (e *Extents) Merged() []Extent {
	l := slices.Clone(e.list)
	slices.SortFunc(l, func(a, b Extent) int { return cmpInt64(a.Off, b.Off) })
	var out []Extent
	for _, x := range l {
		if x.Len <= 0 {
			continue
		}
		if n := len(out); n > 0 && x.Off <= out[n-1].Off+out[n-1].Len {
			out[n-1].Len = max(out[n-1].Len, x.Off+x.Len-out[n-1].Off)
			continue
		}
		out = append(out, x)
	}
	return out
}

// Bytes is the size of the union of the recorded ranges.
func (e *Extents) Bytes() int64 {
	var n int64
	for _, x := range e.Merged() {
		n += x.Len
	}
	return n
}

// Chunks returns the indexes of the chunk-sized, chunk-aligned blocks
// that the recorded ranges touch, ascending.
func (e *Extents) Chunks(chunk int64) []int64 {
	var out []int64
	for _, x := range e.Merged() {
		first := x.Off / chunk
		last := (x.Off + x.Len - 1) / chunk
		if n := len(out); n > 0 && out[n-1] >= first {
			first = out[n-1] + 1
		}
		for c := first; c <= last; c++ {
			out = append(out, c)
		}
	}
	return out
}

// ChunkBytes is the size of the chunks the recorded ranges touch, on a
// disk of size bytes (the last chunk may be short).
func (e *Extents) ChunkBytes(chunk, size int64) int64 {
	var n int64
	for _, c := range e.Chunks(chunk) {
		n += min(chunk, size-c*chunk)
	}
	return n
}

func cmpInt64(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
