package main

import (
	"bytes"
	"flag"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/blockmirror/blockmirror/internal/config"
	"github.com/blockmirror/blockmirror/internal/daemon"
	"github.com/blockmirror/blockmirror/mirror"
)

func TestSizeAndDurationFlags(t *testing.T) {
	var sz config.Size
	var d config.Duration
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Var(sizeFlag{&sz}, "size", "")
	fs.Var(durationFlag{&d}, "lag", "")
	if err := fs.Parse([]string{"--size", "2GiB", "--lag", "250ms"}); err != nil || sz != 2<<30 || d.Duration() != 250*time.Millisecond {
		t.Fatalf("parsed %v %v: %v", sz, d, err)
	}
	for _, bad := range []string{"", "G", "-1", "1X", "1.5G", "99999999999T"} {
		if err := fs.Parse([]string{"--size", bad}); err == nil {
			t.Errorf("--size %q accepted", bad)
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

// parseDaemon parses serve's flags and merges them with the file.
func parseDaemon(t *testing.T, role string, args ...string) (*config.Process, error) {
	t.Helper()
	d, fs := serveFlags(io.Discard)
	if role == config.RoleMirror {
		d, fs = mirrorFlags(io.Discard)
	}
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	return d.process(fs, role)
}

// TestDaemonFlagsOverTheFile: flags and the file become one
// config.Process: without --volume every volume of the role (each with its
// own settings), with it the one named; flags given override the file,
// flags not given do not.
func TestDaemonFlagsOverTheFile(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "n.toml")
	os.WriteFile(p, []byte(`
[node]
name = "p1"
certs = "/c"
control_group = "ops"
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
	proc, err := parseDaemon(t, config.RolePrimary, "--config", p)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(proc.Names(), ","); got != "v1,v2" {
		t.Fatalf("volumes %q, want v1,v2", got)
	}
	v1, v2 := proc.Volumes[0], proc.Volumes[1]
	if v1.Data != "/d1" || len(v1.Mirrors) != 1 || v1.Mode != "async" || v1.Export != "v1" {
		t.Errorf("v1: %+v", v1)
	}
	if v2.Data != "/d2" || len(v2.Mirrors) != 0 || v2.NBD != "127.0.0.1:10810" {
		t.Errorf("v2: %+v", v2)
	}
	if proc.Node.Name != "p1" || proc.Node.ControlGroup != "ops" || proc.Node.Admin != config.DefaultAdmin {
		t.Errorf("node: %+v", proc.Node)
	}
	if _, err := parseDaemon(t, config.RoleMirror, "--config", p); err == nil || !strings.Contains(err.Error(), "no mirror volume") {
		t.Errorf("mirror of a file without mirrors: %v", err)
	}
	proc, err = parseDaemon(t, config.RolePrimary, "--config", p, "--volume", "v1", "--mode", "sync", "--control-group", "")
	if err != nil {
		t.Fatal(err)
	}
	if len(proc.Volumes) != 1 || proc.Volumes[0].Data != "/d1" || proc.Volumes[0].Mode != "sync" || len(proc.Volumes[0].Mirrors) != 1 || proc.Node.Name != "p1" {
		t.Errorf("--volume v1 --mode sync: %+v", proc)
	}
	if proc.Node.ControlGroup != "" {
		t.Errorf("--control-group '' over the file: %q", proc.Node.ControlGroup)
	}
	if _, err := parseDaemon(t, config.RolePrimary, "--config", p, "--volume", "nope"); err == nil || !strings.Contains(err.Error(), `no primary volume named "nope"`) {
		t.Errorf("unknown volume: %v", err)
	}
	if _, err := parseDaemon(t, config.RolePrimary, "--volume", "v1"); err == nil || !strings.Contains(err.Error(), "--volume needs --config") {
		t.Errorf("--volume without --config: %v", err)
	}
	// Flags alone: one unnamed volume with the flags' defaults; the
	// default control group is not explicit.
	proc, err = parseDaemon(t, config.RolePrimary, "--data", "/d", "--mirror", "m1=127.0.0.1:7001", "--max-lag", "1s")
	if err != nil {
		t.Fatal(err)
	}
	v := proc.Volumes[0]
	if len(proc.Volumes) != 1 || v.Name != "" || v.Data != "/d" || v.Export != "disk" || v.NBD != config.DefaultNBD ||
		v.Role != config.RolePrimary || v.MaxLag.Duration() != time.Second || v.AckTimeout != config.DefaultAckTimeout ||
		len(v.Mirrors) != 1 || proc.Node.ControlGroup != "" || proc.Node.Control != config.ControlAuto {
		t.Errorf("flags alone: %+v", proc)
	}
}

// TestDaemonFlagsMatchTheFile: every daemon flag that overrides a file
// key names one the file has, so that a flag given is never lost.
func TestDaemonFlagsMatchTheFile(t *testing.T) {
	for role, flags := range map[string]func(io.Writer) (*daemonFlags, *flag.FlagSet){config.RolePrimary: serveFlags, config.RoleMirror: mirrorFlags} {
		d, fs := flags(io.Discard)
		fs.VisitAll(func(f *flag.Flag) {
			if _, ok := d.keys[f.Name]; !ok && f.Name != "config" && f.Name != "volume" && !strings.HasPrefix(f.Name, "test-") {
				t.Errorf("%s --%s overrides no configuration key", role, f.Name)
			}
		})
		var set []string
		for _, k := range d.keys {
			set = append(set, k)
		}
		if _, err := config.Merge(nil, "", role, "", d.node, d.vol, set); err != nil {
			t.Errorf("%s: %v", role, err)
		}
	}
}

func TestPrintStatusSeveralVolumes(t *testing.T) {
	st := &daemon.NodeStatus{
		Volumes: map[string]daemon.NodeStatus{
			"b": {Mirror: &mirror.ReplicaStatus{Role: "mirror", Volume: "uuid-b", Connected: true, Primary: "p1"}},
			"a": {Mirror: &mirror.ReplicaStatus{Role: "mirror"}},
		},
		Connections: &daemon.ConnStatus{Accepted: 1},
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
