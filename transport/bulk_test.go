package transport_test

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/blockmirror/blockmirror/internal/faultproxy"
	"github.com/blockmirror/blockmirror/transport"
)

// Bulk transfers between processes: the raw quic-go figure that the
// replication's large writes are compared with (scripts/bench.sh), and the
// same through the fault proxy (scripts/bench-wan.sh).
//
// The receiver is the test binary re-executed in sink mode (sinkMain): it
// listens, reads every frame of every stream into a reused buffer and,
// when the sender ends the stream, answers with one frame holding the
// byte count it read. The sender dials it, as a primary dials its mirror.
// Through a proxy, the proxy is a third process (proxyMain), so the
// topology is the replication's: primary → proxy → mirror.

// BenchmarkBulk1MiBProcess measures one stream's throughput with 1 MiB
// frames to a receiver in another process over loopback, with the
// transport's default configuration: the one-stream bulk figure a
// replicated large write stands on.
func BenchmarkBulk1MiBProcess(b *testing.B) {
	dir := certDir(b)
	addr := startHelper(b, "BM_TRANSPORT_SINK", dir, "")
	c, s := dialSink(b, dir, addr, transport.Config{})
	payload := make([]byte, 1<<20)
	b.SetBytes(1 << 20)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := s.WriteFrame(2, payload); err != nil {
			b.Fatal(err)
		}
	}
	got, st := finishBulk(b, c, s)
	b.StopTimer()
	if want := uint64(b.N) << 20; got != want {
		b.Fatalf("sink read %d bytes, want %d", got, want)
	}
	if st.PacketsSent > 0 {
		b.ReportMetric(100*float64(st.PacketsLost)/float64(st.PacketsSent), "lost-%")
	}
}

// wanProfile is a path through the fault proxy: delay added in each
// direction (the round trip grows by twice that) and the loss probability
// of each datagram in each direction.
type wanProfile struct {
	delay time.Duration
	loss  float64
}

// wanProfiles are scripts/bench-wan.sh's: every delay of BM_WAN_DELAYS
// (milliseconds, default "1 10 40") with every loss of BM_WAN_LOSSES
// (percent, default "0 0.5 2").
func wanProfiles(b *testing.B) []wanProfile {
	list := func(env, def string) []float64 {
		v := os.Getenv(env)
		if v == "" {
			v = def
		}
		var out []float64
		for _, f := range strings.Fields(v) {
			x, err := strconv.ParseFloat(f, 64)
			if err != nil || x < 0 {
				b.Fatalf("%s=%q: want non-negative numbers", env, v)
			}
			out = append(out, x)
		}
		return out
	}
	var ps []wanProfile
	for _, d := range list("BM_WAN_DELAYS", "1 10 40") {
		for _, l := range list("BM_WAN_LOSSES", "0 0.5 2") {
			ps = append(ps, wanProfile{time.Duration(d * float64(time.Millisecond)), l / 100})
		}
	}
	return ps
}

// BenchmarkBulkWAN sends 1 MiB frames on one stream through the fault
// proxy (a process of its own) to a receiver process for a fixed time
// (BM_WAN_SECONDS, default 10) per path profile (wanProfiles), and reports the goodput
// in MB/s (bytes the receiver read, over the time until it confirmed
// them) with the loss and the smoothed RTT quic-go saw. Each profile is
// one transfer: run with -benchtime 1x.
func BenchmarkBulkWAN(b *testing.B) {
	secs := 10.0
	if v := os.Getenv("BM_WAN_SECONDS"); v != "" {
		var err error
		if secs, err = strconv.ParseFloat(v, 64); err != nil || secs <= 0 {
			b.Fatalf("BM_WAN_SECONDS=%q: want a positive number of seconds", v)
		}
	}
	conns := []int{1}
	if v := os.Getenv("BM_WAN_CONNS"); v != "" {
		conns = nil
		for _, f := range strings.Fields(v) {
			n, err := strconv.Atoi(f)
			if err != nil || n < 1 {
				b.Fatalf("BM_WAN_CONNS=%q: want positive connection counts", v)
			}
			conns = append(conns, n)
		}
	}
	for _, p := range wanProfiles(b) {
		for _, n := range conns {
			name := fmt.Sprintf("delay=%v/loss=%g%%", p.delay, p.loss*100)
			if len(conns) > 1 || n > 1 {
				name += fmt.Sprintf("/conns=%d", n)
			}
			b.Run(name, func(b *testing.B) {
				dir := certDir(b)
				sink := startHelper(b, "BM_TRANSPORT_SINK", dir, "")
				proxy := startHelper(b, "BM_TRANSPORT_PROXY", sink, fmt.Sprintf("%s,%g", p.delay, p.loss))
				for i := 0; i < b.N; i++ {
					bulkFor(b, dir, proxy, n, time.Duration(secs*float64(time.Second)))
				}
			})
		}
	}
}

// bulkFor dials the sink at addr n times (n connections, one stream
// each: every connection has its own congestion controller) and sends
// 1 MiB frames on all of them for d, then reports the total goodput.
func bulkFor(b *testing.B, dir, addr string, n int, d time.Duration) {
	type link struct {
		c    *transport.Conn
		s    *transport.Stream
		sent uint64
	}
	links := make([]*link, n)
	for i := range links {
		c, s := dialSink(b, dir, addr, transport.Config{})
		links[i] = &link{c: c, s: s}
	}
	payload := make([]byte, 1<<20)
	start := time.Now()
	errs := make(chan error, n)
	for _, l := range links {
		go func() {
			for time.Since(start) < d {
				if err := l.s.WriteFrame(2, payload); err != nil {
					errs <- err
					return
				}
				l.sent += uint64(len(payload))
			}
			errs <- nil
		}()
	}
	for range links {
		if err := <-errs; err != nil {
			b.Fatal(err)
		}
	}
	var got, sent, pkts, lost uint64
	var rtt time.Duration
	for _, l := range links {
		g, st := finishBulk(b, l.c, l.s)
		if g != l.sent {
			b.Fatalf("sink read %d bytes, want %d", g, l.sent)
		}
		got, sent = got+g, sent+l.sent
		pkts, lost, rtt = pkts+st.PacketsSent, lost+st.PacketsLost, rtt+st.SmoothedRTT
	}
	el := time.Since(start)
	b.ReportMetric(float64(got)/el.Seconds()/1e6, "MB/s")
	if pkts > 0 {
		b.ReportMetric(100*float64(lost)/float64(pkts), "lost-%")
	}
	b.ReportMetric(float64(rtt/time.Duration(n))/1e6, "srtt-ms")
}

// certDir issues m1 (the sender) and m2 (the sink) into a new directory.
func certDir(b *testing.B) string {
	dir := filepath.Join(b.TempDir(), "certs")
	if err := transport.InitCerts(dir, []string{"m1", "m2"}); err != nil {
		b.Fatal(err)
	}
	return dir
}

// dialSink connects as m1 to the sink (m2) at addr and opens the stream.
func dialSink(b *testing.B, dir, addr string, cfg transport.Config) (*transport.Conn, *transport.Stream) {
	id, err := transport.LoadNode(dir, "m1")
	if err != nil {
		b.Fatal(err)
	}
	cfg.Identity = id
	ctx := ctxT(b, time.Minute)
	c, err := transport.Dial(ctx, addr, "m2", cfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close(0, "benchmark over") })
	s, err := c.OpenStream(ctx)
	if err != nil {
		b.Fatal(err)
	}
	return c, s
}

// finishBulk ends the stream and waits for the sink's byte count; it
// also returns the connection's statistics.
func finishBulk(b *testing.B, c *transport.Conn, s *transport.Stream) (uint64, transport.ConnStats) {
	if err := s.CloseWrite(); err != nil {
		b.Fatal(err)
	}
	s.SetReadDeadline(time.Now().Add(5 * time.Minute))
	_, p, err := s.ReadFrame(nil)
	if err != nil || len(p) != 8 {
		b.Fatalf("sink's byte count: %v (%d bytes)", err, len(p))
	}
	return binary.BigEndian.Uint64(p), c.Stats()
}

// startHelper runs the test binary in helper mode env (BM_TRANSPORT_SINK
// or BM_TRANSPORT_PROXY) with value and arg, and returns the address it
// prints on its first line ("addr=HOST:PORT"). It is killed when the
// benchmark ends.
func startHelper(b *testing.B, env, value, arg string) string {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), env+"="+value, "BM_TRANSPORT_ARG="+arg)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	addr, ok := strings.CutPrefix(strings.TrimSpace(line), "addr=")
	if err != nil || !ok {
		b.Fatalf("%s helper: first line %q: %v", env, line, err)
	}
	go io.Copy(io.Discard, out)
	return addr
}

// sinkMain listens on loopback as m2 (certificates in dir), prints its
// address and serves every stream: it reads frames until the sender ends
// the stream and answers with the number of payload bytes read.
func sinkMain(dir string) int {
	id, err := transport.LoadNode(dir, "m2")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	l, err := transport.Listen("127.0.0.1:0", transport.Config{Identity: id})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer l.Close()
	fmt.Printf("addr=%s\n", l.Addr())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	for {
		c, err := l.Accept(ctx)
		if err != nil {
			return 0
		}
		go func() {
			for {
				s, err := c.AcceptStream(ctx)
				if err != nil {
					return
				}
				go sinkStream(s)
			}
		}()
	}
}

func sinkStream(s *transport.Stream) {
	buf := make([]byte, 0, 1<<20)
	var n uint64
	for {
		_, p, err := s.ReadFrame(buf)
		if err == io.EOF {
			break
		}
		if err != nil {
			return
		}
		n += uint64(len(p))
	}
	var reply [8]byte
	binary.BigEndian.PutUint64(reply[:], n)
	if s.WriteFrame(3, reply[:]) == nil {
		s.CloseWrite()
	}
}

// proxyMain runs the fault proxy in front of target with arg's profile
// ("DELAY,LOSS": both directions delayed by DELAY and dropping a fraction
// LOSS of the datagrams) and prints its address.
func proxyMain(target, arg string) int {
	delayS, lossS, _ := strings.Cut(arg, ",")
	delay, err1 := time.ParseDuration(delayS)
	loss, err2 := strconv.ParseFloat(lossS, 64)
	if err1 != nil || err2 != nil {
		fmt.Fprintf(os.Stderr, "proxy profile %q: want DELAY,LOSS\n", arg)
		return 1
	}
	p, err := faultproxy.New(faultproxy.Config{Listen: "127.0.0.1:0", Target: target, Seed: 1})
	if err == nil {
		err = p.SetFaults(faultproxy.Both, faultproxy.Faults{Delay: delay, Drop: loss})
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Printf("addr=%s\n", p.Addr())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	if err := p.Run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}
