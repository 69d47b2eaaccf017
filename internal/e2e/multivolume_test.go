package e2e

// Several volumes in one primary process and one process per mirror host,
// with one QUIC connection per (primary process, mirror host): a
// partitioned host stalls only the volume it mirrors.

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/blockmirror/blockmirror/internal/testutil"
	"github.com/blockmirror/blockmirror/mirror"
)

// multiStatus is GET /v1/status of a process running several volumes.
type multiStatus struct {
	Volumes     map[string]replStatus `json:"volumes"`
	Connections *struct {
		Open     int   `json:"open"`
		Dialed   int   `json:"dialed"`
		Accepted int64 `json:"accepted"`
	} `json:"connections"`
}

func getMultiStatus(t testing.TB, admin string) (*multiStatus, error) {
	var st multiStatus
	if err := testutil.GetJSON(t.Context(), "http://"+admin+"/v1/status", &st); err != nil {
		return nil, err
	}
	return &st, nil
}

// startLoadExport is startLoad on a named export.
func startLoadExport(t testing.TB, addr, export string, seed uint64, nblocks int64) *loadWriter {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	conn, err := rawDial(ctx, addr, export)
	cancel()
	if err != nil {
		t.Fatalf("load on %s: %v", export, err)
	}
	lctx, lcancel := context.WithCancel(context.Background())
	w := &loadWriter{t: t, seed: seed, nblocks: nblocks, conn: conn, cancel: lcancel,
		done: make(chan struct{}), model: make(map[int64]uint64)}
	go w.run(lctx)
	t.Cleanup(w.Stop)
	return w
}

// countEnded counts successful writes that ended in [from, to).
func countEnded(rs []writeResult, from, to time.Time) int {
	n := 0
	for _, r := range rs {
		if r.Err == nil && !r.End.Before(from) && r.End.Before(to) {
			n++
		}
	}
	return n
}

// TestMultiVolume: one primary process serves volumes a, b and c (one
// config file, one NBD server with three exports); mirror host h1 (one
// process) mirrors a and b, host h2 mirrors c behind cmd/faultproxy; all
// sync with K=1. Partitioning h2 for longer than the QUIC idle timeout
// stalls c only: a and b keep at least half their unpartitioned write rate,
// /metrics reports c's mirror disconnected, and after the heal every
// volume is in sync with identical images. h1 accepts exactly one QUIC
// connection for its two volumes.
func TestMultiVolume(t *testing.T) {
	requireRepl(t)
	seed := rand.Uint64()
	t.Logf("seed %d", seed)
	dir := t.TempDir()
	certs := filepath.Join(dir, "certs")
	runCmd(t, time.Minute, binPath, "certs", "init", "--out", certs, "p1", "h1", "h2")

	h1Listen, h2Listen := testutil.FreeUDPAddr(t), testutil.FreeUDPAddr(t)
	h1Admin, h2Admin, pAdmin := testutil.FreeTCPAddr(t), testutil.FreeTCPAddr(t), testutil.FreeTCPAddr(t)
	nbdAddr, mNBD := testutil.FreeTCPAddr(t), testutil.FreeTCPAddr(t)
	var proxy partitioner
	if fp, err := startFaultProxy(t, h2Listen); err == nil {
		proxy = fp
	} else {
		t.Logf("cmd/faultproxy unavailable (%v); using the in-process proxy", err)
		proxy = startInprocProxy(t, h2Listen)
	}

	writeFile := func(name, s string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	sockets := testutil.SocketDir(t)
	node := func(name, admin string) string {
		return fmt.Sprintf("[node]\nname = %q\ncerts = %q\nadmin = %q\ncontrol = %q\n\n", name, certs, admin, filepath.Join(sockets, name+".sock"))
	}
	mirrorVol := func(host, vol, listen string) string {
		return fmt.Sprintf("[[volumes]]\nname = %q\nrole = \"mirror\"\ndata = %q\nlisten = %q\nnbd = %q\n\n",
			vol, filepath.Join(dir, host, vol), listen, mNBD)
	}
	primaryVol := func(vol, host, addr string) string {
		return fmt.Sprintf("[[volumes]]\nname = %q\nrole = \"primary\"\ndata = %q\nsize = \"32M\"\nnbd = %q\n"+
			"mode = \"sync\"\nsync_acks = 1\nack_timeout = \"60s\"\nmirrors = [{ name = %q, address = %q }]\n\n",
			vol, filepath.Join(dir, "p1", vol), nbdAddr, host, addr)
	}
	h1Conf := writeFile("h1.toml", node("h1", h1Admin)+mirrorVol("h1", "a", h1Listen)+mirrorVol("h1", "b", h1Listen))
	h2Conf := writeFile("h2.toml", node("h2", h2Admin)+mirrorVol("h2", "c", h2Listen))
	pConf := writeFile("p1.toml", node("p1", pAdmin)+primaryVol("a", "h1", h1Listen)+primaryVol("b", "h1", h1Listen)+
		primaryVol("c", "h2", proxy.Addr()))
	for _, f := range []string{h1Conf, h2Conf, pConf} {
		runCmd(t, time.Minute, binPath, "config", "check", f)
	}

	h1 := testutil.Start(t, testutil.ProcOptions{Name: "h1", Path: binPath, Args: []string{"mirror", "--config", h1Conf},
		ReadyLog: "mirror listening", ReadyAddr: h1Admin})
	h2 := testutil.Start(t, testutil.ProcOptions{Name: "h2", Path: binPath, Args: []string{"mirror", "--config", h2Conf},
		ReadyLog: "mirror listening", ReadyAddr: h2Admin})
	p := testutil.Start(t, testutil.ProcOptions{Name: "primary", Path: binPath, Args: []string{"serve", "--config", pConf},
		ReadyLog: "serving NBD", ReadyAddr: nbdAddr, StopTimeout: 5 * time.Second})

	vols := []string{"a", "b", "c"}
	peerOf := map[string]string{"a": "h1", "b": "h1", "c": "h2"}
	peer := func(st *multiStatus, vol string) (*mirror.PeerReport, *mirror.ReplicationStatus, error) {
		v, ok := st.Volumes[vol]
		if !ok || v.Primary == nil || v.Primary.Replication == nil {
			return nil, nil, fmt.Errorf("no replication status for volume %s", vol)
		}
		pr := replPeer(v.Primary.Replication, peerOf[vol])
		if pr == nil {
			return nil, nil, fmt.Errorf("volume %s: no peer %s", vol, peerOf[vol])
		}
		return pr, v.Primary.Replication, nil
	}
	waitInSync := func(timeout time.Duration) {
		t.Helper()
		testutil.WaitFor(t, timeout, "every volume's mirror in sync", func() (bool, string) {
			if p.Exited() {
				t.Fatalf("primary exited: %v\n%s", p.ExitErr(), p.Tail(20))
			}
			st, err := getMultiStatus(t, pAdmin)
			if err != nil {
				return false, err.Error()
			}
			for _, v := range vols {
				pr, _, err := peer(st, v)
				if err != nil {
					return false, err.Error()
				}
				if pr.State != "in-sync" || !pr.Connected {
					return false, fmt.Sprintf("volume %s: %s is %s (last error %q)", v, pr.Name, pr.State, pr.LastError)
				}
			}
			return true, ""
		})
	}
	waitInSync(20 * time.Second)

	loads := map[string]*loadWriter{}
	for i, v := range vols {
		loads[v] = startLoadExport(t, nbdAddr, v, seed+uint64(i), 256)
	}
	// Unpartitioned rate.
	time.Sleep(time.Second)
	t0 := time.Now()
	time.Sleep(4 * time.Second)
	t1 := time.Now()
	base := map[string]float64{}
	for _, v := range vols {
		base[v] = float64(countEnded(loads[v].Results(), t0, t1)) / t1.Sub(t0).Seconds()
	}
	t.Logf("unpartitioned write IOPS (4 KiB, QD1): a %.0f, b %.0f, c %.0f", base["a"], base["b"], base["c"])

	// Partition h2 beyond the QUIC idle timeout (10 s).
	tp := time.Now()
	proxy.Partition(t, "both")
	var sawDisconnected bool
	deadline := tp.Add(13 * time.Second)
	for time.Now().Before(deadline) {
		if !sawDisconnected && time.Since(tp) > 10*time.Second {
			m := scrapeMetrics(t, pAdmin)
			sawDisconnected = metricValue(m, `blockmirror_peer_connected{peer="h2",volume="c"}`) == "0"
		}
		time.Sleep(200 * time.Millisecond)
	}
	if !sawDisconnected {
		time.Sleep(3 * time.Second)
		m := scrapeMetrics(t, pAdmin)
		if got := metricValue(m, `blockmirror_peer_connected{peer="h2",volume="c"}`); got != "0" {
			t.Errorf("during the partition /metrics shows blockmirror_peer_connected for c's mirror = %q, want 0", got)
		}
	}
	m := scrapeMetrics(t, pAdmin)
	for _, v := range []string{"a", "b"} {
		if got := metricValue(m, fmt.Sprintf(`blockmirror_peer_connected{peer="h1",volume=%q}`, v)); got != "1" {
			t.Errorf("during the partition /metrics shows blockmirror_peer_connected for %s's mirror = %q, want 1", v, got)
		}
	}
	th := time.Now()
	from := tp.Add(time.Second) // writes in flight at the cut may still finish
	part := map[string]float64{}
	for _, v := range vols {
		part[v] = float64(countEnded(loads[v].Results(), from, th)) / th.Sub(from).Seconds()
	}
	t.Logf("write IOPS while h2 is partitioned (%v): a %.0f, b %.0f, c %.0f",
		th.Sub(from).Round(time.Millisecond), part["a"], part["b"], part["c"])
	for _, v := range []string{"a", "b"} {
		if part[v] < base[v]/2 {
			t.Errorf("volume %s slowed down by the partition of another volume's mirror: %.0f IOPS, unpartitioned %.0f", v, part[v], base[v])
		}
	}
	if part["c"] != 0 {
		t.Errorf("volume c completed %.1f writes/s while its only sync mirror was partitioned", part["c"])
	}
	if _, stuck := loads["c"].Pending(); !stuck {
		t.Errorf("no write of volume c is waiting for its partitioned mirror")
	}
	proxy.Heal(t)

	// c resumes; everything converges.
	testutil.WaitFor(t, 30*time.Second, "volume c writes again", func() (bool, string) {
		n := countEnded(loads["c"].Results(), th, time.Now().Add(time.Hour))
		return n >= 10, fmt.Sprintf("%d writes since the heal", n)
	})
	for _, v := range vols {
		w := loads[v]
		w.Stop()
		if err := w.ConnErr(); err != nil {
			t.Errorf("volume %s: load connection failed: %v", v, err)
		}
		for _, r := range w.Results() {
			if r.Err != nil {
				t.Errorf("volume %s: write of block %d failed: %v", v, r.Block, r.Err)
				break
			}
		}
	}
	waitInSync(30 * time.Second)
	st, err := getMultiStatus(t, pAdmin)
	if err != nil {
		t.Fatal(err)
	}
	last := map[string]uint64{}
	for _, v := range vols {
		_, rs, err := peer(st, v)
		if err != nil {
			t.Fatal(err)
		}
		last[v] = rs.LastSeq
	}
	testutil.WaitFor(t, 30*time.Second, "mirrors applied every volume's last seq", func() (bool, string) {
		for _, h := range []struct {
			admin string
			vols  []string
		}{{h1Admin, []string{"a", "b"}}, {h2Admin, []string{"c"}}} {
			ms, err := getMultiStatus(t, h.admin)
			if err != nil {
				return false, err.Error()
			}
			if len(ms.Volumes) == 0 {
				// A process with one volume keeps the single-volume shape.
				one, err := replGetStatus(t.Context(), h.admin)
				if err != nil {
					return false, err.Error()
				}
				ms.Volumes = map[string]replStatus{h.vols[0]: *one}
			}
			for _, v := range h.vols {
				mv, ok := ms.Volumes[v]
				if !ok || mv.Mirror == nil {
					return false, "no mirror status for " + v
				}
				if mv.Mirror.Applied < last[v] {
					return false, fmt.Sprintf("volume %s applied %d of %d", v, mv.Mirror.Applied, last[v])
				}
			}
		}
		return true, ""
	})

	// One connection per record lane to each mirror host, shared by its
	// volumes: h1 (never partitioned) accepted one per lane for its two
	// volumes; the primary's pool holds that many per host.
	h1St, err := getMultiStatus(t, h1Admin)
	if err != nil {
		t.Fatal(err)
	}
	lanes := mirror.DefaultLanes
	if h1St.Connections == nil || h1St.Connections.Accepted != int64(lanes) {
		t.Errorf("h1 accepted %+v connections for volumes a and b, want exactly %d (one per lane)", h1St.Connections, lanes)
	}
	if st.Connections == nil || st.Connections.Open != 2*lanes {
		t.Errorf("the primary's connection pool: %+v, want %d open (%d per mirror host)", st.Connections, 2*lanes, lanes)
	} else {
		t.Logf("primary connections: %d open, %d dialed (h2's was redialed after the partition)", st.Connections.Open, st.Connections.Dialed)
	}

	// Stop everything and compare the images per volume.
	stopProc(t, p)
	stopProc(t, h1)
	stopProc(t, h2)
	for _, v := range vols {
		pImg := filepath.Join(dir, "p1", v, "disk.img")
		mImg := filepath.Join(dir, peerOf[v], v, "disk.img")
		off, err := testutil.CompareFiles(pImg, mImg)
		if err != nil {
			t.Fatal(err)
		}
		if off >= 0 {
			t.Errorf("volume %s: the image on %s differs from the primary's at offset %d", v, peerOf[v], off)
		}
	}
	t.Logf("proxy: %s", proxy.Stats())
}

// scrapeMetrics returns the Prometheus text of an admin endpoint.
func scrapeMetrics(t testing.TB, admin string) string {
	t.Helper()
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatalf("scrape metrics: %v", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// metricValues scrapes an admin endpoint and returns every sample by its
// series (name{labels}).
func metricValues(t testing.TB, admin string) map[string]float64 {
	t.Helper()
	m := map[string]float64{}
	for _, line := range strings.Split(scrapeMetrics(t, admin), "\n") {
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
			m[line[:i]] = v
		}
	}
	return m
}

// metricValue returns the value of the sample series (name{labels}), or "".
func metricValue(text, series string) string {
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(series) + ` (\S+)$`)
	if m := re.FindStringSubmatch(text); m != nil {
		return m[1]
	}
	return ""
}
