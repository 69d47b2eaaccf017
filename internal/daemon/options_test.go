package daemon

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/blockmirror/blockmirror/internal/config"
)

// TestControlSocketAndGroup: the default socket is named after the node,
// else the volume, else the export, and only after plain file names; an
// explicit path or ” wins; a named group is explicit, none is the default
// group (whose absence is only a warning).
func TestControlSocketAndGroup(t *testing.T) {
	auto := config.NodeConfig{Control: config.ControlAuto}
	if got := controlSocket(auto, "", "", "disk"); got != "/run/blockmirror/disk.sock" {
		t.Errorf("export only: %q", got)
	}
	if got := controlSocket(auto, "n1", "v1"); got != "/run/blockmirror/n1.sock" {
		t.Errorf("node name first: %q", got)
	}
	for _, export := range []string{"../../etc/x", "a/b", ".hidden", "with space"} {
		if got := controlSocket(auto, "", "", export); got != "/run/blockmirror/blockmirror.sock" {
			t.Errorf("export %q makes the socket %q", export, got)
		}
	}
	if got := controlSocket(config.NodeConfig{Control: "/run/bm-test/p1.sock"}, "n1"); got != "/run/bm-test/p1.sock" {
		t.Errorf("explicit path: %q", got)
	}
	if got := controlSocket(config.NodeConfig{Control: ""}, "n1"); got != "" {
		t.Errorf("disabled: %q", got)
	}
	if g, explicit := controlGroup(config.NodeConfig{ControlGroup: "ops"}); g != "ops" || !explicit {
		t.Errorf("named group: %q %v", g, explicit)
	}
	if g, explicit := controlGroup(config.NodeConfig{}); g != DefaultControlGroup || explicit {
		t.Errorf("default group: %q %v", g, explicit)
	}
}

// TestNBDTLSSettings: the node's nbd_tls settings give the NBD server's
// TLS configuration, and every inconsistent combination is refused with a
// message saying what to change.
func TestNBDTLSSettings(t *testing.T) {
	certs := certsDir(t, "p1")
	n := config.NodeConfig{Name: "p1", Certs: certs, NBDTLS: config.NBDTLSRequire, NBDTLSClientCA: config.NBDTLSClientCACluster}
	cfg, require, err := nbdTLS(n)
	if err != nil || cfg == nil || !require || cfg.ClientCAs == nil || len(cfg.Certificates) != 1 {
		t.Fatalf("require with the node's certificate and the cluster CA: %v require %v err %v", cfg, require, err)
	}
	if cfg, _, err := nbdTLS(config.NodeConfig{NBDTLS: config.NBDTLSOff}); err != nil || cfg != nil {
		t.Errorf("off: %v %v", cfg, err)
	}
	for _, tc := range []struct {
		n   config.NodeConfig
		err string
	}{
		{config.NodeConfig{NBDTLS: "yes"}, `want off, on or require`},
		{config.NodeConfig{NBDTLS: config.NBDTLSRequire}, "needs a server certificate"},
		{config.NodeConfig{NBDTLS: config.NBDTLSOff, NBDTLSCert: "/x.pem"}, "need --nbd-tls on or require"},
		{config.NodeConfig{NBDTLS: config.NBDTLSOn, NBDTLSCert: "/x.pem"}, "go together"},
		{config.NodeConfig{NBDTLS: config.NBDTLSOn, Certs: certs, Name: "p1", NBDTLSClientCA: "/nonexistent.pem"}, "no such file"},
		{config.NodeConfig{NBDTLS: config.NBDTLSOn, NBDTLSCert: "/x.pem", NBDTLSKey: "/y.pem", NBDTLSClientCA: config.NBDTLSClientCACluster}, "/x.pem"},
		{config.NodeConfig{NBDTLS: config.NBDTLSOn, Certs: filepath.Join(certs, "missing"), Name: "p1"}, "node certificate"},
	} {
		if _, _, err := nbdTLS(tc.n); err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("%+v: %v, want an error with %q", tc.n, err, tc.err)
		}
	}
}
