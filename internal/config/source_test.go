package config

import (
	"reflect"
	"testing"
)

func TestScanLines(t *testing.T) {
	doc := `# comment with [brackets] and key = "value"
[node] # trailing [x]
name = "a#b" # '#' inside a string
certs = '''
multi
line ] [[x]]
'''
"admin" = "x"

[[volumes]]
name = "v0"
mirrors = [
  { name = "m0", address = "h:1" },   # comment
  {
    name = "m1" } ,
]
allow = ["a", # c
  "b"]
dotted.key = 1

[[volumes]]
name = """v1 with "quotes" """
[[volumes.mirrors]]
name = "x"
[[volumes.mirrors]]
address = "y"
[volumes.sub]
k = 1
`
	want := map[string]int{
		"node": 2, "node.name": 3, "node.certs": 4, "node.admin": 8,
		"volumes": 10, "volumes[0]": 10, "volumes[0].name": 11,
		"volumes[0].mirrors": 12, "volumes[0].mirrors[0]": 13, "volumes[0].mirrors[0].name": 13, "volumes[0].mirrors[0].address": 13,
		"volumes[0].mirrors[1]": 14, "volumes[0].mirrors[1].name": 15,
		"volumes[0].allow": 17, "volumes[0].allow[0]": 17, "volumes[0].allow[1]": 18,
		"volumes[0].dotted.key": 19,
		"volumes[1]":            21, "volumes[1].name": 22,
		"volumes[1].mirrors": 23, "volumes[1].mirrors[0]": 23, "volumes[1].mirrors[0].name": 24,
		"volumes[1].mirrors[1]": 25, "volumes[1].mirrors[1].address": 26,
		"volumes[1].sub": 27, "volumes[1].sub.k": 28,
	}
	got := scanLines([]byte(doc))
	if !reflect.DeepEqual(got, want) {
		for k, v := range want {
			if got[k] != v {
				t.Errorf("%s: line %d, want %d", k, got[k], v)
			}
		}
		for k, v := range got {
			if _, ok := want[k]; !ok {
				t.Errorf("unexpected key %s (line %d)", k, v)
			}
		}
	}
	s := &source{file: "f", lines: got}
	for key, line := range map[string]int{
		"volumes[1].mirrors[1].name": 25, // absent key → its table
		"volumes[0].mode":            10,
		"node.log_level":             2,
		"nowhere":                    0,
	} {
		if l := s.line(key); l != line {
			t.Errorf("line(%s) = %d, want %d", key, l, line)
		}
	}
}

func TestSuggest(t *testing.T) {
	names := []string{"mirrors", "mode", "sync_acks", "max_lag", "ack_level"}
	for in, want := range map[string]string{
		"mirorrs": "mirrors", "mirror": "mirrors", "mdoe": "mode", "syncacks": "sync_acks",
		"SyncAcks": "sync_acks", "maxlag": "max_lag", "ack-level": "ack_level", "zzz": "", "x": "",
	} {
		if got := suggest(in, names); got != want {
			t.Errorf("suggest(%q) = %q, want %q", in, got, want)
		}
	}
}
