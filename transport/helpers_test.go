package transport_test

import (
	"bytes"
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/blockmirror/blockmirror/transport"
)

// cluster issues identities for names from one fresh CA.
func cluster(t testing.TB, kt transport.KeyType, names ...string) map[string]*transport.Identity {
	t.Helper()
	ca, err := transport.GenerateCA("test CA", kt, 0)
	if err != nil {
		t.Fatal(err)
	}
	ids := make(map[string]*transport.Identity)
	for _, n := range names {
		id, err := ca.IssueNode(n, kt, 0)
		if err != nil {
			t.Fatal(err)
		}
		ids[n] = id
	}
	return ids
}

// syncBuffer is a goroutine-safe log sink.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func testConfig(id *transport.Identity, log *syncBuffer) transport.Config {
	cfg := transport.Config{Identity: id, HandshakeTimeout: 2 * time.Second}
	if log != nil {
		cfg.Logger = slog.New(slog.NewTextHandler(log, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return cfg
}

func listen(t testing.TB, cfg transport.Config) *transport.Listener {
	t.Helper()
	l, err := transport.Listen("127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

func ctxT(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// pair returns a connected (client, server) pair.
func pair(t testing.TB, clientCfg, serverCfg transport.Config) (*transport.Conn, *transport.Conn) {
	t.Helper()
	l := listen(t, serverCfg)
	ctx := ctxT(t, 10*time.Second)
	type res struct {
		c   *transport.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() {
		c, err := l.Accept(ctx)
		ch <- res{c, err}
	}()
	cc, err := transport.Dial(ctx, l.Addr().String(), serverCfg.Identity.Name, clientCfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close(0, "test over") })
	r := <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	t.Cleanup(func() { r.c.Close(0, "test over") })
	return cc, r.c
}

// echo serves every stream of c: each frame is sent back unchanged.
func echo(ctx context.Context, c *transport.Conn) {
	answer(ctx, c, func(typ uint8, p []byte) (uint8, []byte) { return typ, p })
}

// answer serves every stream of c: each frame read is answered with
// reply's frame.
func answer(ctx context.Context, c *transport.Conn, reply func(typ uint8, p []byte) (uint8, []byte)) {
	for {
		s, err := c.AcceptStream(ctx)
		if err != nil {
			return
		}
		go func() {
			buf := make([]byte, 0, 1<<20)
			for {
				typ, p, err := s.ReadFrame(buf)
				if err != nil {
					s.CloseWrite()
					return
				}
				if s.WriteFrame(reply(typ, p)) != nil || s.Flush() != nil {
					return
				}
			}
		}()
	}
}
