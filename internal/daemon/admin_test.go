package daemon

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/blockmirror/blockmirror/internal/unixsock"
	"github.com/blockmirror/blockmirror/mirror"
)

// syncBuf is a goroutine-safe log sink.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func testLogger(b *syncBuf) *slog.Logger { return slog.New(slog.NewTextHandler(b, nil)) }

// testAdmin is an admin server for a mirror whose "promote" control
// counts its calls.
func testAdmin(t *testing.T, log *slog.Logger) (*adminServer, *atomic.Int32) {
	t.Helper()
	a := newAdminServer(log, func() NodeStatus { return NodeStatus{Mirror: &mirror.ReplicaStatus{Role: "mirror"}} })
	var calls atomic.Int32
	a.handle("promote", func(ctx context.Context, q url.Values) (any, error) {
		calls.Add(1)
		return map[string]any{"promoted": true}, nil
	})
	t.Cleanup(a.close)
	return a, &calls
}

// TestAdminEndpointIsReadOnly: the TCP endpoint serves reads to requests
// for its own address only, refuses every other method with a message
// naming the control socket, refuses foreign Host and Origin headers, and
// never sends CORS headers; nothing reaches the control operations.
func TestAdminEndpointIsReadOnly(t *testing.T) {
	var logs syncBuf
	a, calls := testAdmin(t, testLogger(&logs))
	a.control = "/run/blockmirror/m1.sock"
	ts := httptest.NewServer(a.readOnly())
	defer ts.Close()
	own := strings.TrimPrefix(ts.URL, "http://")
	_, port, _ := net.SplitHostPort(own)

	do := func(method, host, origin, path string) (int, string, http.Header) {
		t.Helper()
		req, _ := http.NewRequest(method, ts.URL+path, nil)
		req.Host = host
		if origin != "" {
			req.Header.Set("Origin", origin)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body), resp.Header
	}
	for _, tc := range []struct {
		method, host, origin, path string
		code                       int
		body                       string
	}{
		{"GET", own, "", "/v1/status", 200, `"control": "/run/blockmirror/m1.sock"`},
		{"HEAD", own, "", "/v1/status", 200, ""},
		{"GET", "localhost:" + port, "", "/v1/status", 200, `"mirror"`},
		{"GET", own, "http://" + own, "/v1/status", 200, `"mirror"`},
		{"GET", "evil.example:" + port, "", "/v1/status", 421, "not this endpoint's address"},
		{"GET", "127.0.0.1:1", "", "/v1/status", 421, "not this endpoint's address"},
		{"GET", "127.0.0.2:" + port, "", "/v1/status", 421, "not this endpoint's address"},
		{"POST", "evil.example:" + port, "", "/v1/promote", 421, "not this endpoint's address"},
		{"GET", own, "http://evil.example", "/v1/status", 403, "cross-origin"},
		{"POST", own, "http://evil.example", "/v1/promote?force=1", 403, "cross-origin"},
		{"POST", own, "null", "/v1/promote", 403, "cross-origin"},
		{"POST", own, "", "/v1/promote?force=1", 403, "control is on the unix socket /run/blockmirror/m1.sock"},
		{"POST", own, "", "/v1/demote", 403, "read-only"},
		{"PUT", own, "", "/v1/status", 403, "read-only"},
		{"DELETE", own, "", "/v1/promote", 403, "read-only"},
		{"OPTIONS", own, "http://evil.example", "/v1/promote", 403, "cross-origin"},
		{"OPTIONS", own, "", "/v1/promote", 403, "read-only"},
	} {
		code, body, h := do(tc.method, tc.host, tc.origin, tc.path)
		if code != tc.code || !strings.Contains(body, tc.body) {
			t.Errorf("%s %s Host %s Origin %q: %d %s, want %d with %q", tc.method, tc.path, tc.host, tc.origin, code, body, tc.code, tc.body)
		}
		for k := range h {
			if strings.HasPrefix(strings.ToLower(k), "access-control-") {
				t.Errorf("%s %s: CORS header %s: %s", tc.method, tc.path, k, h.Get(k))
			}
		}
	}
	if n := calls.Load(); n != 0 {
		t.Fatalf("promote ran %d times through the TCP endpoint", n)
	}
	if !strings.Contains(logs.String(), "refused a request that is not a read") || !strings.Contains(logs.String(), "DNS rebinding") {
		t.Errorf("refusals not logged:\n%s", logs.String())
	}
}

func TestOwnHost(t *testing.T) {
	addr := func(s string) net.Addr { a, _ := net.ResolveTCPAddr("tcp", s); return a }
	for _, tc := range []struct {
		host  string
		local string
		ok    bool
	}{
		{"127.0.0.1:7480", "127.0.0.1:7480", true},
		{"localhost:7480", "127.0.0.1:7480", true},
		{"LOCALHOST:7480", "127.0.0.1:7480", true},
		{"[::1]:7480", "[::1]:7480", true},
		{"localhost:7480", "[::1]:7480", true},
		{"10.0.0.5:7480", "10.0.0.5:7480", true},
		{"localhost:7480", "10.0.0.5:7480", false},
		{"node-a.example.com:7480", "10.0.0.5:7480", false},
		{"127.0.0.1", "127.0.0.1:80", true},
		{"127.0.0.1", "127.0.0.1:7480", false},
		{"127.0.0.1:7481", "127.0.0.1:7480", false},
		{"", "127.0.0.1:7480", false},
		{"127.0.0.1:7480", "", false},
	} {
		var la net.Addr
		if tc.local != "" {
			la = addr(tc.local)
		}
		if got := ownHost(tc.host, la); got != tc.ok {
			t.Errorf("ownHost(%q, %s) = %v, want %v", tc.host, tc.local, got, tc.ok)
		}
	}
}

func TestControlAccess(t *testing.T) {
	a := controlAccess{group: "ops", gid: 990, self: 0}
	for _, tc := range []struct {
		p  unixsock.PeerCred
		ok bool
	}{
		{unixsock.PeerCred{PID: 1, UID: 0, GID: 0}, true},
		{unixsock.PeerCred{PID: 2, UID: 1000, GID: 990}, true},
		{unixsock.PeerCred{PID: 3, UID: 1000, GID: 1000, Groups: []uint32{27, 990}}, true},
		{unixsock.PeerCred{PID: 4, UID: 65534, GID: 65534}, false},
		{unixsock.PeerCred{PID: 5, UID: 1000, GID: 1000, Groups: []uint32{27}}, false},
	} {
		err := a.check(tc.p)
		if (err == nil) != tc.ok {
			t.Errorf("%v: %v, want allowed %v", tc.p, err, tc.ok)
		}
		if err != nil && (!strings.Contains(err.Error(), "neither root nor in group ops") || !strings.Contains(err.Error(), "uid "+strconv.Itoa(int(tc.p.UID)))) {
			t.Errorf("%v: unclear refusal %q", tc.p, err)
		}
	}
	rootOnly := controlAccess{self: 0}
	if err := rootOnly.check(unixsock.PeerCred{UID: 1000, GID: 990}); err == nil || !strings.Contains(err.Error(), "root-only") {
		t.Errorf("root-only socket: %v", err)
	}
	self := controlAccess{self: 1000}
	if err := self.check(unixsock.PeerCred{UID: 1000}); err != nil {
		t.Errorf("the daemon's own user refused: %v", err)
	}
}

// existingGroup returns a group of this system that nobody is not in.
func existingGroup(t *testing.T) *user.Group {
	for _, n := range []string{"daemon", "adm", "sys", "disk"} {
		if g, err := user.LookupGroup(n); err == nil {
			return g
		}
	}
	t.Skip("no suitable system group")
	return nil
}

// TestControlSocketFile: the socket's directory, mode and group; a stale
// socket is replaced, a live one and a missing explicit group are errors;
// a missing default group makes it root-only with a warning.
func TestControlSocketFile(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (the socket's group)")
	}
	g := existingGroup(t)
	gid, _ := strconv.Atoi(g.Gid)
	base := shortTempDir(t)
	path := filepath.Join(base, "run", "bm", "n1.sock")
	old := syscall.Umask(0o077)
	var logs syncBuf
	a, _ := testAdmin(t, testLogger(&logs))
	err := a.runControl(path, g.Name, true)
	syscall.Umask(old)
	if err != nil {
		t.Fatal(err)
	}
	for p, want := range map[string]os.FileMode{filepath.Dir(path): os.ModeDir | 0o755, path: os.ModeSocket | 0o660} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode() != want {
			t.Errorf("%s: mode %v, want %v", p, fi.Mode(), want)
		}
		if p == path && int(fi.Sys().(*syscall.Stat_t).Gid) != gid {
			t.Errorf("socket group %d, want %d", fi.Sys().(*syscall.Stat_t).Gid, gid)
		}
	}
	// A second daemon with the same socket is refused.
	b, _ := testAdmin(t, testLogger(&logs))
	if err := b.runControl(path, g.Name, true); err == nil || !strings.Contains(err.Error(), "same name") {
		t.Errorf("second listener on a live socket: %v", err)
	}
	// The status names the socket; the control answers as root.
	st, _, err := ControlStatus(t.Context(), path)
	if err != nil || st.Control != path {
		t.Fatalf("status over the socket: %+v %v", st, err)
	}
	a.close()
	if _, err := os.Stat(path); err == nil {
		t.Error("socket left behind after close")
	}

	// Stale socket: replaced.
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close()
	c, _ := testAdmin(t, testLogger(&logs))
	if err := c.runControl(path, "no-such-group-bm", false); err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Errorf("socket without its group: mode %v, want 0600", fi.Mode().Perm())
	}
	if !strings.Contains(logs.String(), "groupadd --system no-such-group-bm") {
		t.Errorf("no hint to create the group:\n%s", logs.String())
	}
	c.close()
	d, _ := testAdmin(t, testLogger(&logs))
	if err := d.runControl(path, "no-such-group-bm", true); err == nil || !strings.Contains(err.Error(), "groupadd") {
		t.Errorf("explicit missing group: %v", err)
	}
	if err := d.runControl(filepath.Join(base, strings.Repeat("x", 120)+".sock"), "", false); err == nil || !strings.Contains(err.Error(), "longer than") {
		t.Errorf("overlong path: %v", err)
	}
}

// shortTempDir is a 0755 directory with a short path (socket paths are
// limited to 107 bytes; t.TempDir's can be longer).
func shortTempDir(t *testing.T) string {
	dir, err := os.MkdirTemp("", "bmc")
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(dir, 0o755)
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// helperEnv makes the test binary act as a control client or server
// (TestControlHelper) in a process of another user.
const helperEnv = "BM_CONTROL_HELPER"

// TestControlHelper is not a test: run by TestControlSocketPeers as
// another user, it does what BM_CONTROL_HELPER says and prints the result.
func TestControlHelper(t *testing.T) {
	mode := os.Getenv(helperEnv)
	if mode == "" {
		t.Skip("helper process only")
	}
	sock := os.Getenv("BM_CONTROL_SOCK")
	switch mode {
	case "promote":
		var out map[string]any
		err := Post(context.Background(), sock, "/v1/promote", &out)
		os.Stdout.WriteString("RESULT: " + strings.TrimSpace(fmtResult(out, err)) + "\n")
	case "serve":
		ln, err := net.Listen("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		os.Stdout.WriteString("LISTENING\n")
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}
}

func fmtResult(out any, err error) string {
	if err != nil {
		return "error: " + err.Error()
	}
	b, _ := json.Marshal(out)
	return "ok: " + string(b)
}

// TestControlSocketPeers runs clients as the user nobody (with and
// without the control group) against a control socket: the file mode
// keeps them out, and with the mode opened up the peer credential check
// still does; the group lets them in; a socket served by nobody is not
// trusted by root's client.
func TestControlSocketPeers(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (runs clients as nobody)")
	}
	nobody, err := user.Lookup("nobody")
	if err != nil {
		t.Skip("no user nobody")
	}
	uid, _ := strconv.Atoi(nobody.Uid)
	g := existingGroup(t)
	gid, _ := strconv.Atoi(g.Gid)
	dir := shortTempDir(t)
	bin := filepath.Join(dir, "bm.test")
	copyExecutable(t, os.Args[0], bin)

	var logs syncBuf
	a, calls := testAdmin(t, testLogger(&logs))
	sock := filepath.Join(dir, "m1.sock")
	if err := a.runControl(sock, g.Name, true); err != nil {
		t.Fatal(err)
	}
	helper := func(mode, sock string, groups ...uint32) *exec.Cmd {
		cmd := exec.Command(bin, "-test.run=^TestControlHelper$", "-test.v")
		cmd.Env = append(os.Environ(), helperEnv+"="+mode, "BM_CONTROL_SOCK="+sock)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: 65534, Groups: groups}}
		return cmd
	}
	run := func(mode string, groups ...uint32) string {
		out, _ := helper(mode, sock, groups...).CombinedOutput()
		for _, l := range strings.Split(string(out), "\n") {
			if r, ok := strings.CutPrefix(l, "RESULT: "); ok {
				return r
			}
		}
		t.Fatalf("helper printed no result:\n%s", out)
		return ""
	}

	if r := run("promote"); !strings.Contains(r, "permission denied on the control socket "+sock+": control needs root or membership in group "+g.Name) {
		t.Errorf("nobody through the file mode: %s", r)
	}
	os.Chmod(sock, 0o666) // only the credential check is left
	if r := run("promote"); !strings.Contains(r, "is neither root nor in group "+g.Name) || !strings.Contains(r, "uid "+nobody.Uid) {
		t.Errorf("nobody with the socket open to all: %s", r)
	}
	if n := calls.Load(); n != 0 {
		t.Fatalf("promote ran %d times for nobody", n)
	}
	if l := logs.String(); !strings.Contains(l, "control request refused") || !strings.Contains(l, "uid="+nobody.Uid) || !strings.Contains(l, "pid=") {
		t.Errorf("refusal not logged with the caller:\n%s", l)
	}
	os.Chmod(sock, 0o660)
	if r := run("promote", uint32(gid)); !strings.HasPrefix(r, "ok:") {
		t.Errorf("nobody in group %s: %s", g.Name, r)
	}
	if n := calls.Load(); n != 1 {
		t.Fatalf("promote ran %d times, want 1 (the group member)", n)
	}
	if l := logs.String(); !strings.Contains(l, "control request accepted") || !strings.Contains(l, "uid="+nobody.Uid) {
		t.Errorf("accepted request not logged with the caller:\n%s", l)
	}

	// A socket someone else serves is not used, even by root.
	public := filepath.Join(dir, "public")
	os.Mkdir(public, 0o777)
	os.Chmod(public, 0o777|os.ModeSticky)
	fake := filepath.Join(public, "fake.sock")
	srv := helper("serve", fake)
	stdout, _ := srv.StdoutPipe()
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { srv.Process.Kill(); srv.Wait() }()
	stdout.(interface{ SetReadDeadline(time.Time) error }).SetReadDeadline(time.Now().Add(10 * time.Second))
	for sc := bufio.NewScanner(stdout); ; {
		if !sc.Scan() {
			t.Fatalf("helper did not listen: %v", sc.Err())
		}
		if sc.Text() == "LISTENING" {
			break
		}
	}
	var out map[string]any
	err = Post(t.Context(), fake, "/v1/promote", &out)
	if err == nil || !strings.Contains(err.Error(), "neither root nor you") {
		t.Errorf("root used a socket served by nobody: %v", err)
	}
}

func copyExecutable(t *testing.T, from, to string) {
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o755); err != nil {
		t.Fatal(err)
	}
}
