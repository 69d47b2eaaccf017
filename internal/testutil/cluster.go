package testutil

// Helpers for replication tests: free UDP addresses for QUIC listeners, an
// in-process fault proxy (internal/faultproxy) between a primary and a
// mirror,
// JSON over HTTP for admin endpoints, polling, and image comparison.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"testing"
	"time"

	"github.com/blockmirror/blockmirror/internal/faultproxy"
)

// FreeUDPAddr returns "127.a.b.c:port" with a random loopback address and a
// UDP port the kernel reported free on it a moment ago (for QUIC
// listeners).
func FreeUDPAddr(t testing.TB) string {
	t.Helper()
	for range 20 {
		ip := net.IPv4(127, byte(rand.IntN(250)), byte(rand.IntN(250)), byte(2+rand.IntN(250)))
		c, err := net.ListenUDP("udp", &net.UDPAddr{IP: ip})
		if err != nil {
			continue
		}
		addr := c.LocalAddr().String()
		c.Close()
		return addr
	}
	t.Fatal("testutil: no free loopback UDP port")
	return ""
}

// StartProxy runs an in-process [faultproxy.Proxy] listening on listen
// ("127.x.y.z:port"; port 0 picks one) in front of target, both loopback
// addresses; it stops when the test ends. Its Stats count what crossed it
// (Up: to the target, Down: back), an independent measure of what a
// primary sent a mirror.
func StartProxy(t testing.TB, listen, target string) *faultproxy.Proxy {
	t.Helper()
	p, err := faultproxy.New(faultproxy.Config{Listen: listen, Target: target})
	if err != nil {
		t.Fatalf("testutil: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := p.Run(ctx); err != nil {
			t.Errorf("testutil: proxy %s → %s: %v", listen, target, err)
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return p
}

// GetJSON fetches url (a loopback admin endpoint) and decodes its JSON body
// into v.
func GetJSON(ctx context.Context, url string, v any) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return fmt.Errorf("GET %s: %w", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s: %s", url, resp.Status, bytes.TrimSpace(b))
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("GET %s: decode: %w", url, err)
	}
	return nil
}

// WaitFor polls cond every 50 ms until it returns true or timeout passes;
// then it fails the test with what and cond's last explanation.
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, why := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %s: %s", timeout, what, why)
		}
		select {
		case <-t.Context().Done():
			t.Fatalf("%s: test ended", what)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// CompareFiles reports the first offset at which two files differ (a file
// shorter than the other differs at its end), or -1 if they are identical.
func CompareFiles(a, b string) (int64, error) {
	fa, err := os.Open(a)
	if err != nil {
		return 0, err
	}
	defer fa.Close()
	fb, err := os.Open(b)
	if err != nil {
		return 0, err
	}
	defer fb.Close()
	ba := make([]byte, 1<<20)
	bb := make([]byte, 1<<20)
	var off int64
	for {
		na, ea := io.ReadFull(fa, ba)
		nb, eb := io.ReadFull(fb, bb)
		n := min(na, nb)
		if !bytes.Equal(ba[:n], bb[:n]) {
			for i := range n {
				if ba[i] != bb[i] {
					return off + int64(i), nil
				}
			}
		}
		if na != nb {
			return off + int64(n), nil
		}
		off += int64(n)
		aEOF := errors.Is(ea, io.EOF) || errors.Is(ea, io.ErrUnexpectedEOF)
		bEOF := errors.Is(eb, io.EOF) || errors.Is(eb, io.ErrUnexpectedEOF)
		if ea != nil && !aEOF {
			return 0, ea
		}
		if eb != nil && !bEOF {
			return 0, eb
		}
		if aEOF || bEOF {
			return -1, nil
		}
	}
}
