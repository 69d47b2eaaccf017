package e2e

// A harness for replication tests: a certificate directory, mirror daemons
// and one primary, each a real blockmirror process on loopback addresses,
// with their admin endpoints polled for status.

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/blockmirror/blockmirror/internal/testutil"
	"github.com/blockmirror/blockmirror/mirror"
)

// replStatus is what GET /v1/status returns (cmd/blockmirror's nodeStatus).
type replStatus struct {
	Primary *struct {
		Role        string                    `json:"role"`
		Volume      string                    `json:"volume"`
		Size        int64                     `json:"size"`
		Epoch       uint64                    `json:"epoch"`
		Replication *mirror.ReplicationStatus `json:"replication"`
	} `json:"primary"`
	Mirror *mirror.ReplicaStatus `json:"mirror"`
}

// replMirror is one mirror daemon of a replCluster.
type replMirror struct {
	Name   string
	Data   string // --data
	Listen string // QUIC address (UDP)
	Admin  string // admin HTTP address (read-only)
	// Control is the control socket (promote, verify).
	Control string
	Proc    *testutil.Proc
}

// Image is the mirror's disk image.
func (m *replMirror) Image() string { return filepath.Join(m.Data, "disk.img") }

// replPrimary is the primary of a replCluster.
type replPrimary struct {
	Name  string
	Data  string
	NBD   string // HOST:PORT
	URI   string
	Admin string
	// Control is the control socket (demote, verify).
	Control string
	Proc    *testutil.Proc
}

// Image is the primary's disk image.
func (p *replPrimary) Image() string { return filepath.Join(p.Data, "disk.img") }

// replCluster runs a primary "p1" and mirrors on loopback.
type replCluster struct {
	t       *testing.T
	dir     string
	Certs   string
	Mirrors []*replMirror
	Primary *replPrimary
	// Size of the volume created by the first StartPrimary.
	Size string
}

// requireRepl skips unless the blockmirror binary is under test.
func requireRepl(t testing.TB) {
	t.Helper()
	requireServer(t)
	if serverKind != kindBlockmirror {
		t.Skipf("replication tests need blockmirror (E2E_SERVER=%s)", serverKind)
	}
}

// newReplCluster creates certificates for p1 and the named mirrors (none
// started yet).
func newReplCluster(t *testing.T, size string, mirrors ...string) *replCluster {
	t.Helper()
	requireRepl(t)
	c := &replCluster{t: t, dir: t.TempDir(), Size: size}
	c.Certs = filepath.Join(c.dir, "certs")
	runCmd(t, time.Minute, binPath, append([]string{"certs", "init", "--out", c.Certs, "p1"}, mirrors...)...)
	sockets := testutil.SocketDir(t)
	for _, n := range mirrors {
		c.Mirrors = append(c.Mirrors, &replMirror{Name: n, Data: filepath.Join(c.dir, n), Control: filepath.Join(sockets, n+".sock")})
	}
	c.Primary = &replPrimary{Name: "p1", Data: filepath.Join(c.dir, "p1"), Control: filepath.Join(sockets, "p1.sock")}
	return c
}

// M returns the named mirror.
func (c *replCluster) M(name string) *replMirror {
	for _, m := range c.Mirrors {
		if m.Name == name {
			return m
		}
	}
	c.t.Fatalf("no mirror %q", name)
	return nil
}

// StartMirror starts (or restarts, on the same addresses) a mirror daemon.
func (c *replCluster) StartMirror(name string, extra ...string) *replMirror {
	t := c.t
	t.Helper()
	m := c.M(name)
	if m.Proc != nil && !m.Proc.Exited() {
		t.Fatalf("mirror %s already running", name)
	}
	fixed := m.Listen != ""
	for attempt := 0; ; attempt++ {
		if !fixed {
			m.Listen = testutil.FreeUDPAddr(t)
		}
		if m.Admin == "" || attempt > 0 {
			m.Admin = testutil.FreeTCPAddr(t)
		}
		args := []string{"mirror", "--data", m.Data, "--listen", m.Listen, "--admin", m.Admin, "--control", m.Control,
			"--certs", c.Certs, "--node", m.Name}
		p, err := testutil.StartE(t, testutil.ProcOptions{
			Name: m.Name, Path: binPath, Args: append(args, extra...),
			ReadyLog: "mirror listening", ReadyAddr: m.Admin,
		})
		if err == nil {
			m.Proc = p
			return m
		}
		if attempt < 3 && strings.Contains(err.Error(), "address already in use") {
			t.Logf("retrying %s with other ports: %v", name, err)
			continue
		}
		t.Fatal(err)
	}
}

// primaryOpts configure StartPrimary.
type primaryOpts struct {
	// Via maps a mirror name to the address the primary dials instead of
	// the mirror's own (e.g. a proxy).
	Via map[string]string
	// Mirrors limits the --mirror flags to these names (default: all).
	Mirrors []string
	// Args are extra serve flags (--mode, --sync-acks, ...).
	Args []string
	// Certs and Node override the identity (default c.Certs, "p1").
	Certs, Node string
	// Data overrides the data directory (a different primary).
	Data string
}

// StartPrimary starts (or restarts, on the same addresses) the primary.
// The first start of a data directory creates the volume with c.Size.
func (c *replCluster) StartPrimary(o primaryOpts) *replPrimary {
	t := c.t
	t.Helper()
	p := c.Primary
	if o.Data != "" && o.Data != p.Data {
		p = &replPrimary{Name: "p1", Data: o.Data, Control: filepath.Join(filepath.Dir(c.Primary.Control), "p1-other.sock")}
	}
	if p.Proc != nil && !p.Proc.Exited() {
		t.Fatal("primary already running")
	}
	if o.Certs == "" {
		o.Certs = c.Certs
	}
	if o.Node == "" {
		o.Node = "p1"
	}
	fixed := p.NBD != ""
	for attempt := 0; ; attempt++ {
		if !fixed || attempt > 0 {
			p.NBD = testutil.FreeTCPAddr(t)
			p.Admin = testutil.FreeTCPAddr(t)
		}
		p.URI = "nbd://" + p.NBD + "/disk"
		args := []string{"serve", "--data", p.Data, "--nbd", p.NBD, "--admin", p.Admin, "--control", p.Control,
			"--certs", o.Certs, "--node", o.Node}
		if _, err := os.Stat(filepath.Join(p.Data, mirror.MetaFile)); err != nil {
			args = append(args, "--size", c.Size)
		}
		for _, m := range c.Mirrors {
			if o.Mirrors != nil && !slices.Contains(o.Mirrors, m.Name) {
				continue
			}
			addr := m.Listen
			if v, ok := o.Via[m.Name]; ok {
				addr = v
			}
			if addr == "" {
				t.Fatalf("mirror %s has no address yet (start it first)", m.Name)
			}
			args = append(args, "--mirror", m.Name+"="+addr)
		}
		pr, err := testutil.StartE(t, testutil.ProcOptions{
			Name: "primary", Path: binPath, Args: append(args, o.Args...),
			ReadyLog: "serving NBD", ReadyAddr: p.NBD, StopTimeout: 5 * time.Second,
		})
		if err == nil {
			p.Proc = pr
			testutil.WaitFor(t, 10*time.Second, "the primary's admin endpoint answers", func() (bool, string) {
				if pr.Exited() {
					t.Fatalf("primary exited: %v\n%s", pr.ExitErr(), pr.Tail(20))
				}
				_, err := replGetStatus(t.Context(), p.Admin)
				return err == nil, fmt.Sprint(err)
			})
			return p
		}
		if attempt < 3 && strings.Contains(err.Error(), "address already in use") {
			t.Logf("retrying the primary with other ports: %v", err)
			continue
		}
		t.Fatal(err)
	}
}

// status fetches a node's status from its admin endpoint.
func replGetStatus(ctx context.Context, admin string) (*replStatus, error) {
	var st replStatus
	if err := testutil.GetJSON(ctx, "http://"+admin+"/v1/status", &st); err != nil {
		return nil, err
	}
	return &st, nil
}

// PrimaryStatus returns the primary's replication status.
func (c *replCluster) PrimaryStatus() (*mirror.ReplicationStatus, error) {
	if p := c.Primary.Proc; p != nil && p.Exited() {
		return nil, fmt.Errorf("the primary exited (%v); its log ends:\n%s", p.ExitErr(), p.Tail(5))
	}
	st, err := replGetStatus(c.t.Context(), c.Primary.Admin)
	if err != nil {
		return nil, err
	}
	if st.Primary == nil || st.Primary.Replication == nil {
		return nil, fmt.Errorf("primary status without replication: %+v", st)
	}
	return st.Primary.Replication, nil
}

// MirrorStatus returns a mirror's status.
func (c *replCluster) MirrorStatus(name string) (*mirror.ReplicaStatus, error) {
	st, err := replGetStatus(c.t.Context(), c.M(name).Admin)
	if err != nil {
		return nil, err
	}
	if st.Mirror == nil {
		return nil, fmt.Errorf("%s: status is not a mirror's: %+v", name, st)
	}
	return st.Mirror, nil
}

// peer returns the named peer in a primary status.
func replPeer(st *mirror.ReplicationStatus, name string) *mirror.PeerReport {
	for i := range st.Peers {
		if st.Peers[i].Name == name {
			return &st.Peers[i]
		}
	}
	return nil
}

// WaitPeerState waits until the primary reports every named mirror in state.
func (c *replCluster) WaitPeerState(timeout time.Duration, state string, names ...string) {
	c.t.Helper()
	testutil.WaitFor(c.t, timeout, fmt.Sprintf("mirrors %v %s", names, state), func() (bool, string) {
		st, err := c.PrimaryStatus()
		if err != nil {
			return false, err.Error()
		}
		for _, n := range names {
			p := replPeer(st, n)
			if p == nil {
				return false, "no peer " + n
			}
			if p.State != state {
				return false, fmt.Sprintf("%s is %s (last error %q)", n, p.State, p.LastError)
			}
		}
		return true, ""
	})
}

// WaitApplied waits until every named running mirror has applied the
// primary's last seq to its disk image.
func (c *replCluster) WaitApplied(timeout time.Duration, names ...string) {
	c.t.Helper()
	testutil.WaitFor(c.t, timeout, fmt.Sprintf("mirrors %v applied the primary's last seq", names), func() (bool, string) {
		st, err := c.PrimaryStatus()
		if err != nil {
			return false, err.Error()
		}
		for _, n := range names {
			ms, err := c.MirrorStatus(n)
			if err != nil {
				return false, err.Error()
			}
			if ms.Applied < st.LastSeq {
				return false, fmt.Sprintf("%s applied %d of %d (received %d, durable %d)", n, ms.Applied, st.LastSeq, ms.Received, ms.Durable)
			}
		}
		return true, ""
	})
}

// WaitMirrorQuiet waits until a mirror has applied everything it received
// (used when its primary is gone).
func (c *replCluster) WaitMirrorQuiet(timeout time.Duration, name string) *mirror.ReplicaStatus {
	c.t.Helper()
	var last *mirror.ReplicaStatus
	testutil.WaitFor(c.t, timeout, name+" applied all it received", func() (bool, string) {
		ms, err := c.MirrorStatus(name)
		if err != nil {
			return false, err.Error()
		}
		last = ms
		if ms.Applied < ms.Received || ms.Durable < ms.Written {
			return false, fmt.Sprintf("received %d written %d durable %d applied %d", ms.Received, ms.Written, ms.Durable, ms.Applied)
		}
		return true, ""
	})
	return last
}

// stopProc stops a process with SIGTERM; the test fails (and goes on)
// unless it exits cleanly within its StopTimeout (it is killed then).
func stopProc(t testing.TB, p *testutil.Proc) {
	t.Helper()
	if p == nil || p.Exited() {
		return
	}
	if err := p.Stop(syscall.SIGTERM); err != nil {
		t.Errorf("SIGTERM pid %d: %v\n%s", p.Pid(), err, p.Tail(10))
	}
}

// StopPrimary stops the primary with SIGTERM. A primary that does not
// exit in time is killed and only logged here: TestReplPrimarySIGTERM is
// the test that fails for it, so that other tests report their own
// findings.
func (c *replCluster) StopPrimary() {
	c.t.Helper()
	p := c.Primary.Proc
	if p == nil || p.Exited() {
		return
	}
	if err := p.Stop(syscall.SIGTERM); err != nil {
		c.t.Logf("primary did not stop cleanly (see TestReplPrimarySIGTERM): %v", err)
	}
}

// StopAll stops the primary, then the mirrors, with SIGTERM.
func (c *replCluster) StopAll() {
	c.t.Helper()
	c.StopPrimary()
	for _, m := range c.Mirrors {
		stopProc(c.t, m.Proc)
	}
}

// RequireIdentical fails unless the primary's image and the named
// mirrors' images are byte-identical.
func (c *replCluster) RequireIdentical(names ...string) {
	c.t.Helper()
	for _, n := range names {
		off, err := testutil.CompareFiles(c.Primary.Image(), c.M(n).Image())
		if err != nil {
			c.t.Fatal(err)
		}
		if off >= 0 {
			c.t.Errorf("image of %s differs from the primary's at offset %d (block %d)", n, off, off/4096)
		}
	}
}

// Diagnose logs the primary's raw status and a goroutine dump (SIGQUIT,
// which also ends it), copying its log to a file that outlives the test
// directory. For failures that leave a request stuck.
func (c *replCluster) Diagnose() {
	c.t.Helper()
	var raw map[string]any
	if err := testutil.GetJSON(c.t.Context(), "http://"+c.Primary.Admin+"/v1/status", &raw); err == nil {
		b, _ := json.Marshal(raw)
		c.t.Logf("primary status: %s", b)
	}
	p := c.Primary.Proc
	if p == nil || p.Exited() {
		return
	}
	syscall.Kill(p.Pid(), syscall.SIGQUIT)
	select {
	case <-p.Done():
	case <-time.After(3 * time.Second):
	}
	keep := filepath.Join(os.TempDir(), fmt.Sprintf("repl-diag-%s-%d.log", strings.ReplaceAll(c.t.Name(), "/", "_"), p.Pid()))
	if err := os.WriteFile(keep, []byte(p.Log()), 0o644); err == nil {
		c.t.Logf("primary log with goroutine dump: %s", keep)
	}
}
