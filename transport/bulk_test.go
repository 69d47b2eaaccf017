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
	got := finishBulk(b, c, s)
	b.StopTimer()
	if want := uint64(b.N) << 20; got != want {
		b.Fatalf("sink read %d bytes, want %d", got, want)
	}
}

// wanProfiles are the path profiles of scripts/bench-wan.sh: delay added
// in each direction (the round trip grows by twice that) and the loss
// probability of each datagram in each direction.
var wanProfiles = []struct {
	delay time.Duration
	loss  float64
}{
	{time.Millisecond, 0}, {time.Millisecond, 0.005}, {time.Millisecond, 0.02},
	{10 * time.Millisecond, 0}, {10 * time.Millisecond, 0.005}, {10 * time.Millisecond, 0.02},
	{40 * time.Millisecond, 0}, {40 * time.Millisecond, 0.005}, {40 * time.Millisecond, 0.02},
}

// BenchmarkBulkWAN sends 1 MiB frames on one stream through the fault
// proxy (a process of its own) to a receiver process for a fixed time
// (BM_WAN_SECONDS, default 10) per path profile, and reports the goodput
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
	for _, p := range wanProfiles {
		b.Run(fmt.Sprintf("delay=%v/loss=%g%%", p.delay, p.loss*100), func(b *testing.B) {
			dir := certDir(b)
			sink := startHelper(b, "BM_TRANSPORT_SINK", dir, "")
			proxy := startHelper(b, "BM_TRANSPORT_PROXY", sink, fmt.Sprintf("%s,%g", p.delay, p.loss))
			for i := 0; i < b.N; i++ {
				bulkFor(b, dir, proxy, time.Duration(secs*float64(time.Second)))
			}
		})
	}
}

// bulkFor dials the sink at addr and sends 1 MiB frames for d, then
// reports the goodput.
func bulkFor(b *testing.B, dir, addr string, d time.Duration) {
	c, s := dialSink(b, dir, addr, transport.Config{})
	payload := make([]byte, 1<<20)
	start := time.Now()
	var sent uint64
	for time.Since(start) < d {
		if err := s.WriteFrame(2, payload); err != nil {
			b.Fatal(err)
		}
		sent += uint64(len(payload))
	}
	got := finishBulk(b, c, s)
	el := time.Since(start)
	if got != sent {
		b.Fatalf("sink read %d bytes, want %d", got, sent)
	}
	b.ReportMetric(float64(got)/el.Seconds()/1e6, "MB/s")
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
// reports the loss and RTT quic-go measured.
func finishBulk(b *testing.B, c *transport.Conn, s *transport.Stream) uint64 {
	if err := s.CloseWrite(); err != nil {
		b.Fatal(err)
	}
	s.SetReadDeadline(time.Now().Add(5 * time.Minute))
	_, p, err := s.ReadFrame(nil)
	if err != nil || len(p) != 8 {
		b.Fatalf("sink's byte count: %v (%d bytes)", err, len(p))
	}
	st := c.Stats()
	if st.PacketsSent > 0 {
		b.ReportMetric(100*float64(st.PacketsLost)/float64(st.PacketsSent), "lost-%")
	}
	b.ReportMetric(float64(st.SmoothedRTT)/1e6, "srtt-ms")
	return binary.BigEndian.Uint64(p)
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
