package mirror

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/blockmirror/blockmirror/transport"
)

// testIdentities issues a test CA and node identities.
func testIdentities(t *testing.T, names ...string) map[string]*transport.Identity {
	t.Helper()
	ca, err := transport.GenerateCA("test CA", transport.KeyECDSAP256, 0)
	if err != nil {
		t.Fatal(err)
	}
	ids := map[string]*transport.Identity{}
	for _, n := range names {
		if ids[n], err = ca.IssueNode(n, transport.KeyECDSAP256, 0); err != nil {
			t.Fatal(err)
		}
	}
	return ids
}

func TestConnPoolSharesAndRedials(t *testing.T) {
	ids := testIdentities(t, "p", "m")
	ln, err := transport.Listen("127.0.0.1:0", transport.Config{Identity: ids["m"]})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	accepted := make(chan *transport.Conn, 4)
	go func() {
		for {
			c, err := ln.Accept(ctx)
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	pool := NewConnPool()
	cfg := transport.Config{Identity: ids["p"]}
	addr := ln.Addr().String()
	c1, rel1, err := pool.get(ctx, addr, "m", cfg)
	if err != nil {
		t.Fatal(err)
	}
	c2, rel2, err := pool.get(ctx, addr, "m", cfg)
	if err != nil {
		t.Fatal(err)
	}
	if c1 != c2 {
		t.Fatal("two Gets for the same mirror returned different connections")
	}
	if s := pool.Stats(); s.Open != 1 || s.Dialed != 1 {
		t.Fatalf("stats %+v, want 1 open, 1 dialed", s)
	}
	rel1()
	rel1() // idempotent
	select {
	case <-c1.(quicConn).Done():
		t.Fatal("the connection closed while still in use")
	default:
	}
	rel2()
	select {
	case <-c1.(quicConn).Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the connection stayed open after its last user released it")
	}
	// A connection the peer closed is replaced.
	c3, rel3, err := pool.get(ctx, addr, "m", cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer rel3()
	var server *transport.Conn
	for server == nil {
		select {
		case s := <-accepted:
			// The dialer's socket is its own: the ports identify the pair.
			if port(s.RemoteAddr()) == port(c3.(quicConn).LocalAddr()) {
				server = s
			}
		case <-ctx.Done():
			t.Fatal("no server side connection")
		}
	}
	server.Close(0, "test")
	select {
	case <-c3.(quicConn).Done():
	case <-ctx.Done():
		t.Fatal("the client did not see the server close the connection")
	}
	c4, rel4, err := pool.get(ctx, addr, "m", cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer rel4()
	if c4 == c3 || c4.Err() != nil {
		t.Fatal("the pool handed out a dead connection")
	}
	if s := pool.Stats(); s.Dialed != 3 || s.Open != 1 {
		t.Fatalf("stats %+v, want 3 dialed, 1 open", s)
	}
	if _, _, err := pool.get(ctx, "127.0.0.1:1", "m", transport.Config{Identity: ids["p"], HandshakeTimeout: 200 * time.Millisecond}); err == nil {
		t.Fatal("Get of a dead address succeeded")
	}
}

func port(a net.Addr) string {
	_, p, _ := net.SplitHostPort(a.String())
	return p
}
