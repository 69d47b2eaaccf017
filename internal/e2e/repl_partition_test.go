package e2e

// Partitions between the primary and a sync mirror, made with a UDP fault
// proxy between them (cmd/faultproxy, or internal/faultproxy in process).

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/blockmirror/blockmirror/internal/faultproxy"
	"github.com/blockmirror/blockmirror/internal/testutil"
)

// partitioner is a UDP proxy between the primary and a mirror.
type partitioner interface {
	Addr() string
	// Partition cuts "both", "up" (to the mirror) or "down" (to the
	// primary); Heal restores everything.
	Partition(t testing.TB, dir string)
	Heal(t testing.TB)
	// Faults sets random faults (faultproxy query syntax) or reports that
	// the proxy has none.
	Faults(t testing.TB, query string) bool
	Stats() string
}

// inprocProxy is an internal/faultproxy.Proxy in the test process, used
// when cmd/faultproxy cannot be built.
type inprocProxy struct{ *faultproxy.Proxy }

func startInprocProxy(t *testing.T, target string) inprocProxy {
	return inprocProxy{testutil.StartProxy(t, testutil.FreeUDPAddr(t), target)}
}

func (p inprocProxy) Addr() string { return p.Proxy.Addr().String() }

func (p inprocProxy) Partition(t testing.TB, dir string) {
	d, err := faultproxy.ParseDirection(dir)
	if err != nil {
		t.Fatal(err)
	}
	p.Proxy.Partition(d)
}
func (p inprocProxy) Heal(testing.TB)                { p.Proxy.Heal() }
func (p inprocProxy) Faults(testing.TB, string) bool { return false }
func (p inprocProxy) Stats() string {
	st := p.Proxy.Stats()
	return fmt.Sprintf("forwarded %d, dropped %d datagrams", st.Up.Forwarded+st.Down.Forwarded, st.Up.Dropped+st.Down.Dropped)
}

// faultProxy is a cmd/faultproxy process.
type faultProxy struct {
	proc          *testutil.Proc
	addr, control string
}

var (
	faultProxyOnce sync.Once
	faultProxyBin  string
	faultProxyErr  error
)

// faultProxyBinary builds cmd/faultproxy once per test binary and returns
// its path.
func faultProxyBinary() (string, error) {
	faultProxyOnce.Do(func() {
		root, err := testutil.ModuleRoot()
		if err != nil {
			faultProxyErr = err
			return
		}
		if _, err := os.Stat(filepath.Join(root, "cmd", "faultproxy", "main.go")); err != nil {
			faultProxyErr = err
			return
		}
		dir, err := os.MkdirTemp("", "faultproxy-bin-")
		if err != nil {
			faultProxyErr = err
			return
		}
		faultProxyBin = filepath.Join(dir, "faultproxy")
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		faultProxyErr = testutil.BuildBinary(ctx, "./cmd/faultproxy", faultProxyBin)
	})
	return faultProxyBin, faultProxyErr
}

// startFaultProxy runs cmd/faultproxy on free loopback ports in front of
// target.
func startFaultProxy(t *testing.T, target string) (*faultProxy, error) {
	return startFaultProxyAt(t, testutil.FreeUDPAddr(t), testutil.FreeTCPAddr(t), target)
}

// startFaultProxyAt runs cmd/faultproxy listening on addr (UDP) with its
// control endpoint on control (TCP), forwarding to target.
func startFaultProxyAt(t *testing.T, addr, control, target string) (*faultProxy, error) {
	bin, err := faultProxyBinary()
	if err != nil {
		return nil, err
	}
	fp := &faultProxy{addr: addr, control: control}
	p, err := testutil.StartE(t, testutil.ProcOptions{
		Name: "faultproxy", Path: bin,
		Args:     []string{"--listen", fp.addr, "--target", target, "--control", fp.control, "--seed", fmt.Sprint(rand.Uint64())},
		ReadyLog: "faultproxy: ready", ReadyAddr: fp.control,
	})
	if err != nil {
		return nil, err
	}
	fp.proc = p
	return fp, nil
}

func (f *faultProxy) Addr() string { return f.addr }

func (f *faultProxy) post(t testing.TB, path string) {
	t.Helper()
	resp, err := http.Post("http://"+f.control+path, "", nil)
	if err != nil {
		t.Fatalf("faultproxy %s: %v", path, err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("faultproxy %s: %s: %s", path, resp.Status, strings.TrimSpace(string(b)))
	}
}

func (f *faultProxy) Partition(t testing.TB, dir string) { f.post(t, "/partition?dir="+dir) }
func (f *faultProxy) Heal(t testing.TB)                  { f.post(t, "/heal") }
func (f *faultProxy) Faults(t testing.TB, q string) bool { f.post(t, "/faults?"+q); return true }
func (f *faultProxy) Stats() string {
	resp, err := http.Get("http://" + f.control + "/stats")
	if err != nil {
		return err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	return strings.Join(strings.Fields(string(b)), " ")
}

// TestReplPartition: sync 2-of-2, m2 behind a proxy. While m2 is
// partitioned away, writes stall (none started during the partition
// completes); once healed they complete and go on. A short partition
// keeps the QUIC connection; a long one (beyond the 10 s idle timeout,
// skipped with -short) makes the primary reconnect and catch m2 up. At the
// end the data read back matches the newest acknowledged version of every
// block (overwritten many times, so a lost, duplicated or reordered
// record would show) and the three images are identical.
func TestReplPartition(t *testing.T) {
	seed := rand.Uint64()
	t.Logf("seed %d", seed)
	c := newReplCluster(t, "64M", "m1", "m2")
	c.StartMirror("m1")
	c.StartMirror("m2")
	var proxy partitioner
	if fp, err := startFaultProxy(t, c.M("m2").Listen); err == nil {
		proxy = fp
	} else {
		t.Logf("cmd/faultproxy unavailable (%v); using the in-process proxy", err)
		proxy = startInprocProxy(t, c.M("m2").Listen)
	}
	c.StartPrimary(primaryOpts{
		Via:  map[string]string{"m2": proxy.Addr()},
		Args: []string{"--mode", "sync", "--sync-acks", "2", "--ack-timeout", "60s"},
	})
	c.WaitPeerState(15*time.Second, "in-sync", "m1", "m2")

	w := startLoad(t, c.Primary.NBD, seed, 128)
	partitions := []time.Duration{2 * time.Second, 2500 * time.Millisecond}
	if !testing.Short() {
		partitions = append(partitions, 13*time.Second) // > transport idle timeout (10 s)
	}
	for i, d := range partitions {
		time.Sleep(700 * time.Millisecond)
		before := len(w.Results())
		dir := "both"
		if i == 1 {
			dir = "down" // acks lost, records still arrive
		}
		tp := time.Now()
		proxy.Partition(t, dir)
		time.Sleep(d)
		rs := w.Results()
		// Writes in flight when the partition began may still complete;
		// none that started later may.
		late := countStarted(rs, tp.Add(50*time.Millisecond), true)
		pend, stuck := w.Pending()
		proxy.Heal(t)
		th := time.Now()
		t.Logf("partition %d (%v, %s): %d writes before, %d completed after it began (%d started after), write pending: %v",
			i, d, dir, before, len(rs)-before, late, stuck)
		if late > 0 {
			t.Errorf("partition %d: %d writes that started during the partition completed without m2's ack", i, late)
		}
		if !stuck || time.Since(pend.Start) < time.Second {
			t.Errorf("partition %d: no write has been waiting ≥ 1 s (pending %v since %v)", i, stuck, pend.Start)
		}
		// The stalled write must complete, successfully, after the heal.
		var resumed *writeResult
		for deadline := time.Now().Add(30 * time.Second); resumed == nil && time.Now().Before(deadline); {
			for _, r := range w.Results() {
				if r.Start.Equal(pend.Start) {
					resumed = &r
					break
				}
			}
			time.Sleep(20 * time.Millisecond)
		}
		if resumed == nil {
			t.Fatalf("partition %d: the write stalled by the partition did not finish within 30 s of the heal", i)
		}
		if resumed.Err != nil {
			t.Fatalf("partition %d: the stalled write failed after the heal: %v", i, resumed.Err)
		}
		t.Logf("partition %d: stalled write completed %v after the heal (%v in total)", i,
			resumed.End.Sub(th).Round(time.Millisecond), resumed.End.Sub(resumed.Start).Round(time.Millisecond))
		time.Sleep(500 * time.Millisecond)
		if n := countStarted(w.Results(), th, true); n < 10 {
			t.Errorf("partition %d: only %d writes succeeded after the heal", i, n)
		}
	}
	// A lossy, reordering, duplicating link: writes go on.
	if proxy.Faults(t, "dir=both&drop=0.05&delay=2ms&jitter=1ms&dup=0.02&reorder=0.05&reorder_delay=3ms") {
		tf := time.Now()
		time.Sleep(2 * time.Second)
		proxy.Heal(t)
		proxy.Faults(t, "dir=both")
		n := countStarted(w.Results(), tf, true)
		t.Logf("2 s of 5%% loss, 2%% duplicates, 5%% reordering: %d writes", n)
		if n < 20 {
			t.Errorf("only %d writes in 2 s on a lossy link", n)
		}
		time.Sleep(300 * time.Millisecond)
	}
	w.Stop()
	if err := w.ConnErr(); err != nil {
		t.Errorf("load connection failed: %v", err)
	}
	for _, r := range w.Results() {
		if r.Err != nil {
			t.Errorf("write of block %d version %d failed: %v", r.Block, r.Version, r.Err)
			break
		}
	}
	t.Logf("%d writes; proxy: %s", len(w.Results()), proxy.Stats())
	c.WaitPeerState(30*time.Second, "in-sync", "m1", "m2")
	c.WaitApplied(30*time.Second, "m1", "m2")
	conn, err := rawDial(t.Context(), c.Primary.NBD, defaultExport)
	if err != nil {
		t.Fatal(err)
	}
	verifyModel(t, conn, seed, w.Model())
	conn.disconnect()
	c.StopAll()
	c.RequireIdentical("m1", "m2")
}
