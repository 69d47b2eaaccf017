package transport_test

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
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
	dir := filepath.Join(b.TempDir(), "certs")
	if err := transport.InitCerts(dir, []string{"m1", "m2"}); err != nil {
		b.Fatal(err)
	}
	id, err := transport.LoadNode(dir, "m1")
	if err != nil {
		b.Fatal(err)
	}
	l := listen(b, transport.Config{Identity: id})
	startChild(b, "BM_TRANSPORT_ECHO", dir, l.Addr().String())
	ctx := ctxT(b, 10*time.Minute)
	c, err := l.Accept(ctx)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close(0, "benchmark over")
	s, err := c.OpenStream(ctx)
	if err != nil {
		b.Fatal(err)
	}
	rtt4K(b, s)
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
