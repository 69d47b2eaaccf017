package transport_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/blockmirror/blockmirror/transport"
)

// The test binary doubles as a peer process: with BM_TRANSPORT_CHILD set it
// dials the listener, sends one frame and waits to be killed.
func TestMain(m *testing.M) {
	if dir := os.Getenv("BM_TRANSPORT_CHILD"); dir != "" {
		os.Exit(childMain(dir, os.Getenv("BM_TRANSPORT_ADDR")))
	}
	if dir := os.Getenv("BM_TRANSPORT_ECHO"); dir != "" {
		os.Exit(echoMain(dir, os.Getenv("BM_TRANSPORT_ADDR")))
	}
	if dir := os.Getenv("BM_TRANSPORT_ACKER"); dir != "" {
		os.Exit(ackerMain(dir, os.Getenv("BM_TRANSPORT_ADDR")))
	}
	if dir := os.Getenv("BM_TRANSPORT_SINK"); dir != "" {
		os.Exit(sinkMain(dir))
	}
	if target := os.Getenv("BM_TRANSPORT_PROXY"); target != "" {
		os.Exit(proxyMain(target, os.Getenv("BM_TRANSPORT_ARG")))
	}
	os.Exit(m.Run())
}

// dialAsChild is the start of both child modes: load m2's identity from
// dir and dial m1 at addr with cfg (Identity filled in).
func dialAsChild(ctx context.Context, dir, addr string, cfg transport.Config) (*transport.Conn, error) {
	id, err := transport.LoadNode(dir, "m2")
	if err != nil {
		return nil, err
	}
	cfg.Identity = id
	return transport.Dial(ctx, addr, "m1", cfg)
}

// startChild re-executes the test binary in the child mode named by env
// (BM_TRANSPORT_CHILD or BM_TRANSPORT_ECHO) against the listener at addr;
// the child is killed when the test ends.
func startChild(t testing.TB, env, dir, addr string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), env+"="+dir, "BM_TRANSPORT_ADDR="+addr)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return cmd
}

func childMain(dir, addr string) int {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := dialAsChild(ctx, dir, addr, transport.Config{KeepAlive: 200 * time.Millisecond, IdleTimeout: time.Second})
	var s *transport.Stream
	if err == nil {
		s, err = c.OpenStream(ctx)
	}
	if err == nil {
		err = s.WriteFrame(1, []byte("ready"))
	}
	if err == nil {
		err = s.Flush()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	<-ctx.Done() // killed long before
	return 0
}

// echoMain dials the listener at addr as m2 and echoes every frame on
// every stream the listener's side opens, until the connection ends (the
// other process of BenchmarkRTT4KProcess).
func echoMain(dir, addr string) int {
	return answerMain(dir, addr, func(typ uint8, p []byte) (uint8, []byte) { return typ, p })
}

// ackerMain is echoMain answering every frame with an 8-byte frame, as a
// mirror acks a records frame (the other process of
// BenchmarkRecordsProcess).
func ackerMain(dir, addr string) int {
	var ack [8]byte
	return answerMain(dir, addr, func(uint8, []byte) (uint8, []byte) { return 2, ack[:] })
}

// answerMain dials the listener at addr as m2 and answers the frames of
// every stream the listener's side opens with reply, until the connection
// ends.
func answerMain(dir, addr string, reply func(typ uint8, p []byte) (uint8, []byte)) int {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	c, err := dialAsChild(ctx, dir, addr, transport.Config{})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	go func() { <-c.Done(); cancel() }()
	answer(ctx, c, reply)
	return 0
}

func TestDoneFiresWhenPeerProcessDies(t *testing.T) {
	if testing.Short() {
		t.Skip("takes ~3 s")
	}
	dir := filepath.Join(t.TempDir(), "certs")
	if err := transport.InitCerts(dir, []string{"m1", "m2"}); err != nil {
		t.Fatal(err)
	}
	id, err := transport.LoadNode(dir, "m1")
	if err != nil {
		t.Fatal(err)
	}
	cfg := transport.Config{Identity: id, KeepAlive: 200 * time.Millisecond, IdleTimeout: time.Second}
	l := listen(t, cfg)
	cmd := startChild(t, "BM_TRANSPORT_CHILD", dir, l.Addr().String())
	ctx := ctxT(t, 20*time.Second)
	c, err := l.Accept(ctx)
	if err != nil {
		t.Fatal(err)
	}
	s, err := c.AcceptStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, p, err := s.ReadFrame(nil); err != nil || string(p) != "ready" {
		t.Fatalf("child frame %q %v", p, err)
	}
	// Alive while the child lives, despite no application traffic.
	select {
	case <-c.Done():
		t.Fatalf("connection died while the peer was alive: %v", c.Err())
	case <-time.After(1500 * time.Millisecond):
	}
	cmd.Process.Kill()
	cmd.Wait()
	killed := time.Now()
	select {
	case <-c.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("Done did not fire after the peer was killed")
	}
	el := time.Since(killed)
	t.Logf("peer death detected after %v (idle timeout 1s)", el)
	if !errors.Is(c.Err(), transport.ErrIdleTimeout) {
		t.Errorf("Err = %v, want ErrIdleTimeout", c.Err())
	}
	// A blocked reader is woken as well.
	if _, _, err := s.ReadFrame(nil); !errors.Is(err, transport.ErrIdleTimeout) {
		t.Errorf("ReadFrame after peer death: %v", err)
	}
}
