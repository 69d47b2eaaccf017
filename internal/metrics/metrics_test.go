package metrics_test

import (
	"bufio"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/blockmirror/blockmirror/internal/metrics"
)

// scrape fetches the handler's text output and returns sample → value,
// keyed by the sample line's name and labels as printed.
func scrape(t *testing.T, h http.Handler) map[string]float64 {
	t.Helper()
	srv := httptest.NewServer(h)
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("status %d: %s", resp.StatusCode, b)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("bad sample line %q", line)
		}
		out[line[:i]] = v
	}
	return out
}

func want(t *testing.T, got map[string]float64, sample string, v float64) {
	t.Helper()
	g, ok := got[sample]
	if !ok {
		var near []string
		name, _, _ := strings.Cut(sample, "{")
		for k := range got {
			if strings.HasPrefix(k, name) {
				near = append(near, k)
			}
		}
		t.Errorf("sample %s missing; same family: %v", sample, near)
		return
	}
	if g != v {
		t.Errorf("%s = %v, want %v", sample, g, v)
	}
}

func TestNBD(t *testing.T) {
	r := metrics.NewWith(metrics.Options{NoRuntimeMetrics: true})
	m := r.NBD("db")
	before := scrape(t, r.Handler())
	want(t, before, `blockmirror_nbd_requests_total{op="write",volume="db"}`, 0)

	m.Observe(metrics.OpWrite, 4096, 150*time.Microsecond, nil)
	m.Observe(metrics.OpWrite, 8192, 3*time.Millisecond, nil)
	m.Observe(metrics.OpWrite, 4096, time.Millisecond, errors.New("EIO"))
	m.Observe(metrics.OpRead, 65536, 20*time.Microsecond, nil)
	m.Observe(metrics.OpTrim, 1<<20, time.Millisecond, nil)
	m.Observe(metrics.OpZero, 1<<20, time.Millisecond, nil)
	m.Observe(metrics.OpFlush, 0, 2*time.Millisecond, nil)
	m.Observe("frobnicate", 1, time.Millisecond, nil)
	r.NBD("db").Observe(metrics.OpRead, 512, time.Microsecond, nil) // same series
	r.NBD("logs").Observe(metrics.OpRead, 1, time.Microsecond, nil) // another volume

	got := scrape(t, r.Handler())
	want(t, got, `blockmirror_nbd_requests_total{op="write",volume="db"}`, 3)
	want(t, got, `blockmirror_nbd_bytes_total{op="write",volume="db"}`, 12288)
	want(t, got, `blockmirror_nbd_errors_total{op="write",volume="db"}`, 1)
	want(t, got, `blockmirror_nbd_requests_total{op="read",volume="db"}`, 2)
	want(t, got, `blockmirror_nbd_bytes_total{op="read",volume="db"}`, 65536+512)
	want(t, got, `blockmirror_nbd_errors_total{op="read",volume="db"}`, 0)
	want(t, got, `blockmirror_nbd_bytes_total{op="trim",volume="db"}`, 1<<20)
	want(t, got, `blockmirror_nbd_bytes_total{op="zero",volume="db"}`, 1<<20)
	want(t, got, `blockmirror_nbd_requests_total{op="flush",volume="db"}`, 1)
	want(t, got, `blockmirror_nbd_requests_total{op="other",volume="db"}`, 1)
	want(t, got, `blockmirror_nbd_requests_total{op="read",volume="logs"}`, 1)
	want(t, got, `blockmirror_nbd_request_duration_seconds_count{op="write",volume="db"}`, 3)
	want(t, got, `blockmirror_nbd_request_duration_seconds_sum{op="write",volume="db"}`, 0.00415)
	// 150µs lands in the 160µs bucket, not the 80µs one.
	want(t, got, `blockmirror_nbd_request_duration_seconds_bucket{op="write",volume="db",le="8e-05"}`, 0)
	want(t, got, `blockmirror_nbd_request_duration_seconds_bucket{op="write",volume="db",le="0.00016"}`, 1)
	want(t, got, `blockmirror_nbd_request_duration_seconds_bucket{op="write",volume="db",le="+Inf"}`, 3)
}

func TestJournal(t *testing.T) {
	r := metrics.NewWith(metrics.Options{NoRuntimeMetrics: true})
	j := r.Journal("db")
	j.ObserveAppend(metrics.LevelWritten, 10*time.Microsecond)
	j.ObserveAppend(metrics.LevelDurable, 2*time.Millisecond)
	j.ObserveAppend(metrics.LevelDurable, 4*time.Millisecond)
	j.ObserveFsync(time.Millisecond)
	j.SetSize(3<<30, 12)
	j.AddRecords(5, 5*4160)
	got := scrape(t, r.Handler())
	want(t, got, `blockmirror_journal_append_duration_seconds_count{level="written",volume="db"}`, 1)
	want(t, got, `blockmirror_journal_append_duration_seconds_count{level="durable",volume="db"}`, 2)
	want(t, got, `blockmirror_journal_fsync_duration_seconds_count{volume="db"}`, 1)
	want(t, got, `blockmirror_journal_size_bytes{volume="db"}`, 3<<30)
	want(t, got, `blockmirror_journal_segments{volume="db"}`, 12)
	want(t, got, `blockmirror_journal_records_total{volume="db"}`, 5)
	want(t, got, `blockmirror_journal_appended_bytes_total{volume="db"}`, 5*4160)
	j.SetSize(1<<30, 4)
	got = scrape(t, r.Handler())
	want(t, got, `blockmirror_journal_size_bytes{volume="db"}`, 1<<30)
	want(t, got, `blockmirror_journal_segments{volume="db"}`, 4)
}

func TestPeer(t *testing.T) {
	r := metrics.NewWith(metrics.Options{NoRuntimeMetrics: true})
	p := r.Peer("db", "beta")
	p.ObserveAck(300 * time.Microsecond)
	p.SetLag(10, 40960, 0.25)
	p.SetConnected(true)
	p.SetState("resync")
	p.SetResync(1<<20, 1<<30)
	p.SetQUIC(250*time.Microsecond, 320000, 5000, 7)
	r.Peer("db", "gamma").SetConnected(false)
	got := scrape(t, r.Handler())
	want(t, got, `blockmirror_peer_ack_duration_seconds_count{peer="beta",volume="db"}`, 1)
	want(t, got, `blockmirror_peer_lag_records{peer="beta",volume="db"}`, 10)
	want(t, got, `blockmirror_peer_lag_bytes{peer="beta",volume="db"}`, 40960)
	want(t, got, `blockmirror_peer_lag_seconds{peer="beta",volume="db"}`, 0.25)
	want(t, got, `blockmirror_peer_connected{peer="beta",volume="db"}`, 1)
	want(t, got, `blockmirror_peer_connected{peer="gamma",volume="db"}`, 0)
	want(t, got, `blockmirror_peer_state{peer="beta",state="resync",volume="db"}`, 1)
	want(t, got, `blockmirror_peer_resync_done_bytes{peer="beta",volume="db"}`, 1<<20)
	want(t, got, `blockmirror_peer_resync_target_bytes{peer="beta",volume="db"}`, 1<<30)
	want(t, got, `blockmirror_peer_quic_srtt_seconds{peer="beta",volume="db"}`, 0.00025)
	want(t, got, `blockmirror_peer_quic_cwnd_bytes{peer="beta",volume="db"}`, 320000)
	want(t, got, `blockmirror_peer_quic_packets_sent{peer="beta",volume="db"}`, 5000)
	want(t, got, `blockmirror_peer_quic_packets_lost{peer="beta",volume="db"}`, 7)

	p.SetState("streaming")
	p.SetState("streaming")
	p.SetConnected(false)
	got = scrape(t, r.Handler())
	want(t, got, `blockmirror_peer_state{peer="beta",state="resync",volume="db"}`, 0)
	want(t, got, `blockmirror_peer_state{peer="beta",state="streaming",volume="db"}`, 1)
	want(t, got, `blockmirror_peer_connected{peer="beta",volume="db"}`, 0)

	r.RemovePeer("db", "beta")
	got = scrape(t, r.Handler())
	for _, name := range []string{"connected", "quic_srtt_seconds", "quic_packets_lost"} {
		if _, ok := got[`blockmirror_peer_`+name+`{peer="beta",volume="db"}`]; ok {
			t.Errorf("RemovePeer left beta's %s series", name)
		}
	}
	want(t, got, `blockmirror_peer_connected{peer="gamma",volume="db"}`, 0)
}

func TestRemoveVolumeAndBuildInfo(t *testing.T) {
	r := metrics.NewWith(metrics.Options{NoRuntimeMetrics: true})
	r.SetBuildInfo("v1.2.3")
	r.NBD("a").Observe(metrics.OpRead, 1, 0, nil)
	r.NBD("b").Observe(metrics.OpRead, 1, 0, nil)
	r.Peer("a", "x").SetConnected(true)
	r.RemoveVolume("a")
	got := scrape(t, r.Handler())
	want(t, got, `blockmirror_build_info{version="v1.2.3"}`, 1)
	want(t, got, `blockmirror_nbd_requests_total{op="read",volume="b"}`, 1)
	for k := range got {
		if strings.Contains(k, `volume="a"`) {
			t.Errorf("RemoveVolume left %s", k)
		}
	}
}

func TestRuntimeCollectorsAndNoGlobalState(t *testing.T) {
	r1, r2 := metrics.New(), metrics.New() // would panic on duplicate registration if global
	r1.NBD("v").Observe(metrics.OpRead, 1, 0, nil)
	got := scrape(t, r2.Handler())
	if _, ok := got[`blockmirror_nbd_requests_total{op="read",volume="v"}`]; ok {
		t.Error("observation on one registry shows in another")
	}
	if _, ok := got["go_goroutines"]; !ok {
		t.Error("go_goroutines missing from a default registry")
	}
}

func TestNilHooks(t *testing.T) {
	var n *metrics.NBDMetrics
	var j *metrics.JournalMetrics
	var p *metrics.PeerMetrics
	n.Observe(metrics.OpRead, 1, time.Millisecond, nil)
	j.ObserveAppend(metrics.LevelWritten, time.Millisecond)
	j.ObserveFsync(time.Millisecond)
	j.SetSize(1, 1)
	j.AddRecords(1, 1)
	p.ObserveAck(time.Millisecond)
	p.SetLag(1, 1, 1)
	p.SetConnected(true)
	p.SetState("x")
	p.SetResync(1, 2)
}

func TestConcurrentObserve(t *testing.T) {
	r := metrics.NewWith(metrics.Options{NoRuntimeMetrics: true})
	m := r.NBD("db")
	p := r.Peer("db", "beta")
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 1000; i++ {
				m.Observe(metrics.OpWrite, 4096, time.Microsecond, nil)
				p.SetState([]string{"a", "b"}[i%2])
			}
		}()
	}
	wg.Wait()
	got := scrape(t, r.Handler())
	want(t, got, `blockmirror_nbd_requests_total{op="write",volume="db"}`, 8000)
	want(t, got, `blockmirror_nbd_bytes_total{op="write",volume="db"}`, 8000*4096)
	a := got[`blockmirror_peer_state{peer="beta",state="a",volume="db"}`]
	b := got[`blockmirror_peer_state{peer="beta",state="b",volume="db"}`]
	if a+b != 1 {
		t.Errorf("peer_state a=%v b=%v: want exactly one current state", a, b)
	}
}

func TestObserveDoesNotAllocate(t *testing.T) {
	r := metrics.NewWith(metrics.Options{NoRuntimeMetrics: true})
	m, j, p := r.NBD("db"), r.Journal("db"), r.Peer("db", "beta")
	p.SetState("streaming")
	err := errors.New("x")
	allocs := testing.AllocsPerRun(1000, func() {
		m.Observe(metrics.OpWrite, 4096, 100*time.Microsecond, nil)
		m.Observe(metrics.OpRead, 4096, 100*time.Microsecond, err)
		j.ObserveAppend(metrics.LevelDurable, time.Millisecond)
		j.ObserveFsync(time.Millisecond)
		j.AddRecords(1, 4160)
		j.SetSize(1<<30, 3)
		p.ObserveAck(time.Millisecond)
		p.SetLag(1, 2, 3)
		p.SetConnected(true)
		p.SetState("streaming")
		p.SetResync(0, 0)
	})
	if allocs != 0 {
		t.Errorf("hooks allocate %v times per round, want 0", allocs)
	}
}

func TestHandlerOpenMetrics(t *testing.T) {
	r := metrics.NewWith(metrics.Options{NoRuntimeMetrics: true})
	r.NBD("db").Observe(metrics.OpWrite, 1, time.Millisecond, nil)
	srv := httptest.NewServer(r.Handler())
	defer srv.Close()
	req, _ := http.NewRequest("GET", srv.URL, nil)
	req.Header.Set("Accept", "application/openmetrics-text; version=1.0.0")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/openmetrics-text") {
		t.Errorf("Content-Type %q", ct)
	}
	if !strings.Contains(string(body), `blockmirror_nbd_requests_total{op="write",volume="db"} 1.0`) || !strings.HasSuffix(string(body), "# EOF\n") {
		t.Errorf("OpenMetrics body:\n%s", body)
	}
	// The handler counts its own scrapes.
	got := scrape(t, r.Handler())
	want(t, got, `promhttp_metric_handler_requests_total{code="200"}`, 1)
}
