package main

import (
	"bytes"
	"flag"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/blockmirror/blockmirror/mirror"
)

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"4096": 4096, "512K": 512 << 10, "64M": 64 << 20, "10G": 10 << 30, "1T": 1 << 40, "2GiB": 2 << 30, "8gb": 8 << 30} {
		got, err := parseSize(in)
		if err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "G", "-1", "1X", "1.5G", "99999999999T"} {
		if _, err := parseSize(bad); err == nil {
			t.Errorf("parseSize(%q) accepted", bad)
		}
	}
}

func TestMirrorFlag(t *testing.T) {
	var m mirrorList
	if err := m.Set("m1=127.0.0.2:7001"); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"m1=127.0.0.3:7001", "noequals", "=1.2.3.4:5", "m2=nohostport", "bad name=127.0.0.1:1"} {
		if err := m.Set(bad); err == nil {
			t.Errorf("--mirror %q accepted", bad)
		}
	}
	if m.String() != "m1=127.0.0.2:7001" {
		t.Fatalf("got %q", m.String())
	}
}

func TestProgressLine(t *testing.T) {
	s := progressLine(512<<20, 1<<30, 100<<20, 200<<20, 2.5, true)
	if !strings.Contains(s, " 50.0%") || !strings.Contains(s, "512.0 MiB of 1.0 GiB") || !strings.Contains(s, "ETA 2s") {
		t.Fatalf("progress line %q", s)
	}
	if strings.Count(s, "#") != 15 {
		t.Fatalf("bar %q", s)
	}
}

func TestUsageAndErrors(t *testing.T) {
	var out, errb bytes.Buffer
	if code := realMain(nil, &out, &errb); code != 0 || !strings.Contains(out.String(), "serve") {
		t.Fatalf("usage: code %d out %q", code, out.String())
	}
	errb.Reset()
	if code := realMain([]string{"nonsense"}, io.Discard, &errb); code != 2 || !strings.Contains(errb.String(), "unknown command") {
		t.Fatalf("unknown command: code %d: %s", code, errb.String())
	}
	errb.Reset()
	if code := realMain([]string{"serve"}, io.Discard, &errb); code != 2 || !strings.Contains(errb.String(), "--data is required") {
		t.Fatalf("serve without --data: code %d: %s", code, errb.String())
	}
	errb.Reset()
	if code := realMain([]string{"promote"}, io.Discard, &errb); code != 2 {
		t.Fatalf("promote without target: code %d", code)
	}
	// Every command answers -h with its usage and exit 0.
	for _, c := range commands() {
		errb.Reset()
		if code := realMain([]string{c.name, "-h"}, io.Discard, &errb); code != 0 || !strings.Contains(errb.String(), "Usage: blockmirror "+strings.Fields(c.name)[0]) {
			t.Errorf("%s -h: code %d: %s", c.name, code, errb.String())
		}
	}
}

func TestConfigApplyAndOverride(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "n.toml")
	os.WriteFile(p, []byte(`
[node]
name = "p1"
certs = "/c"
[[volumes]]
name = "v1"
role = "primary"
data = "/d1"
mode = "async"
sync_acks = 1
mirrors = [{ name = "m1", address = "127.0.0.1:7001" }]
[[volumes]]
name = "v2"
role = "primary"
data = "/d2"
nbd = "127.0.0.1:10810"
`), 0o600)
	var f serveFlags
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&f.data, "data", "", "")
	f.repl.register(fs)
	var cf configFlags
	cf.register(fs)
	if err := fs.Parse([]string{"--config", p}); err != nil {
		t.Fatal(err)
	}
	if err := cf.apply(fs, "primary", &f, nil); err == nil || !strings.Contains(err.Error(), "choose one with --volume") {
		t.Fatalf("two primaries without --volume: %v", err)
	}
	// serve --config without --volume runs both, each with its own settings.
	names, err := cf.several("primary")
	if err != nil || strings.Join(names, ",") != "v1,v2" {
		t.Fatalf("several: %v, %v", names, err)
	}
	f1, err := volumeFlags(fs, &cf, "primary", f, "v1", nil)
	if err != nil {
		t.Fatal(err)
	}
	f2, err := volumeFlags(fs, &cf, "primary", f, "v2", nil)
	if err != nil {
		t.Fatal(err)
	}
	if f1.volumeName != "v1" || f1.data != "/d1" || len(f1.repl.mirrors) != 1 || f1.repl.mode != "async" {
		t.Fatalf("v1: name %q data %q mirrors %v mode %q", f1.volumeName, f1.data, f1.repl.mirrors, f1.repl.mode)
	}
	if f2.volumeName != "v2" || f2.data != "/d2" || len(f2.repl.mirrors) != 0 || f2.nbdAddr != "127.0.0.1:10810" {
		t.Fatalf("v2: name %q data %q mirrors %v nbd %q", f2.volumeName, f2.data, f2.repl.mirrors, f2.nbdAddr)
	}
	if names, err := cf.several("mirror"); err != nil || len(names) != 0 {
		t.Fatalf("several mirrors: %v, %v", names, err)
	}
	if err := fs.Parse([]string{"--config", p, "--volume", "v1", "--mode", "sync"}); err != nil {
		t.Fatal(err)
	}
	if err := cf.apply(fs, "primary", &f, nil); err != nil {
		t.Fatal(err)
	}
	if f.data != "/d1" || f.repl.mode != "sync" || len(f.repl.mirrors) != 1 || f.repl.id.node != "p1" {
		t.Fatalf("applied: data %q mode %q mirrors %v node %q", f.data, f.repl.mode, f.repl.mirrors, f.repl.id.node)
	}
	if err := fs.Parse([]string{"--config", p, "--volume", "nope"}); err != nil {
		t.Fatal(err)
	}
	if err := cf.apply(fs, "primary", &f, nil); err == nil || !strings.Contains(err.Error(), `no primary volume named "nope"`) {
		t.Fatalf("unknown volume: %v", err)
	}
}

func TestPrintStatusSeveralVolumes(t *testing.T) {
	st := &nodeStatus{
		Volumes: map[string]nodeStatus{
			"b": {Mirror: &mirror.MirrorStatus{Role: "mirror", Volume: "uuid-b", Connected: true, Primary: "p1"}},
			"a": {Mirror: &mirror.MirrorStatus{Role: "mirror"}},
		},
		Connections: &connStatus{Accepted: 1},
	}
	var b strings.Builder
	printStatus(&b, st)
	out := b.String()
	ia, ib := strings.Index(out, "== volume a =="), strings.Index(out, "== volume b ==")
	if ia < 0 || ib < ia {
		t.Fatalf("volumes missing or unsorted:\n%s", out)
	}
	if !strings.Contains(out, "1 accepted") || !strings.Contains(out, "connected to p1") || !strings.Contains(out[ia:ib], "waiting for a primary") {
		t.Fatalf("unexpected status text:\n%s", out)
	}
}

// TestConfigControlAndTLS: the [node] control and NBD TLS keys reach the
// flags, flags override them, and a control group named anywhere is
// explicit (its absence an error, not a warning).
func TestConfigControlAndTLS(t *testing.T) {
	dir := t.TempDir()
	certs := filepath.Join(dir, "certs")
	if code := realMain([]string{"certs", "init", "--out", certs, "p1"}, io.Discard, io.Discard); code != 0 {
		t.Fatal("certs init failed")
	}
	p := filepath.Join(dir, "n.toml")
	os.WriteFile(p, []byte(`
[node]
name = "p1"
certs = "`+certs+`"
control = "/run/bm-test/p1.sock"
control_group = "ops"
nbd_tls = "require"
nbd_tls_client_ca = "cluster"
[[volumes]]
name = "v1"
role = "primary"
data = "/d1"
`), 0o600)
	parse := func(args ...string) *serveFlags {
		t.Helper()
		var f serveFlags
		fs := flag.NewFlagSet("serve", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		fs.StringVar(&f.data, "data", "", "")
		f.control.register(fs)
		f.nbdTLS.register(fs)
		f.repl.register(fs)
		var cf configFlags
		cf.register(fs)
		if err := fs.Parse(args); err != nil {
			t.Fatal(err)
		}
		if err := cf.apply(fs, "primary", &f, nil); err != nil {
			t.Fatal(err)
		}
		return &f
	}
	f := parse("--config", p)
	if got := f.control.resolve(f.repl.id.node); got != "/run/bm-test/p1.sock" || f.control.group != "ops" || !f.control.explicit {
		t.Errorf("control from the file: %q group %q explicit %v", got, f.control.group, f.control.explicit)
	}
	cfg, require, err := f.nbdTLS.config(f.repl.id)
	if err != nil || cfg == nil || !require || cfg.ClientCAs == nil || len(cfg.Certificates) != 1 {
		t.Fatalf("nbd TLS from the file: %v require %v err %v", cfg, require, err)
	}
	f = parse("--config", p, "--control", "", "--nbd-tls", "off", "--nbd-tls-client-ca", "")
	if got := f.control.resolve("p1"); got != "" {
		t.Errorf("--control '' over the file: %q", got)
	}
	if cfg, _, err := f.nbdTLS.config(f.repl.id); err != nil || cfg != nil {
		t.Errorf("--nbd-tls off over the file: %v %v", cfg, err)
	}
	// Without a file: the default socket is named after the node, else the volume, else the export.
	f = parse()
	if f.control.explicit || f.control.resolve("", "", "disk") != "/run/blockmirror/disk.sock" || f.control.resolve("n1", "v1") != "/run/blockmirror/n1.sock" {
		t.Errorf("defaults: explicit %v, %q", f.control.explicit, f.control.resolve("", "", "disk"))
	}
	for _, export := range []string{"../../etc/x", "a/b", ".hidden", "with space"} {
		if got := f.control.resolve("", "", export); got != "/run/blockmirror/blockmirror.sock" {
			t.Errorf("export %q makes the socket %q", export, got)
		}
	}
	for _, tc := range []struct {
		args []string
		err  string
	}{
		{[]string{"--nbd-tls", "yes"}, `want off, on or require`},
		{[]string{"--nbd-tls", "require"}, "needs a server certificate"},
		{[]string{"--nbd-tls-cert", "/x.pem"}, "need --nbd-tls on or require"},
		{[]string{"--nbd-tls", "on", "--nbd-tls-cert", "/x.pem"}, "go together"},
		{[]string{"--nbd-tls", "on", "--certs", certs, "--node", "p1", "--nbd-tls-client-ca", "/nonexistent.pem"}, "no such file"},
		{[]string{"--nbd-tls", "on", "--nbd-tls-cert", "/x.pem", "--nbd-tls-key", "/y.pem", "--nbd-tls-client-ca", "cluster"}, "/x.pem"},
	} {
		f := parse(tc.args...)
		if _, _, err := f.nbdTLS.config(f.repl.id); err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("%v: %v, want an error with %q", tc.args, err, tc.err)
		}
	}
}
