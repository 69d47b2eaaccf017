package transport_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/blockmirror/blockmirror/transport"
)

func TestInitCertsAndLoad(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "certs")
	if err := transport.InitCerts(dir, []string{"m1", "m2"}); err != nil {
		t.Fatal(err)
	}
	for f, mode := range map[string]os.FileMode{"ca.crt": 0o644, "ca.key": 0o600, "m1.crt": 0o644, "m1.key": 0o600, "m2.key": 0o600} {
		fi, err := os.Stat(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != mode {
			t.Errorf("%s mode %v, want %v", f, fi.Mode().Perm(), mode)
		}
	}
	ca1, _ := os.ReadFile(filepath.Join(dir, "ca.crt"))
	m1, _ := os.ReadFile(filepath.Join(dir, "m1.crt"))

	// Adding a node keeps the CA and the existing node pairs.
	issued, err := transport.InitCertsWith(dir, []string{"m1", "m3"}, transport.CertOptions{KeyType: transport.KeyEd25519})
	if err != nil {
		t.Fatal(err)
	}
	if len(issued) != 1 || issued[0] != "m3" {
		t.Errorf("issued %v, want [m3]", issued)
	}
	ca2, _ := os.ReadFile(filepath.Join(dir, "ca.crt"))
	m1b, _ := os.ReadFile(filepath.Join(dir, "m1.crt"))
	if !bytes.Equal(ca1, ca2) || !bytes.Equal(m1, m1b) {
		t.Error("existing CA or node certificate was rewritten")
	}

	ids := map[string]*transport.Identity{}
	for _, n := range []string{"m1", "m2", "m3"} {
		id, err := transport.LoadNode(dir, n)
		if err != nil {
			t.Fatal(err)
		}
		if id.Name != n || id.Leaf.NotAfter.Before(time.Now().Add(10*365*24*time.Hour)) {
			t.Errorf("%s: name %q, expires %v", n, id.Name, id.Leaf.NotAfter)
		}
		ids[n] = id
	}
	// Loaded identities (mixed key types) interoperate.
	cc, sc := pair(t, testConfig(ids["m3"], nil), testConfig(ids["m1"], nil))
	if cc.PeerName() != "m1" || sc.PeerName() != "m3" {
		t.Errorf("names %q %q", cc.PeerName(), sc.PeerName())
	}

	// Replacing the CA re-issues the named nodes; m2 (not named) no longer verifies.
	if _, err := transport.InitCertsWith(dir, []string{"m1"}, transport.CertOptions{ReplaceCA: true}); err != nil {
		t.Fatal(err)
	}
	ca3, _ := os.ReadFile(filepath.Join(dir, "ca.crt"))
	if bytes.Equal(ca1, ca3) {
		t.Error("ReplaceCA kept the old CA")
	}
	if _, err := transport.LoadNode(dir, "m1"); err != nil {
		t.Errorf("re-issued m1: %v", err)
	}
	if _, err := transport.LoadNode(dir, "m2"); err == nil || !strings.Contains(err.Error(), "not valid under ca.crt") {
		t.Errorf("m2 signed by the old CA loaded: %v", err)
	}
	// ...and InitCerts refuses to keep such a pair silently.
	if err := transport.InitCerts(dir, []string{"m2"}); err == nil {
		t.Error("InitCerts accepted a node pair from another CA")
	}
}

func TestLoadNodeErrors(t *testing.T) {
	dir := t.TempDir()
	_, err := transport.LoadNode(dir, "m1")
	if err == nil || !errors.Is(err, os.ErrNotExist) || !strings.Contains(err.Error(), "blockmirror certs init") || !strings.Contains(err.Error(), dir) {
		t.Errorf("missing dir: %v", err)
	}
	if err := transport.InitCerts(dir, []string{"m1", "m2"}); err != nil {
		t.Fatal(err)
	}
	// Swap m2's key in: mismatch must be detected.
	k2, _ := os.ReadFile(filepath.Join(dir, "m2.key"))
	os.WriteFile(filepath.Join(dir, "m1.key"), k2, 0o600)
	if _, err := transport.LoadNode(dir, "m1"); err == nil || !strings.Contains(err.Error(), "does not match") {
		t.Errorf("mismatched key: %v", err)
	}
	// A certificate for another name under m1.crt.
	c2, _ := os.ReadFile(filepath.Join(dir, "m2.crt"))
	os.WriteFile(filepath.Join(dir, "m1.crt"), c2, 0o644)
	if _, err := transport.LoadNode(dir, "m1"); err == nil || !strings.Contains(err.Error(), `issued to "m2"`) {
		t.Errorf("wrong name: %v", err)
	}
	os.WriteFile(filepath.Join(dir, "m2.crt"), []byte("garbage"), 0o644)
	if _, err := transport.LoadNode(dir, "m2"); err == nil || !strings.Contains(err.Error(), "no PEM block") {
		t.Errorf("garbage cert: %v", err)
	}
	if _, err := transport.LoadNode(dir, "../m1"); !errors.Is(err, transport.ErrConfig) {
		t.Errorf("path-like name: %v", err)
	}
}

func TestValidateNodeName(t *testing.T) {
	good := []string{"m1", "node-a.dc1", "A", strings.Repeat("x", 63)}
	bad := []string{"", "-a", "a-", ".a", "a..b", "a/b", "a b", "ä", strings.Repeat("x", 64), "a_b"}
	for _, n := range good {
		if err := transport.ValidateNodeName(n); err != nil {
			t.Errorf("%q: %v", n, err)
		}
	}
	for _, n := range bad {
		if err := transport.ValidateNodeName(n); err == nil {
			t.Errorf("%q accepted", n)
		}
	}
}
