package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// autoProbeOff is where the takeover probe writes: the last MiB of the
// 256 MiB volume, outside the 240 MiB filesystem and the block writers.
const autoProbeOff = 255 << 20

// TestAutoFailoverKill: a primary and two mirrors (sync, K=1) under
// automatic failover on etcd. The primary carries ext4 (nbdfuse + loop)
// with a tree of synced files and a background writer creating fsync'd
// files; it is killed with SIGKILL and, with no command, a mirror takes
// over: fsck is clean on it and every file synced before the kill is
// intact. The killed node, restarted with its usual command, rejoins as a
// mirror. Then further trials (BLOCKMIRROR_AUTO_TRIALS, default 2) kill
// whichever node is primary under a raw writer (64 KiB write+flush each):
// every acknowledged block must be on the new primary. The RTO (kill to
// NBD served, and to the first completed write) of every trial is logged
// with its distribution; the target is TTL + 1.5 s.
func TestAutoFailoverKill(t *testing.T) {
	if testing.Short() {
		t.Skip("slow: several failovers with real processes (skipped with -short)")
	}
	tools := needFilesystemTools(t)
	c := newAutoCluster(t, 190, 1, "sync", "n1", "n2", "n3")
	c.Start(c.N("n2"), false)
	c.Start(c.N("n3"), false)
	c.Start(c.N("n1"), true)
	p := c.WaitPrimary(30 * time.Second)
	if p.Name != "n1" {
		t.Fatalf("the node started as primary should hold the leader key; %s does", p.Name)
	}

	var served, wrote []time.Duration
	record := func(trial string, killAt time.Time, r rtoProbe) {
		s, w := r.served.Sub(killAt), r.wrote.Sub(killAt)
		served, wrote = append(served, s), append(wrote, w)
		t.Logf("RTO %s: %s took over; NBD served %v after the kill, first write completed %v (target TTL %v + 1.5 s = %v)",
			trial, r.by.Name, s.Round(time.Millisecond), w.Round(time.Millisecond), autoTTL, autoTTL+1500*time.Millisecond)
	}

	// Trial 1: ext4.
	base := t.TempDir()
	mnt := filepath.Join(base, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	loop := attach(t, tools, &server{URI: p.URI()}, filepath.Join(base, "fuse-1"))
	runCmd(t, 2*time.Minute, tools["mkfs.ext4"], "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", loop.dev, "240M")
	loop.mount(t, mnt)
	sums := writeTree(t, mnt, 21)
	foSyncfs(t, mnt)
	bg := startFoWriter(t, filepath.Join(mnt, "bg"))
	time.Sleep(2 * time.Second)
	killAt := time.Now()
	p.Kill()
	cands := []*foNode{c.N("n2"), c.N("n3")}
	r := probeTakeover(t, cands, autoProbeOff, 30*time.Second)
	record("ext4", killAt, r)
	files, werr := bg.stop(30 * time.Second)
	t.Logf("background writer: %d files synced before it stopped (%v)", len(files), werr)
	durable := map[string]string{}
	for _, f := range files {
		if f.synced.Before(killAt) {
			durable[filepath.Join("bg", f.name)] = f.sum
		}
	}
	if len(durable) == 0 {
		t.Fatal("no background file was synced before the kill")
	}
	loop.detach(t)
	np := r.by
	loop = attach(t, tools, &server{URI: np.URI()}, filepath.Join(base, "fuse-2"))
	loop.mount(t, mnt) // the kernel replays the ext4 journal
	loop.umount(t)
	out := runCmd(t, 2*time.Minute, tools["fsck.ext4"], "-fn", loop.dev)
	t.Logf("fsck on %s: %s", np.Name, strings.TrimSpace(out))
	loop.mount(t, mnt)
	foVerifyFiles(t, mnt, "tree", sums)
	foVerifyFiles(t, mnt, "background", durable)
	loop.umount(t)
	loop.detach(t)

	// The killed node comes back with its usual command and rejoins.
	old := p
	c.Start(old, true)
	p = c.WaitPrimary(60 * time.Second)
	if p != np {
		t.Fatalf("primary %s after the old one rejoined, want %s", p.Name, np.Name)
	}
	c.waitRejoined(old, p, 60*time.Second)

	// Trials 2..: raw writers.
	trials := autoTrials(2)
	for i := 2; i <= trials; i++ {
		tag := fmt.Sprintf("trial%d", i)
		first := int64(i%3) * (64 << 20)
		w := startBlockWriter(t, p, tag, first, (64<<20)/blockSize)
		time.Sleep(1500 * time.Millisecond)
		var cands []*foNode
		for _, n := range c.running() {
			if n != p {
				cands = append(cands, n)
			}
		}
		killAt := time.Now()
		p.Kill()
		r := probeTakeover(t, cands, autoProbeOff, 30*time.Second)
		record(tag, killAt, r)
		acked, _ := w.stop()
		if len(acked) == 0 {
			t.Fatalf("%s: the writer had no write acknowledged before the kill", tag)
		}
		foCheckBlocks(t, r.by.NBD, tag, acked, blockSize)
		t.Logf("%s: all %d acknowledged blocks are on %s", tag, len(acked), r.by.Name)
		old := p
		c.Start(old, true)
		p = c.WaitPrimary(60 * time.Second)
		if p != r.by {
			t.Fatalf("%s: primary %s after the old one rejoined, want %s", tag, p.Name, r.by.Name)
		}
		c.waitRejoined(old, p, 60*time.Second)
	}
	t.Logf("RTO to NBD served: %s", rtoSummary(served))
	t.Logf("RTO to the first completed write: %s", rtoSummary(wrote))
}
