package config_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/blockmirror/blockmirror/internal/config"
)

func TestLoadExample(t *testing.T) {
	c, err := config.Load("testdata/blockmirror.toml")
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Volumes) != 2 {
		t.Fatalf("%d volumes, want 2", len(c.Volumes))
	}
	db, ok := c.Volume("db")
	if !ok {
		t.Fatal(`Volume("db") not found`)
	}
	wantDB := config.VolumeConfig{
		Name: "db", Role: "primary", Data: "/var/lib/blockmirror/db", Size: 10 << 30,
		NBD: config.DefaultNBD, Export: "db", JournalMax: config.DefaultJournalMax, IndirectMin: config.DefaultIndirectMin,
		Mirrors: []config.MirrorConfig{{Name: "beta", Address: "10.0.0.2:7443"}, {Name: "gamma", Address: "[fd00::3]:7443"}},
		Mode:    "sync", SyncAcks: 2, AckLevel: "durable", MaxLag: config.DefaultMaxLag,
		AckTimeout: config.Duration(2 * time.Second), ResyncRate: 100 << 20,
	}
	if !reflect.DeepEqual(*db, wantDB) {
		t.Errorf("db =\n%+v\nwant\n%+v", *db, wantDB)
	}
	logs, _ := c.Volume("logs")
	wantLogs := config.VolumeConfig{
		Name: "logs", Role: "mirror", Data: "/var/lib/blockmirror/logs", Disk: "/dev/vg0/logs",
		NBD: config.DefaultNBD, Export: "logs", JournalMax: config.DefaultJournalMax, IndirectMin: config.DefaultIndirectMin,
		Listen: "0.0.0.0:7443", Allow: []string{"delta"},
	}
	if !reflect.DeepEqual(*logs, wantLogs) {
		t.Errorf("logs =\n%+v\nwant\n%+v", *logs, wantLogs)
	}
	wantNode := config.NodeConfig{Name: "alpha", Certs: "/etc/blockmirror/certs", Admin: config.DefaultAdmin, LogLevel: "info", LogFormat: "json",
		Control: config.ControlAuto, NBDTLS: config.NBDTLSOff}
	if c.Node != wantNode {
		t.Errorf("node = %+v, want %+v", c.Node, wantNode)
	}
	if _, ok := c.Volume("nope"); ok {
		t.Error(`Volume("nope") found`)
	}
	// Volume returns a pointer into the Config, for flag merging.
	db.SyncAcks = 1
	if again, _ := c.Volume("db"); again.SyncAcks != 1 {
		t.Error("Volume does not return a pointer into Config.Volumes")
	}
}

func TestDistExampleParses(t *testing.T) {
	c, err := config.Load("../../dist/blockmirror.example.toml")
	if err != nil {
		t.Fatal(err)
	}
	var primaries, mirrors int
	for _, v := range c.Volumes {
		switch v.Role {
		case config.RolePrimary:
			primaries++
			if len(v.Mirrors) != 2 {
				t.Errorf("primary %q has %d mirrors, the example should show 2", v.Name, len(v.Mirrors))
			}
		case config.RoleMirror:
			mirrors++
		}
	}
	if primaries == 0 || mirrors == 0 {
		t.Errorf("example has %d primaries and %d mirrors; want both", primaries, mirrors)
	}
}

func TestDefaultsAndExplicitZero(t *testing.T) {
	c, err := config.Parse([]byte(`
[node]
admin = ""
name = "n"
certs = "/c"
[[volumes]]
name = "v"
role = "primary"
data = "d"
max_lag = "0s"
indirect_min = 0
[[volumes]]
name = "w"
role = "mirror"
data = "e"
listen = ":7443"
`), "x.toml")
	if err != nil {
		t.Fatal(err)
	}
	v := c.Volumes[0]
	if c.Node.Admin != "" {
		t.Errorf("explicit admin \"\" became %q", c.Node.Admin)
	}
	if v.MaxLag != 0 {
		t.Errorf("explicit max_lag 0 became %v", v.MaxLag)
	}
	if v.IndirectMin != 0 {
		t.Errorf("explicit indirect_min 0 (the indirect path off) became %v", v.IndirectMin)
	}
	// A mirror's indirect_min applies after its promotion: on by default.
	if w := c.Volumes[1]; w.IndirectMin != 256<<10 || config.DefaultIndirectMin != 256<<10 {
		t.Errorf("mirror volume without indirect_min: %v (default %v), want 256 KiB", w.IndirectMin, config.DefaultIndirectMin)
	}
	if v.AckTimeout != config.DefaultAckTimeout || v.Mode != "sync" || v.SyncAcks != 1 || v.AckLevel != "written" || v.Export != "v" {
		t.Errorf("defaults not applied: %+v", v)
	}

	// No [node] table at all: node defaults still apply.
	c, err = config.Parse([]byte("[[volumes]]\nname='v'\nrole='primary'\ndata='d'\n"), "x.toml")
	if err != nil {
		t.Fatal(err)
	}
	if c.Node.Admin != config.DefaultAdmin || c.Node.LogLevel != "info" || c.Node.LogFormat != "text" {
		t.Errorf("node defaults: %+v", c.Node)
	}
}

func TestWithDefaultsCopies(t *testing.T) {
	c := &config.Config{Volumes: []config.VolumeConfig{
		{Name: "v", Role: "primary", Data: "d", Mirrors: []config.MirrorConfig{{Name: "m", Address: "h:1"}}},
		{Name: "w", Role: "mirror", Data: "e", Listen: ":7443"},
	}}
	c.Node.Name, c.Node.Certs = "n", "/c"
	if err := c.Validate(); err == nil {
		t.Error("Validate accepted a Config without defaults (empty mode, log level...)")
	}
	d := c.WithDefaults()
	if err := d.Validate(); err != nil {
		t.Fatalf("WithDefaults result invalid: %v", err)
	}
	if c.Volumes[0].Mode != "" || c.Node.Admin != "" {
		t.Error("WithDefaults modified the original")
	}
	d.Volumes[0].Mirrors[0].Name = "changed"
	if c.Volumes[0].Mirrors[0].Name != "m" {
		t.Error("WithDefaults shares the Mirrors slice")
	}
	if d.Volumes[1].Mode != "" || d.Volumes[1].SyncAcks != 0 {
		t.Errorf("mirror volume got replication defaults: %+v", d.Volumes[1])
	}
}

// TestEncodeRoundTrip writes a Config with the TOML encoder (using the
// struct tags and the Size/Duration text marshalers) and parses it back:
// the tags and the decoder must agree.
func TestEncodeRoundTrip(t *testing.T) {
	c, err := config.Load("testdata/blockmirror.toml")
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := toml.NewEncoder(&buf).Encode(c); err != nil {
		t.Fatal(err)
	}
	back, err := config.Parse(buf.Bytes(), "encoded.toml")
	if err != nil {
		t.Fatalf("%v\n%s", err, buf.String())
	}
	if !equal(c, back) {
		t.Errorf("round trip changed the config:\n%+v\n%+v\n%s", c, back, buf.String())
	}
}

// equal compares configs ignoring the source positions and nil-vs-empty
// slices.
func equal(a, b *config.Config) bool {
	norm := func(c *config.Config) config.Config {
		n := config.Config{Node: c.Node}
		for _, v := range c.Volumes {
			if len(v.Mirrors) == 0 {
				v.Mirrors = nil
			}
			if len(v.Allow) == 0 {
				v.Allow = nil
			}
			n.Volumes = append(n.Volumes, v)
		}
		return n
	}
	return reflect.DeepEqual(norm(a), norm(b))
}

func TestCheck(t *testing.T) {
	var out bytes.Buffer
	if err := config.Check("testdata/blockmirror.toml", &out); err != nil {
		t.Fatal(err)
	}
	if out.String() != "ok: 2 volumes\n" {
		t.Errorf("Check output %q", out.String())
	}

	bad := filepath.Join(t.TempDir(), "bad.toml")
	if err := os.WriteFile(bad, []byte("[node]\nlog_level = \"loud\"\n[[volumes]]\nname = \"v\"\nrole = \"primary\"\ndata = \"d\"\nsync_acks = 2\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out.Reset()
	err := config.Check(bad, &out)
	if !errors.Is(err, config.ErrInvalid) {
		t.Fatalf("Check error %v, want ErrInvalid", err)
	}
	if !strings.Contains(err.Error(), "2 problems") {
		t.Errorf("summary %q does not count 2 problems", err)
	}
	wantOut := bad + ":2: node: log_level \"loud\": want debug, info, warn or error\n" +
		bad + ":7: volume \"v\": sync_acks 2 exceeds the 0 mirrors listed\n"
	if out.String() != wantOut {
		t.Errorf("Check output\n%s\nwant\n%s", out.String(), wantOut)
	}

	out.Reset()
	err = config.Check(filepath.Join(t.TempDir(), "missing.toml"), &out)
	if err == nil || !errors.Is(err, os.ErrNotExist) || out.Len() != 0 {
		t.Errorf("missing file: err %v, output %q", err, out.String())
	}
}

func TestLoadErrorWrapsPath(t *testing.T) {
	_, err := config.Load("/nonexistent/blockmirror.toml")
	if err == nil || !strings.Contains(err.Error(), "/nonexistent/blockmirror.toml") || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Load of a missing file: %v", err)
	}
}

func TestParseSize(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
		err  bool
	}{
		{"0", 0, false},
		{"512", 512, false},
		{"64K", 64 << 10, false},
		{"64k", 64 << 10, false},
		{"64KiB", 64 << 10, false},
		{"64KB", 64 << 10, false},
		{"10G", 10 << 30, false},
		{" 10 G ", 10 << 30, false},
		{"1T", 1 << 40, false},
		{"2P", 2 << 50, false},
		{"7E", 7 << 60, false},
		{"8E", 0, true},
		{"9223372036854775807", 1<<63 - 1, false},
		{"9223372036854775808", 0, true},
		{"99999999999999999999", 0, true},
		{"", 0, true},
		{"G", 0, true},
		{"-1", 0, true},
		{"+1", 0, true},
		{"1.5G", 0, true},
		{"10X", 0, true},
		{"0x10", 0, true},
	} {
		got, err := config.ParseSize(tc.in)
		if tc.err {
			if err == nil || !errors.Is(err, config.ErrSize) {
				t.Errorf("ParseSize(%q) = %d, %v; want an ErrSize error", tc.in, got, err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", tc.in, got, err, tc.want)
		}
	}
}

func TestSizeString(t *testing.T) {
	for in, want := range map[int64]string{0: "0", 1000: "1000", 1536: "1536", 4096: "4K", 10 << 30: "10G", 3 << 40: "3T", 1<<30 + 512: "1073742336"} {
		s := config.Size(in).String()
		if s != want {
			t.Errorf("Size(%d).String() = %q, want %q", in, s, want)
		}
		back, err := config.ParseSize(s)
		if err != nil || back != in {
			t.Errorf("Size(%d).String() = %q parses back to %d, %v", in, s, back, err)
		}
	}
}

func BenchmarkParse(b *testing.B) {
	data, err := os.ReadFile("../../dist/blockmirror.example.toml")
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := config.Parse(data, "example.toml"); err != nil {
			b.Fatal(err)
		}
	}
}
