package faultproxy_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/blockmirror/blockmirror/internal/faultproxy"
	"github.com/blockmirror/blockmirror/transport"
)

// BenchmarkProxiedBulk measures single-stream QUIC throughput with 1 MiB
// frames through the proxy with an added RTT, for several receive-window
// ceilings: it shows how the window bounds throughput (window/RTT) on a
// long path. Run with e.g. -benchtime 200x.
func BenchmarkProxiedBulk(b *testing.B) {
	for _, rtt := range []time.Duration{0, 20 * time.Millisecond} {
		for _, w := range []uint64{2 << 20, 6 << 20, transport.DefaultMaxStreamWindow} {
			b.Run(fmt.Sprintf("rtt=%v/window=%dMiB", rtt, w>>20), func(b *testing.B) {
				benchProxied(b, rtt, w)
			})
		}
	}
}

func benchProxied(b *testing.B, rtt time.Duration, window uint64) {
	ca, _ := transport.GenerateCA("ca", transport.KeyECDSAP256, 0)
	m1, _ := ca.IssueNode("m1", transport.KeyECDSAP256, 0)
	m2, _ := ca.IssueNode("m2", transport.KeyECDSAP256, 0)
	cfg := func(id *transport.Identity) transport.Config {
		return transport.Config{Identity: id, MaxStreamWindow: window, MaxConnWindow: 3 * window}
	}
	l, err := transport.Listen("127.0.0.1:0", cfg(m1))
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	p := startProxy(b, l.Addr().String(), 1)
	p.SetFaults(faultproxy.Both, faultproxy.Faults{Delay: rtt / 2})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cc, err := transport.Dial(ctx, p.Addr().String(), "m1", cfg(m2))
	if err != nil {
		b.Fatal(err)
	}
	defer cc.Close(0, "")
	sc, err := l.Accept(ctx)
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		ss, err := sc.AcceptStream(ctx)
		if err != nil {
			return
		}
		buf := make([]byte, 0, 1<<20)
		for {
			if _, _, err := ss.ReadFrame(buf); err != nil {
				return
			}
		}
	}()
	s, err := cc.OpenStream(ctx)
	if err != nil {
		b.Fatal(err)
	}
	payload := make([]byte, 1<<20)
	b.SetBytes(1 << 20)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := s.WriteFrame(2, payload); err != nil {
			b.Fatal(err)
		}
	}
	s.CloseWrite()
	<-done
	b.StopTimer()
	st := cc.Stats()
	b.ReportMetric(float64(st.SmoothedRTT)/1e6, "srtt-ms")
	b.ReportMetric(float64(st.PacketsLost)/float64(b.N), "lost/op")
	ps := p.Stats()
	b.ReportMetric(float64(ps.Up.Dropped+ps.Down.Dropped), "proxy-drops")
}
