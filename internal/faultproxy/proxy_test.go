package faultproxy_test

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/blockmirror/blockmirror/internal/faultproxy"
)

// echoServer answers every datagram with the same bytes.
func echoServer(t testing.TB) (*net.UDPAddr, *counter) {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	n := &counter{}
	go func() {
		buf := make([]byte, 65536)
		for {
			k, from, err := c.ReadFromUDP(buf)
			if err != nil {
				return
			}
			n.add()
			c.WriteToUDP(buf[:k], from)
		}
	}()
	return c.LocalAddr().(*net.UDPAddr), n
}

type counter struct {
	mu sync.Mutex
	n  int
}

func (c *counter) add() { c.mu.Lock(); c.n++; c.mu.Unlock() }
func (c *counter) get() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n
}

func startProxy(t testing.TB, target string, seed uint64) *faultproxy.Proxy {
	t.Helper()
	p, err := faultproxy.New(faultproxy.Config{Listen: "127.0.0.1:0", Target: target, Seed: seed})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return p
}

func client(t testing.TB, p *faultproxy.Proxy) *net.UDPConn {
	t.Helper()
	c, err := net.DialUDP("udp", nil, p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// exchange sends n numbered datagrams and collects replies until quiet for
// `quiet`; it returns the sequence numbers received, in arrival order.
func exchange(t testing.TB, c *net.UDPConn, n int, quiet time.Duration) []uint32 {
	t.Helper()
	for i := 0; i < n; i++ {
		var b [64]byte
		binary.BigEndian.PutUint32(b[:], uint32(i))
		if _, err := c.Write(b[:]); err != nil {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Microsecond) // keep the loopback queues short
	}
	var got []uint32
	buf := make([]byte, 1500)
	for {
		c.SetReadDeadline(time.Now().Add(quiet))
		k, err := c.Read(buf)
		if err != nil {
			return got
		}
		if k == 64 {
			got = append(got, binary.BigEndian.Uint32(buf))
		}
	}
}

func TestForwardsBothWaysPerClient(t *testing.T) {
	target, served := echoServer(t)
	p := startProxy(t, target.String(), 1)
	a, b := client(t, p), client(t, p)
	if got := exchange(t, a, 50, 200*time.Millisecond); len(got) != 50 {
		t.Fatalf("client a got %d replies, want 50", len(got))
	}
	if got := exchange(t, b, 30, 200*time.Millisecond); len(got) != 30 {
		t.Fatalf("client b got %d replies, want 30", len(got))
	}
	st := p.Stats()
	if st.Sessions != 2 || st.Up.Forwarded != 80 || st.Down.Forwarded != 80 || served.get() != 80 || st.Up.Bytes != 80*64 {
		t.Fatalf("stats %+v, target served %d", st, served.get())
	}
}

func TestDropDuplicatePartitionHeal(t *testing.T) {
	target, served := echoServer(t)
	p := startProxy(t, target.String(), 1)
	c := client(t, p)

	if err := p.SetFaults(faultproxy.Up, faultproxy.Faults{Drop: 1}); err != nil {
		t.Fatal(err)
	}
	if got := exchange(t, c, 20, 250*time.Millisecond); len(got) != 0 || served.get() != 0 {
		t.Fatalf("drop=1: %d replies, %d served", len(got), served.get())
	}
	if st := p.Stats(); st.Up.Dropped != 20 {
		t.Fatalf("Up.Dropped = %d", st.Up.Dropped)
	}

	p.SetFaults(faultproxy.Up, faultproxy.Faults{Duplicate: 1})
	if got := exchange(t, c, 20, 250*time.Millisecond); len(got) != 40 || served.get() != 40 {
		t.Fatalf("dup=1: %d replies, %d served", len(got), served.get())
	}
	if st := p.Stats(); st.Up.Duplicated != 20 {
		t.Fatalf("Up.Duplicated = %d", st.Up.Duplicated)
	}

	p.Heal()
	p.Partition(faultproxy.Down)
	if got := exchange(t, c, 10, 250*time.Millisecond); len(got) != 0 || served.get() != 50 {
		t.Fatalf("partition down: %d replies, %d served", len(got), served.get())
	}
	if st := p.Stats(); !st.DownState.Partitioned || st.UpState.Partitioned || st.Down.Dropped != 10 {
		t.Fatalf("stats after partition: %+v", st)
	}
	p.Heal()
	if got := exchange(t, c, 10, 250*time.Millisecond); len(got) != 10 {
		t.Fatalf("after heal: %d replies", len(got))
	}
}

func TestDelayAndReorder(t *testing.T) {
	target, _ := echoServer(t)
	p := startProxy(t, target.String(), 1)
	c := client(t, p)
	p.SetFaults(faultproxy.Down, faultproxy.Faults{Delay: 40 * time.Millisecond, Jitter: 5 * time.Millisecond})
	start := time.Now()
	c.Write(make([]byte, 64))
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Read(make([]byte, 100)); err != nil {
		t.Fatal(err)
	}
	if rtt := time.Since(start); rtt < 40*time.Millisecond || rtt > time.Second {
		t.Fatalf("rtt %v with 40ms delay", rtt)
	}

	p.SetFaults(faultproxy.Up, faultproxy.Faults{Reorder: 0.3, ReorderDelay: 3 * time.Millisecond})
	p.SetFaults(faultproxy.Down, faultproxy.Faults{})
	got := exchange(t, c, 200, 200*time.Millisecond)
	if len(got) != 200 {
		t.Fatalf("reorder lost datagrams: %d/200", len(got))
	}
	inversions := 0
	for i := 1; i < len(got); i++ {
		if got[i] < got[i-1] {
			inversions++
		}
	}
	if inversions == 0 {
		t.Fatal("reorder=0.3 delivered everything in order")
	}
	if st := p.Stats(); st.Up.Reordered == 0 || st.Up.Delayed != st.Up.Reordered {
		t.Fatalf("reorder stats %+v", st.Up)
	}
}

func TestSeededDropsAreReproducible(t *testing.T) {
	run := func(seed uint64) []uint32 {
		target, _ := echoServer(t)
		p := startProxy(t, target.String(), seed)
		p.SetFaults(faultproxy.Up, faultproxy.Faults{Drop: 0.3})
		return exchange(t, client(t, p), 100, 100*time.Millisecond)
	}
	a, b, c := run(7), run(7), run(8)
	if len(a) == 0 || len(a) == 100 {
		t.Fatalf("drop=0.3 delivered %d/100", len(a))
	}
	if !equal(a, b) {
		t.Fatalf("same seed, different survivors:\n%v\n%v", a, b)
	}
	if equal(a, c) {
		t.Fatal("different seeds, same survivors")
	}
}

func equal(a, b []uint32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestRefusesNonLoopback(t *testing.T) {
	for _, c := range []faultproxy.Config{
		{Listen: "127.0.0.1:0", Target: "192.0.2.1:7000"},
		{Listen: "0.0.0.0:0", Target: "127.0.0.1:7000"},
	} {
		if _, err := faultproxy.New(c); err == nil || !strings.Contains(err.Error(), "loopback") {
			t.Errorf("%+v: %v", c, err)
		}
	}
}

func TestHTTPControl(t *testing.T) {
	target, _ := echoServer(t)
	p := startProxy(t, target.String(), 1)
	srv := httptest.NewServer(p.Handler())
	defer srv.Close()
	post := func(path string) (int, faultproxy.Stats) {
		resp, err := http.Post(srv.URL+path, "", nil)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var st faultproxy.Stats
		if resp.StatusCode == 200 {
			if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
				t.Fatal(err)
			}
		}
		return resp.StatusCode, st
	}
	code, st := post("/faults?dir=up&drop=0.1&delay=5ms&jitter=1ms&dup=0.01")
	want := faultproxy.Faults{Drop: 0.1, Delay: 5 * time.Millisecond, Jitter: time.Millisecond, Duplicate: 0.01}
	if code != 200 || st.UpState.Faults != want || st.DownState.Faults != (faultproxy.Faults{}) {
		t.Fatalf("faults: %d %+v", code, st)
	}
	if code, st = post("/partition?dir=both"); code != 200 || !st.UpState.Partitioned || !st.DownState.Partitioned {
		t.Fatalf("partition: %d %+v", code, st)
	}
	if code, st = post("/heal"); code != 200 || st.UpState.Partitioned || st.UpState.Faults != (faultproxy.Faults{}) {
		t.Fatalf("heal: %d %+v", code, st)
	}
	for _, bad := range []string{"/faults?drop=2", "/faults?delay=x", "/faults?bogus=1", "/partition?dir=sideways"} {
		if code, _ := post(bad); code != 400 {
			t.Errorf("%s: status %d, want 400", bad, code)
		}
	}
	resp, err := http.Get(srv.URL + "/stats")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET /stats: %v %v", resp, err)
	}
	resp.Body.Close()
	if resp, _ := http.Get(srv.URL + "/heal"); resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("GET /heal: %d", resp.StatusCode)
	}
}
