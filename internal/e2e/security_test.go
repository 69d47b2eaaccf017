package e2e

// Control-plane security with real processes: an unprivileged user
// (nobody) can neither promote, demote nor resync a node, through the
// control socket or the TCP admin endpoint; a web page's requests
// (foreign Origin, foreign Host) change nothing; root and the members of
// the control group keep working.

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/blockmirror/blockmirror/internal/testutil"
)

// asUser runs the command as uid/gid nobody with the given supplementary
// groups (setpriv), returning its output and exit code.
func asUser(t *testing.T, groups string, name string, args ...string) (string, int) {
	t.Helper()
	setpriv := needTool(t, "setpriv")
	pre := []string{"--reuid=nobody", "--regid=nogroup"}
	if groups == "" {
		pre = append(pre, "--clear-groups")
	} else {
		pre = append(pre, "--groups="+groups)
	}
	out, err := runCmdErr(t, time.Minute, setpriv, append(append(pre, name), args...)...)
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("setpriv %s: %v\n%s", name, err, out)
	}
	return out, code
}

// rawHTTP sends one HTTP/1.1 request with the given extra header lines to
// addr as the user nobody (bash's /dev/tcp) and returns the status line and
// body.
func rawHTTP(t *testing.T, addr, method, path string, headers ...string) string {
	t.Helper()
	host, port, _ := net.SplitHostPort(addr)
	hasHost := false
	for _, h := range headers {
		hasHost = hasHost || strings.HasPrefix(strings.ToLower(h), "host:")
	}
	if !hasHost {
		headers = append(headers, "Host: "+addr)
	}
	req := method + " " + path + " HTTP/1.1\r\n" + strings.Join(headers, "\r\n") + "\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
	script := `exec 3<>"/dev/tcp/$1/$2" && printf '%s' "$3" >&3 && cat <&3`
	out, code := asUser(t, "", "/bin/bash", "-c", script, "bash", host, port, req)
	if code != 0 {
		t.Fatalf("raw %s %s to %s: exit %d\n%s", method, path, addr, code, out)
	}
	return out
}

// publicBinary copies the blockmirror binary where nobody can run it.
func publicBinary(t *testing.T) string {
	dir, err := os.MkdirTemp("", "bmbin")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	b, err := os.ReadFile(binPath)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "blockmirror")
	if err := os.WriteFile(p, b, 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// controlGroup is an existing system group nobody is not in, standing in
// for the blockmirror group (the test does not create groups).
func controlGroup(t *testing.T) string {
	for _, n := range []string{"daemon", "adm", "sys"} {
		if _, err := user.LookupGroup(n); err == nil {
			return n
		}
	}
	t.Skip("no system group to use as the control group")
	return ""
}

func TestControlNeedsPrivilege(t *testing.T) {
	requireRepl(t)
	if os.Geteuid() != 0 {
		t.Skip("needs root: runs commands as the user nobody")
	}
	if _, err := user.Lookup("nobody"); err != nil {
		t.Skip("no user nobody")
	}
	group := controlGroup(t)
	c := newFoCluster(t, 194, "p1", "m1")
	p1, m1 := c.N("p1"), c.N("m1")
	// The sockets' directory is searchable, as /run/blockmirror is: the
	// socket's own mode and the daemon's credential check must do the work.
	os.Chmod(filepath.Dir(p1.Control), 0o755)
	m1.StartMirror("--control-group", group)
	p1.StartPrimary("64M", "--mirror", "m1="+m1.Listen, "--control-group", group)
	w := foDial(t, p1.NBD)
	offs := []int64{0, 1 << 20}
	w.foWriteBlocks(t, "before", offs, 4096)
	foWaitCaughtUp(t, p1, m1, 30*time.Second)
	bin := publicBinary(t)

	unchanged := func(after string) {
		t.Helper()
		ps, err := p1.Status()
		if err != nil || ps.Primary == nil || ps.Primary.Epoch != 1 {
			t.Fatalf("after %s: p1 is no longer the primary of epoch 1: %s", after, p1.RawStatus())
		}
		ms, err := m1.Status()
		if err != nil || ms.Mirror == nil || ms.Mirror.Epoch != 1 {
			t.Fatalf("after %s: m1 is no longer a mirror of epoch 1: %s", after, m1.RawStatus())
		}
		if p1.Proc.Exited() || m1.Proc.Exited() {
			t.Fatalf("after %s: a node exited", after)
		}
	}

	// 1. nobody, through the CLI: the socket's mode (0660 root:GROUP)
	// keeps it out, and the CLI says what control needs.
	needs := "permission denied on the control socket"
	for _, args := range [][]string{
		{"promote", "--admin", m1.Admin, "--force"},
		{"promote", "--control", m1.Control, "--force"},
		{"demote", "--admin", p1.Admin},
		{"demote", "--control", p1.Control, "--split-brain-loser"},
		{"verify", "--admin", p1.Admin, "--resync"},
		{"verify", "--control", p1.Control},
	} {
		out, code := asUser(t, "", bin, args...)
		if code == 0 || !strings.Contains(out, needs) || !strings.Contains(out, "root or membership in group "+group) {
			t.Errorf("nobody: blockmirror %s: exit %d, want a permission error naming group %s:\n%s", strings.Join(args, " "), code, group, out)
		}
		unchanged("nobody's " + args[0])
	}

	// 2. nobody, raw HTTP to the TCP admin endpoints: read-only.
	for _, r := range []struct{ addr, path string }{
		{m1.Admin, "/v1/promote?force=1"}, {p1.Admin, "/v1/demote"}, {p1.Admin, "/v1/verify?resync=1"},
	} {
		out := rawHTTP(t, r.addr, "POST", r.path)
		if !strings.HasPrefix(out, "HTTP/1.1 403") || !strings.Contains(out, "read-only") || !strings.Contains(out, "unix socket") {
			t.Errorf("nobody: POST %s to %s:\n%s", r.path, r.addr, out)
		}
		unchanged("nobody's POST " + r.path)
	}
	if out := rawHTTP(t, p1.Admin, "GET", "/v1/status"); !strings.HasPrefix(out, "HTTP/1.1 200") || !strings.Contains(out, `"control": "`+p1.Control+`"`) {
		t.Errorf("nobody cannot read the status (or it lacks the control socket):\n%s", out)
	}

	// 3. A web page: foreign Origin, foreign Host (DNS rebinding).
	for _, h := range [][]string{
		{"Origin: http://evil.example"},
		{"Origin: null"},
		{"Host: evil.example:" + strings.Split(m1.Admin, ":")[1]},
		{"Host: localhost.evil.example", "Origin: http://localhost.evil.example"},
	} {
		out := rawHTTP(t, m1.Admin, "POST", "/v1/promote?force=1", h...)
		if !strings.HasPrefix(out, "HTTP/1.1 403") && !strings.HasPrefix(out, "HTTP/1.1 421") {
			t.Errorf("POST with %v:\n%s", h, out)
		}
		if strings.Contains(strings.ToLower(out), "access-control-") {
			t.Errorf("CORS header in the answer to %v:\n%s", h, out)
		}
		unchanged(fmt.Sprintf("a POST with %v", h))
	}
	if out := rawHTTP(t, p1.Admin, "GET", "/v1/status", "Host: rebind.evil.example:80"); !strings.HasPrefix(out, "HTTP/1.1 421") {
		t.Errorf("status for a foreign Host:\n%s", out)
	}

	// 4. The credential check behind the file mode: with the socket open
	// to everyone, the daemon still refuses nobody and logs who it was.
	os.Chmod(m1.Control, 0o666)
	out, code := asUser(t, "", bin, "promote", "--control", m1.Control, "--force")
	if code == 0 || !strings.Contains(out, "is neither root nor in group "+group) {
		t.Errorf("nobody on a 0666 socket: exit %d:\n%s", code, out)
	}
	os.Chmod(m1.Control, 0o660)
	unchanged("nobody on an open socket")
	testutil.WaitFor(t, 5*time.Second, "m1 logs the refused caller", func() (bool, string) {
		l := m1.Proc.LogLine("control request refused")
		return strings.Contains(l, "uid=65534") && strings.Contains(l, "pid="), l
	})

	// 5. A member of the control group may (verify changes nothing).
	g, _ := user.LookupGroup(group)
	out, code = asUser(t, g.Gid, bin, "verify", "--admin", p1.Admin)
	if code != 0 || !strings.Contains(out, "identical") {
		t.Errorf("nobody in group %s: verify: exit %d:\n%s", group, code, out)
	}

	// 6. Root works as before, and every request is logged with its caller.
	out = runCmd(t, time.Minute, binPath, "verify", "--admin", p1.Admin)
	if !strings.Contains(out, "identical") {
		t.Errorf("root verify:\n%s", out)
	}
	out = runCmd(t, 10*time.Second, binPath, "status", "--admin", p1.Admin)
	if !strings.Contains(out, "control:") || !strings.Contains(out, p1.Control) {
		t.Errorf("status does not show the control socket:\n%s", out)
	}
	accepted := 0
	sc := bufio.NewScanner(strings.NewReader(p1.Proc.Log()))
	for sc.Scan() {
		if l := sc.Text(); strings.Contains(l, "control request accepted") && strings.Contains(l, "op=verify") {
			accepted++
			if !strings.Contains(l, "uid=") || !strings.Contains(l, "gid=") {
				t.Errorf("accepted request logged without its caller: %s", l)
			}
		}
	}
	if accepted != 2 {
		t.Errorf("%d accepted verify requests logged, want 2 (the group member's and root's)", accepted)
	}
	w.foWriteBlocks(t, "after", offs, 4096)
	foCheckBlocks(t, p1.NBD, "after", offs, 4096)
}

// TestControlSocketDefaultPath: without --control the socket is
// /run/blockmirror/NAME.sock, named in the status, used by the CLI through
// --admin, and removed when the daemon stops.
func TestControlSocketDefaultPath(t *testing.T) {
	requireServer(t)
	if serverKind != kindBlockmirror {
		t.Skip("blockmirror only")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root (/run/blockmirror)")
	}
	name := fmt.Sprintf("e2e-%d", os.Getpid())
	sock := "/run/blockmirror/" + name + ".sock"
	admin := testutil.FreeTCPAddr(t)
	nbdAddr := testutil.FreeTCPAddr(t)
	p := testutil.Start(t, testutil.ProcOptions{Name: "primary", Path: binPath,
		Args:     []string{"serve", "--data", t.TempDir(), "--size", "16M", "--nbd", nbdAddr, "--admin", admin, "--node", name},
		ReadyLog: "serving NBD", ReadyAddr: nbdAddr})
	fi, err := os.Stat(sock)
	if err != nil {
		t.Fatalf("default control socket: %v\n%s", err, p.Tail(20))
	}
	if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm()&0o007 != 0 {
		t.Errorf("%s: mode %v, want a socket closed to others", sock, fi.Mode())
	}
	if d, _ := os.Stat("/run/blockmirror"); d.Mode().Perm() != 0o755 {
		t.Errorf("/run/blockmirror: mode %v, want 0755", d.Mode().Perm())
	}
	out := runCmd(t, 10*time.Second, binPath, "status", "--admin", admin, "--json")
	if !strings.Contains(out, `"control": "`+sock+`"`) {
		t.Errorf("status lacks the control socket:\n%s", out)
	}
	// No mirrors: the request reaches the node, which says so.
	out, err = runCmdErr(t, 10*time.Second, binPath, "verify", "--admin", admin)
	if err == nil || !strings.Contains(out, "no mirrors to verify") {
		t.Errorf("verify through the default socket: %v\n%s", err, out)
	}
	stopProc(t, p)
	if _, err := os.Stat(sock); err == nil {
		t.Errorf("%s left behind after a clean stop", sock)
	}
}
