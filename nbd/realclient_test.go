package nbd_test

import (
	"context"
	"encoding/json"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/blockmirror/blockmirror/nbd"
)

// TestNbdinfoSanity checks the handshake against libnbd's nbdinfo when it
// is installed (full real-client coverage lives in internal/e2e).
func TestNbdinfoSanity(t *testing.T) {
	bin, err := exec.LookPath("nbdinfo")
	if err != nil {
		t.Skip("nbdinfo not installed")
	}
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	ln, err := nbd.Listen("unix:" + sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := nbd.NewServer(nbd.Options{})
	srv.AddExport(nbd.Export{Name: "disk", Description: "sanity", Device: newMemDev(1 << 20)})
	srv.AddExport(nbd.Export{Name: "ro", Device: newMemDev(4096), ReadOnly: true})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	run := func(args ...string) map[string]any {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, bin, append([]string{"--json"}, args...)...).Output()
		if err != nil {
			t.Fatalf("nbdinfo %v: %v", args, err)
		}
		var v map[string]any
		if err := json.Unmarshal(out, &v); err != nil {
			t.Fatalf("nbdinfo output: %v\n%s", err, out)
		}
		return v
	}
	v := run("nbd+unix:///disk?socket=" + sock)
	if v["structured"] != true {
		t.Errorf("structured replies not negotiated: %v", v)
	}
	e := v["exports"].([]any)[0].(map[string]any)
	for k, want := range map[string]any{
		"export-size": float64(1 << 20), "description": "sanity", "can_multi_conn": true,
		"can_fua": true, "can_trim": true, "can_zero": true, "can_fast_zero": true,
		"can_flush": true, "is_read_only": false, "block_size_maximum": float64(32 << 20),
	} {
		if e[k] != want {
			t.Errorf("%s = %v, want %v", k, e[k], want)
		}
	}
	v = run("--list", "nbd+unix://?socket="+sock)
	if n := len(v["exports"].([]any)); n != 2 {
		t.Errorf("--list shows %d exports, want 2", n)
	}
	v = run("nbd+unix:///ro?socket=" + sock)
	if e := v["exports"].([]any)[0].(map[string]any); e["is_read_only"] != true {
		t.Errorf("ro export: %v", e)
	}
}
