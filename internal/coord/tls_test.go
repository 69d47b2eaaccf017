package coord

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// writeCerts makes a CA in dir and signs server.crt (for 127.0.0.1) and
// client.crt with it; other holds a client certificate of another CA.
func writeCerts(t *testing.T, dir, other string) {
	t.Helper()
	ca, caKey := newCert(t, nil, nil, "test ca", true)
	write := func(dir, name string, der []byte, key *ecdsa.PrivateKey) {
		os.MkdirAll(dir, 0o700)
		os.WriteFile(filepath.Join(dir, name+".crt"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
		if key != nil {
			kb, err := x509.MarshalECPrivateKey(key)
			if err != nil {
				t.Fatal(err)
			}
			os.WriteFile(filepath.Join(dir, name+".key"), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600)
		}
	}
	write(dir, "ca", ca.Raw, nil)
	srv, srvKey := newCert(t, ca, caKey, "etcd", false)
	write(dir, "server", srv.Raw, srvKey)
	cl, clKey := newCert(t, ca, caKey, "node-a", false)
	write(dir, "client", cl.Raw, clKey)
	// other: trusts the right CA but presents a certificate of its own CA.
	oca, ocaKey := newCert(t, nil, nil, "other ca", true)
	ocl, oclKey := newCert(t, oca, ocaKey, "intruder", false)
	write(other, "ca", ca.Raw, nil)
	write(other, "client", ocl.Raw, oclKey)
}

func newCert(t *testing.T, parent *x509.Certificate, parentKey *ecdsa.PrivateKey, cn string, isCA bool) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{SerialNumber: serial, Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, BasicConstraintsValid: true, IsCA: isCA}
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

func TestEtcdWithClientCertificates(t *testing.T) {
	certs, other := t.TempDir(), t.TempDir()
	writeCerts(t, certs, other)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	m, err := StartEmbedded(ctx, EmbedConfig{Dir: t.TempDir(), Name: "e0", ClientURL: "https://" + freeAddr(t),
		PeerURL: "http://" + freeAddr(t), CertsDir: certs, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)

	cli, err := Connect(ClientConfig{Endpoints: []string{m.Endpoint()}, CertsDir: certs, DialTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	if err := Pause(ctx, cli, "/test", "vol", "tls"); err != nil {
		t.Fatalf("with the right client certificate: %v", err)
	}
	if cs, err := ReadStatus(ctx, cli, "/test", "vol"); err != nil || cs.Paused == nil {
		t.Fatalf("status over TLS: %+v %v", cs, err)
	}

	for name, cfg := range map[string]ClientConfig{
		"no certificates":             {Endpoints: []string{m.Endpoint()}},
		"a certificate of another CA": {Endpoints: []string{m.Endpoint()}, CertsDir: other},
	} {
		bad, err := Connect(cfg)
		if err != nil {
			continue // refused before dialing: as good
		}
		rctx, rcancel := context.WithTimeout(ctx, 3*time.Second)
		_, err = bad.Get(rctx, "/test/vol/pause")
		rcancel()
		bad.Close()
		if err == nil {
			t.Errorf("%s: etcd answered", name)
		}
	}
	if _, err := Connect(ClientConfig{Endpoints: []string{m.Endpoint()}, CertsDir: t.TempDir()}); err == nil || !strings.Contains(err.Error(), "ca.crt") {
		t.Errorf("an empty certificate directory: %v", err)
	}
}
