package e2e

// NBD over TLS with real clients: nbdinfo, nbdcopy, nbdsh and python
// libnbd with nbds:// URIs and tls-certificates directories, qemu-img and
// qemu-io with --object tls-creds-x509, all with certificates made by
// `blockmirror certs`.

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/blockmirror/blockmirror/nbd"
)

// NBD option numbers and the TLS-required reply (the protocol's numbers)
// for the raw options the tests send.
const (
	optExportName = 1
	optGo         = 7
	repErrTLSReqd = 1<<31 | 5
)

// nbdPKI is a cluster CA with an NBD server certificate for 127.0.0.1 and
// localhost, and client certificate directories in qemu/libnbd layout.
type nbdPKI struct {
	Cluster string // certs init: ca.crt, ca.key, p1.crt, p1.key
	Server  string // certs server: ca-cert.pem, server-cert.pem, server-key.pem
	Client  string // certs client hv1 (cluster CA)
	Foreign string // certs client hv2 from another CA
	NoCert  string // ca-cert.pem only: a client without a certificate
}

func makeNBDPKI(t testing.TB) *nbdPKI {
	t.Helper()
	d := t.TempDir()
	p := &nbdPKI{Cluster: filepath.Join(d, "cluster"), Server: filepath.Join(d, "server"), Client: filepath.Join(d, "client"),
		Foreign: filepath.Join(d, "foreign"), NoCert: filepath.Join(d, "nocert")}
	other := filepath.Join(d, "other")
	for _, args := range [][]string{
		{"certs", "init", "--out", p.Cluster, "p1"},
		{"certs", "server", "--certs", p.Cluster, "--out", p.Server, "--host", "127.0.0.1", "--host", "localhost", "p1"},
		{"certs", "client", "--certs", p.Cluster, "--out", p.Client, "hv1"},
		{"certs", "init", "--out", other, "x1"},
		{"certs", "client", "--certs", other, "--out", p.Foreign, "hv2"},
	} {
		runCmd(t, time.Minute, binPath, args...)
	}
	os.Mkdir(p.NoCert, 0o700)
	ca, err := os.ReadFile(filepath.Join(p.Client, "ca-cert.pem"))
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(p.NoCert, "ca-cert.pem"), ca, 0o644)
	return p
}

// serveArgs make `blockmirror serve` speak TLS (mode on or require) with
// the server certificate, demanding client certificates from the cluster
// CA.
func (p *nbdPKI) serveArgs(mode string) []string {
	return []string{"--nbd-tls", mode, "--nbd-tls-cert", filepath.Join(p.Server, "server-cert.pem"),
		"--nbd-tls-key", filepath.Join(p.Server, "server-key.pem"), "--certs", p.Cluster, "--nbd-tls-client-ca", "cluster"}
}

// tlsURI is the nbds:// URI of s for a client with the certificate
// directory dir.
func tlsURI(s *server, dir string) string {
	q := url.Values{"tls-certificates": {dir}}
	if s.IsUnix() {
		q.Set("socket", s.Socket())
		return (&url.URL{Scheme: "nbds+unix", Path: "/" + s.Export, RawQuery: q.Encode()}).String()
	}
	return (&url.URL{Scheme: "nbds", Host: s.Addr, Path: "/" + s.Export, RawQuery: q.Encode()}).String()
}

// e2eTLS, while set, makes startServer require TLS (with client
// certificates) and gives clients TLS URIs: the client tests then run
// over TLS (TestClientsOverTLS).
var e2eTLS *nbdPKI

// qemuTarget is how qemu tools open s: a URI, or with TLS an --object and
// --image-opts options (qemu has no nbds:// URIs).
type qemuTarget struct {
	object []string // --object tls-creds-x509,... (TLS only)
	spec   string   // the URI, or the image options
	opts   bool     // spec is image options
}

func (s *server) qemu() qemuTarget {
	if e2eTLS == nil {
		return qemuTarget{spec: s.URI}
	}
	srv := "server.type=inet,server.host=" + s.Host() + ",server.port=" + s.Port()
	if s.IsUnix() {
		srv = "server.type=unix,server.path=" + s.Socket() + ",tls-hostname=localhost"
	}
	return qemuTarget{
		object: []string{"--object", "tls-creds-x509,id=tls0,endpoint=client,dir=" + e2eTLS.Client},
		spec:   "driver=nbd," + srv + ",export=" + s.Export + ",tls-creds=tls0",
		opts:   true,
	}
}

// TestClientsOverTLS runs the real-client tests again over TLS, on a
// server that requires it and client certificates.
func TestClientsOverTLS(t *testing.T) {
	requireServer(t)
	if serverKind != kindBlockmirror {
		t.Skip("blockmirror only")
	}
	pki := makeNBDPKI(t)
	for _, tc := range []struct {
		name string
		fn   func(*testing.T)
	}{
		{"NBDInfo", TestNBDInfo}, {"Nbdsh", TestNbdsh}, {"Libnbd", TestLibnbd}, {"Nbdcopy", TestNbdcopy},
		{"QemuIO", TestQemuIO}, {"QemuImgConvert", TestQemuImgConvert},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e2eTLS = pki
			defer func() { e2eTLS = nil }()
			tc.fn(t)
		})
	}
}

// plainOption sends one option in plaintext after the greeting and
// returns the reply type and message (or the error: a closed connection).
func plainOption(t *testing.T, addr string, opt uint32, data []byte) (uint32, string, error) {
	t.Helper()
	nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(10 * time.Second))
	c, err := nbd.NewClient(nc)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.SendOption(opt, data); err != nil {
		return 0, "", err
	}
	r, err := c.ReadOptionReply()
	if err != nil {
		return 0, "", err
	}
	return r.Type, string(r.Data), nil
}

func TestNBDTLSRequire(t *testing.T) {
	requireServer(t)
	if serverKind != kindBlockmirror {
		t.Skip("blockmirror only")
	}
	nbdinfo := needTool(t, "nbdinfo")
	pki := makeNBDPKI(t)
	s := startServer(t, serverOpts{Size: "64M", Args: pki.serveArgs("require"), Addr: foFreeAddr(t, "tcp", "127.0.0.1")})
	if !strings.HasPrefix(s.LoggedURI, "nbds://") {
		t.Errorf("logged URI %q is not nbds://", s.LoggedURI)
	}
	tlsInfo := func(dir string) (string, error) {
		return runCmdErr(t, 30*time.Second, nbdinfo, "--json", tlsURI(s, dir))
	}
	out, err := tlsInfo(pki.Client)
	var info struct {
		TLS bool `json:"TLS"`
	}
	if err != nil || json.Unmarshal([]byte(out), &info) != nil || !info.TLS {
		t.Fatalf("nbdinfo over TLS: %v\n%s", err, out)
	}

	// Plaintext clients are refused in the handshake with
	// NBD_REP_ERR_TLS_REQD; NBD_OPT_EXPORT_NAME closes the connection.
	out, err = runCmdErr(t, 30*time.Second, "/usr/bin/env", "LIBNBD_DEBUG=1", nbdinfo, s.URI)
	if err == nil || !strings.Contains(out, "requires TLS") {
		t.Errorf("plaintext nbdinfo: %v, want a refusal naming TLS:\n%s", err, out)
	}
	goData := binary.BigEndian.AppendUint32(nil, uint32(len(s.Export)))
	goData = binary.BigEndian.AppendUint16(append(goData, s.Export...), 0)
	for _, o := range []struct {
		opt  uint32
		data []byte
	}{{optGo, goData}, {3 /* LIST */, nil}, {8 /* STRUCTURED_REPLY */, nil}} {
		typ, msg, err := plainOption(t, s.Addr, o.opt, o.data)
		if err != nil || typ != repErrTLSReqd || !strings.Contains(msg, "STARTTLS") {
			t.Errorf("plaintext option %d: reply %#x %q (%v), want NBD_REP_ERR_TLS_REQD", o.opt, typ, msg, err)
		}
	}
	if typ, _, err := plainOption(t, s.Addr, optExportName, []byte(s.Export)); err == nil {
		t.Errorf("plaintext NBD_OPT_EXPORT_NAME answered (%#x) instead of closed", typ)
	}

	// Wrong or missing client certificates are refused.
	for dir, what := range map[string]string{pki.Foreign: "a client certificate of another CA", pki.NoCert: "no client certificate"} {
		if out, err := tlsInfo(dir); err == nil {
			t.Errorf("%s: served:\n%s", what, out)
		}
	}

	// qemu with tls-creds-x509: the right credentials work, another CA's
	// do not.
	if qemuImg, err := lookTool("qemu-img"); err == nil {
		spec := "driver=nbd,server.type=inet,server.host=" + s.Host() + ",server.port=" + s.Port() + ",export=" + s.Export + ",tls-creds=tls0"
		info := func(dir string) (string, error) {
			return runCmdErr(t, 30*time.Second, qemuImg, "info", "--object", "tls-creds-x509,id=tls0,endpoint=client,dir="+dir, "--image-opts", spec)
		}
		if out, err := info(pki.Client); err != nil || !strings.Contains(out, "64 MiB") {
			t.Errorf("qemu-img info over TLS: %v\n%s", err, out)
		}
		if out, err := info(pki.Foreign); err == nil {
			t.Errorf("qemu-img with another CA's certificate: served:\n%s", out)
		}
	}

	// The server kept serving throughout, and said why it refused.
	s.requireAlive(t)
	if out, err := tlsInfo(pki.Client); err != nil {
		t.Fatalf("nbdinfo over TLS after the refusals: %v\n%s", err, out)
	}
	log := s.Log()
	for _, want := range []string{"refused an option sent before TLS", "TLS handshake failed"} {
		if !strings.Contains(log, want) {
			t.Errorf("server log lacks %q", want)
		}
	}
}

// TestNBDTLSNodeCertificate: --nbd-tls on with the node's own certificate
// (--certs, --node): TLS clients verify it by the node name, plaintext
// clients are still served.
func TestNBDTLSNodeCertificate(t *testing.T) {
	requireServer(t)
	if serverKind != kindBlockmirror {
		t.Skip("blockmirror only")
	}
	nbdinfo := needTool(t, "nbdinfo")
	d := t.TempDir()
	certs, client := filepath.Join(d, "certs"), filepath.Join(d, "client")
	// The node is named localhost so that clients can check its
	// certificate against the name they dial.
	runCmd(t, time.Minute, binPath, "certs", "init", "--out", certs, "localhost")
	runCmd(t, time.Minute, binPath, "certs", "client", "--certs", certs, "--out", client, "hv1")
	s := startServer(t, serverOpts{Size: "16M", Args: []string{"--nbd-tls", "on", "--certs", certs, "--node", "localhost"},
		Addr: foFreeAddr(t, "tcp", "127.0.0.1")})
	uri := "nbds://localhost:" + s.Port() + "/" + s.Export + "?tls-certificates=" + url.QueryEscape(client)
	out := runCmd(t, 30*time.Second, nbdinfo, "--json", uri)
	if !strings.Contains(out, `"TLS": true`) {
		t.Errorf("nbdinfo over TLS with the node certificate:\n%s", out)
	}
	if out, err := runCmdErr(t, 30*time.Second, nbdinfo, strings.Replace(uri, "localhost", "127.0.0.1", 1)); err == nil {
		t.Errorf("the node certificate (issued to localhost) was accepted for 127.0.0.1:\n%s", out)
	}
	out = runCmd(t, 30*time.Second, nbdinfo, "--json", s.URI)
	if !strings.Contains(out, `"TLS": false`) {
		t.Errorf("plaintext nbdinfo with --nbd-tls on:\n%s", out)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	c, err := rawDial(ctx, s.Addr, s.Export)
	if err != nil {
		t.Fatalf("plaintext NBD_OPT_GO with --nbd-tls on: %v", err)
	}
	c.disconnect()
}
