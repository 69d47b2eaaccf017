package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestFailoverExt4 puts ext4 on the primary (nbdfuse + loop device),
// writes a tree of files and syncs it, keeps a background writer creating
// fsync'd files, kills the primary with SIGKILL and runs
// scripts/failover.sh on the mirror. The promoted node is attached the same
// way; after the kernel replays the ext4 journal (mount, umount) `fsck -fn`
// must be clean and every file synced before the kill must be intact:
//
//   - sync: the tree and every background file whose fsync returned before
//     the kill (an acknowledged flush is on the mirror);
//   - async (--max-lag 1s): the tree and the background files synced more
//     than --max-lag before the kill; the filesystem is a consistent prefix.
//
// The promoted node then takes a new tree of files with syncfs while its
// own mirror (the dead p1) is absent (sync, --allow-degraded), and fsck
// stays clean. The failover time (script start to the promoted node
// answering NBD) is logged and must be within the 3 s target.
func TestFailoverExt4(t *testing.T) {
	if testing.Short() {
		t.Skip("slow: mkfs/fsck/mount twice (skipped with -short)")
	}
	requireRepl(t)
	tools := needFilesystemTools(t)
	t.Run("sync", func(t *testing.T) { foExt4(t, tools, "sync", 160) })
	t.Run("async", func(t *testing.T) { foExt4(t, tools, "async", 162) })
}

// foFailoverTarget is the failover time the tests aim at.
const foFailoverTarget = 3 * time.Second

func foExt4(t *testing.T, tools map[string]string, mode string, host int) {
	const maxLag = time.Second
	c := newFoCluster(t, host, "p1", "m1")
	p1, m1 := c.N("p1"), c.N("m1")
	// Once promoted, m1 replicates to the old primary's address, degraded
	// while it is down (the usual setup for a later failback).
	m1.StartMirror("--mirror", "p1="+p1.Listen, "--allow-degraded", "--ack-timeout", "1s")
	args := []string{"--mirror", "m1=" + m1.Listen, "--mode", mode, "--listen", p1.Listen}
	if mode == "async" {
		args = append(args, "--max-lag", maxLag.String())
	}
	p1.StartPrimary("256M", args...)

	base := t.TempDir()
	mnt := filepath.Join(base, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	loop := attach(t, tools, &server{URI: p1.URI()}, filepath.Join(base, "fuse-p1"))
	runCmd(t, 2*time.Minute, tools["mkfs.ext4"], "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", loop.dev)
	loop.mount(t, mnt)
	sums := writeTree(t, mnt, 11)
	foSyncfs(t, mnt)

	bg := startFoWriter(t, filepath.Join(mnt, "bg"))
	time.Sleep(3 * time.Second)
	killAt := time.Now()
	p1.Kill()
	files, werr := bg.stop(30 * time.Second)
	t.Logf("background writer: %d files synced before it stopped (%v)", len(files), werr)
	keep := killAt
	if mode == "async" {
		keep = killAt.Add(-maxLag)
	}
	durable := map[string]string{}
	for _, f := range files {
		if f.synced.Before(keep) {
			durable[filepath.Join("bg", f.name)] = f.sum
		}
	}
	if len(durable) == 0 {
		t.Fatalf("no background file was synced before the kill (the writer did nothing?)")
	}
	t.Logf("%d background files synced before %s count as durable", len(durable), map[string]string{
		"sync": "the kill", "async": "the kill minus --max-lag"}[mode])
	loop.detach(t)

	r := runFailover(t, "--primary", p1.NBD, "--primary", p1.Admin, "--admin", m1.Admin,
		"--fence-cmd", fmt.Sprintf("! kill -0 %d 2>/dev/null", p1.Proc.Pid()))
	if r.Code != 0 {
		t.Fatalf("failover.sh exited %d", r.Code)
	}
	t.Logf("FAILOVER TIME (%s): %.2f s from the script's start to the promoted node serving NBD (wall %v; target %v)",
		mode, r.Reported, r.Wall.Round(time.Millisecond), foFailoverTarget)
	if r.Reported < 0 || r.Wall > foFailoverTarget {
		t.Errorf("failover took %v, over the %v target", r.Wall.Round(time.Millisecond), foFailoverTarget)
	}

	loop = attach(t, tools, &server{URI: m1.URI()}, filepath.Join(base, "fuse-m1"))
	// The kernel replays the ext4 journal on mount, as after any crash;
	// fsck then checks the result without changing it.
	loop.mount(t, mnt)
	loop.umount(t)
	out := runCmd(t, 2*time.Minute, tools["fsck.ext4"], "-fn", loop.dev)
	t.Logf("fsck on the promoted node: %s", strings.TrimSpace(out))
	loop.mount(t, mnt)
	foVerifyFiles(t, mnt, "tree", sums)
	foVerifyFiles(t, mnt, "background", durable)

	// The new primary (degraded: its mirror p1 is down) takes fsync'd
	// writes, and the filesystem stays clean.
	after := writeTree(t, filepath.Join(mnt, "bg"), 12)
	foSyncfs(t, mnt)
	loop.umount(t)
	runCmd(t, 2*time.Minute, tools["fsck.ext4"], "-fn", loop.dev)
	loop.mount(t, mnt)
	foVerifyFiles(t, filepath.Join(mnt, "bg"), "post-failover", after)
	loop.umount(t)
	loop.detach(t)
	if st, err := m1.Status(); err != nil || st.Primary == nil || st.Primary.Replication == nil || !st.Primary.Replication.Degraded {
		t.Errorf("the promoted node should report degraded replication to the dead p1: %v %s", err, m1.RawStatus())
	}
}

// foSyncfs flushes the filesystem holding dir.
func foSyncfs(t *testing.T, dir string) {
	t.Helper()
	f, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	start := time.Now()
	if err := unix.Syncfs(int(f.Fd())); err != nil {
		t.Fatalf("syncfs %s: %v", dir, err)
	}
	t.Logf("syncfs took %v", time.Since(start).Round(time.Millisecond))
}

// foFile is a file the background writer created and fsync'd (with its
// directory).
type foFile struct {
	name   string
	sum    string
	synced time.Time
}

// foWriter creates files in a directory until stopped or until an error.
type foWriter struct {
	mu    sync.Mutex
	files []foFile
	err   error
	quit  chan struct{}
	done  chan struct{}
}

func startFoWriter(t *testing.T, dir string) *foWriter {
	t.Helper()
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	w := &foWriter{quit: make(chan struct{}), done: make(chan struct{})}
	go w.run(dir)
	return w
}

func (w *foWriter) run(dir string) {
	defer close(w.done)
	rng := rand.New(rand.NewPCG(5, 9))
	d, err := os.Open(dir)
	if err != nil {
		w.fail(err)
		return
	}
	defer d.Close()
	for i := 0; ; i++ {
		select {
		case <-w.quit:
			return
		default:
		}
		data := randBytes(uint64(90000+i), 4096+rng.IntN(256<<10))
		name := fmt.Sprintf("w%05d", i)
		if err := foWriteSync(filepath.Join(dir, name), data); err != nil {
			w.fail(err)
			return
		}
		if err := d.Sync(); err != nil {
			w.fail(fmt.Errorf("fsync %s: %w", dir, err))
			return
		}
		h := sha256.Sum256(data)
		w.mu.Lock()
		w.files = append(w.files, foFile{name: name, sum: hex.EncodeToString(h[:]), synced: time.Now()})
		w.mu.Unlock()
	}
}

func foWriteSync(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func (w *foWriter) fail(err error) {
	w.mu.Lock()
	w.err = err
	w.mu.Unlock()
}

// stop ends the writer (waiting at most timeout for a blocked call) and
// returns the files it synced and the error that stopped it.
func (w *foWriter) stop(timeout time.Duration) ([]foFile, error) {
	close(w.quit)
	select {
	case <-w.done:
	case <-time.After(timeout):
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]foFile(nil), w.files...), w.err
}

// foVerifyFiles checks that every file in sums (relative to root) exists
// with that sha256; other files may exist.
func foVerifyFiles(t *testing.T, root, what string, sums map[string]string) {
	t.Helper()
	bad := 0
	for name, want := range sums {
		b, err := os.ReadFile(filepath.Join(root, name))
		var got string
		if err == nil {
			h := sha256.Sum256(b)
			got = hex.EncodeToString(h[:])
		}
		if err != nil || got != want {
			bad++
			if bad <= 10 {
				t.Errorf("%s file %s: %v (sha256 %s, want %s)", what, name, err, got, want)
			}
		}
	}
	if bad > 0 {
		t.Errorf("%d of %d %s files missing or damaged", bad, len(sums), what)
	} else {
		t.Logf("all %d %s files intact", len(sums), what)
	}
}
