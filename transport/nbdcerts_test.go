package transport_test

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/blockmirror/blockmirror/transport"
)

// TestNBDCertificates: client and server certificates for NBD carry one
// usage each, the server one the requested host names and addresses, and
// WritePEMDir lays them out as qemu and libnbd read them.
func TestNBDCertificates(t *testing.T) {
	ca, err := transport.GenerateCA("test CA", transport.KeyECDSAP256, 0)
	if err != nil {
		t.Fatal(err)
	}
	cl, err := ca.IssueClient("hv1", transport.KeyECDSAP256, 0)
	if err != nil {
		t.Fatal(err)
	}
	if u := cl.Leaf.ExtKeyUsage; !slices.Equal(u, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}) || cl.Leaf.Subject.CommonName != "hv1" {
		t.Errorf("client certificate: usages %v, CN %q", u, cl.Leaf.Subject.CommonName)
	}
	sv, err := ca.IssueServer("p1", []string{"10.0.0.5", "p1.example.com", "::1", "p1"}, transport.KeyECDSAP256, 0)
	if err != nil {
		t.Fatal(err)
	}
	if u := sv.Leaf.ExtKeyUsage; !slices.Equal(u, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}) {
		t.Errorf("server usages %v", u)
	}
	if !slices.Equal(sv.Leaf.DNSNames, []string{"p1", "p1.example.com"}) || len(sv.Leaf.IPAddresses) != 2 {
		t.Errorf("server SANs: %v %v", sv.Leaf.DNSNames, sv.Leaf.IPAddresses)
	}
	for _, h := range []string{"10.0.0.5", "p1.example.com", "::1", "p1"} {
		if err := sv.Leaf.VerifyHostname(h); err != nil {
			t.Errorf("server certificate does not cover %s: %v", h, err)
		}
	}
	if _, err := ca.IssueClient("bad name", transport.KeyECDSAP256, 0); err == nil {
		t.Error("invalid client name accepted")
	}

	dir := filepath.Join(t.TempDir(), "pki")
	if err := transport.WritePEMDir(dir, cl, false); err != nil {
		t.Fatal(err)
	}
	if err := transport.WritePEMDir(dir, sv, true); err != nil { // same CA: ca-cert.pem is shared
		t.Fatal(err)
	}
	for f, mode := range map[string]os.FileMode{"ca-cert.pem": 0o644, "client-cert.pem": 0o644, "client-key.pem": 0o600,
		"server-cert.pem": 0o644, "server-key.pem": 0o600} {
		fi, err := os.Stat(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != mode {
			t.Errorf("%s mode %v, want %v", f, fi.Mode().Perm(), mode)
		}
	}
	if fi, _ := os.Stat(dir); fi.Mode().Perm() != 0o700 {
		t.Errorf("directory mode %v", fi.Mode().Perm())
	}
	pair, err := tls.LoadX509KeyPair(filepath.Join(dir, "client-cert.pem"), filepath.Join(dir, "client-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(pair.Certificate[0])
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: cl.Roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("written client certificate does not verify: %v", err)
	}
	err = transport.WritePEMDir(dir, cl, false)
	if err == nil || !strings.Contains(err.Error(), "client-key.pem already exists") {
		t.Errorf("second write: %v, want a refusal naming the file", err)
	}
	other, _ := transport.GenerateCA("other", transport.KeyECDSAP256, 0)
	oc, _ := other.IssueClient("hv2", transport.KeyECDSAP256, 0)
	dir2 := filepath.Join(t.TempDir(), "x")
	if err := transport.WritePEMDir(dir2, oc, false); err != nil {
		t.Fatal(err)
	}
	if err := transport.WritePEMDir(dir2, sv, true); err == nil || !strings.Contains(err.Error(), "ca-cert.pem already exists") {
		t.Errorf("a certificate of another CA into the same directory: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir2, "server-key.pem")); err == nil {
		t.Error("a refused write left files behind")
	}
}

// TestNBDCertificatesCannotJoinCluster: a certificate the cluster CA
// issued for an NBD client or server is refused by nodes in both
// directions, so handing one to a hypervisor gives it no replication or
// fencing power.
func TestNBDCertificatesCannotJoinCluster(t *testing.T) {
	ca, err := transport.GenerateCA("test CA", transport.KeyECDSAP256, 0)
	if err != nil {
		t.Fatal(err)
	}
	m1, _ := ca.IssueNode("m1", transport.KeyECDSAP256, 0)
	m2, _ := ca.IssueNode("m2", transport.KeyECDSAP256, 0)
	hv, _ := ca.IssueClient("m2", transport.KeyECDSAP256, 0)
	nbdSrv, _ := ca.IssueServer("m1", []string{"127.0.0.1"}, transport.KeyECDSAP256, 0)

	serverLog, err := dialErr(t, m1, hv, "m1", nil)
	if !errors.Is(err, transport.ErrRejected) {
		t.Errorf("NBD client certificate as a dialer: %v, want ErrRejected", err)
	}
	if !strings.Contains(serverLog, "not a node certificate") {
		t.Errorf("listener log lacks the reason:\n%s", serverLog)
	}
	_, err = dialErr(t, nbdSrv, m2, "m1", nil)
	if !errors.Is(err, transport.ErrUntrustedPeer) || !strings.Contains(err.Error(), "not a node certificate") {
		t.Errorf("NBD server certificate as a listener: %v, want ErrUntrustedPeer (not a node certificate)", err)
	}
	// The node certificates themselves still work.
	if cc, _ := pair(t, testConfig(m2, nil), testConfig(m1, nil)); cc.PeerName() != "m1" {
		t.Errorf("peer %q", cc.PeerName())
	}
}
