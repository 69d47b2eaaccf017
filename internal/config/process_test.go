package config

import (
	"strings"
	"testing"
)

// TestMerge: the keys given on the command line override the file's, in
// every volume of the role (or the one named); the rest stay the file's;
// unknown keys and names are errors that say what is wrong.
func TestMerge(t *testing.T) {
	c, err := Parse([]byte(`
[node]
name = "p1"
certs = "/c"
[[volumes]]
name = "a"
role = "primary"
data = "/a"
mirrors = [{ name = "m1", address = "127.0.0.1:7001" }]
[[volumes]]
name = "b"
role = "primary"
data = "/b"
mode = "async"
[[volumes]]
name = "c"
role = "mirror"
data = "/c"
listen = "127.0.0.1:7002"
`), "f.toml")
	if err != nil {
		t.Fatal(err)
	}
	flags := VolumeConfig{Mode: ModeSync, AckLevel: AckDurable, Data: "/flag"}
	p, err := Merge(c, "f.toml", RolePrimary, "", NodeConfig{LogLevel: "debug", Name: "x"}, flags, []string{"ack_level", "log_level"})
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(p.Names(), ","); got != "a,b" || p.Role != RolePrimary {
		t.Fatalf("volumes %q role %q", got, p.Role)
	}
	if a, b := p.Volumes[0], p.Volumes[1]; a.AckLevel != AckDurable || b.AckLevel != AckDurable || a.Data != "/a" || b.Mode != ModeAsync {
		t.Errorf("merged volumes: %+v, %+v", a, b)
	}
	if p.Node.LogLevel != "debug" || p.Node.Name != "p1" {
		t.Errorf("merged node: %+v", p.Node)
	}
	p.Volumes[0].Mirrors[0].Name = "changed"
	if c.Volumes[0].Mirrors[0].Name != "m1" {
		t.Error("the process shares the file's mirror list")
	}
	if p, err := Merge(c, "f.toml", RoleMirror, "c", NodeConfig{}, VolumeConfig{}, nil); err != nil || len(p.Volumes) != 1 || p.Volumes[0].Listen != "127.0.0.1:7002" {
		t.Errorf("mirror c: %+v %v", p, err)
	}
	for _, tc := range []struct {
		c          *Config
		role, name string
		set        []string
		want       string
	}{
		{c, RolePrimary, "c", nil, `f.toml: no primary volume named "c"`},
		{c, RoleMirror, "", []string{"nope"}, `no key "nope"`},
		{nil, RolePrimary, "a", nil, "needs a configuration file"},
	} {
		if _, err := Merge(tc.c, "f.toml", tc.role, tc.name, NodeConfig{}, VolumeConfig{}, tc.set); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Merge(%s, %q, %v): %v, want %q", tc.role, tc.name, tc.set, err, tc.want)
		}
	}
	p, err = Merge(nil, "", RoleMirror, "", NodeConfig{Name: "m1"}, VolumeConfig{Data: "/d"}, nil)
	if err != nil || len(p.Volumes) != 1 || p.Volumes[0].Role != RoleMirror || p.Volumes[0].Label() != "/d" {
		t.Errorf("flags only: %+v %v", p, err)
	}
}
