package e2e

// Bad input to a mirror: garbage and truncated frames from a client with a
// valid certificate, certificates from another CA, and a primary whose
// volume differs from the mirror's.

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/blockmirror/blockmirror/internal/testutil"
	"github.com/blockmirror/blockmirror/journal"
	"github.com/blockmirror/blockmirror/mirror"
	"github.com/blockmirror/blockmirror/mirror/wire"
	"github.com/blockmirror/blockmirror/transport"
)

// rawQUIC opens a QUIC connection to a mirror with identity id (as the
// transport package would, minus its checks) and one stream on which the
// test writes raw bytes.
func rawQUIC(t *testing.T, addr, peer string, id *transport.Identity) (*quic.Conn, *quic.Stream) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	tc := &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{id.Cert},
		RootCAs:      id.Roots,
		ServerName:   peer,
		NextProtos:   []string{transport.ALPN},
	}
	qc, err := quic.DialAddr(ctx, addr, tc, &quic.Config{MaxIdleTimeout: 5 * time.Second})
	if err != nil {
		t.Fatalf("quic dial %s: %v", addr, err)
	}
	t.Cleanup(func() { qc.CloseWithError(0, "test done") })
	st, err := qc.OpenStreamSync(ctx)
	if err != nil {
		t.Fatalf("open stream: %v", err)
	}
	return qc, st
}

// logAfter returns what a process logged after byte offset off.
func logAfter(p *testutil.Proc, off int) string {
	l := p.Log()
	if off > len(l) {
		return ""
	}
	return l[off:]
}

// warnLines returns the WARN/ERROR lines of a log excerpt.
func warnLines(s string) []string {
	var out []string
	for line := range strings.SplitSeq(s, "\n") {
		if strings.Contains(line, "level=WARN") || strings.Contains(line, "level=ERROR") {
			out = append(out, line)
		}
	}
	return out
}

// TestReplMirrorGarbage: a client with a valid certificate sends garbage
// instead of a Hello, or garbage after a valid Hello. Each time the mirror
// logs a warning that says what was wrong, accepts no record, stays up,
// and its real primary reconnects and replicates afterwards.
func TestReplMirrorGarbage(t *testing.T) {
	seed := rand.Uint64()
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 1))
	c := newReplCluster(t, "64M", "m1")
	runCmd(t, time.Minute, binPath, "certs", "init", "--out", c.Certs, "intruder")
	id, err := transport.LoadNode(c.Certs, "intruder")
	if err != nil {
		t.Fatal(err)
	}
	m1 := c.StartMirror("m1")
	c.StartPrimary(primaryOpts{Args: []string{"--mode", "sync", "--sync-acks", "1"}})
	c.WaitPeerState(15*time.Second, "in-sync", "m1")
	w := startLoad(t, c.Primary.NBD, seed, 64)
	time.Sleep(300 * time.Millisecond)
	w.Stop()
	c.WaitApplied(15*time.Second, "m1")
	pst, err := c.PrimaryStatus()
	if err != nil {
		t.Fatal(err)
	}
	meta, err := mirror.LoadMeta(c.Primary.Data)
	if err != nil {
		t.Fatal(err)
	}
	hello, err := wire.AppendHello(nil, &wire.Hello{
		Version: wire.ProtoVersion, Role: wire.PeerRolePrimary, Mode: wire.ModeSync,
		AckLevel: wire.AckWritten, Volume: meta.Volume, Size: uint64(meta.Size), Epoch: meta.Epoch,
		LastSeq: pst.LastSeq, Node: "intruder", History: meta.History,
	})
	if err != nil {
		t.Fatal(err)
	}
	frame := func(typ wire.MsgType, payload []byte) []byte {
		b, err := transport.AppendFrame(nil, uint8(typ), payload)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	header := func(typ uint8, n uint32) []byte {
		b := make([]byte, transport.FrameHeaderLen)
		transport.PutFrameHeader(b, typ, n)
		return b
	}
	random := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		return b
	}
	helloFrame := frame(wire.MsgHello, hello)
	// A record that would be next, but with a gap, and one with a
	// corrupted byte.
	rec := journal.Record{Epoch: meta.Epoch, Seq: pst.LastSeq + 5, Op: journal.OpWrite, Offset: 0, Length: 4096, Data: make([]byte, 4096)}
	gap, err := mirror.AppendRecords(nil, []journal.Record{rec})
	if err != nil {
		t.Fatal(err)
	}
	rec.Seq = pst.LastSeq + 1
	corrupt, err := mirror.AppendRecords(nil, []journal.Record{rec})
	if err != nil {
		t.Fatal(err)
	}
	corrupt[len(corrupt)/2] ^= 0x40
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

	cases := []struct {
		name  string
		bytes []byte
		fin   bool     // close the stream after writing
		want  []string // in the mirror's warning (any of)
	}{
		{"random-bytes-instead-of-hello", random(300), true, []string{"hello"}},
		{"unknown-type-truncated-instead-of-hello", append(header(0xee, 1000), random(300)...), true, []string{"hello"}},
		{"hello-type-garbage-payload", frame(wire.MsgHello, random(120)), false, []string{"malformed hello"}},
		{"records-instead-of-hello", frame(wire.MsgRecords, corrupt), false, []string{"expected hello"}},
		{"huge-length-instead-of-hello", append(header(uint8(wire.MsgHello), 0xfffffff0), random(64)...), false, []string{"too large"}},
		{"truncated-hello", helloFrame[:len(helloFrame)/2], true, []string{"hello"}},
		{"hello-then-random-bytes", cat(helloFrame, header(0xee, 64), random(64)), false, []string{"unexpected"}},
		{"hello-then-garbage-records", cat(helloFrame, frame(wire.MsgRecords, random(200))), false, []string{"bad records frame"}},
		{"hello-then-corrupt-record", cat(helloFrame, frame(wire.MsgRecords, corrupt)), false, []string{"checksum", "crc"}},
		{"hello-then-seq-gap", cat(helloFrame, frame(wire.MsgRecords, gap)), false, []string{"seq"}},
		{"hello-then-huge-length", cat(helloFrame, header(uint8(wire.MsgRecords), 0xfffffff0)), false, []string{"too large"}},
		{"hello-then-truncated-frame", cat(helloFrame, header(uint8(wire.MsgRecords), 1<<20), random(100)), true, []string{"EOF", "eof"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before, err := c.MirrorStatus("m1")
			if err != nil {
				t.Fatal(err)
			}
			off := len(m1.Proc.Log())
			qc, st := rawQUIC(t, m1.Listen, "m1", id)
			if _, err := st.Write(tc.bytes); err != nil {
				t.Fatalf("write: %v", err)
			}
			if tc.fin {
				st.Close()
			}
			var lines []string
			testutil.WaitFor(t, 15*time.Second, "a warning about the intruder in the mirror's log", func() (bool, string) {
				lines = nil
				for _, l := range warnLines(logAfter(m1.Proc, off)) {
					if strings.Contains(l, "intruder") {
						lines = append(lines, l)
					}
				}
				return len(lines) > 0, "none yet"
			})
			qc.CloseWithError(0, "")
			for _, l := range lines {
				t.Logf("mirror: %s", l)
			}
			text := strings.ToLower(strings.Join(lines, "\n"))
			found := false
			for _, w := range tc.want {
				found = found || strings.Contains(text, strings.ToLower(w))
			}
			if !found {
				t.Errorf("the mirror's warning does not mention any of %q", tc.want)
			}
			after, err := c.MirrorStatus("m1")
			if err != nil {
				t.Fatal(err)
			}
			if after.Received != before.Received || after.Applied != before.Applied {
				t.Errorf("mirror seqs moved: received %d → %d, applied %d → %d", before.Received, after.Received, before.Applied, after.Applied)
			}
			if m1.Proc.Exited() {
				t.Fatalf("mirror exited: %v", m1.Proc.ExitErr())
			}
		})
	}
	// The real primary is served again.
	c.WaitPeerState(20*time.Second, "in-sync", "m1")
	w = startLoad(t, c.Primary.NBD, seed+1, 64)
	time.Sleep(300 * time.Millisecond)
	w.Stop()
	if n := countStarted(w.Results(), time.Time{}, true); n < 10 {
		t.Errorf("only %d writes after the intruders", n)
	}
	c.WaitApplied(15*time.Second, "m1")
	c.StopAll()
	c.RequireIdentical("m1")
}

// TestReplForeignCA: certificates from another cluster CA are refused, with
// a log line on both sides, and the mirror creates no volume.
func TestReplForeignCA(t *testing.T) {
	c := newReplCluster(t, "64M", "m1")
	other := filepath.Join(t.TempDir(), "other-certs")
	runCmd(t, time.Minute, binPath, "certs", "init", "--out", other, "p1")
	m1 := c.StartMirror("m1")

	t.Run("other-cluster-primary", func(t *testing.T) {
		// A whole other cluster: the primary distrusts the mirror's
		// certificate and aborts the handshake.
		off := len(m1.Proc.Log())
		p := c.StartPrimary(primaryOpts{Certs: other, Args: []string{"--mode", "async"}})
		var lastErr string
		testutil.WaitFor(t, 15*time.Second, "the primary reports the refused mirror", func() (bool, string) {
			st, err := c.PrimaryStatus()
			if err != nil {
				return false, err.Error()
			}
			pr := replPeer(st, "m1")
			if pr == nil || pr.LastError == "" {
				return false, "no error yet"
			}
			lastErr = pr.LastError
			return true, ""
		})
		t.Logf("primary status last_error: %s", lastErr)
		if !strings.Contains(lastErr, "certificate") && !strings.Contains(lastErr, "trusted") {
			t.Errorf("primary's error %q does not name the certificate problem", lastErr)
		}
		if l := p.Proc.LogLine("level=WARN"); l == "" {
			t.Errorf("no warning in the primary's log")
		} else {
			t.Logf("primary: %s", l)
		}
		var mw []string
		testutil.WaitFor(t, 10*time.Second, "a warning in the mirror's log", func() (bool, string) {
			mw = warnLines(logAfter(m1.Proc, off))
			return len(mw) > 0, "none"
		})
		t.Logf("mirror: %s", mw[0])
		stopProc(t, p.Proc)
	})

	t.Run("foreign-client-certificate", func(t *testing.T) {
		// Our CA for verifying the mirror, but a client certificate from
		// the other CA: the mirror refuses it.
		off := len(m1.Proc.Log())
		own, err := transport.LoadNode(c.Certs, "p1")
		if err != nil {
			t.Fatal(err)
		}
		foreign, err := transport.LoadNode(other, "p1")
		if err != nil {
			t.Fatal(err)
		}
		id := *foreign
		id.Roots, id.CA = own.Roots, own.CA
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		conn, err := transport.Dial(ctx, m1.Listen, "m1", transport.Config{Identity: &id})
		if err == nil {
			conn.Close(0, "")
			t.Fatal("the mirror accepted a client certificate from another CA")
		}
		t.Logf("dial: %v", err)
		if !errors.Is(err, transport.ErrRejected) {
			t.Errorf("dial error %v, want ErrRejected", err)
		}
		var mw []string
		testutil.WaitFor(t, 10*time.Second, "a warning in the mirror's log", func() (bool, string) {
			mw = warnLines(logAfter(m1.Proc, off))
			return len(mw) > 0, "none"
		})
		t.Logf("mirror: %s", mw[0])
		if !strings.Contains(mw[0], "refused") {
			t.Errorf("mirror's warning does not say it refused the peer")
		}
	})

	ms, err := c.MirrorStatus("m1")
	if err != nil {
		t.Fatal(err)
	}
	if ms.Volume != "" || ms.Received != 0 {
		t.Errorf("mirror created volume %q / received %d from a refused peer", ms.Volume, ms.Received)
	}
	stopProc(t, m1.Proc)
}

// TestReplVolumeMismatch: a mirror that holds another volume refuses a
// primary, saying what differs (UUID, or size for the same UUID); the
// primary's status shows the error and nothing is applied.
func TestReplVolumeMismatch(t *testing.T) {
	c := newReplCluster(t, "64M", "m1")
	m1 := c.StartMirror("m1")
	c.StartPrimary(primaryOpts{Args: []string{"--mode", "sync", "--sync-acks", "1"}})
	c.WaitPeerState(15*time.Second, "in-sync", "m1")
	w := startLoad(t, c.Primary.NBD, 7, 32)
	time.Sleep(200 * time.Millisecond)
	w.Stop()
	c.WaitApplied(15*time.Second, "m1")
	c.StopPrimary()
	before, err := c.MirrorStatus("m1")
	if err != nil {
		t.Fatal(err)
	}
	imgBefore := sumFile(t, m1.Image())

	// Another primary (new volume: other UUID, other size).
	c.Size = "32M"
	off := len(m1.Proc.Log())
	p2 := c.StartPrimary(primaryOpts{Data: filepath.Join(t.TempDir(), "p2"), Args: []string{"--mode", "async"}})
	var lastErr string
	testutil.WaitFor(t, 15*time.Second, "the other primary reports the refusal", func() (bool, string) {
		var st replStatus
		if err := testutil.GetJSON(t.Context(), "http://"+p2.Admin+"/v1/status", &st); err != nil {
			return false, err.Error()
		}
		if st.Primary == nil || st.Primary.Replication == nil {
			return false, "no replication status"
		}
		pr := replPeer(st.Primary.Replication, "m1")
		if pr == nil || pr.LastError == "" {
			return false, "no error yet"
		}
		lastErr = pr.LastError
		return true, ""
	})
	t.Logf("other primary's status last_error: %s", lastErr)
	if !strings.Contains(lastErr, before.Volume) {
		t.Errorf("the error does not name the mirror's volume %s", before.Volume)
	}
	if !strings.Contains(strings.ToLower(lastErr), "volume") {
		t.Errorf("the error does not say the volume differs")
	}
	// Write on the other primary: must not reach m1.
	w2 := startLoad(t, p2.NBD, 8, 32)
	time.Sleep(200 * time.Millisecond)
	w2.Stop()
	mw := warnLines(logAfter(m1.Proc, off))
	if len(mw) == 0 {
		t.Errorf("no warning in the mirror's log")
	} else {
		t.Logf("mirror: %s", mw[0])
	}
	stopProc(t, p2.Proc)

	// Same UUID, other size (only a forged Hello can say that).
	t.Run("same-uuid-other-size", func(t *testing.T) {
		runCmd(t, time.Minute, binPath, "certs", "init", "--out", c.Certs, "p9")
		id, err := transport.LoadNode(c.Certs, "p9")
		if err != nil {
			t.Fatal(err)
		}
		meta, err := mirror.LoadMeta(c.Primary.Data)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		conn, err := transport.Dial(ctx, m1.Listen, "m1", transport.Config{Identity: id})
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(0, "")
		st, err := conn.OpenStream(ctx)
		if err != nil {
			t.Fatal(err)
		}
		h, err := wire.AppendHello(nil, &wire.Hello{
			Version: wire.ProtoVersion, Role: wire.PeerRolePrimary, Mode: wire.ModeSync,
			AckLevel: wire.AckWritten, Volume: meta.Volume, Size: uint64(meta.Size) * 2, Epoch: meta.Epoch,
			LastSeq: before.Received, Node: "p9", History: meta.History,
		})
		if err != nil {
			t.Fatal(err)
		}
		if err := st.WriteFrame(uint8(wire.MsgHello), h); err != nil {
			t.Fatal(err)
		}
		if err := st.Flush(); err != nil {
			t.Fatal(err)
		}
		st.SetReadDeadline(time.Now().Add(10 * time.Second))
		typ, p, err := st.ReadFrame(nil)
		if err != nil {
			t.Fatalf("no answer to the hello: %v", err)
		}
		var reason string
		switch wire.MsgType(typ) {
		case wire.MsgHelloReply:
			r, err := wire.DecodeHelloReply(p)
			if err != nil {
				t.Fatal(err)
			}
			if r.Code == wire.CodeOK {
				t.Fatalf("the mirror accepted a hello for a %d-byte volume; it holds %d bytes", meta.Size*2, meta.Size)
			}
			reason = r.Reason
		case wire.MsgError:
			e, err := wire.DecodeError(p)
			if err != nil {
				t.Fatal(err)
			}
			reason = e.Message
		default:
			t.Fatalf("answer of type %d", typ)
		}
		t.Logf("refusal: %s", reason)
		if !strings.Contains(strings.ToLower(reason), "size") {
			t.Errorf("the refusal does not say the size differs: %q", reason)
		}
	})

	after, err := c.MirrorStatus("m1")
	if err != nil {
		t.Fatal(err)
	}
	if after.Volume != before.Volume || after.Received != before.Received || after.Applied != before.Applied {
		t.Errorf("mirror changed: volume %s → %s, received %d → %d, applied %d → %d",
			before.Volume, after.Volume, before.Received, after.Received, before.Applied, after.Applied)
	}
	stopProc(t, m1.Proc)
	if sumFile(t, m1.Image()) != imgBefore {
		t.Errorf("the mirror's image changed while it refused the other primary")
	}
}

// sumFile returns a cheap digest of a file's contents.
func sumFile(t testing.TB, path string) uint64 {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var h uint64 = 14695981039346656037
	for i := 0; i+8 <= len(b); i += 8 {
		h = (h ^ binary.LittleEndian.Uint64(b[i:])) * 1099511628211
	}
	return h
}
