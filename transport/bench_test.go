package transport_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/blockmirror/blockmirror/transport"
)

// BenchmarkRTT4K measures a 4 KiB request / 4 KiB response round trip on
// one stream over loopback. Reports mean, p50 and p99 in µs.
func BenchmarkRTT4K(b *testing.B) {
	ids := cluster(b, transport.KeyECDSAP256, "m1", "m2")
	cc, sc := pair(b, testConfig(ids["m2"], nil), testConfig(ids["m1"], nil))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go echo(ctx, sc)
	s, err := cc.OpenStream(ctx)
	if err != nil {
		b.Fatal(err)
	}
	rtt4K(b, s)
}

// BenchmarkRTT4KProcess is BenchmarkRTT4K with the echoing peer in another
// process (the test binary re-executed), as a primary and its mirror are:
// two Go runtimes that each wake their own threads for every packet. On a
// small shared host this is the round trip replication actually pays.
func BenchmarkRTT4KProcess(b *testing.B) {
	s, _ := processPeer(b, "BM_TRANSPORT_ECHO")
	rtt4K(b, s)
}

// processPeer starts the test binary in the child mode named by env
// (BM_TRANSPORT_ECHO or BM_TRANSPORT_ACKER), accepts its connection and
// opens a stream to it; the connection closes and the child is killed when
// the benchmark ends.
func processPeer(b *testing.B, env string) (*transport.Stream, *exec.Cmd) {
	dir := filepath.Join(b.TempDir(), "certs")
	if err := transport.InitCerts(dir, []string{"m1", "m2"}); err != nil {
		b.Fatal(err)
	}
	id, err := transport.LoadNode(dir, "m1")
	if err != nil {
		b.Fatal(err)
	}
	l := listen(b, transport.Config{Identity: id})
	child := startChild(b, env, dir, l.Addr().String())
	ctx := ctxT(b, 10*time.Minute)
	c, err := l.Accept(ctx)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close(0, "benchmark over") })
	s, err := c.OpenStream(ctx)
	if err != nil {
		b.Fatal(err)
	}
	return s, child
}

// rtt4K runs b.N 4 KiB request/response round trips on s and reports the
// latency distribution.
func rtt4K(b *testing.B, s *transport.Stream) {
	req := make([]byte, 4096)
	buf := make([]byte, 0, 8192)
	lat := make([]time.Duration, 0, b.N)
	b.SetBytes(2 * 4096)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		if err := s.WriteFrame(1, req); err != nil {
			b.Fatal(err)
		}
		if err := s.Flush(); err != nil {
			b.Fatal(err)
		}
		if _, _, err := s.ReadFrame(buf); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(t0))
	}
	b.StopTimer()
	reportLatency(b, lat)
}

func reportLatency(b *testing.B, lat []time.Duration) {
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	var sum time.Duration
	for _, l := range lat {
		sum += l
	}
	us := func(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
	b.ReportMetric(us(sum/time.Duration(len(lat))), "mean-µs")
	b.ReportMetric(us(lat[len(lat)/2]), "p50-µs")
	b.ReportMetric(us(lat[len(lat)*99/100]), "p99-µs")
}

// BenchmarkBulk1MiB measures single-stream throughput with 1 MiB frames
// (one direction; the receiver reads into a reused buffer), for several
// receive-window ceilings.
func BenchmarkBulk1MiB(b *testing.B) {
	for _, w := range []uint64{6 << 20, transport.DefaultMaxStreamWindow, 64 << 20} {
		b.Run(fmt.Sprintf("window=%dMiB", w>>20), func(b *testing.B) {
			ids := cluster(b, transport.KeyECDSAP256, "m1", "m2")
			ccfg, scfg := testConfig(ids["m2"], nil), testConfig(ids["m1"], nil)
			scfg.MaxStreamWindow, scfg.MaxConnWindow = w, 3*w
			ccfg.MaxStreamWindow, ccfg.MaxConnWindow = w, 3*w
			cc, sc := pair(b, ccfg, scfg)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			s, err := cc.OpenStream(ctx)
			if err != nil {
				b.Fatal(err)
			}
			done := make(chan error, 1)
			go func() {
				ss, err := sc.AcceptStream(ctx)
				if err != nil {
					done <- err
					return
				}
				buf := make([]byte, 0, 1<<20)
				for {
					_, _, err := ss.ReadFrame(buf)
					if err != nil {
						done <- nil
						return
					}
				}
			}()
			payload := make([]byte, 1<<20)
			b.SetBytes(1 << 20)
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if err := s.WriteFrame(2, payload); err != nil {
					b.Fatal(err)
				}
			}
			if err := s.CloseWrite(); err != nil {
				b.Fatal(err)
			}
			if err := <-done; err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			st := cc.Stats()
			b.ReportMetric(float64(st.PacketsLost)/float64(b.N), "lost/op")
			b.ReportMetric(float64(st.SmoothedRTT)/1e3, "srtt-µs")
		})
	}
}

// BenchmarkRecordsProcess is replication's traffic shape at its cheapest:
// frames of 4 KiB records streamed to a peer in another process, which
// answers each frame with a small cumulative ack, at most window bytes in
// flight (a queue of 32 writes is 128 KiB). It reports the CPU both
// processes spend per 4 KiB record (user + system, kernel network stack
// included, from getrusage and /proc): the floor quic-go sets under any
// replicated write, whatever the rest of the write path costs.
func BenchmarkRecordsProcess(b *testing.B) {
	for _, frame := range []int{16 << 10, 128 << 10} {
		b.Run(fmt.Sprintf("frame=%dKiB", frame>>10), func(b *testing.B) {
			recordsProcess(b, frame, 128<<10)
		})
	}
}

func recordsProcess(b *testing.B, frame, window int) {
	s, child := processPeer(b, "BM_TRANSPORT_ACKER")
	// Acks flow back on a reader goroutine; credits bound what is in flight.
	credits := make(chan struct{}, max(1, window/frame))
	acked := make(chan error, 1)
	go func() {
		buf := make([]byte, 0, 64)
		for {
			if _, _, err := s.ReadFrame(buf); err != nil {
				acked <- err
				return
			}
			<-credits
		}
	}()
	payload := make([]byte, frame)
	send := func(n int) {
		for i := 0; i < n; i++ {
			credits <- struct{}{}
			if err := s.WriteFrame(1, payload); err != nil {
				b.Fatal(err)
			}
			if err := s.Flush(); err != nil {
				b.Fatal(err)
			}
		}
		for len(credits) > 0 {
			select {
			case err := <-acked:
				b.Fatal(err)
			case <-time.After(50 * time.Microsecond):
			}
		}
	}
	send(64) // warm up: congestion window, MTU
	self0, peer0 := cpuSelf(b), cpuOf(b, child.Process.Pid)
	b.SetBytes(int64(frame))
	b.ResetTimer()
	send(b.N)
	b.StopTimer()
	self, peer := cpuSelf(b)-self0, cpuOf(b, child.Process.Pid)-peer0
	records := float64(b.N) * float64(frame) / 4096
	us := func(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) / records }
	b.ReportMetric(us(self+peer), "cpu-µs/4KiB")
	b.ReportMetric(us(self), "sender-µs/4KiB")
	b.ReportMetric(us(peer), "acker-µs/4KiB")
}

// cpuSelf is this process's user + system CPU time.
func cpuSelf(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// cpuOf is process pid's user + system CPU time from /proc (clock ticks,
// assumed 100 per second as on every Linux this runs on).
func cpuOf(b *testing.B, pid int) time.Duration {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	// Fields after the command name, which is in parentheses and may hold spaces.
	f := strings.Fields(string(raw[bytes.LastIndexByte(raw, ')')+1:]))
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		b.Fatalf("parse /proc/%d/stat: %v %v", pid, err1, err2)
	}
	return time.Duration(utime+stime) * 10 * time.Millisecond
}
