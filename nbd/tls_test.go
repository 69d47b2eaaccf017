package nbd_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"errors"
	"io"
	"math/big"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/blockmirror/blockmirror/nbd"
)

const cRepErrTLSReqd = 1<<31 + 5

// testPKI is a CA with a server certificate for 127.0.0.1 and a client
// certificate, plus a second CA with a client certificate of its own.
type testPKI struct {
	roots        *x509.CertPool
	server       tls.Certificate
	client       tls.Certificate
	foreignRoots *x509.CertPool
	foreign      tls.Certificate // client certificate from the other CA
}

var (
	pkiOnce sync.Once
	pki     *testPKI
)

// sharedPKI makes the certificates once per test binary (key generation
// is the slow part of these tests and of the fuzz target).
func sharedPKI(t testing.TB) *testPKI {
	pkiOnce.Do(func() {
		ca, caKey := mkCert(t, "test CA", nil, nil, true)
		other, otherKey := mkCert(t, "other CA", nil, nil, true)
		pki = &testPKI{roots: x509.NewCertPool(), foreignRoots: x509.NewCertPool()}
		pki.roots.AddCert(ca)
		pki.foreignRoots.AddCert(other)
		pki.server = leafPair(t, "server", ca, caKey, x509.ExtKeyUsageServerAuth)
		pki.client = leafPair(t, "client", ca, caKey, x509.ExtKeyUsageClientAuth)
		pki.foreign = leafPair(t, "intruder", other, otherKey, x509.ExtKeyUsageClientAuth)
	})
	if pki == nil {
		t.Fatal("test certificates could not be made")
	}
	return pki
}

func mkCert(t testing.TB, cn string, parent *x509.Certificate, parentKey *ecdsa.PrivateKey, isCA bool, eku ...x509.ExtKeyUsage) (*x509.Certificate, *ecdsa.PrivateKey) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  eku,
	}
	if isCA {
		tmpl.IsCA, tmpl.BasicConstraintsValid = true, true
		tmpl.KeyUsage |= x509.KeyUsageCertSign
	} else {
		tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)}
		tmpl.DNSNames = []string{"localhost"}
	}
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, key.Public(), parentKey)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c, key
}

func leafPair(t testing.TB, cn string, ca *x509.Certificate, caKey *ecdsa.PrivateKey, eku x509.ExtKeyUsage) tls.Certificate {
	c, k := mkCert(t, cn, ca, caKey, false, eku)
	return tls.Certificate{Certificate: [][]byte{c.Raw}, PrivateKey: k, Leaf: c}
}

// serverConfig is the server's TLS configuration; with clientCerts it
// requires a client certificate from the test CA.
func (p *testPKI) serverConfig(clientCerts bool) *tls.Config {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{p.server}}
	if clientCerts {
		cfg.ClientAuth, cfg.ClientCAs = tls.RequireAndVerifyClientCert, p.roots
	}
	return cfg
}

// clientConfig trusts the test CA and presents cert (if any).
func (p *testPKI) clientConfig(cert *tls.Certificate) *tls.Config {
	cfg := &tls.Config{RootCAs: p.roots, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	return cfg
}

// overTLS, while set, makes startServer require TLS and dialRaw start it
// right after the client flags, so the protocol tests run inside TLS
// (TestConformanceOverTLS).
var overTLS *testPKI

// startTLS sends NBD_OPT_STARTTLS, expects its ACK and runs the TLS
// handshake; the client then speaks through TLS. A refused STARTTLS fails
// the test; a failed handshake is returned.
func (c *client) startTLS(cfg *tls.Config) error {
	c.t.Helper()
	err := c.StartTLS(cfg)
	var oe *nbd.OptionError
	if errors.As(err, &oe) || errors.Is(err, nbd.ErrProtocol) {
		c.t.Fatalf("STARTTLS: %v", err)
	}
	return err
}

// TestConformanceOverTLS runs the protocol tests of server_test.go again,
// every connection inside TLS on a server that requires it. (A test added
// there that speaks NBD through startServer and dialRaw belongs here too.)
func TestConformanceOverTLS(t *testing.T) {
	p := sharedPKI(t)
	for _, tc := range []struct {
		name string
		fn   func(*testing.T)
	}{
		{"ExportNameNoZeroes", TestExportNameNoZeroes},
		{"ExportNameUnknownCloses", TestExportNameUnknownCloses},
		{"InfoAndGo", TestInfoAndGo},
		{"List", TestList},
		{"Abort", TestAbort},
		{"UnsupportedOptions", TestUnsupportedOptions},
		{"BadClientFlagsClose", TestBadClientFlagsClose},
		{"OversizeOption", TestOversizeOption},
		{"ReadWrite", TestReadWrite},
		{"CommandsReachDevice", TestCommandsReachDevice},
		{"InvalidRequestsKeepConnection", TestInvalidRequestsKeepConnection},
		{"ReadOnlyExport", TestReadOnlyExport},
		{"DeviceErrorFailsOnlyItsRequest", TestDeviceErrorFailsOnlyItsRequest},
		{"ManyInFlight", TestManyInFlight},
		{"MaxInFlightCap", TestMaxInFlightCap},
		{"DiscCompletesInFlight", TestDiscCompletesInFlight},
		{"ClientDropMidFlight", TestClientDropMidFlight},
		{"GracefulShutdown", TestGracefulShutdown},
		{"ShutdownTimeout", TestShutdownTimeout},
		{"DefaultAndRemoveExport", TestDefaultAndRemoveExport},
		{"MultipleConnectionsShareDevice", TestMultipleConnectionsShareDevice},
		{"HandshakeTimeout", TestHandshakeTimeout},
		{"BufferBudget", TestBufferBudget},
		{"PipelinedAfterExportName", TestPipelinedAfterExportName},
	} {
		t.Run(tc.name, func(t *testing.T) {
			overTLS = p
			defer func() { overTLS = nil }()
			tc.fn(t)
		})
	}
}

// plainOpt sends opt on a plaintext connection and returns the reply.
func plainOpt(t *testing.T, c *client, opt uint32, data []byte) optReply {
	t.Helper()
	c.sendOpt(opt, data)
	return c.mustOptReply(opt)
}

// tlsServer starts a server with one 1 MiB export "disk" and the given
// TLS settings.
func tlsServer(t *testing.T, p *testPKI, require, clientCerts bool) (*testServer, *memDev) {
	t.Helper()
	d := newMemDev(1 << 20)
	copy(d.data, "secret")
	ts := startServer(t, nbd.Options{TLS: p.serverConfig(clientCerts), RequireTLS: require},
		nbd.Export{Name: "disk", Description: "tls disk", Device: d})
	return ts, d
}

// expectClosed checks that the server closes the connection.
func expectClosed(t *testing.T, c *client, what string) {
	t.Helper()
	c.Conn().SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Reader().ReadByte(); err == nil {
		t.Fatalf("%s: the server answered instead of closing", what)
	} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatalf("%s: the connection stayed open", what)
	}
	c.Conn().Close()
}

// readSecret negotiates "disk" over c (already in TLS or not), checks the
// data and returns what NBD_OPT_GO said about the export.
func readSecret(t *testing.T, c *client) exportInfo {
	t.Helper()
	ei, typ := c.info(cOptGo, "disk")
	if typ != cRepAck {
		t.Fatalf("GO: %#x", typ)
	}
	c.start()
	if got, e := c.read(0, 6); e != 0 || string(got) != "secret" {
		t.Fatalf("read: errno %d %q", e, got)
	}
	c.disconnect()
	return ei
}

// TestRequireTLSRefusesPlaintext: with RequireTLS a plaintext client gets
// NBD_REP_ERR_TLS_REQD for every option but STARTTLS and ABORT, is closed
// on NBD_OPT_EXPORT_NAME or without fixed newstyle, and the server keeps
// serving TLS clients.
func TestRequireTLSRefusesPlaintext(t *testing.T) {
	p := sharedPKI(t)
	ts, _ := tlsServer(t, p, true, false)

	c := dialRaw(t, ts.addr, 3)
	for _, o := range []struct {
		opt  uint32
		data []byte
	}{
		{cOptList, nil}, {cOptInfo, infoData("disk")}, {cOptGo, infoData("disk")},
		{cOptStructured, nil}, {cOptListMeta, nil}, {0x1234, []byte("x")},
		{cOptGo, make([]byte, 100<<10)}, // oversized: drained, still TLS_REQD
	} {
		r := plainOpt(t, c, o.opt, o.data)
		if r.typ != cRepErrTLSReqd || !strings.Contains(string(r.data), "STARTTLS") {
			t.Fatalf("plaintext option %d: reply %#x %q, want NBD_REP_ERR_TLS_REQD", o.opt, r.typ, r.data)
		}
	}
	if r := plainOpt(t, c, cOptStartTLS, []byte("x")); r.typ != cRepErrInvalid {
		t.Fatalf("STARTTLS with data: %#x", r.typ)
	}
	if r := plainOpt(t, c, cOptAbort, nil); r.typ != cRepAck {
		t.Fatalf("ABORT: %#x", r.typ)
	}
	expectClosed(t, c, "after ABORT")

	c = dialRaw(t, ts.addr, 3)
	c.sendOpt(cOptExportName, []byte("disk"))
	expectClosed(t, c, "plaintext NBD_OPT_EXPORT_NAME")

	c = dialRaw(t, ts.addr, 0) // not fixed newstyle
	expectClosed(t, c, "client without fixed newstyle")

	c = dialRaw(t, ts.addr, 3)
	if err := c.startTLS(p.clientConfig(nil)); err != nil {
		t.Fatal(err)
	}
	if r := plainOpt(t, c, cOptStartTLS, nil); r.typ != cRepErrInvalid {
		t.Fatalf("STARTTLS inside TLS: %#x, want NBD_REP_ERR_INVALID", r.typ)
	}
	readSecret(t, c)
}

// TestOptionalTLS: without RequireTLS plaintext clients are served and
// STARTTLS works too; a server without TLS answers STARTTLS with UNSUP.
func TestOptionalTLS(t *testing.T) {
	p := sharedPKI(t)
	ts, _ := tlsServer(t, p, false, false)
	readSecret(t, dialRaw(t, ts.addr, 3))
	c := dialRaw(t, ts.addr, 3)
	if err := c.startTLS(p.clientConfig(nil)); err != nil {
		t.Fatal(err)
	}
	readSecret(t, c)

	plain := oneExport(t, newMemDev(4096))
	c = dialRaw(t, plain.addr, 3)
	if r := plainOpt(t, c, cOptStartTLS, nil); r.typ != cRepErrUnsup {
		t.Fatalf("STARTTLS on a server without TLS: %#x", r.typ)
	}
	c.Conn().Close()
}

// TestStartTLSForgetsEarlierOptions: structured replies negotiated before
// STARTTLS do not survive it (the protocol says the server MUST NOT keep
// such state).
func TestStartTLSForgetsEarlierOptions(t *testing.T) {
	p := sharedPKI(t)
	ts, _ := tlsServer(t, p, false, false)
	c := dialRaw(t, ts.addr, 3)
	if r := plainOpt(t, c, cOptStructured, nil); r.typ != cRepAck {
		t.Fatalf("structured: %#x", r.typ)
	}
	if err := c.startTLS(p.clientConfig(nil)); err != nil {
		t.Fatal(err)
	}
	// c.structured is false: a structured reply would be a violation.
	if ei := readSecret(t, c); ei.tflags&cFlagDF != 0 {
		t.Fatalf("GO after STARTTLS: flags %#x (DF: structured replies survived STARTTLS)", ei.tflags)
	}
}

// TestTLSClientCertificates: with client certificates required, a client
// without one or with one from another CA is refused; the right one is
// served.
func TestTLSClientCertificates(t *testing.T) {
	p := sharedPKI(t)
	ts, _ := tlsServer(t, p, true, true)
	for _, tc := range []struct {
		name string
		cert *tls.Certificate
	}{{"no certificate", nil}, {"other CA", &p.foreign}} {
		c := dialRaw(t, ts.addr, 3)
		err := c.startTLS(p.clientConfig(tc.cert))
		if err == nil {
			// TLS 1.3: the client finishes first; the server's refusal
			// arrives with the next read.
			c.sendOpt(cOptList, nil)
			_, err = c.readOptReply()
		}
		if err == nil {
			t.Fatalf("%s: served", tc.name)
		}
		c.Conn().Close()
	}
	c := dialRaw(t, ts.addr, 3)
	if err := c.startTLS(p.clientConfig(&p.client)); err != nil {
		t.Fatal(err)
	}
	readSecret(t, c)
}

// TestTLSHandshakeGarbage: bytes that are not TLS after the ACK close the
// connection; the server goes on serving.
func TestTLSHandshakeGarbage(t *testing.T) {
	p := sharedPKI(t)
	ts, _ := tlsServer(t, p, true, false)
	c := dialRaw(t, ts.addr, 3)
	c.sendOpt(cOptStartTLS, nil)
	if r := c.mustOptReply(cOptStartTLS); r.typ != cRepAck {
		t.Fatalf("STARTTLS: %#x", r.typ)
	}
	c.raw(bytes.Repeat([]byte("not a ClientHello "), 20))
	expectClosed(t, c, "garbage after STARTTLS")
	c = dialRaw(t, ts.addr, 3)
	if err := c.startTLS(p.clientConfig(nil)); err != nil {
		t.Fatal(err)
	}
	readSecret(t, c)
}

// eagerConn sends STARTTLS in the same write as the ClientHello and reads
// the ACK before handing reads to TLS: a client that does not wait for
// the ACK.
type eagerConn struct {
	net.Conn
	t     *testing.T
	first []byte // the STARTTLS option, sent with the first write
	acked bool
}

func (e *eagerConn) Write(b []byte) (int, error) {
	if e.first != nil {
		b = append(e.first, b...)
		e.first = nil
		n, err := e.Conn.Write(b)
		return max(0, n-optHeaderLen), err
	}
	return e.Conn.Write(b)
}

const optHeaderLen = 16

func (e *eagerConn) Read(b []byte) (int, error) {
	if !e.acked {
		var h [20]byte
		if _, err := io.ReadFull(e.Conn, h[:]); err != nil {
			return 0, err
		}
		if binary.BigEndian.Uint32(h[12:]) != cRepAck {
			e.t.Errorf("STARTTLS reply %#x", binary.BigEndian.Uint32(h[12:]))
		}
		e.acked = true
	}
	return e.Conn.Read(b)
}

func TestTLSClientHelloBeforeAck(t *testing.T) {
	p := sharedPKI(t)
	ts, _ := tlsServer(t, p, true, false)
	c := dialRaw(t, ts.addr, 3)
	tc := tls.Client(&eagerConn{Conn: c.Conn(), t: t, first: appendOpt(nil, cOptStartTLS, nil)}, p.clientConfig(nil))
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	c.SetConn(tc)
	readSecret(t, c)
}

// TestNewServerKeepsTLS: NewServer never falls back to plaintext: options
// that are invalid because of TLS leave a server that refuses everyone.
func TestNewServerKeepsTLS(t *testing.T) {
	if _, err := nbd.NewServerChecked(nbd.Options{RequireTLS: true}); err == nil {
		t.Fatal("RequireTLS without TLS accepted")
	}
	if _, err := nbd.NewServerChecked(nbd.Options{TLS: &tls.Config{}}); err == nil {
		t.Fatal("TLS without a certificate accepted")
	}
	srv := nbd.NewServer(nbd.Options{RequireTLS: true, MaxInFlight: -1})
	srv.AddExport(nbd.Export{Name: "disk", Device: newMemDev(4096)})
	c := dialRaw(t, runServer(t, srv).addr, 3)
	if r := plainOpt(t, c, cOptGo, infoData("disk")); r.typ != cRepErrTLSReqd {
		t.Fatalf("GO on a server whose TLS setup is broken: %#x", r.typ)
	}
	if r := plainOpt(t, c, cOptStartTLS, nil); r.typ != cRepErrUnsup {
		t.Fatalf("STARTTLS without a TLS config: %#x", r.typ)
	}
	c.Conn().Close()
}
