package e2e

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/blockmirror/blockmirror/internal/testutil"
)

const (
	defaultExport = "disk"
	MiB           = 1 << 20
)

// serverOpts configure startServer.
type serverOpts struct {
	// DataDir is the node's --data directory. Default: a new t.TempDir().
	DataDir string
	// Size is passed as --size when non-empty. Default "256M" unless
	// Reopen is set.
	Size string
	// Reopen starts on an existing DataDir without --size.
	Reopen bool
	// Unix serves on a unix socket instead of loopback TCP.
	Unix bool
	// Export is the --export name. Default: the server's default ("disk").
	Export string
	// Args are extra arguments for `blockmirror serve`.
	Args []string
	// Addr reuses a listen address ("HOST:PORT" or "unix:PATH"), e.g. on a
	// restart. Default: a fresh one.
	Addr string
}

// server is a running NBD server under test.
type server struct {
	*testutil.Proc
	opts serverOpts
	// Addr is "HOST:PORT" or "unix:PATH".
	Addr string
	// URI is the NBD URI clients use (nbd://HOST:PORT/EXPORT or
	// nbd+unix:///EXPORT?socket=PATH).
	URI string
	// Export is the export name.
	Export string
	// LoggedURI is the value of uri= from the server's log ("" for nbdkit).
	LoggedURI string
}

// Host and Port of a TCP server.
func (s *server) Host() string { h, _, _ := net.SplitHostPort(s.Addr); return h }
func (s *server) Port() string { _, p, _ := net.SplitHostPort(s.Addr); return p }

// Socket is the unix socket path, or "".
func (s *server) Socket() string { p, _ := strings.CutPrefix(s.Addr, "unix:"); return p }

// IsUnix reports whether the server listens on a unix socket.
func (s *server) IsUnix() bool { return strings.HasPrefix(s.Addr, "unix:") }

// requireServer skips the test when the server under test is unavailable.
func requireServer(t testing.TB) {
	t.Helper()
	if skipAll != "" {
		t.Skip("e2e: " + skipAll)
	}
}

// startServer starts the server under test and waits until it accepts
// connections. A TCP port taken by someone else in the meantime is retried.
func startServer(t testing.TB, o serverOpts) *server {
	t.Helper()
	requireServer(t)
	if o.DataDir == "" {
		o.DataDir = t.TempDir()
	}
	if o.Size == "" && !o.Reopen {
		o.Size = "256M"
	}
	for attempt := 0; ; attempt++ {
		addr := o.Addr
		if addr == "" {
			switch {
			case o.Unix:
				addr = "unix:" + filepath.Join(testutil.SocketDir(t), "nbd.sock")
			case e2eTLS != nil:
				addr = foFreeAddr(t, "tcp", "127.0.0.1") // the address in the server certificate
			default:
				addr = testutil.FreeTCPAddr(t)
			}
		}
		s, err := tryStart(t, o, addr)
		if err == nil {
			return s
		}
		if o.Addr == "" && !o.Unix && attempt < 3 && strings.Contains(err.Error(), "address already in use") {
			t.Logf("retrying with another port: %v", err)
			continue
		}
		t.Fatal(err)
	}
}

func tryStart(t testing.TB, o serverOpts, addr string) (*server, error) {
	s := &server{opts: o, Addr: addr, Export: o.Export}
	if s.Export == "" {
		s.Export = defaultExport
	}
	if s.IsUnix() {
		s.URI = (&url.URL{Scheme: "nbd+unix", Path: "/" + s.Export, RawQuery: "socket=" + s.Socket()}).String()
	} else {
		s.URI = (&url.URL{Scheme: "nbd", Host: addr, Path: "/" + s.Export}).String()
	}
	po := testutil.ProcOptions{ReadyAddr: addr}
	switch serverKind {
	case kindBlockmirror:
		args := []string{"serve", "--data", o.DataDir, "--control", filepath.Join(testutil.SocketDir(t), "control.sock")}
		if o.Size != "" {
			args = append(args, "--size", o.Size)
		}
		args = append(args, "--nbd", addr)
		if o.Export != "" {
			args = append(args, "--export", o.Export)
		}
		args = append(args, o.Args...)
		if e2eTLS != nil {
			args = append(args, e2eTLS.serveArgs("require")...)
			s.URI = tlsURI(s, e2eTLS.Client)
		}
		po.Name, po.Path, po.Args = "blockmirror", binPath, args
		po.ReadyLog = " uri="
	case kindNbdkit:
		nbdkit := needTool(t, "nbdkit")
		img := filepath.Join(o.DataDir, "disk.img")
		if _, err := os.Stat(img); errors.Is(err, os.ErrNotExist) {
			n, err := parseSize(o.Size)
			if err != nil {
				return nil, err
			}
			if err := os.WriteFile(img, nil, 0o600); err != nil {
				return nil, err
			}
			if err := os.Truncate(img, n); err != nil {
				return nil, err
			}
		}
		args := []string{"-f", "--exit-with-parent"}
		if s.IsUnix() {
			args = append(args, "-U", s.Socket())
		} else {
			args = append(args, "-i", s.Host(), "-p", s.Port())
		}
		args = append(args, "file", "file="+img)
		po.Name, po.Path, po.Args = "nbdkit", nbdkit, args
	}
	p, err := testutil.StartE(t, po)
	if err != nil {
		return nil, err
	}
	s.Proc = p
	if line := p.LogLine(" uri="); line != "" {
		s.LoggedURI = logValue(line, "uri")
	}
	return s, nil
}

// restart stops s with SIGTERM (requiring a clean exit) and starts it again
// on the same data directory and address.
func (s *server) restart(t testing.TB) *server {
	t.Helper()
	s.stop(t)
	o := s.opts
	o.Reopen, o.Size, o.Addr = true, "", s.Addr
	return startServer(t, o)
}

// stop sends SIGTERM and fails the test unless the server exits with
// status 0 in time.
func (s *server) stop(t testing.TB) {
	t.Helper()
	if err := s.Stop(syscall.SIGTERM); err != nil {
		t.Fatalf("stop %s: %v\n%s", s.Addr, err, s.Tail(40))
	}
}

// logValue extracts key's value from a slog text line (quoted or bare).
func logValue(line, key string) string {
	i := strings.Index(line, " "+key+"=")
	if i < 0 {
		if !strings.HasPrefix(line, key+"=") {
			return ""
		}
	} else {
		line = line[i+1:]
	}
	v := line[len(key)+1:]
	if strings.HasPrefix(v, `"`) {
		if s, err := strconv.QuotedPrefix(v); err == nil {
			u, _ := strconv.Unquote(s)
			return u
		}
	}
	if j := strings.IndexByte(v, ' '); j >= 0 {
		v = v[:j]
	}
	return v
}

// parseSize parses sizes like 256M, 1G, 4096.
func parseSize(s string) (int64, error) {
	mult := int64(1)
	switch {
	case strings.HasSuffix(s, "K"):
		mult = 1 << 10
	case strings.HasSuffix(s, "M"):
		mult = 1 << 20
	case strings.HasSuffix(s, "G"):
		mult = 1 << 30
	}
	if mult != 1 {
		s = s[:len(s)-1]
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("size %q: %w", s, err)
	}
	return n * mult, nil
}

// needTool returns the path of a client program or skips the test.
func needTool(t testing.TB, name string) string {
	t.Helper()
	// Debian's tools first (pyenv's python3 may shadow /usr/bin/python3).
	for _, dir := range []string{"/usr/bin", "/usr/sbin", "/bin", "/sbin"} {
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return p
		}
	}
	p, err := exec.LookPath(name)
	if err != nil {
		t.Skipf("%s not installed (scripts/setup.sh installs it)", name)
	}
	return p
}

// needPythonNBD returns /usr/bin/python3 if it can import libnbd's bindings.
func needPythonNBD(t testing.TB) string {
	t.Helper()
	py := needTool(t, "python3")
	if out, err := exec.Command(py, "-c", "import nbd").CombinedOutput(); err != nil {
		t.Skipf("%s cannot import nbd (python3-libnbd): %v %s", py, err, out)
	}
	return py
}

// cmdEnv is the environment for client tools: Debian's directories first so
// nbdsh finds the python that has libnbd.
func cmdEnv() []string {
	env := os.Environ()
	for i, kv := range env {
		if v, ok := strings.CutPrefix(kv, "PATH="); ok {
			env[i] = "PATH=/usr/bin:/usr/sbin:/bin:/sbin:" + v
			return env
		}
	}
	return append(env, "PATH=/usr/bin:/usr/sbin:/bin:/sbin")
}

// runCmd runs a program with a timeout and returns its combined output; a
// non-zero exit, a timeout or a failure to start fails the test.
func runCmd(t testing.TB, timeout time.Duration, name string, args ...string) string {
	t.Helper()
	out, err := runCmdErr(t, timeout, name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

// runCmdErr is runCmd returning the error instead of failing.
func runCmdErr(t testing.TB, timeout time.Duration, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = cmdEnv()
	cmd.WaitDelay = 5 * time.Second
	if filepath.Base(name) == "fio" {
		// fio drops verify state files (*-verify.state) in its working
		// directory; keep them out of the source tree.
		cmd.Dir = t.TempDir()
	}
	start := time.Now()
	b, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		err = fmt.Errorf("timed out after %v: %w", timeout, err)
	}
	t.Logf("ran %s %s (%v)", filepath.Base(name), strings.Join(args, " "), time.Since(start).Round(time.Millisecond))
	return string(b), err
}

// requireAlive fails the test if the server process has exited.
func (s *server) requireAlive(t testing.TB) {
	t.Helper()
	if s.Exited() {
		t.Fatalf("server exited: %v\n%s", s.ExitErr(), s.Tail(40))
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	if err := testutil.Dial(ctx, s.Addr); err != nil {
		t.Fatalf("server does not accept connections: %v", err)
	}
}
