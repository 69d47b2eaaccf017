package e2e

// Helpers for the failover, failback, fencing and split-brain tests: nodes
// with fixed loopback addresses in 127.0.0.160–199 (so a node keeps its
// addresses across restarts and role changes), the scripts/failover.sh
// runner, status polling, fault proxies and a small NBD write/read helper.

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/blockmirror/blockmirror/internal/testutil"
	"github.com/blockmirror/blockmirror/mirror"
)

// foStatus is GET /v1/status of a node in either role.
type foStatus struct {
	Primary *struct {
		Role        string                    `json:"role"`
		Epoch       uint64                    `json:"epoch"`
		NBD         string                    `json:"nbd"`
		SplitBrain  string                    `json:"split_brain"`
		Replication *mirror.ReplicationStatus `json:"replication"`
	} `json:"primary"`
	Mirror *mirror.ReplicaStatus `json:"mirror"`
}

// foNode is one blockmirror node. Its addresses are fixed when the
// cluster is made, so it keeps them whichever role it runs in.
type foNode struct {
	c      *foCluster
	Name   string
	Data   string
	Listen string // QUIC (UDP) address: as a mirror, and a primary's --listen
	Admin  string // admin HTTP (read-only)
	// Control is the node's control socket (promote, demote, verify).
	Control string
	NBD     string // NBD HOST:PORT (as a primary, or after an online promotion)
	Proc    *testutil.Proc
}

// URI is the node's NBD URI.
func (n *foNode) URI() string { return "nbd://" + n.NBD + "/" + defaultExport }

// Image is the node's disk image.
func (n *foNode) Image() string { return filepath.Join(n.Data, "disk.img") }

// foCluster is a set of nodes sharing a certificate directory.
type foCluster struct {
	t     *testing.T
	dir   string
	Certs string
	nodes map[string]*foNode
}

// foRange is the loopback range these tests use: 127.0.0.160–199.
const (
	foFirstHost = 160
	foLastHost  = 199
)

// newFoCluster makes certificates for the named nodes and gives node i
// the host 127.0.0.(host+i), with free ports.
func newFoCluster(t *testing.T, host int, names ...string) *foCluster {
	t.Helper()
	requireRepl(t)
	if host < foFirstHost || host+len(names)-1 > foLastHost {
		t.Fatalf("hosts %d..%d outside 127.0.0.%d-%d", host, host+len(names)-1, foFirstHost, foLastHost)
	}
	c := &foCluster{t: t, dir: t.TempDir(), nodes: map[string]*foNode{}}
	c.Certs = filepath.Join(c.dir, "certs")
	runCmd(t, time.Minute, binPath, append([]string{"certs", "init", "--out", c.Certs}, names...)...)
	sockets := testutil.SocketDir(t)
	for i, name := range names {
		ip := fmt.Sprintf("127.0.0.%d", host+i)
		c.nodes[name] = &foNode{c: c, Name: name, Data: filepath.Join(c.dir, name), Control: filepath.Join(sockets, name+".sock"),
			Listen: foFreeAddr(t, "udp", ip), Admin: foFreeAddr(t, "tcp", ip), NBD: foFreeAddr(t, "tcp", ip)}
	}
	return c
}

// N returns the named node.
func (c *foCluster) N(name string) *foNode {
	n, ok := c.nodes[name]
	if !ok {
		c.t.Fatalf("no node %q", name)
	}
	return n
}

// foFreeAddr returns ip:port with a port the kernel reported free a
// moment ago.
func foFreeAddr(t testing.TB, network, ip string) string {
	t.Helper()
	if network == "udp" {
		c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.ParseIP(ip)})
		if err != nil {
			t.Fatalf("udp on %s: %v", ip, err)
		}
		defer c.Close()
		return c.LocalAddr().String()
	}
	l, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Fatalf("tcp on %s: %v", ip, err)
	}
	defer l.Close()
	return l.Addr().String()
}

// StartMirror runs `blockmirror mirror` on the node. extra are flags for
// after an online promotion (--mirror, --mode, ...).
func (n *foNode) StartMirror(extra ...string) *foNode {
	t := n.c.t
	t.Helper()
	if n.Proc != nil && !n.Proc.Exited() {
		t.Fatalf("%s already running", n.Name)
	}
	args := []string{"mirror", "--data", n.Data, "--listen", n.Listen, "--admin", n.Admin, "--control", n.Control, "--nbd", n.NBD,
		"--certs", n.c.Certs, "--node", n.Name}
	n.Proc = testutil.Start(t, testutil.ProcOptions{
		Name: n.Name + "-mirror", Path: binPath, Args: append(args, extra...),
		ReadyLog: "mirror listening", ReadyAddr: n.Admin, StopTimeout: 5 * time.Second,
	})
	return n
}

// StartPrimary runs `blockmirror serve` on the node (creating the volume
// with size on the first start).
func (n *foNode) StartPrimary(size string, extra ...string) *foNode {
	t := n.c.t
	t.Helper()
	if n.Proc != nil && !n.Proc.Exited() {
		t.Fatalf("%s already running", n.Name)
	}
	args := []string{"serve", "--data", n.Data, "--nbd", n.NBD, "--admin", n.Admin, "--control", n.Control,
		"--certs", n.c.Certs, "--node", n.Name}
	if _, err := os.Stat(filepath.Join(n.Data, mirror.MetaFile)); err != nil {
		args = append(args, "--size", size)
	}
	n.Proc = testutil.Start(t, testutil.ProcOptions{
		Name: n.Name + "-primary", Path: binPath, Args: append(args, extra...),
		ReadyLog: "serving NBD", ReadyAddr: n.NBD, StopTimeout: 5 * time.Second,
	})
	return n
}

// Kill sends SIGKILL (no chance to flush anything).
func (n *foNode) Kill() {
	if n.Proc != nil {
		n.Proc.Kill()
	}
}

// Stop ends the node with SIGTERM; the test fails unless it exits cleanly.
func (n *foNode) Stop() {
	n.c.t.Helper()
	stopProc(n.c.t, n.Proc)
}

// Status fetches the node's status.
func (n *foNode) Status() (*foStatus, error) {
	var st foStatus
	if err := testutil.GetJSON(n.c.t.Context(), "http://"+n.Admin+"/v1/status", &st); err != nil {
		return nil, err
	}
	return &st, nil
}

// RawStatus is the node's status JSON, for logs.
func (n *foNode) RawStatus() string {
	var raw map[string]any
	if err := testutil.GetJSON(n.c.t.Context(), "http://"+n.Admin+"/v1/status", &raw); err != nil {
		return err.Error()
	}
	b, _ := json.Marshal(raw)
	return string(b)
}

// WaitStatus polls the node's status until cond holds.
func (n *foNode) WaitStatus(timeout time.Duration, what string, cond func(*foStatus) (bool, string)) *foStatus {
	n.c.t.Helper()
	var last *foStatus
	testutil.WaitFor(n.c.t, timeout, n.Name+": "+what, func() (bool, string) {
		if n.Proc != nil && n.Proc.Exited() {
			n.c.t.Fatalf("%s exited: %v\n%s", n.Name, n.Proc.ExitErr(), n.Proc.Tail(30))
		}
		st, err := n.Status()
		if err != nil {
			return false, err.Error()
		}
		last = st
		ok, why := cond(st)
		if !ok {
			why += "; status " + n.RawStatus()
		}
		return ok, why
	})
	return last
}

// WaitMirrorCaughtUp waits until the mirror m has applied everything the
// primary p has journaled, with no resync pending.
func foWaitCaughtUp(t *testing.T, p, m *foNode, timeout time.Duration) {
	t.Helper()
	testutil.WaitFor(t, timeout, m.Name+" caught up with "+p.Name, func() (bool, string) {
		ps, err := p.Status()
		if err != nil {
			return false, err.Error()
		}
		if ps.Primary == nil || ps.Primary.Replication == nil {
			return false, "primary status without replication: " + p.RawStatus()
		}
		ms, err := m.Status()
		if err != nil {
			return false, err.Error()
		}
		if ms.Mirror == nil {
			return false, m.Name + " is not a mirror: " + m.RawStatus()
		}
		peer := replPeer(ps.Primary.Replication, m.Name)
		switch {
		case peer == nil:
			return false, "no peer " + m.Name
		case peer.State != "in-sync":
			return false, fmt.Sprintf("%s is %s (%s)", m.Name, peer.State, peer.LastError)
		case ms.Mirror.Applied < ps.Primary.Replication.LastSeq || ms.Mirror.Inconsistent || ms.Mirror.NeedsResync:
			return false, fmt.Sprintf("%s applied %d of %d (inconsistent %v, needs resync %v)", m.Name,
				ms.Mirror.Applied, ps.Primary.Replication.LastSeq, ms.Mirror.Inconsistent, ms.Mirror.NeedsResync)
		}
		return true, ""
	})
}

// foScript is scripts/failover.sh.
func foScript(t testing.TB) string {
	t.Helper()
	root, err := testutil.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(root, "scripts", "failover.sh")
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("scripts/failover.sh: %v", err)
	}
	return p
}

// foResult is one run of scripts/failover.sh.
type foResult struct {
	Out      string
	Code     int
	Wall     time.Duration // the script's run time measured here
	Reported float64       // "failover complete in X s" (-1 if absent)
}

var foCompleteRE = regexp.MustCompile(`failover complete in ([0-9.]+) s`)

// runFailover runs scripts/failover.sh with --bin and args.
func runFailover(t testing.TB, args ...string) foResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", append([]string{foScript(t), "--bin", binPath}, args...)...)
	cmd.Env = cmdEnv()
	cmd.Stdin = nil
	cmd.WaitDelay = 5 * time.Second
	start := time.Now()
	b, err := cmd.CombinedOutput()
	r := foResult{Out: string(b), Wall: time.Since(start), Reported: -1}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		r.Code = ee.ExitCode()
	default:
		t.Fatalf("failover.sh: %v\n%s", err, b)
	}
	if m := foCompleteRE.FindStringSubmatch(r.Out); m != nil {
		r.Reported, _ = strconv.ParseFloat(m[1], 64)
	}
	t.Logf("failover.sh %s → exit %d in %v:\n%s", strings.Join(args, " "), r.Code, r.Wall.Round(time.Millisecond), strings.TrimSpace(r.Out))
	return r
}

// foDial opens an NBD connection to node n; every request on it must
// complete within timeout.
func foDial(t testing.TB, addr string) *rawConn {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	c, err := rawDial(ctx, addr, defaultExport)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.c.Close() })
	return c
}

// foWrite writes p at off and flushes, within timeout. (A write and a
// flush, not a FUA write: FUA writes have a bug of their own, see
// TestFailoverFUAWritesComplete, and the other tests should fail only for
// theirs.)
func (r *rawConn) foWrite(p []byte, off int64, timeout time.Duration) error {
	r.c.SetDeadline(time.Now().Add(timeout))
	defer r.c.SetDeadline(time.Time{})
	if err := r.pwrite(p, uint64(off), 0); err != nil {
		return err
	}
	return r.flush()
}

// foWriteBlocks writes foPattern(tag, i, size) at offs[i] with foWrite
// (10 s each) and fails the test at the first error.
func (r *rawConn) foWriteBlocks(t testing.TB, tag string, offs []int64, size int) {
	t.Helper()
	for i, off := range offs {
		if err := r.foWrite(foPattern(tag, i, size), off, 10*time.Second); err != nil {
			t.Fatalf("write %s %d at %d: %v", tag, i, off, err)
		}
	}
}

// foWriteFUA writes p at off with FUA within timeout.
func (r *rawConn) foWriteFUA(p []byte, off int64, timeout time.Duration) error {
	r.c.SetDeadline(time.Now().Add(timeout))
	defer r.c.SetDeadline(time.Time{})
	return r.pwrite(p, uint64(off), cmdFlagFUA)
}

// foRead reads n bytes at off.
func (r *rawConn) foRead(n int, off int64) ([]byte, error) {
	r.c.SetDeadline(time.Now().Add(30 * time.Second))
	defer r.c.SetDeadline(time.Time{})
	return r.pread(n, uint64(off))
}

// foPattern is the content of block i of a test's write set tag.
func foPattern(tag string, i, n int) []byte {
	p := make([]byte, n)
	seed := sha256.Sum256([]byte(fmt.Sprintf("%s/%d", tag, i)))
	r := rand.NewChaCha8(seed)
	_, _ = r.Read(p)
	copy(p, fmt.Sprintf("%s block %d|", tag, i))
	return p
}

// foCheckBlocks reads blocks written with foPattern(tag, i, size) at
// offs[i] from addr and fails the test for each mismatch.
func foCheckBlocks(t testing.TB, addr, tag string, offs []int64, size int) {
	t.Helper()
	c := foDial(t, addr)
	bad := 0
	for i, off := range offs {
		got, err := c.foRead(size, off)
		if err != nil {
			t.Fatalf("read %s at %d from %s: %v", tag, off, addr, err)
		}
		if string(got) != string(foPattern(tag, i, size)) {
			bad++
			if bad <= 5 {
				t.Errorf("%s: block %d (offset %d) of %q is not what was written (starts %q)", addr, i, off, tag, foHead(got))
			}
		}
	}
	if bad > 5 {
		t.Errorf("%s: %d of %d blocks of %q differ", addr, bad, len(offs), tag)
	}
}

func foHead(p []byte) string {
	if len(p) > 24 {
		p = p[:24]
	}
	return string(p)
}

// foQuarantine reads the JSON quarantine reports in dir/quarantine.
func foQuarantine(t testing.TB, dataDir string) []mirror.QuarantineReport {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(dataDir, "quarantine", "q-*.json"))
	var reps []mirror.QuarantineReport
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var r mirror.QuarantineReport
		if err := json.Unmarshal(b, &r); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		if _, err := os.Stat(r.File); err != nil {
			t.Errorf("quarantine report %s names %s: %v", f, r.File, err)
		}
		reps = append(reps, r)
	}
	return reps
}

// foCovered reports whether [off, off+n) lies within the regions of reps.
func foCovered(reps []mirror.QuarantineReport, off int64, n int) bool {
	for _, r := range reps {
		for _, g := range r.Regions {
			if uint64(off) >= g.Offset && uint64(off)+uint64(n) <= g.Offset+g.Length {
				return true
			}
		}
	}
	return false
}

// foRequireIdentical fails unless two images are byte-identical.
func foRequireIdentical(t testing.TB, a, b *foNode) {
	t.Helper()
	off, err := testutil.CompareFiles(a.Image(), b.Image())
	if err != nil {
		t.Fatal(err)
	}
	if off >= 0 {
		t.Errorf("images of %s and %s differ at offset %d (block %d)", a.Name, b.Name, off, off/4096)
	} else {
		t.Logf("images of %s and %s are identical", a.Name, b.Name)
	}
}

// foStartProxy runs cmd/faultproxy on ip, forwarding to target.
func foStartProxy(t *testing.T, ip, target string) *faultProxy {
	t.Helper()
	if _, err := faultProxyBinary(); err != nil {
		t.Skipf("cmd/faultproxy: %v", err)
	}
	fp, err := startFaultProxyAt(t, foFreeAddr(t, "udp", ip), foFreeAddr(t, "tcp", ip), target)
	if err != nil {
		t.Fatal(err)
	}
	return fp
}

// foReadImage reads n bytes at off from a disk image file.
func foReadImage(path string, off int64, n int) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	p := make([]byte, n)
	if _, err := f.ReadAt(p, off); err != nil {
		return nil, fmt.Errorf("read %s at %d: %w", path, off, err)
	}
	return p, nil
}
