package e2e

import (
	"github.com/blockmirror/blockmirror/internal/testutil"
	"strings"
	"testing"
	"time"
)

// TestMetricsDuringWorkload scrapes /metrics on the admin endpoint while a
// client writes, reads and flushes, and checks that every NBD and journal
// family is present and that the counters move.
func TestMetricsDuringWorkload(t *testing.T) {
	requireServer(t)
	if serverKind == kindNbdkit {
		t.Skip("nbdkit has no metrics endpoint")
	}
	admin := testutil.FreeTCPAddr(t)
	s := startServer(t, serverOpts{Size: "64M", Args: []string{"--admin", admin}})
	scrape := func() map[string]float64 { return metricValues(t, admin) }
	before := scrape()
	c := dialT(t, s)
	for i := 0; i < 200; i++ {
		if err := c.pwrite(make([]byte, 4096), uint64(i)*4096, 0); err != nil {
			t.Fatal(err)
		}
		if _, err := c.pread(4096, uint64(i)*4096); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.flush(); err != nil {
		t.Fatal(err)
	}
	c.disconnect()
	time.Sleep(1200 * time.Millisecond) // gauges refresh every second
	after := scrape()
	moving := []string{
		`blockmirror_nbd_requests_total{op="write",volume="disk"}`,
		`blockmirror_nbd_requests_total{op="read",volume="disk"}`,
		`blockmirror_nbd_requests_total{op="flush",volume="disk"}`,
		`blockmirror_nbd_bytes_total{op="write",volume="disk"}`,
		`blockmirror_nbd_request_duration_seconds_count{op="write",volume="disk"}`,
		`blockmirror_journal_append_duration_seconds_count{level="written",volume="disk"}`,
		`blockmirror_journal_fsync_duration_seconds_count{volume="disk"}`,
		`blockmirror_journal_records_total{volume="disk"}`,
		`blockmirror_journal_size_bytes{volume="disk"}`,
	}
	for _, name := range moving {
		a, ok := after[name]
		if !ok {
			t.Errorf("metric %s missing", name)
			continue
		}
		if a <= before[name] {
			t.Errorf("metric %s did not move: %v → %v", name, before[name], a)
		}
	}
	if after[`blockmirror_build_info{version="dev"}`] != 1 && !strings.Contains(strings.Join(keys(after), " "), "blockmirror_build_info") {
		t.Error("blockmirror_build_info missing")
	}
	s.stop(t)
}

func keys(m map[string]float64) []string {
	var k []string
	for n := range m {
		k = append(k, n)
	}
	return k
}
