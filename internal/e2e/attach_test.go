package e2e

import (
	"bytes"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestAttachWithoutNBDModule: where the kernel has no nbd module,
// `blockmirror attach` fails with a message that says so and names the
// alternatives.
func TestAttachWithoutNBDModule(t *testing.T) {
	requireServer(t)
	if _, err := os.Stat("/dev/nbd0"); err == nil {
		t.Skip("/dev/nbd0 exists; TestAttachKernel covers this machine")
	}
	out, err := exec.Command(binPath, "attach", "--nbd", "127.0.0.1:1", "/dev/nbd0").CombinedOutput()
	if err == nil {
		t.Fatalf("attach to a missing /dev/nbd0 succeeded: %s", out)
	}
	for _, want := range []string{"/dev/nbd0 does not exist", "modprobe nbd", "nbdfuse"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("attach error %q does not mention %q", out, want)
		}
	}
}

// TestAttachKernel attaches an export to /dev/nbd0 through the kernel
// client, writes through the block device, and reads the data back over
// NBD. It needs root and the nbd module; elsewhere it skips and says so.
func TestAttachKernel(t *testing.T) {
	requireServer(t)
	if _, err := os.Stat("/dev/nbd0"); err != nil {
		t.Skip("no /dev/nbd0: this kernel has no nbd module loaded (modprobe nbd); attach is tested where it exists")
	}
	if os.Geteuid() != 0 {
		t.Skip("attach needs root")
	}
	s := startServer(t, serverOpts{Size: "64M"})
	cmd := exec.Command(binPath, "attach", "--nbd", s.Addr, "--export", s.Export, "/dev/nbd0")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cmd.Process.Signal(os.Interrupt)
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
		}
	}()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(out.String(), "attached") {
		if time.Now().After(deadline) {
			t.Fatalf("attach did not report success: %s", out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	data := bytes.Repeat([]byte("kernel-nbd-block"), 4096/16)
	f, err := os.OpenFile("/dev/nbd0", os.O_RDWR|os.O_SYNC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(data, 1<<20); err != nil {
		t.Fatal(err)
	}
	f.Sync()
	f.Close()
	c := dialT(t, s)
	got, err := c.pread(len(data), 1<<20)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("data written through /dev/nbd0 reads back %q… over NBD (%v)", got[:16], err)
	}
	c.disconnect()
}
