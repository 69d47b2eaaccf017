package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/blockmirror/blockmirror/internal/testutil"
)

// needFilesystemTools skips the test unless it runs as root with FUSE and
// loop devices, and returns the paths of the tools the ext4 tests use
// (nbdfuse, losetup, mkfs.ext4, fsck.ext4, mount, ...) by name.
func needFilesystemTools(t *testing.T) map[string]string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (loop devices, mount)")
	}
	for _, dev := range []string{"/dev/fuse", "/dev/loop-control"} {
		if _, err := os.Stat(dev); err != nil {
			t.Skipf("needs %s: %v", dev, err)
		}
	}
	tools := map[string]string{}
	for _, name := range []string{"nbdfuse", "fusermount3", "losetup", "mkfs.ext4", "fsck.ext4", "mount", "umount", "nbdinfo"} {
		tools[name] = needTool(t, name)
	}
	return tools
}

// TestFilesystem puts ext4 on the export through nbdfuse (the export as a
// file in a FUSE mount) and a loop device, writes a tree of files, checks
// the filesystem, restarts the server and verifies every file's checksum.
func TestFilesystem(t *testing.T) {
	if testing.Short() {
		t.Skip("slow: mkfs/fsck/mount (skipped with -short)")
	}
	tools := needFilesystemTools(t)

	s := startServer(t, serverOpts{Size: "256M"})
	base := t.TempDir()

	// phase 1: mkfs, mount, write a tree
	loop := attach(t, tools, s, filepath.Join(base, "fuse1"))
	runCmd(t, 2*time.Minute, tools["mkfs.ext4"], "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", loop.dev)
	mnt := filepath.Join(base, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	loop.mount(t, mnt)
	sums := writeTree(t, mnt, 7)
	loop.umount(t)
	runCmd(t, 2*time.Minute, tools["fsck.ext4"], "-fn", loop.dev)
	loop.detach(t)

	// phase 2: restart the server, check and verify
	s = s.restart(t)
	loop = attach(t, tools, s, filepath.Join(base, "fuse2"))
	out := runCmd(t, 2*time.Minute, tools["fsck.ext4"], "-fn", loop.dev)
	t.Logf("fsck: %s", strings.TrimSpace(out))
	loop.mount(t, mnt)
	verifyTree(t, mnt, sums)
	// modify, unmount, verify again on the same attachment
	for name := range sums {
		if strings.HasSuffix(name, "0") {
			if err := os.Remove(filepath.Join(mnt, name)); err != nil {
				t.Fatal(err)
			}
			delete(sums, name)
		}
	}
	loop.umount(t)
	runCmd(t, 2*time.Minute, tools["fsck.ext4"], "-fn", loop.dev)
	loop.mount(t, mnt)
	verifyTree(t, mnt, sums)
	loop.umount(t)
	loop.detach(t)
	s.stop(t)
}

// loopAttachment is an export exposed as a FUSE file and a loop device.
type loopAttachment struct {
	tools   map[string]string
	fuseDir string
	fuse    *testutil.Proc
	dev     string
	mnt     string
}

// attach runs nbdfuse on dir and attaches a loop device to dir/nbd. The
// cleanups undo everything even if the test fails half way.
func attach(t *testing.T, tools map[string]string, s *server, dir string) *loopAttachment {
	t.Helper()
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	a := &loopAttachment{tools: tools, fuseDir: dir}
	a.fuse = testutil.Start(t, testutil.ProcOptions{
		Name: "nbdfuse", Path: tools["nbdfuse"], Args: []string{dir, s.URI},
	})
	t.Cleanup(func() { a.detach(t) })
	file := filepath.Join(dir, "nbd")
	deadline := time.Now().Add(15 * time.Second)
	for {
		if fi, err := os.Stat(file); err == nil && fi.Size() > 0 {
			break
		}
		if a.fuse.Exited() || time.Now().After(deadline) {
			t.Fatalf("nbdfuse did not expose %s: %v\n%s", file, a.fuse.ExitErr(), a.fuse.Tail(20))
		}
		time.Sleep(20 * time.Millisecond)
	}
	out := runCmd(t, 30*time.Second, tools["losetup"], "--find", "--show", file)
	a.dev = strings.TrimSpace(out)
	if !strings.HasPrefix(a.dev, "/dev/loop") {
		t.Fatalf("losetup printed %q", out)
	}
	return a
}

func (a *loopAttachment) mount(t *testing.T, dir string) {
	t.Helper()
	runCmd(t, time.Minute, a.tools["mount"], "-t", "ext4", a.dev, dir)
	a.mnt = dir
}

func (a *loopAttachment) umount(t *testing.T) {
	t.Helper()
	if a.mnt == "" {
		return
	}
	runCmd(t, time.Minute, a.tools["umount"], a.mnt)
	a.mnt = ""
}

// detach undoes mount, loop device and FUSE mount; safe to call twice and
// from a cleanup after a failure (it then only logs errors).
func (a *loopAttachment) detach(t *testing.T) {
	t.Helper()
	if a.mnt != "" {
		if out, err := runCmdErr(t, time.Minute, a.tools["umount"], a.mnt); err != nil {
			t.Logf("umount %s: %v %s; trying lazy unmount", a.mnt, err, out)
			runCmdErr(t, time.Minute, a.tools["umount"], "-l", a.mnt)
		}
		a.mnt = ""
	}
	if a.dev != "" {
		if out, err := runCmdErr(t, time.Minute, a.tools["losetup"], "-d", a.dev); err != nil {
			t.Errorf("losetup -d %s: %v %s", a.dev, err, out)
		}
		a.dev = ""
	}
	if a.fuse != nil {
		if out, err := runCmdErr(t, time.Minute, a.tools["fusermount3"], "-u", a.fuseDir); err != nil {
			t.Logf("fusermount3 -u %s: %v %s; trying lazy unmount", a.fuseDir, err, out)
			runCmdErr(t, time.Minute, a.tools["fusermount3"], "-u", "-z", a.fuseDir)
		}
		select {
		case <-a.fuse.Done():
		case <-time.After(10 * time.Second):
			t.Errorf("nbdfuse still running after unmount")
			a.fuse.Kill()
		}
		a.fuse = nil
	}
}

// writeTree writes ~24 MiB in nested directories and returns each file's
// sha256 by relative path.
func writeTree(t *testing.T, root string, seed uint64) map[string]string {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, seed))
	sums := map[string]string{}
	total := 0
	for i := 0; total < 24*MiB; i++ {
		dir := filepath.Join(fmt.Sprintf("d%d", i%5), fmt.Sprintf("e%d", i%3))
		if err := os.MkdirAll(filepath.Join(root, dir), 0o755); err != nil {
			t.Fatal(err)
		}
		var n int
		switch i % 4 {
		case 0:
			n = rng.IntN(100)
		case 1:
			n = rng.IntN(16 * 1024)
		case 2:
			n = rng.IntN(256 * 1024)
		default:
			n = rng.IntN(3 * MiB)
		}
		data := randBytes(seed*1000+uint64(i), n)
		name := filepath.Join(dir, fmt.Sprintf("f%d", i))
		if err := os.WriteFile(filepath.Join(root, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
		h := sha256.Sum256(data)
		sums[name] = hex.EncodeToString(h[:])
		total += n
	}
	t.Logf("wrote %d files, %d bytes", len(sums), total)
	return sums
}

func verifyTree(t *testing.T, root string, sums map[string]string) {
	t.Helper()
	seen := 0
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		if rel == "lost+found" || strings.HasPrefix(rel, "lost+found"+string(filepath.Separator)) {
			return nil
		}
		want, ok := sums[rel]
		if !ok {
			t.Errorf("unexpected file %s", rel)
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		h := sha256.Sum256(b)
		if got := hex.EncodeToString(h[:]); got != want {
			t.Errorf("%s: sha256 %s, want %s", rel, got, want)
		}
		seen++
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if seen != len(sums) {
		t.Errorf("found %d of %d files", seen, len(sums))
	}
}
