package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// randBytes returns n deterministic pseudo-random bytes for seed.
func randBytes(seed uint64, n int) []byte {
	var key [32]byte
	key[0], key[1] = byte(seed), byte(seed>>8)
	p := make([]byte, n)
	rand.NewChaCha8(key).Read(p)
	return p
}

func TestServeLogsURI(t *testing.T) {
	requireServer(t)
	if serverKind != kindBlockmirror {
		t.Skip("blockmirror only")
	}
	for _, unix := range []bool{false, true} {
		s := startServer(t, serverOpts{Unix: unix, Size: "64M"})
		if s.LoggedURI == "" {
			t.Fatalf("no uri= in log:\n%s", s.Log())
		}
		if s.LoggedURI != s.URI {
			t.Errorf("logged uri=%s, want %s", s.LoggedURI, s.URI)
		}
		s.stop(t)
	}
}

func TestNBDInfo(t *testing.T) {
	nbdinfo := needTool(t, "nbdinfo")
	s := startServer(t, serverOpts{Size: "256M"})
	out := runCmd(t, 30*time.Second, nbdinfo, "--json", s.URI)
	var info struct {
		Protocol string `json:"protocol"`
		Exports  []map[string]any
	}
	if err := json.Unmarshal([]byte(out), &info); err != nil {
		t.Fatalf("nbdinfo --json: %v\n%s", err, out)
	}
	if info.Protocol != "newstyle-fixed" {
		t.Errorf("protocol %q, want newstyle-fixed", info.Protocol)
	}
	if len(info.Exports) != 1 {
		t.Fatalf("%d exports in nbdinfo output, want 1:\n%s", len(info.Exports), out)
	}
	e := info.Exports[0]
	if got, _ := e["export-size"].(float64); int64(got) != 256*MiB {
		t.Errorf("export-size %v, want %d", e["export-size"], 256*MiB)
	}
	want := map[string]bool{
		"is_read_only": false, "can_flush": true, "can_fua": true, "can_trim": true,
		"can_zero": true, "can_fast_zero": true, "can_multi_conn": true,
	}
	if serverKind == kindNbdkit {
		delete(want, "can_fast_zero") // nbdkit's file plugin does not offer it
	}
	for k, v := range want {
		if got, ok := e[k].(bool); !ok || got != v {
			t.Errorf("%s = %v, want %v", k, e[k], v)
		}
	}
	// Block size constraints (NBD_INFO_BLOCK_SIZE) are optional in NBD; when
	// sent they must be sane.
	min, hasMin := e["block_size_minimum"].(float64)
	pref, _ := e["block_size_preferred"].(float64)
	max, _ := e["block_size_maximum"].(float64)
	if hasMin {
		t.Logf("block sizes: minimum %v preferred %v maximum %v", min, pref, max)
		pow2 := func(x float64) bool { n := int64(x); return n > 0 && n&(n-1) == 0 }
		if !pow2(min) || !pow2(pref) || min > pref || pref > max || max < 1<<20 || min > 4096 {
			t.Errorf("bad block sizes: minimum %v preferred %v maximum %v", min, pref, max)
		}
	} else {
		t.Logf("server sends no block size information")
	}

	// The export is listed under its name.
	out = runCmd(t, 30*time.Second, nbdinfo, "--list", "--json", s.URI)
	if !strings.Contains(out, `"export-name": "`+s.Export+`"`) && serverKind == kindBlockmirror {
		t.Errorf("nbdinfo --list does not show export %q:\n%s", s.Export, out)
	}
}

func TestNbdsh(t *testing.T) {
	needPythonNBD(t)
	nbdsh := needTool(t, "nbdsh")
	s := startServer(t, serverOpts{Size: "64M"})
	out := runCmd(t, 30*time.Second, nbdsh, append(nbdshConnect(s.URI),
		"-c", "h.pwrite(b'hello, blockmirror' * 1000, 12345)",
		"-c", "h.flush()",
		"-c", "assert h.pread(18000, 12345) == b'hello, blockmirror' * 1000",
		"-c", "assert h.pread(10, 12345 - 10) == bytes(10)",
		"-c", "assert h.get_size() == 64 * 1024 * 1024, h.get_size()",
		"-c", "print('nbdsh ok')")...)
	if !strings.Contains(out, "nbdsh ok") {
		t.Fatalf("nbdsh output:\n%s", out)
	}
}

func TestLibnbd(t *testing.T) {
	py := needPythonNBD(t)
	script, err := filepath.Abs(filepath.Join("testdata", "libnbd_checks.py"))
	if err != nil {
		t.Fatal(err)
	}
	for _, unix := range []bool{false, true} {
		name := "tcp"
		if unix {
			name = "unix"
		}
		t.Run(name, func(t *testing.T) {
			s := startServer(t, serverOpts{Size: "128M", Unix: unix})
			for _, check := range []string{"unaligned", "range", "inflight", "multiconn", "trim", "zero"} {
				if unix && check != "unaligned" && check != "inflight" {
					continue // the transport does not matter for the rest
				}
				t.Run(check, func(t *testing.T) {
					out := runCmd(t, 2*time.Minute, py, script, check, s.URI)
					t.Logf("%s", strings.TrimSpace(out))
					s.requireAlive(t)
				})
			}
		})
	}
}

func TestQemuIO(t *testing.T) {
	qemuIO := needTool(t, "qemu-io")
	s := startServer(t, serverOpts{Size: "64M"})
	cmds := []string{
		"write -P 0xab 0 64k",
		"read -P 0xab 0 64k",
		"write -P 0x5c 65537 4095",
		"read -P 0xab 0 64k",
		"read -P 0 64k 1",
		"read -P 0x5c 65537 4095",
		"aio_write -P 0x11 1M 256k",
		"aio_write -P 0x22 2M 128k",
		"aio_write -P 0x33 3M 4k",
		"aio_flush",
		"aio_read -P 0x11 1M 256k",
		"aio_read -P 0x22 2M 128k",
		"aio_read -P 0x33 3M 4k",
		"aio_flush",
		"write -P 0x44 8M 1M",
		"discard 8M 512k",
		"read -P 0 8M 512k",
		"read -P 0x44 8704k 512k",
		"write -z 8704k 256k",
		"read -P 0 8704k 256k",
		"read -P 0x44 8960k 256k",
		"write -P 0x66 -f 16M 64k",
		"flush",
		"read -P 0x66 16M 64k",
		"write -z -u 32M 1M",
		"read -P 0 32M 1M",
	}
	q := s.qemu()
	args := append(q.object, "-f", "raw")
	if q.opts {
		args = append(q.object, "--image-opts")
	}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	args = append(args, q.spec)
	out := runCmd(t, time.Minute, qemuIO, args...)
	for _, bad := range []string{"failed", "error", "Error"} {
		if strings.Contains(out, bad) {
			t.Fatalf("qemu-io reported %q:\n%s", bad, out)
		}
	}
	if n := strings.Count(out, "read "); n < 10 {
		t.Fatalf("qemu-io ran %d reads, want >= 10:\n%s", n, out)
	}
}

func TestQemuImgConvert(t *testing.T) {
	qemuImg := needTool(t, "qemu-img")
	s := startServer(t, serverOpts{Size: "128M"})
	src := filepath.Join(t.TempDir(), "src.img")
	data := randBytes(42, 64*MiB)
	// leave a zero hole in the middle so sparse handling is exercised too
	clear(data[20*MiB : 24*MiB])
	if err := os.WriteFile(src, data, 0o600); err != nil {
		t.Fatal(err)
	}
	q := s.qemu()
	convert := append([]string{"convert", "-n", "-W", "-m", "8"}, q.object...)
	compare := append([]string{"compare"}, q.object...)
	if q.opts {
		convert = append(convert, "-f", "raw", "--target-image-opts", src, q.spec)
		compare = append(compare, "--image-opts", "driver=file,filename="+src, q.spec)
	} else {
		convert = append(convert, "-f", "raw", "-O", "raw", src, q.spec)
		compare = append(compare, "-f", "raw", "-F", "raw", src, q.spec)
	}
	runCmd(t, 2*time.Minute, qemuImg, convert...)
	// compare: the 64 MiB must match and the rest of the 128 MiB export must
	// read as zeroes (non-strict mode).
	out := runCmd(t, 2*time.Minute, qemuImg, compare...)
	if !strings.Contains(out, "Images are identical") {
		t.Fatalf("qemu-img compare:\n%s", out)
	}
	// corrupt one byte through NBD; compare must now notice
	if nbdsh, err := lookTool("nbdsh"); err == nil {
		runCmd(t, 30*time.Second, nbdsh, append(nbdshConnect(s.URI), "-c", "h.pwrite(b'\\x01', 33 * 1024 * 1024 + 7)")...)
		if out, err := runCmdErr(t, 2*time.Minute, qemuImg, compare...); err == nil {
			t.Fatalf("qemu-img compare found no difference after a write:\n%s", out)
		}
	}
}

func TestNbdcopy(t *testing.T) {
	nbdcopy := needTool(t, "nbdcopy")
	s := startServer(t, serverOpts{Size: "32M"})
	dir := t.TempDir()
	src, back := filepath.Join(dir, "src.img"), filepath.Join(dir, "back.img")
	data := randBytes(7, 32*MiB)
	clear(data[MiB : 3*MiB])
	if err := os.WriteFile(src, data, 0o600); err != nil {
		t.Fatal(err)
	}
	runCmd(t, time.Minute, nbdcopy, "--connections=4", "--requests=32", src, s.URI)
	runCmd(t, time.Minute, nbdcopy, "--connections=2", s.URI, back)
	got, err := os.ReadFile(back)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("nbdcopy round trip differs (len %d vs %d)", len(got), len(data))
	}
}

// nbdshConnect are nbdsh arguments that connect to uri, allowing the
// certificate directory of a TLS URI.
func nbdshConnect(uri string) []string {
	return []string{"-c", "h.set_uri_allow_local_file(True)", "-c", fmt.Sprintf("h.connect_uri(%q)", uri)}
}

func lookTool(name string) (string, error) {
	for _, dir := range []string{"/usr/bin", "/usr/sbin"} {
		p := filepath.Join(dir, name)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", os.ErrNotExist
}
