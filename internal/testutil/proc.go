package testutil

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// ProcOptions describe a child process for [Start].
type ProcOptions struct {
	// Name labels the process in logs and file names, e.g. "primary".
	// Default: the program's base name.
	Name string
	// Path is the program to run. Required.
	Path string
	// Args are the program's arguments (without argv[0]).
	Args []string
	// Env, if non-nil, is added to the test process's environment.
	Env []string
	// Dir is the working directory. Default: the test's working directory.
	Dir string
	// ReadyLog, if non-empty, is a substring of a log line that must appear
	// before the process counts as ready.
	ReadyLog string
	// ReadyAddr, if non-empty, must accept a connection before the process
	// counts as ready: "HOST:PORT" for TCP or "unix:PATH".
	ReadyAddr string
	// ReadyTimeout bounds the wait for readiness. Default 15s.
	ReadyTimeout time.Duration
	// StopTimeout is how long Stop and the cleanup wait after a signal
	// before sending SIGKILL. Default 10s.
	StopTimeout time.Duration
}

// Proc is a running child process started by [Start].
type Proc struct {
	opts    ProcOptions
	cmd     *exec.Cmd
	logPath string
	done    chan struct{} // closed when the process has exited
	mu      sync.Mutex
	waitErr error
}

// ErrExited is wrapped by errors reporting that a process exited while it
// was expected to run.
var ErrExited = errors.New("process exited")

// Start runs the process described by opts and waits until it is ready. It
// fails the test (t.Fatal) if the program cannot start, exits early or is not
// ready in time; the log is printed in that case. The process is killed with
// SIGKILL when the test ends unless it was stopped before.
func Start(t testing.TB, opts ProcOptions) *Proc {
	t.Helper()
	p, err := StartE(t, opts)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// StartE is [Start] returning the error instead of failing the test, so a
// caller can retry (for example after "address already in use"). On error
// the process has been killed; its log stays readable through the error
// message.
func StartE(t testing.TB, opts ProcOptions) (*Proc, error) {
	t.Helper()
	if opts.Path == "" {
		return nil, errors.New("testutil: ProcOptions.Path is empty")
	}
	if opts.Name == "" {
		opts.Name = filepath.Base(opts.Path)
	}
	if opts.ReadyTimeout <= 0 {
		opts.ReadyTimeout = 15 * time.Second
	}
	if opts.StopTimeout <= 0 {
		opts.StopTimeout = 10 * time.Second
	}
	logf, err := os.CreateTemp(t.TempDir(), opts.Name+"-*.log")
	if err != nil {
		return nil, fmt.Errorf("testutil: log file for %s: %w", opts.Name, err)
	}
	cmd := exec.Command(opts.Path, opts.Args...)
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.Dir = opts.Dir
	if opts.Env != nil {
		cmd.Env = append(os.Environ(), opts.Env...)
	}
	// Own process group, so that a Ctrl-C of `go test` reaches us, not it,
	// and Kill can take down helpers the program forked.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("testutil: start %s %q: %w", opts.Name, cmd.Args, err)
	}
	p := &Proc{opts: opts, cmd: cmd, logPath: logf.Name(), done: make(chan struct{})}
	go func() {
		err := cmd.Wait()
		logf.Close()
		p.mu.Lock()
		p.waitErr = err
		p.mu.Unlock()
		close(p.done)
	}()
	t.Logf("started %s (pid %d): %s; log %s", opts.Name, cmd.Process.Pid, strings.Join(cmd.Args, " "), p.logPath)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("--- log of %s (%s), last 60 lines:\n%s", opts.Name, p.logPath, p.Tail(60))
		}
		if !p.Exited() {
			_ = p.cmd.Process.Signal(syscall.SIGKILL)
			_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
			<-p.done
		}
	})
	if err := p.waitReady(); err != nil {
		p.Kill()
		return nil, fmt.Errorf("testutil: %s not ready: %w\n--- log %s:\n%s", opts.Name, err, p.logPath, p.Tail(60))
	}
	return p, nil
}

func (p *Proc) waitReady() error {
	ctx, cancel := context.WithTimeout(context.Background(), p.opts.ReadyTimeout)
	defer cancel()
	logOK := p.opts.ReadyLog == ""
	addrOK := p.opts.ReadyAddr == ""
	var lastDialErr error
	for {
		if !logOK && strings.Contains(p.Log(), p.opts.ReadyLog) {
			logOK = true
		}
		if !addrOK {
			if err := Dial(ctx, p.opts.ReadyAddr); err == nil {
				addrOK = true
			} else {
				lastDialErr = err
			}
		}
		if logOK && addrOK {
			return nil
		}
		select {
		case <-p.done:
			return fmt.Errorf("%w: %v", ErrExited, p.ExitErr())
		case <-ctx.Done():
			var what []string
			if !logOK {
				what = append(what, fmt.Sprintf("no log line containing %q", p.opts.ReadyLog))
			}
			if !addrOK {
				what = append(what, fmt.Sprintf("%s does not accept connections (%v)", p.opts.ReadyAddr, lastDialErr))
			}
			return fmt.Errorf("after %v: %s", p.opts.ReadyTimeout, strings.Join(what, "; "))
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Dial opens and closes one connection to addr ("HOST:PORT" or "unix:PATH").
func Dial(ctx context.Context, addr string) error {
	network, a := "tcp", addr
	if path, ok := strings.CutPrefix(addr, "unix:"); ok {
		network, a = "unix", path
	}
	d := net.Dialer{Timeout: time.Second}
	c, err := d.DialContext(ctx, network, a)
	if err != nil {
		return err
	}
	return c.Close()
}

// Pid is the process id.
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Log returns everything the process has written so far.
func (p *Proc) Log() string {
	b, _ := os.ReadFile(p.logPath)
	return string(b)
}

// Tail returns the last n lines of the log.
func (p *Proc) Tail(n int) string {
	b, _ := os.ReadFile(p.logPath)
	lines := bytes.Split(bytes.TrimRight(b, "\n"), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return string(bytes.Join(lines, []byte("\n")))
}

// LogLine returns the first log line containing substr, or "".
func (p *Proc) LogLine(substr string) string {
	for line := range strings.SplitSeq(p.Log(), "\n") {
		if strings.Contains(line, substr) {
			return line
		}
	}
	return ""
}

// Done is closed when the process has exited.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Exited reports whether the process has exited.
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// ExitErr is the error from waiting for the process (nil for exit status 0);
// meaningful only after Done is closed.
func (p *Proc) ExitErr() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.waitErr
}

// Stop sends sig and waits for the process to exit; after StopTimeout it
// sends SIGKILL and returns an error saying so. It returns the process's
// exit error (nil for a clean exit with status 0).
func (p *Proc) Stop(sig os.Signal) error {
	if p.Exited() {
		return fmt.Errorf("%s: %w before stop: %v", p.opts.Name, ErrExited, p.ExitErr())
	}
	if err := p.cmd.Process.Signal(sig); err != nil {
		return fmt.Errorf("%s: signal %v: %w", p.opts.Name, sig, err)
	}
	select {
	case <-p.done:
		return p.ExitErr()
	case <-time.After(p.opts.StopTimeout):
		p.Kill()
		return fmt.Errorf("%s: still running %v after %v; killed", p.opts.Name, p.opts.StopTimeout, sig)
	}
}

// Kill sends SIGKILL to the process and its process group and waits for it.
func (p *Proc) Kill() {
	if p.Exited() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	<-p.done
}

// FreeTCPAddr returns "127.a.b.c:port" with a random loopback address and a
// port the kernel reported free on it a moment ago.
func FreeTCPAddr(t testing.TB) string {
	t.Helper()
	for range 20 {
		ip := net.IPv4(127, byte(rand.IntN(250)), byte(rand.IntN(250)), byte(2+rand.IntN(250)))
		l, err := net.Listen("tcp", net.JoinHostPort(ip.String(), "0"))
		if err != nil {
			continue
		}
		addr := l.Addr().String()
		l.Close()
		return addr
	}
	// fall back to the common loopback address
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("testutil: no free loopback port: %v", err)
	}
	defer l.Close()
	return l.Addr().String()
}

// SocketDir returns a new short directory for unix sockets, removed when
// the test ends.
func SocketDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "bm")
	if err != nil {
		t.Fatalf("testutil: socket dir: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// ModuleRoot returns the directory holding go.mod, searching upwards from
// the working directory.
func ModuleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("testutil: go.mod not found above the working directory")
		}
		dir = parent
	}
}

// BuildBinary runs `go build -o out pkg` in the module root (pkg like
// "./cmd/blockmirror") and returns the combined output on failure. tags,
// if any, are passed as -tags.
func BuildBinary(ctx context.Context, pkg, out string, tags ...string) error {
	root, err := ModuleRoot()
	if err != nil {
		return err
	}
	goBin := "go"
	if _, err := exec.LookPath("go"); err != nil {
		goBin = filepath.Join(os.Getenv("GOROOT"), "bin", "go")
		if _, err := os.Stat(goBin); err != nil {
			goBin = "/usr/local/go/bin/go"
		}
	}
	args := []string{"build", "-o", out}
	if len(tags) > 0 {
		args = append(args, "-tags", strings.Join(tags, ","))
	}
	cmd := exec.CommandContext(ctx, goBin, append(args, pkg)...)
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("testutil: go build %s: %w\n%s", pkg, err, b)
	}
	return nil
}
