package faultproxy_test

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	"github.com/blockmirror/blockmirror/internal/faultproxy"
	"github.com/blockmirror/blockmirror/transport"
)

type quicEnv struct {
	l          *transport.Listener
	p          *faultproxy.Proxy
	client     transport.Config
	serverName string
}

func newQUICEnv(t *testing.T) *quicEnv {
	ca, err := transport.GenerateCA("ca", transport.KeyECDSAP256, 0)
	if err != nil {
		t.Fatal(err)
	}
	m1, _ := ca.IssueNode("m1", transport.KeyECDSAP256, 0)
	m2, _ := ca.IssueNode("m2", transport.KeyECDSAP256, 0)
	timeouts := func(id *transport.Identity) transport.Config {
		return transport.Config{Identity: id, KeepAlive: 100 * time.Millisecond, IdleTimeout: time.Second, HandshakeTimeout: 500 * time.Millisecond}
	}
	l, err := transport.Listen("127.0.0.1:0", timeouts(m1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return &quicEnv{l: l, p: startProxy(t, l.Addr().String(), 42), client: timeouts(m2), serverName: "m1"}
}

// connect dials through the proxy and returns both ends.
func (e *quicEnv) connect(t *testing.T, ctx context.Context) (*transport.Conn, *transport.Conn, error) {
	type res struct {
		c   *transport.Conn
		err error
	}
	ch := make(chan res, 1)
	actx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		c, err := e.l.Accept(actx)
		ch <- res{c, err}
	}()
	cc, err := transport.Dial(ctx, e.p.Addr().String(), e.serverName, e.client)
	if err != nil {
		return nil, nil, err
	}
	t.Cleanup(func() { cc.Close(0, "") })
	r := <-ch
	if r.err != nil {
		return nil, nil, r.err
	}
	return cc, r.c, nil
}

func echoOnce(ctx context.Context, t *testing.T, cc, sc *transport.Conn, payload []byte) error {
	go func() {
		s, err := sc.AcceptStream(ctx)
		if err != nil {
			return
		}
		for {
			typ, p, err := s.ReadFrame(nil)
			if err != nil {
				s.CloseWrite()
				return
			}
			s.WriteFrame(typ, p)
			s.Flush()
		}
	}()
	s, err := cc.OpenStream(ctx)
	if err != nil {
		return err
	}
	if dl, ok := ctx.Deadline(); ok {
		s.SetDeadline(dl)
	}
	if err := s.WriteFrame(1, payload); err != nil {
		return err
	}
	if err := s.Flush(); err != nil {
		return err
	}
	_, got, err := s.ReadFrame(nil)
	if err != nil {
		return err
	}
	if !bytes.Equal(got, payload) {
		t.Fatal("echo mismatch")
	}
	return nil
}

func TestQUICThroughProxyPartitionAndHeal(t *testing.T) {
	e := newQUICEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cc, sc, err := e.connect(t, ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := echoOnce(ctx, t, cc, sc, bytes.Repeat([]byte("x"), 100000)); err != nil {
		t.Fatal(err)
	}

	e.p.Partition(faultproxy.Both)
	cut := time.Now()
	for _, c := range []*transport.Conn{cc, sc} {
		select {
		case <-c.Done():
		case <-time.After(5 * time.Second):
			t.Fatal("connection survived a partition")
		}
		if !errors.Is(c.Err(), transport.ErrIdleTimeout) {
			t.Errorf("Err = %v, want ErrIdleTimeout", c.Err())
		}
	}
	t.Logf("partition detected after %v (idle timeout 1s)", time.Since(cut))
	// Dialing while partitioned fails.
	if _, _, err := e.connect(t, ctx); !errors.Is(err, transport.ErrHandshakeTimeout) {
		t.Fatalf("dial during partition: %v", err)
	}
	if st := e.p.Stats(); st.Up.Dropped == 0 {
		t.Fatalf("no drops counted during partition: %+v", st)
	}

	e.p.Heal()
	cc2, sc2, err := e.connect(t, ctx)
	if err != nil {
		t.Fatalf("dial after heal: %v", err)
	}
	if err := echoOnce(ctx, t, cc2, sc2, []byte("again")); err != nil {
		t.Fatal(err)
	}
}

func TestQUICSurvivesLossAndDuplication(t *testing.T) {
	e := newQUICEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cc, sc, err := e.connect(t, ctx)
	if err != nil {
		t.Fatal(err)
	}
	f := faultproxy.Faults{Drop: 0.03, Duplicate: 0.03, Delay: time.Millisecond, Jitter: 2 * time.Millisecond, Reorder: 0.02}
	e.p.SetFaults(faultproxy.Both, f)
	payload := make([]byte, 2<<20)
	for i := range payload {
		payload[i] = byte(i * 7)
	}
	if err := echoOnce(ctx, t, cc, sc, payload); err != nil {
		t.Fatal(err)
	}
	st := e.p.Stats()
	for name, d := range map[string]faultproxy.DirStats{"up": st.Up, "down": st.Down} {
		if d.Dropped == 0 || d.Duplicated == 0 || d.Delayed == 0 {
			t.Errorf("%s counters did not move: %+v", name, d)
		}
	}
	if cs := cc.Stats(); cs.PacketsLost == 0 {
		t.Errorf("QUIC saw no loss: %+v", cs)
	}
	t.Logf("proxy: up %+v down %+v", st.Up, st.Down)
}
