package e2e

// Replication with real processes: fio through a primary with two sync
// mirrors, and quorum loss with kill -9 (with and without
// --allow-degraded).

import (
	"encoding/json"
	"errors"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestReplFioTwoMirrors runs fio's verifying random-write job against a
// primary with two sync mirrors (K=2) and then requires the three disk
// images to be byte-identical.
func TestReplFioTwoMirrors(t *testing.T) {
	fio := needTool(t, "fio")
	c := newReplCluster(t, "64M", "m1", "m2")
	c.StartMirror("m1")
	c.StartMirror("m2")
	c.StartPrimary(primaryOpts{Args: []string{"--mode", "sync", "--sync-acks", "2"}})
	c.WaitPeerState(15*time.Second, "in-sync", "m1", "m2")

	size := 16 * MiB
	if !testing.Short() {
		size = 48 * MiB
	}
	out := filepath.Join(t.TempDir(), "fio.json")
	start := time.Now()
	runCmd(t, 3*time.Minute, fio,
		"--name=repl", "--ioengine=nbd", "--uri="+c.Primary.URI,
		"--rw=randwrite", "--bs=4k", "--iodepth=16", "--size="+itoa(size),
		"--verify=crc32c", "--do_verify=1", "--verify_fatal=1", "--randrepeat=0",
		"--output-format=json", "--output="+out)
	elapsed := time.Since(start)
	j := readFioVerify(t, out, int64(size))
	t.Logf("fio 4k randwrite qd16 with 2 sync mirrors: %.0f IOPS, %d MiB verified (%v)", j.Write.IOPS, size/MiB, elapsed.Round(time.Millisecond))

	st, err := c.PrimaryStatus()
	if err != nil {
		t.Fatal(err)
	}
	if want := uint64(size / 4096); st.LastSeq < want {
		t.Errorf("primary last_seq %d, want ≥ %d (one record per 4k write)", st.LastSeq, want)
	}
	c.WaitApplied(30*time.Second, "m1", "m2")
	c.StopAll()
	c.RequireIdentical("m1", "m2")
}

func itoa(n int) string {
	b, _ := json.Marshal(n)
	return string(b)
}

// TestReplQuorumLoss: sync 2-of-3. Killing one mirror does not stop
// writes; killing a second makes writes fail with EIO after --ack-timeout
// (checked with our NBD client and with qemu-io); with --allow-degraded
// writes go on instead; restarted mirrors catch up and all images end
// identical.
func TestReplQuorumLoss(t *testing.T) {
	const ackTimeout = 2 * time.Second
	seed := rand.Uint64()
	t.Logf("seed %d", seed)
	c := newReplCluster(t, "64M", "m1", "m2", "m3")
	for _, m := range c.Mirrors {
		c.StartMirror(m.Name)
	}
	args := []string{"--mode", "sync", "--sync-acks", "2", "--ack-timeout", ackTimeout.String()}
	c.StartPrimary(primaryOpts{Args: args})
	c.WaitPeerState(15*time.Second, "in-sync", "m1", "m2", "m3")

	w := startLoad(t, c.Primary.NBD, seed, 1024)
	time.Sleep(500 * time.Millisecond)

	// One mirror down: K=2 still reachable.
	t1 := time.Now()
	c.M("m3").Proc.Kill()
	time.Sleep(1500 * time.Millisecond)
	rs := w.Results()
	okAfter1, failAfter1 := countStarted(rs, t1, true), countStarted(rs, t1, false)
	t.Logf("after kill -9 of m3: %d writes succeeded, %d failed in 1.5 s", okAfter1, failAfter1)
	if okAfter1 < 10 || failAfter1 > 0 {
		t.Fatalf("with 2 of 3 mirrors up: %d writes succeeded and %d failed; want them to go on", okAfter1, failAfter1)
	}

	// Second mirror down: no quorum.
	t2 := time.Now()
	c.M("m2").Proc.Kill()
	r, err := w.waitResult(ackTimeout+5*time.Second, t2)
	if err != nil {
		if pend, ok := w.Pending(); ok {
			t.Errorf("write of block %d pending since %v (%v before the second kill)", pend.Block,
				time.Since(pend.Start).Round(time.Millisecond), t2.Sub(pend.Start).Round(time.Millisecond))
		}
		c.Diagnose()
		t.Fatalf("after losing quorum: %v", err)
	}
	took := r.End.Sub(r.Start)
	t.Logf("first write after losing quorum: %v after %v", r.Err, took.Round(time.Millisecond))
	var ne nbdError
	if !errors.As(r.Err, &ne) || ne != nbdError(syscall.EIO) {
		t.Fatalf("write without quorum returned %v, want EIO", r.Err)
	}
	if took < ackTimeout*8/10 {
		t.Errorf("write failed after %v, before --ack-timeout %v", took, ackTimeout)
	}
	// qemu-io must see the failure too.
	if qio, err := lookTool("qemu-io"); err == nil {
		start := time.Now()
		out, qerr := runCmdErr(t, 30*time.Second, qio, "-f", "raw", "-c", "write -P 0x5a 8M 4k", c.Primary.URI)
		d := time.Since(start)
		t.Logf("qemu-io write without quorum (%v): err=%v\n%s", d.Round(time.Millisecond), qerr, strings.TrimSpace(out))
		if !strings.Contains(out, "Input/output error") {
			t.Errorf("qemu-io write without quorum did not report an I/O error")
		}
		if d < ackTimeout*8/10 {
			t.Errorf("qemu-io write failed after %v, before --ack-timeout", d)
		}
	}
	if n := countStarted(w.Results(), t2, true); n > 0 {
		t.Errorf("%d writes started after the second kill succeeded without a quorum", n)
	}
	w.Stop()
	if t.Failed() {
		return
	}

	// Bring the mirrors back, then the same failure with --allow-degraded.
	c.StartMirror("m2")
	c.StartMirror("m3")
	c.WaitPeerState(20*time.Second, "in-sync", "m1", "m2", "m3")
	c.StopPrimary()
	c.StartPrimary(primaryOpts{Args: append(args, "--allow-degraded")})
	c.WaitPeerState(15*time.Second, "in-sync", "m1", "m2", "m3")
	w = startLoad(t, c.Primary.NBD, seed+1, 1024)
	time.Sleep(500 * time.Millisecond)
	t3 := time.Now()
	c.M("m3").Proc.Kill()
	time.Sleep(time.Second)
	t4 := time.Now()
	c.M("m2").Proc.Kill()
	time.Sleep(ackTimeout + 2*time.Second)
	rs = w.Results()
	t5 := t4.Add(ackTimeout + 500*time.Millisecond)
	t.Logf("--allow-degraded: %d writes after the first kill, %d after the second, %d from %v after it; %d failed",
		countStarted(rs, t3, true), countStarted(rs, t4, true), countStarted(rs, t5, true),
		ackTimeout+500*time.Millisecond, countStarted(rs, t3, false))
	if n := countStarted(rs, t3, false); n > 0 {
		t.Errorf("--allow-degraded: %d writes failed", n)
	}
	if n := countStarted(rs, t5, true); n < 10 {
		t.Errorf("--allow-degraded: only %d writes succeeded once the lost mirrors timed out", n)
	}
	if st, err := c.PrimaryStatus(); err != nil || !st.Degraded {
		t.Errorf("--allow-degraded with 1 of 2 mirrors: status degraded=%v (err %v)", st != nil && st.Degraded, err)
	}
	w.Stop()

	c.StartMirror("m2")
	c.StartMirror("m3")
	c.WaitPeerState(30*time.Second, "in-sync", "m1", "m2", "m3")
	c.WaitApplied(30*time.Second, "m1", "m2", "m3")
	conn, err := rawDial(t.Context(), c.Primary.NBD, defaultExport)
	if err != nil {
		t.Fatal(err)
	}
	verifyModel(t, conn, seed+1, w.Model())
	conn.disconnect()
	c.StopAll()
	c.RequireIdentical("m1", "m2", "m3")
}

// TestReplPrimarySIGTERM: a primary replicating to a connected mirror
// exits promptly and cleanly on SIGTERM, and its mirror stays up.
func TestReplPrimarySIGTERM(t *testing.T) {
	c := newReplCluster(t, "64M", "m1")
	c.StartMirror("m1")
	c.StartPrimary(primaryOpts{Args: []string{"--mode", "sync", "--sync-acks", "1"}})
	c.WaitPeerState(15*time.Second, "in-sync", "m1")
	w := startLoad(t, c.Primary.NBD, 1, 16)
	time.Sleep(200 * time.Millisecond)
	w.Stop()
	start := time.Now()
	if err := c.Primary.Proc.Stop(syscall.SIGTERM); err != nil {
		t.Fatalf("primary with a connected mirror: %v", err)
	}
	t.Logf("primary exited %v after SIGTERM", time.Since(start).Round(time.Millisecond))
	if c.M("m1").Proc.Exited() {
		t.Fatal("mirror exited with its primary")
	}
	stopProc(t, c.M("m1").Proc)
}
