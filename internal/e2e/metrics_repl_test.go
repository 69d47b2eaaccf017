package e2e

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/blockmirror/blockmirror/internal/testutil"
)

// TestMetricsReplication scrapes /metrics on a primary replicating to a
// mirror while a client writes: the per-peer families are present, the
// ack latency histogram moves, the mirror shows as connected and in sync,
// the QUIC connection's statistics are there (status JSON and gauges), and
// once the mirror is killed the metrics report it disconnected and lagging
// with no connection statistics left.
func TestMetricsReplication(t *testing.T) {
	c := newReplCluster(t, "64M", "m1")
	m1 := c.StartMirror("m1")
	c.StartPrimary(primaryOpts{Args: []string{"--mode", "sync", "--allow-degraded", "--ack-timeout", "1s"}})
	c.WaitPeerState(15*time.Second, "in-sync", "m1")
	scrape := func() map[string]float64 { return metricValues(t, c.Primary.Admin) }
	write := func(n int) {
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		conn, err := rawDial(ctx, c.Primary.NBD, "disk")
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < n; i++ {
			if err := conn.pwrite(make([]byte, 4096), uint64(i%1000)*4096, 0); err != nil {
				t.Fatal(err)
			}
		}
		conn.disconnect()
	}
	before := scrape()
	write(300)
	time.Sleep(1200 * time.Millisecond) // gauges refresh every second
	after := scrape()
	const peer = `{peer="m1",volume="disk"}`
	for _, name := range []string{"blockmirror_peer_ack_duration_seconds_count", "blockmirror_peer_ack_duration_seconds_sum"} {
		if after[name+peer] <= before[name+peer] {
			t.Errorf("%s did not move: %v → %v", name, before[name+peer], after[name+peer])
		}
	}
	for _, name := range []string{"blockmirror_peer_lag_records", "blockmirror_peer_lag_bytes", "blockmirror_peer_lag_seconds",
		"blockmirror_peer_resync_done_bytes", "blockmirror_peer_resync_target_bytes"} {
		if _, ok := after[name+peer]; !ok {
			t.Errorf("metric %s%s missing", name, peer)
		}
	}
	if after["blockmirror_peer_connected"+peer] != 1 {
		t.Errorf("peer_connected = %v, want 1", after["blockmirror_peer_connected"+peer])
	}
	if after[`blockmirror_peer_state{peer="m1",state="in-sync",volume="disk"}`] != 1 {
		t.Errorf("peer_state in-sync is not 1")
	}
	// 300 × 4 KiB went over the connection: at least that many bytes, in
	// packets of at most 1452 bytes.
	if v := after["blockmirror_peer_quic_packets_sent"+peer]; v < 300*4096/1452 {
		t.Errorf("peer_quic_packets_sent = %v after 300 4 KiB writes", v)
	}
	if before["blockmirror_peer_quic_packets_sent"+peer] >= after["blockmirror_peer_quic_packets_sent"+peer] {
		t.Errorf("peer_quic_packets_sent did not move: %v → %v", before["blockmirror_peer_quic_packets_sent"+peer], after["blockmirror_peer_quic_packets_sent"+peer])
	}
	if after["blockmirror_peer_quic_srtt_seconds"+peer] <= 0 || after["blockmirror_peer_quic_cwnd_bytes"+peer] <= 0 {
		t.Errorf("peer_quic_srtt_seconds = %v, peer_quic_cwnd_bytes = %v: want both > 0 while connected",
			after["blockmirror_peer_quic_srtt_seconds"+peer], after["blockmirror_peer_quic_cwnd_bytes"+peer])
	}
	if _, ok := after["blockmirror_peer_quic_packets_lost"+peer]; !ok {
		t.Errorf("metric blockmirror_peer_quic_packets_lost%s missing", peer)
	}
	st, err := c.PrimaryStatus()
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Peers) != 1 || st.Peers[0].QUIC == nil {
		t.Fatalf("status peers %+v: want m1 with its QUIC report", st.Peers)
	}
	if q := st.Peers[0].QUIC; q.BytesSent < 300*4096 || q.SmoothedRTTMicros <= 0 || q.MinRTTMicros <= 0 {
		t.Errorf("status quic report %+v: want ≥ %d bytes sent and RTTs > 0", *q, 300*4096)
	}
	// Kill the mirror: the metrics report it.
	m1.Proc.Kill()
	write(50) // degraded: completes after the ack timeout demotes the peer
	testutil.WaitFor(t, 20*time.Second, "metrics report the mirror down and lagging", func() (bool, string) {
		m := scrape()
		ok := m["blockmirror_peer_connected"+peer] == 0 && m["blockmirror_peer_lag_records"+peer] > 0 &&
			m["blockmirror_peer_quic_packets_sent"+peer] == 0
		return ok, "connected=" + strconv.FormatFloat(m["blockmirror_peer_connected"+peer], 'f', -1, 64) +
			" lag_records=" + strconv.FormatFloat(m["blockmirror_peer_lag_records"+peer], 'f', -1, 64) +
			" quic_packets_sent=" + strconv.FormatFloat(m["blockmirror_peer_quic_packets_sent"+peer], 'f', -1, 64)
	})
}
