package config_test

import (
	"bytes"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/BurntSushi/toml"

	"github.com/blockmirror/blockmirror/internal/config"
)

// FuzzParse: Parse never panics, reports problems only as *config.Error
// with lines inside the file, and a Config it accepts survives encoding
// back to TOML and parsing again unchanged.
func FuzzParse(f *testing.F) {
	for _, p := range []string{"testdata/blockmirror.toml", "../../dist/blockmirror.example.toml"} {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
		if c, err := config.Parse(b, p); err == nil {
			var buf bytes.Buffer
			if err := toml.NewEncoder(&buf).Encode(c); err != nil {
				f.Fatal(err)
			}
			f.Add(buf.Bytes())
		}
	}
	f.Add([]byte(node + primary))
	f.Add([]byte(node + "[[volumes]]\nname = 'm'\nrole = 'mirror'\ndata = '/d'\nlisten = ':1'\nallow = ['a', 'b']\n"))
	f.Add([]byte("[[volumes]]\nname=\"v\"\n\"role\"='primary'\ndata = '''\n/x'''\n[[volumes.mirrors]]\nname='b'\naddress='h:1'\n"))
	f.Add([]byte("a.b.c = { d = [1, [2, {e = 3}]] }\n[x.\"y.z\"]\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > 64<<10 {
			return
		}
		c, err := config.Parse(data, "f.toml")
		if err != nil {
			var ce *config.Error
			if !errors.As(err, &ce) || len(ce.Problems) == 0 {
				t.Fatalf("error %v (%T) is not a non-empty *config.Error", err, err)
			}
			lines := bytes.Count(data, []byte("\n")) + 1
			for _, p := range ce.Problems {
				if p.Line < 0 || p.Line > lines || p.Msg == "" {
					t.Fatalf("problem %+v outside the file's %d lines", p, lines)
				}
			}
			return
		}
		var buf bytes.Buffer
		if err := toml.NewEncoder(&buf).Encode(c); err != nil {
			t.Fatalf("encode: %v", err)
		}
		back, err := config.Parse(buf.Bytes(), "encoded.toml")
		if err != nil {
			t.Fatalf("re-parse of encoded config: %v\n%s", err, buf.String())
		}
		if !equal(c, back) {
			t.Fatalf("round trip changed the config\n%+v\n%+v", c, back)
		}
	})
}

// FuzzParseSize: ParseSize never panics, accepts only non-negative sizes,
// and Size.String output parses back to the same value.
func FuzzParseSize(f *testing.F) {
	for _, n := range []int64{0, 1, 512, 1536, 4 << 10, 10 << 30, 7 << 60, 1<<63 - 1} {
		f.Add(config.Size(n).String(), n)
	}
	for _, s := range []string{"10G", " 64 KiB", "1.5G", "-1", "18446744073709551616", "8E"} {
		f.Add(s, int64(0))
	}
	f.Fuzz(func(t *testing.T, s string, n int64) {
		if v, err := config.ParseSize(s); err == nil {
			if v < 0 {
				t.Fatalf("ParseSize(%q) = %d", s, v)
			}
			if back, err := config.ParseSize(config.Size(v).String()); err != nil || back != v {
				t.Fatalf("%d → %q → %d, %v", v, config.Size(v).String(), back, err)
			}
		} else if !errors.Is(err, config.ErrSize) || !strings.Contains(err.Error(), "size") {
			t.Fatalf("ParseSize(%q) error %v", s, err)
		}
		if n < 0 {
			n = -(n + 1)
		}
		enc := config.Size(n).String()
		if back, err := config.ParseSize(enc); err != nil || back != n {
			t.Fatalf("%d → %q → %d, %v", n, enc, back, err)
		}
	})
}
