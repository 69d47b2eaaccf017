package e2e

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/blockmirror/blockmirror/internal/testutil"
)

// TestFailoverScriptOffline drives scripts/failover.sh when the mirror
// daemon is not running: usage errors, a failing fence hook (exit 3), a
// serve that cannot listen (exit 5), then (run again) the offline promotion that starts `blockmirror serve` in the background
// (serve.pid, serve.log), the data replicated before the primary died, and
// a second run that finds the node serving and exits 0 without touching
// it. --attach is skipped with a message where /dev/nbd* does not exist.
func TestFailoverScriptOffline(t *testing.T) {
	const blk = 64 << 10
	c := newFoCluster(t, 176, "p1", "m1")
	p1, m1 := c.N("p1"), c.N("m1")
	m1.StartMirror()
	p1.StartPrimary("256M", "--mirror", "m1="+m1.Listen, "--mode", "sync")
	offs := []int64{0, 1 << 20, 77 << 20}
	pc := foDial(t, p1.NBD)
	pc.foWriteBlocks(t, "A", offs, blk)
	foWaitCaughtUp(t, p1, m1, 20*time.Second)
	p1.Kill()
	m1.Stop() // the whole backup daemon is down too: offline promotion
	m1.Proc = nil

	if r := runFailover(t, "--admin", m1.Admin, "--data", m1.Data); r.Code != 1 || !strings.Contains(r.Out, "--primary") {
		t.Errorf("without --primary: exit %d, want 1 with a reason naming --primary", r.Code)
	}
	if r := runFailover(t, "--bogus"); r.Code != 1 {
		t.Errorf("unknown flag: exit %d, want 1", r.Code)
	}
	base := []string{"--primary", p1.NBD, "--admin", m1.Admin, "--data", m1.Data, "--nbd", m1.NBD,
		"--listen", m1.Listen, "--certs", c.Certs, "--node", "m1"}
	if r := runFailover(t, append(base, "--fence-cmd", "echo power switch unreachable >&2; exit 7")...); r.Code != 3 {
		t.Errorf("failing fence hook: exit %d, want 3", r.Code)
	}
	if _, err := os.Stat(filepath.Join(m1.Data, "serve.pid")); err == nil {
		t.Fatalf("a serve was started although the fence hook failed")
	}

	// The NBD address is taken: serve exits, the script says so (exit 5).
	busy, err := net.Listen("tcp", "127.0.0.177:0")
	if err != nil {
		t.Fatal(err)
	}
	bad := append([]string(nil), base...)
	for i := range bad {
		if bad[i] == m1.NBD {
			bad[i] = busy.Addr().String()
		}
	}
	if r := runFailover(t, bad...); r.Code != 5 || !strings.Contains(r.Out, "exited") {
		t.Errorf("serve cannot listen: exit %d, want 5 saying serve exited", r.Code)
	}
	busy.Close()

	// Again with a free address: the data directory is already promoted;
	// the script goes on and starts serve.
	args := append([]string(nil), base...)
	nodev := !foHasNBDDevices()
	if nodev {
		args = append(args, "--attach", "/dev/nbd0", "--mount", filepath.Join(t.TempDir(), "mnt"))
	}
	r := runFailover(t, args...)
	if r.Code != 0 {
		t.Fatalf("offline failover exited %d", r.Code)
	}
	pid := foServePid(t, m1.Data)
	t.Cleanup(func() { foStopPid(t, pid) })
	t.Logf("offline failover: %.2f s (wall %v); serve pid %d", r.Reported, r.Wall.Round(time.Millisecond), pid)
	if r.Wall > foFailoverTarget {
		t.Errorf("offline failover took %v, over the %v target", r.Wall, foFailoverTarget)
	}
	if nodev && !strings.Contains(r.Out, "skipping --attach") {
		t.Errorf("no /dev/nbd*: the script should say it skips --attach")
	}
	if b, err := os.ReadFile(filepath.Join(m1.Data, "serve.log")); err != nil || !strings.Contains(string(b), "serving NBD") {
		t.Errorf("serve.log: %v %q", err, b)
	}
	st := m1.WaitStatus(10*time.Second, "primary", func(s *foStatus) (bool, string) { return s.Primary != nil, "not primary" })
	if st.Primary.Epoch != 2 {
		t.Errorf("epoch %d after the promotion, want 2", st.Primary.Epoch)
	}
	foCheckBlocks(t, m1.NBD, "A", offs, blk)

	// Again: already primary and serving → exit 0, same process.
	r = runFailover(t, base...)
	if r.Code != 0 || !strings.Contains(r.Out, "already primary") {
		t.Errorf("second run: exit %d, want 0 saying it is already primary", r.Code)
	}
	if got := foServePid(t, m1.Data); got != pid {
		t.Errorf("second run replaced serve pid %d with %d", pid, got)
	}
	if err := syscall.Kill(pid, 0); err != nil {
		t.Errorf("serve pid %d gone after the second run: %v", pid, err)
	}
}

// foHasNBDDevices reports whether the kernel has /dev/nbd* devices.
func foHasNBDDevices() bool {
	m, _ := filepath.Glob("/dev/nbd[0-9]*")
	return len(m) > 0
}

// foServePid reads DIR/serve.pid written by the script.
func foServePid(t *testing.T, dir string) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "serve.pid"))
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 1 {
		t.Fatalf("serve.pid holds %q", b)
	}
	return pid
}

// foStopPid ends a process the script started (not our child): SIGTERM,
// then SIGKILL after 5 s. It checks /proc/PID/cmdline first, so a reused
// pid is left alone.
func foStopPid(t *testing.T, pid int) {
	cmd, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil || !strings.Contains(string(cmd), "blockmirror") {
		return
	}
	_ = syscall.Kill(pid, syscall.SIGTERM)
	for range 100 {
		if syscall.Kill(pid, 0) != nil {
			return
		}
		// Not our child: it is reaped by init once it exits; a zombie
		// still answers kill 0, so look at its state too.
		if b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat"); err != nil || strings.Contains(string(b), ") Z ") {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("serve pid %d did not stop after SIGTERM; killing it", pid)
	_ = syscall.Kill(pid, syscall.SIGKILL)
}

// TestFailoverScriptInconsistent: a mirror that is being resynced (a new
// mirror of a primary whose journal no longer reaches back to seq 1,
// resync rate-limited) is not a consistent image. When the primary dies
// mid-resync, scripts/failover.sh refuses to promote it (exit 4, the
// reason names the inconsistency) and leaves it a mirror; with --force it
// promotes it.
func TestFailoverScriptInconsistent(t *testing.T) {
	if testing.Short() {
		t.Skip("writes 80 MiB and waits for a journal segment to be dropped (skipped with -short)")
	}
	c := newFoCluster(t, 178, "p1", "m1")
	p1, m1 := c.N("p1"), c.N("m1")
	// Journaled with their data (the indirect path off for this start
	// only), 80 MiB of writes fill a 64 MiB segment and the journal drops it.
	p1.StartPrimary("256M", "--indirect-min", "0")
	pc := foDial(t, p1.NBD)
	buf := make([]byte, 1<<20)
	for i := range 80 {
		copy(buf, foPattern("X", i, 4096))
		if err := pc.foWrite(buf, int64(i)<<20, 10*time.Second); err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
	}
	testutil.WaitFor(t, 30*time.Second, "the primary's journal dropped its first segment", func() (bool, string) {
		segs := journalSegments(t, p1.Data)
		return len(segs) == 1 && segs[0] > 1, fmt.Sprintf("segments start at %v", segs)
	})
	p1.Stop()
	p1.Proc = nil

	m1.StartMirror()
	p1.StartPrimary("256M", "--mirror", "m1="+m1.Listen, "--mode", "async", "--resync-rate", "2M")
	m1.WaitStatus(30*time.Second, "inconsistent (resyncing)", func(s *foStatus) (bool, string) {
		if s.Mirror == nil {
			return false, "not a mirror"
		}
		return s.Mirror.Inconsistent, "consistent"
	})
	p1.Kill()

	r := runFailover(t, "--primary", p1.NBD, "--admin", m1.Admin)
	if r.Code != 4 || !strings.Contains(r.Out, "inconsistent") {
		t.Errorf("failover of an inconsistent mirror: exit %d, want 4 with a reason saying inconsistent", r.Code)
	}
	if st, err := m1.Status(); err != nil || st.Mirror == nil {
		t.Fatalf("m1 should still be a mirror after the refusal: %v %s", err, m1.RawStatus())
	}
	r = runFailover(t, "--primary", p1.NBD, "--admin", m1.Admin, "--force")
	if r.Code != 0 {
		t.Fatalf("failover --force of an inconsistent mirror: exit %d, want 0", r.Code)
	}
	m1.WaitStatus(10*time.Second, "primary", func(s *foStatus) (bool, string) { return s.Primary != nil, "not primary" })
}
