package config_test

// Tests of scripts/install.sh and the dist/ files it installs. They live
// here because the installed example must parse with this package; they run
// the script into a temporary --root, so they never touch the machine.

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/blockmirror/blockmirror/internal/config"
)

const installScript = "../../scripts/install.sh"

func runInstall(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("bash", append([]string{installScript}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("install.sh %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func fakeBinary(t *testing.T) string {
	bin := filepath.Join(t.TempDir(), "blockmirror")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\necho fake\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return bin
}

func mode(t *testing.T, path string) os.FileMode {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode()
}

func TestInstallIntoRoot(t *testing.T) {
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("no bash")
	}
	root := t.TempDir()
	bin := fakeBinary(t)
	out := runInstall(t, "--root", root, "--binary", bin)
	for _, want := range []string{"skip: sysctl", "skip: systemctl daemon-reload", "skip: groupadd blockmirror"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}

	files := map[string]os.FileMode{
		"usr/local/bin/blockmirror":                       0o755,
		"etc/systemd/system/blockmirror-primary@.service": 0o644,
		"etc/systemd/system/blockmirror-mirror@.service":  0o644,
		"etc/sysctl.d/60-blockmirror.conf":                0o644,
		"etc/blockmirror/blockmirror.example.toml":        0o644,
	}
	for f, m := range files {
		if got := mode(t, filepath.Join(root, f)).Perm(); got != m {
			t.Errorf("%s: mode %v, want %v", f, got, m)
		}
	}
	if m := mode(t, filepath.Join(root, "var/lib/blockmirror")); !m.IsDir() || m.Perm() != 0o700 {
		t.Errorf("var/lib/blockmirror: mode %v, want a 0700 directory", m)
	}
	if _, err := config.Load(filepath.Join(root, "etc/blockmirror/blockmirror.example.toml")); err != nil {
		t.Errorf("installed example does not parse: %v", err)
	}
	sysctl, _ := os.ReadFile(filepath.Join(root, "etc/sysctl.d/60-blockmirror.conf"))
	for _, k := range []string{"net.core.rmem_max = 8388608", "net.core.wmem_max = 8388608"} {
		if !strings.Contains(string(sysctl), k) {
			t.Errorf("sysctl drop-in lacks %q", k)
		}
	}
	for _, u := range []struct{ unit, cmd string }{{"primary", "serve"}, {"mirror", "mirror"}} {
		b, err := os.ReadFile(filepath.Join(root, "etc/systemd/system/blockmirror-"+u.unit+"@.service"))
		if err != nil {
			t.Fatal(err)
		}
		s := string(b)
		for _, want := range []string{
			"ExecStart=/usr/local/bin/blockmirror " + u.cmd + " --config /etc/blockmirror/%i.toml\n",
			"Restart=on-failure\n", "NoNewPrivileges=yes\n", "ProtectSystem=strict\n",
			"ReadWritePaths=/var/lib/blockmirror\n", "LimitNOFILE=", "After=network-online.target",
			"KillSignal=SIGTERM\n", "TimeoutStopSec=",
			"Group=blockmirror\n", "RuntimeDirectory=blockmirror\n", "RuntimeDirectoryPreserve=yes\n",
		} {
			if !strings.Contains(s, want) {
				t.Errorf("%s unit lacks %q", u.unit, want)
			}
		}
	}

	// Idempotent: a second run changes nothing.
	out = runInstall(t, "--root", root, "--binary", bin)
	if strings.Contains(out, "install: ") {
		t.Errorf("second run changed something:\n%s", out)
	}
	if n := strings.Count(out, "unchanged: "); n < 7 {
		t.Errorf("second run reports %d unchanged items, want at least 7:\n%s", n, out)
	}

	// An edited config is never overwritten; a changed binary is replaced.
	example := filepath.Join(root, "etc/blockmirror/blockmirror.example.toml")
	if err := os.WriteFile(example, []byte("# mine\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, []byte("#!/bin/sh\necho v2\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	out = runInstall(t, "--root", root, "--binary", bin)
	if b, _ := os.ReadFile(example); string(b) != "# mine\n" {
		t.Error("install.sh overwrote an existing config file")
	}
	if !strings.Contains(out, "kept: /etc/blockmirror/blockmirror.example.toml") {
		t.Errorf("output does not say the config was kept:\n%s", out)
	}
	if b, _ := os.ReadFile(filepath.Join(root, "usr/local/bin/blockmirror")); !strings.Contains(string(b), "v2") {
		t.Error("changed binary was not reinstalled")
	}
}

func TestInstallPrefix(t *testing.T) {
	root := t.TempDir()
	runInstall(t, "--root", root, "--binary", fakeBinary(t), "--prefix", "/opt/bm")
	if _, err := os.Stat(filepath.Join(root, "opt/bm/bin/blockmirror")); err != nil {
		t.Error(err)
	}
	b, _ := os.ReadFile(filepath.Join(root, "etc/systemd/system/blockmirror-primary@.service"))
	if !strings.Contains(string(b), "ExecStart=/opt/bm/bin/blockmirror serve") || strings.Contains(string(b), "/usr/local/bin") {
		t.Errorf("unit does not point at the prefix:\n%s", b)
	}
}

func TestInstallDryRun(t *testing.T) {
	root := t.TempDir()
	out := runInstall(t, "--dry-run", "--root", root, "--binary", fakeBinary(t))
	entries, _ := os.ReadDir(root)
	if len(entries) != 0 {
		t.Errorf("dry run created %d entries in the root", len(entries))
	}
	if !strings.Contains(out, "would: install -m 0644 blockmirror-primary@.service "+root+"/etc/systemd/system/") ||
		!strings.Contains(out, "dry run: nothing was changed") {
		t.Errorf("dry run output:\n%s", out)
	}
	// Without --root, a dry run must not need root and must not touch /.
	out = runInstall(t, "--dry-run", "--binary", fakeBinary(t))
	if !regexp.MustCompile(`would: (sysctl -p|install .* /etc/sysctl.d/60-blockmirror.conf)`).MatchString(out) {
		t.Errorf("dry run into / does not mention the sysctl drop-in:\n%s", out)
	}
}

func TestInstallBadArguments(t *testing.T) {
	for _, args := range [][]string{{"--bogus"}, {"--prefix", "relative"}} {
		cmd := exec.Command("bash", append([]string{installScript}, args...)...)
		out, err := cmd.CombinedOutput()
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 {
			t.Errorf("install.sh %v: %v, want exit 2\n%s", args, err, out)
		}
	}
	out, err := exec.Command("bash", installScript, "--binary", "/nonexistent", "--root", t.TempDir()).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "no such file") {
		t.Errorf("missing --binary: %v\n%s", err, out)
	}
}

// TestInstallBuilds runs the real build (slow: compiles the command).
func TestInstallBuilds(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary; skipped with -short")
	}
	root := t.TempDir()
	runInstall(t, "--root", root)
	out, err := exec.Command(filepath.Join(root, "usr/local/bin/blockmirror"), "version").CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "blockmirror ") {
		t.Errorf("installed binary: %v\n%s", err, out)
	}
}

// TestUnitsVerify asks systemd-analyze (when installed) to check the units.
func TestUnitsVerify(t *testing.T) {
	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("no systemd-analyze")
	}
	dir := t.TempDir()
	for _, u := range []string{"blockmirror-primary@.service", "blockmirror-mirror@.service"} {
		b, err := os.ReadFile("../../dist/systemd/" + u)
		if err != nil {
			t.Fatal(err)
		}
		// Point at an existing executable so only real problems remain.
		s := strings.ReplaceAll(string(b), "/usr/local/bin/blockmirror", "/bin/true")
		inst := strings.Replace(u, "@", "@test", 1)
		if err := os.WriteFile(filepath.Join(dir, inst), []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command(sa, "verify", "--man=no", "./blockmirror-primary@test.service", "./blockmirror-mirror@test.service")
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}
