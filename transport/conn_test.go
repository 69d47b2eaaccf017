package transport_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/blockmirror/blockmirror/transport"
)

func TestMutualTLSAndPeerNames(t *testing.T) {
	for _, kt := range []transport.KeyType{transport.KeyECDSAP256, transport.KeyEd25519} {
		t.Run(kt.String(), func(t *testing.T) {
			ids := cluster(t, kt, "m1", "m2")
			cc, sc := pair(t, testConfig(ids["m2"], nil), testConfig(ids["m1"], nil))
			if got := cc.PeerName(); got != "m1" {
				t.Errorf("client PeerName = %q, want m1", got)
			}
			if got := sc.PeerName(); got != "m2" {
				t.Errorf("server PeerName = %q, want m2", got)
			}
			ctx := ctxT(t, 5*time.Second)
			go echo(ctx, sc)
			s, err := cc.OpenStream(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if err := s.WriteFrame(7, []byte("hello "), []byte("world")); err != nil {
				t.Fatal(err)
			}
			if err := s.Flush(); err != nil {
				t.Fatal(err)
			}
			typ, p, err := s.ReadFrame(nil)
			if err != nil || typ != 7 || string(p) != "hello world" {
				t.Fatalf("ReadFrame = %d %q %v", typ, p, err)
			}
			if st := cc.Stats(); st.SmoothedRTT <= 0 || st.BytesSent == 0 || st.BytesReceived == 0 {
				t.Errorf("implausible stats %+v", st)
			}
			if cc.Err() != nil {
				t.Errorf("Err on live connection = %v", cc.Err())
			}
		})
	}
}

func dialErr(t *testing.T, server, client *transport.Identity, want string, serverCfg func(*transport.Config)) (serverLog string, err error) {
	t.Helper()
	var slog syncBuffer
	scfg := testConfig(server, &slog)
	if serverCfg != nil {
		serverCfg(&scfg)
	}
	l := listen(t, scfg)
	ctx := ctxT(t, 10*time.Second)
	go func() {
		if c, err := l.Accept(ctx); err == nil {
			t.Errorf("listener accepted a connection from %s", c.PeerName())
		}
	}()
	c, err := transport.Dial(ctx, l.Addr().String(), want, testConfig(client, nil))
	if err == nil {
		c.Close(0, "")
		t.Fatal("Dial succeeded, want error")
	}
	// The listener's refusal is logged asynchronously to the dialer's error.
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) && !strings.Contains(slog.String(), "refused") {
		time.Sleep(10 * time.Millisecond)
	}
	return slog.String(), err
}

func TestOtherCARefused(t *testing.T) {
	a := cluster(t, transport.KeyECDSAP256, "m1")
	b := cluster(t, transport.KeyECDSAP256, "m2")
	t.Run("dialer refuses server", func(t *testing.T) {
		// m2 belongs to another cluster: it distrusts m1 first.
		serverLog, err := dialErr(t, a["m1"], b["m2"], "m1", nil)
		if !errors.Is(err, transport.ErrUntrustedPeer) || !strings.Contains(err.Error(), "unknown authority") {
			t.Errorf("dial error = %v, want ErrUntrustedPeer naming the cause", err)
		}
		if !strings.Contains(serverLog, "refused ours") || !strings.Contains(serverLog, "127.0.0.1:") {
			t.Errorf("listener log lacks a clear refusal:\n%s", serverLog)
		}
		t.Logf("dialer: %v", err)
		t.Logf("listener: %s", serverLog)
	})
	t.Run("listener refuses client", func(t *testing.T) {
		// A client that trusts m1's CA but holds a certificate of another CA.
		mixed := *b["m2"]
		mixed.Roots = a["m1"].Roots
		serverLog, err := dialErr(t, a["m1"], &mixed, "m1", nil)
		if !errors.Is(err, transport.ErrRejected) {
			t.Errorf("dial error = %v, want ErrRejected", err)
		}
		if !strings.Contains(serverLog, "refused incoming connection") || !strings.Contains(serverLog, "not trusted by the cluster CA") {
			t.Errorf("listener log lacks a clear refusal:\n%s", serverLog)
		}
		t.Logf("dialer: %v", err)
	})
}

func TestWrongExpectedNameRefused(t *testing.T) {
	ids := cluster(t, transport.KeyECDSAP256, "m1", "m2", "m3")
	_, err := dialErr(t, ids["m1"], ids["m2"], "m3", nil)
	if !errors.Is(err, transport.ErrPeerName) {
		t.Errorf("dial error = %v, want ErrPeerName", err)
	}
	if !strings.Contains(err.Error(), `expected "m3", server presented "m1"`) {
		t.Errorf("error does not name both nodes: %v", err)
	}
}

func TestAllowList(t *testing.T) {
	ids := cluster(t, transport.KeyECDSAP256, "m1", "m2", "m3")
	allow := func(c *transport.Config) { c.AllowPeers = []string{"m2"} }
	serverLog, err := dialErr(t, ids["m1"], ids["m3"], "m1", allow)
	if !errors.Is(err, transport.ErrRejected) {
		t.Errorf("dial error = %v, want ErrRejected", err)
	}
	if !strings.Contains(serverLog, "allow-list") || !strings.Contains(serverLog, "m3") {
		t.Errorf("listener log lacks the allow-list refusal:\n%s", serverLog)
	}
	// m2 is allowed.
	scfg := testConfig(ids["m1"], nil)
	allow(&scfg)
	_, sc := pair(t, testConfig(ids["m2"], nil), scfg)
	if sc.PeerName() != "m2" {
		t.Errorf("PeerName = %q", sc.PeerName())
	}
}

func TestFramesRoundTrip(t *testing.T) {
	ids := cluster(t, transport.KeyECDSAP256, "m1", "m2")
	cc, sc := pair(t, testConfig(ids["m2"], nil), testConfig(ids["m1"], nil))
	ctx := ctxT(t, 30*time.Second)
	go echo(ctx, sc)
	s, err := cc.OpenStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	sizes := []int{0, 1, 4096, 64<<10 - 1, 64 << 10, 64<<10 + 1, 1 << 20, 3<<20 + 5}
	if !testing.Short() {
		sizes = append(sizes, 32<<20)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	want := make([][]byte, len(sizes))
	for i, n := range sizes {
		want[i] = make([]byte, n)
		for j := range want[i] {
			want[i][j] = byte(rng.Uint32())
		}
	}
	// Pipeline all frames (reader runs concurrently to avoid flow-control deadlock).
	done := make(chan error, 1)
	go func() {
		for i, p := range want {
			n := len(p)
			// Send as three parts to exercise gathering.
			a, b := n/3, 2*n/3
			if err := s.WriteFrame(uint8(i), p[:a], p[a:b], p[b:]); err != nil {
				done <- err
				return
			}
		}
		done <- s.CloseWrite()
	}()
	buf := make([]byte, 0, 64<<10)
	for i := range sizes {
		typ, p, err := s.ReadFrame(buf)
		if err != nil {
			t.Fatalf("frame %d: %v", i, err)
		}
		if int(typ) != i || !bytes.Equal(p, want[i]) {
			t.Fatalf("frame %d: type %d, %d bytes, mismatch", i, typ, len(p))
		}
		if len(p) > 0 && cap(buf) >= len(p) && &p[0] != &buf[:1][0] {
			t.Errorf("frame %d: payload does not alias buf", i)
		}
	}
	if _, _, err := s.ReadFrame(buf); err != io.EOF {
		t.Fatalf("after last frame: %v, want io.EOF", err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestOversizeFrameRejected(t *testing.T) {
	ids := cluster(t, transport.KeyECDSAP256, "m1", "m2")
	cc, sc := pair(t, testConfig(ids["m2"], nil), testConfig(ids["m1"], nil))
	ctx := ctxT(t, 10*time.Second)
	s, err := cc.OpenStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	s.SetMaxFrame(8 << 20)
	if err := s.WriteFrame(1, make([]byte, 8<<20+1)); !errors.Is(err, transport.ErrFrameTooLarge) {
		t.Fatalf("oversize WriteFrame: %v", err)
	}
	go func() {
		// Blocks on flow control once the reader has given up.
		if s.WriteFrame(1, make([]byte, 2<<20)) == nil {
			s.Flush()
		}
	}()
	ss, err := sc.AcceptStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ss.SetMaxFrame(1 << 20)
	if _, _, err := ss.ReadFrame(nil); !errors.Is(err, transport.ErrFrameTooLarge) {
		t.Fatalf("ReadFrame of 2 MiB with 1 MiB limit: %v", err)
	}
	if _, _, err := ss.ReadFrame(nil); !errors.Is(err, transport.ErrFrameTooLarge) {
		t.Fatalf("ReadFrame error is not sticky: %v", err)
	}
}

func TestCloseAndCancelReachPeer(t *testing.T) {
	ids := cluster(t, transport.KeyECDSAP256, "m1", "m2")
	cc, sc := pair(t, testConfig(ids["m2"], nil), testConfig(ids["m1"], nil))
	ctx := ctxT(t, 10*time.Second)
	s, err := cc.OpenStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	s.WriteFrame(1, []byte("x"))
	s.Flush()
	ss, err := sc.AcceptStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := ss.ReadFrame(nil); err != nil {
		t.Fatal(err)
	}
	s.Cancel(42)
	var se *transport.StreamError
	if _, _, err := ss.ReadFrame(nil); !errors.As(err, &se) || se.Code != 42 || !se.Remote {
		t.Fatalf("read after peer Cancel: %v", err)
	}
	cc.Close(7, "bye")
	select {
	case <-sc.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("peer's Done did not fire after Close")
	}
	var ce *transport.CloseError
	if err := sc.Err(); !errors.As(err, &ce) || ce.Code != 7 || ce.Reason != "bye" || !ce.Remote {
		t.Fatalf("peer Err = %v", err)
	}
	if err := cc.Err(); !errors.Is(err, transport.ErrClosed) {
		t.Fatalf("local Err = %v, want ErrClosed", err)
	}
	if _, err := cc.OpenStream(ctx); !errors.Is(err, transport.ErrClosed) {
		t.Fatalf("OpenStream on closed conn: %v", err)
	}
}

func TestIdleTimeoutAndKeepAlive(t *testing.T) {
	ids := cluster(t, transport.KeyECDSAP256, "m1", "m2")
	t.Run("keepalive", func(t *testing.T) {
		if testing.Short() {
			t.Skip("takes 2.5 s")
		}
		c := testConfig(ids["m2"], nil)
		c.KeepAlive, c.IdleTimeout = 100*time.Millisecond, time.Second
		s := testConfig(ids["m1"], nil)
		s.KeepAlive, s.IdleTimeout = -1, time.Second
		cc, sc := pair(t, c, s)
		select {
		case <-cc.Done():
			t.Fatalf("connection died despite keep-alives: %v", cc.Err())
		case <-sc.Done():
			t.Fatalf("connection died despite keep-alives: %v", sc.Err())
		case <-time.After(2500 * time.Millisecond):
		}
	})
	t.Run("idle", func(t *testing.T) {
		c := testConfig(ids["m2"], nil)
		c.KeepAlive, c.IdleTimeout = -1, 400*time.Millisecond
		s := testConfig(ids["m1"], nil)
		s.KeepAlive, s.IdleTimeout = -1, 400*time.Millisecond
		start := time.Now()
		cc, sc := pair(t, c, s)
		for _, conn := range []*transport.Conn{cc, sc} {
			select {
			case <-conn.Done():
			case <-time.After(3 * time.Second):
				t.Fatal("idle connection not closed")
			}
			if !errors.Is(conn.Err(), transport.ErrIdleTimeout) {
				t.Errorf("Err = %v, want ErrIdleTimeout", conn.Err())
			}
		}
		if el := time.Since(start); el < 300*time.Millisecond {
			t.Errorf("closed after %v, before the idle timeout", el)
		}
	})
}

func TestConfigValidation(t *testing.T) {
	ids := cluster(t, transport.KeyECDSAP256, "m1")
	cases := map[string]transport.Config{
		"no identity":    {},
		"keepalive>idle": {Identity: ids["m1"], KeepAlive: 5 * time.Second, IdleTimeout: time.Second},
		"bad allow":      {Identity: ids["m1"], AllowPeers: []string{"a/b"}},
		"windows":        {Identity: ids["m1"], MaxStreamWindow: 1 << 30, MaxConnWindow: 1 << 20},
	}
	for name, cfg := range cases {
		if _, err := transport.Listen("127.0.0.1:0", cfg); !errors.Is(err, transport.ErrConfig) {
			t.Errorf("%s: Listen error = %v, want ErrConfig", name, err)
		}
	}
	if _, err := transport.Dial(context.Background(), "127.0.0.1:1", "../x", transport.Config{Identity: ids["m1"]}); !errors.Is(err, transport.ErrConfig) {
		t.Errorf("bad peer name: %v", err)
	}
}

func TestListenerCloseEndsAcceptAndConns(t *testing.T) {
	ids := cluster(t, transport.KeyECDSAP256, "m1", "m2")
	l := listen(t, testConfig(ids["m1"], nil))
	ctx := ctxT(t, 10*time.Second)
	cc, err := transport.Dial(ctx, l.Addr().String(), "m1", testConfig(ids["m2"], nil))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close(0, "")
	if _, err := l.Accept(ctx); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Accept(ctx); !errors.Is(err, transport.ErrClosed) {
		t.Fatalf("Accept after Close: %v", err)
	}
	select {
	case <-cc.Done():
	case <-time.After(3 * time.Second):
		t.Fatal("client not told that the listener closed")
	}
	var ce *transport.CloseError
	if !errors.As(cc.Err(), &ce) || !ce.Remote {
		t.Fatalf("client Err = %v", cc.Err())
	}
}

func TestDialNobodyListening(t *testing.T) {
	ids := cluster(t, transport.KeyECDSAP256, "m1", "m2")
	cfg := testConfig(ids["m2"], nil)
	cfg.HandshakeTimeout = 300 * time.Millisecond
	start := time.Now()
	_, err := transport.Dial(ctxT(t, 5*time.Second), "127.0.0.1:9", "m1", cfg)
	if !errors.Is(err, transport.ErrHandshakeTimeout) {
		t.Fatalf("dial to closed port: %v, want ErrHandshakeTimeout", err)
	}
	if time.Since(start) > 3*time.Second {
		t.Errorf("dial took %v", time.Since(start))
	}
	t.Logf("error: %v", err)
}

func TestIPv6Loopback(t *testing.T) {
	ids := cluster(t, transport.KeyECDSAP256, "m1", "m2")
	l, err := transport.Listen("[::1]:0", testConfig(ids["m1"], nil))
	if err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	}
	defer l.Close()
	ctx := ctxT(t, 10*time.Second)
	c, err := transport.Dial(ctx, l.Addr().String(), "m1", testConfig(ids["m2"], nil))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(0, "")
	sc, err := l.Accept(ctx)
	if err != nil || sc.PeerName() != "m2" {
		t.Fatalf("accept: %v", err)
	}
}

func TestDialsCompleteBeforeAccept(t *testing.T) {
	ids := cluster(t, transport.KeyECDSAP256, "m1", "m2")
	l := listen(t, testConfig(ids["m1"], nil))
	ctx := ctxT(t, 10*time.Second)
	const n = 5
	for i := 0; i < n; i++ {
		c, err := transport.Dial(ctx, l.Addr().String(), "m1", testConfig(ids["m2"], nil))
		if err != nil {
			t.Fatalf("dial %d with nobody calling Accept: %v", i, err)
		}
		defer c.Close(0, "")
	}
	for i := 0; i < n; i++ {
		if _, err := l.Accept(ctx); err != nil {
			t.Fatal(err)
		}
	}
}

func TestWriteFrameDoesNotRetainParts(t *testing.T) {
	ids := cluster(t, transport.KeyECDSAP256, "m1", "m2")
	cc, sc := pair(t, testConfig(ids["m2"], nil), testConfig(ids["m1"], nil))
	ctx := ctxT(t, 10*time.Second)
	s, err := cc.OpenStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	small, big := bytes.Repeat([]byte{1}, 100), bytes.Repeat([]byte{2}, 1<<20)
	go func() {
		for i := 0; i < 3; i++ {
			s.WriteFrame(1, small, big)
			// Scribble over the parts at once: the peer must still see 1s and 2s.
			for j := range small {
				small[j] = 0xEE
			}
			for j := range big {
				big[j] = 0xEE
			}
			small, big = bytes.Repeat([]byte{1}, 100), bytes.Repeat([]byte{2}, 1<<20)
		}
		s.CloseWrite()
	}()
	ss, err := sc.AcceptStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := append(bytes.Repeat([]byte{1}, 100), bytes.Repeat([]byte{2}, 1<<20)...)
	for i := 0; i < 3; i++ {
		_, p, err := ss.ReadFrame(nil)
		if err != nil || !bytes.Equal(p, want) {
			t.Fatalf("frame %d corrupted (err %v)", i, err)
		}
	}
}

func TestStreamDeadline(t *testing.T) {
	ids := cluster(t, transport.KeyECDSAP256, "m1", "m2")
	cc, _ := pair(t, testConfig(ids["m2"], nil), testConfig(ids["m1"], nil))
	s, err := cc.OpenStream(ctxT(t, 5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	s.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	start := time.Now()
	if _, _, err := s.ReadFrame(nil); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("ReadFrame past deadline: %v", err)
	}
	if el := time.Since(start); el > 2*time.Second {
		t.Fatalf("deadline honoured after %v", el)
	}
}
