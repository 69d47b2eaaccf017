package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// TestFailoverFailback: p1 replicates to m1 (sync, degraded allowed); m1
// is lost and p1 takes writes B alone; p1 dies; m1 is restarted and
// promoted by scripts/failover.sh and takes writes C (half of them on B's
// blocks). p1 restarts as the old primary first and is fenced (its write
// fails, m1 keeps A). Then p1 is demoted and rejoins as m1's mirror: B's records go to
// p1's quarantine (the JSON report lists their regions), p1 is resynced by
// hash compare, sending about the blocks that differ (not the 256 MiB
// disk), and ends byte-identical to m1 with A and C readable and B gone
// from the live image.
func TestFailoverFailback(t *testing.T) {
	const blk = 64 << 10
	c := newFoCluster(t, 164, "p1", "m1")
	p1, m1 := c.N("p1"), c.N("m1")
	// After its promotion m1 replicates to p1's address asynchronously, so
	// it serves while p1 is down.
	m1Args := []string{"--mirror", "p1=" + p1.Listen, "--mode", "async", "--max-lag", "0"}
	m1.StartMirror(m1Args...)
	p1.StartPrimary("256M", "--mirror", "m1="+m1.Listen, "--mode", "sync", "--allow-degraded",
		"--ack-timeout", "1s", "--listen", p1.Listen)

	var aOffs, bOffs, cOffs []int64
	for i := range 16 {
		aOffs = append(aOffs, int64(i)*8<<20)
	}
	for i := range 32 {
		bOffs = append(bOffs, int64(i)*4<<20+1<<20)
	}
	for i := range 32 {
		if i%2 == 0 {
			cOffs = append(cOffs, bOffs[i]) // overwrite B's block on the new primary
		} else {
			cOffs = append(cOffs, int64(i)*4<<20+2<<20)
		}
	}

	conn := foDial(t, p1.NBD)
	conn.foWriteBlocks(t, "A", aOffs, blk)
	foWaitCaughtUp(t, p1, m1, 20*time.Second)

	// m1 is lost; p1 goes on alone (degraded): B exists only on p1.
	m1.Kill()
	conn.foWriteBlocks(t, "B", bOffs, blk)
	p1.Kill()
	t.Logf("p1 killed after %d writes B that m1 never saw", len(bOffs))

	// Failover: m1 comes back and the script promotes it online.
	m1.StartMirror(m1Args...)
	r := runFailover(t, "--primary", p1.NBD, "--primary", p1.Admin, "--admin", m1.Admin)
	if r.Code != 0 {
		t.Fatalf("failover.sh exited %d", r.Code)
	}
	t.Logf("failover took %.2f s (script), %v wall", r.Reported, r.Wall.Round(time.Millisecond))
	st := m1.WaitStatus(10*time.Second, "primary", func(s *foStatus) (bool, string) {
		return s.Primary != nil, "not primary yet"
	})
	if st.Primary.Epoch != 2 {
		t.Errorf("m1 is primary in epoch %d, want 2", st.Primary.Epoch)
	}
	conn = foDial(t, m1.NBD)
	conn.foWriteBlocks(t, "C", cOffs, blk)
	foCheckBlocks(t, m1.NBD, "A", aOffs, blk)

	// p1 reboots as the primary it was before anyone demotes it: it dials
	// m1, learns it is fenced and fails every write, and m1 takes none of
	// its records.
	p1.StartPrimary("256M", "--mirror", "m1="+m1.Listen, "--mode", "sync", "--allow-degraded",
		"--ack-timeout", "1s", "--listen", p1.Listen)
	p1.WaitStatus(30*time.Second, "fenced after its restart", func(s *foStatus) (bool, string) {
		if s.Primary == nil || s.Primary.Replication == nil {
			return false, "no replication status"
		}
		return s.Primary.Replication.Fenced, "not fenced"
	})
	stale := foDial(t, p1.NBD)
	if err := stale.foWrite(foPattern("Z", 0, blk), aOffs[0], 10*time.Second); err == nil {
		t.Errorf("the restarted old primary acknowledged a write although m1 is primary in epoch 2")
	}
	p1.Stop()
	p1.Proc = nil
	foCheckBlocks(t, m1.NBD, "A", aOffs, blk)

	// Failback: p1 demoted offline and started as m1's mirror.
	out := runCmd(t, time.Minute, binPath, "demote", "--data", p1.Data)
	t.Logf("demote: %s", strings.TrimSpace(out))
	p1.StartMirror()
	ps := p1.WaitStatus(30*time.Second, "quarantine reported", func(s *foStatus) (bool, string) {
		if s.Mirror == nil {
			return false, "not a mirror"
		}
		return len(s.Mirror.Quarantined) > 0, "nothing quarantined yet"
	})
	foWaitCaughtUp(t, m1, p1, 60*time.Second)
	if ps.Mirror.SplitBrain != "" {
		t.Errorf("failback reported a split brain: %s", ps.Mirror.SplitBrain)
	}
	if line := p1.Proc.LogLine("quarantined"); line == "" {
		t.Errorf("p1's log has no quarantine line")
	} else {
		t.Logf("p1: %s", line)
	}

	// The quarantine report lists every B write (and nothing of A).
	reps := foQuarantine(t, p1.Data)
	if len(reps) == 0 {
		t.Fatalf("no q-*.json in %s/quarantine", p1.Data)
	}
	records := 0
	for _, q := range reps {
		records += q.Records
		t.Logf("quarantine: %s: seq %d..%d, %d records, %d bytes, %d regions (fork %d, missing before %d)",
			q.File, q.FirstSeq, q.LastSeq, q.Records, q.DataBytes, len(q.Regions), q.ForkSeq, q.MissingBefore)
	}
	for i, off := range bOffs {
		if !foCovered(reps, off, blk) {
			t.Errorf("B write %d at offset %d is not in the quarantine report", i, off)
		}
	}
	for i, off := range aOffs {
		if foCovered(reps, off, blk) {
			t.Errorf("A write %d at offset %d (replicated before the fork) is in the quarantine report", i, off)
		}
	}
	if records < len(bOffs) {
		t.Errorf("quarantine holds %d records, want at least the %d B writes", records, len(bOffs))
	}

	// The resync sent about the differing chunks, not the disk.
	runs := resyncRuns(t, m1.Proc.Log(), "p1")
	var sent int64 = -1
	for _, r := range runs {
		if r.Complete {
			sent = r.Sent
		}
	}
	if sent < 0 {
		t.Fatalf("m1 logged no completed resync of p1:\n%s", resyncLines(m1.Proc, p1.Proc))
	}
	diff := int64(len(bOffs)+len(cOffs)/2) * blk // B's blocks plus C's blocks elsewhere
	t.Logf("resync of p1 sent %s; blocks that differ %s (C also arrives as journal records); disk 256 MiB", mib(sent), mib(diff))
	// B's blocks that C overwrites may be undone by C's records instead of
	// chunks (live records restart at the fork, and p1 may have applied C
	// there before the chunk hashes are compared); the others can only be
	// undone by the resync.
	undo := int64(len(bOffs)-len(cOffs)/2) * blk
	if sent < undo {
		t.Errorf("resync sent %s, less than the %s of B that no C write covers, which p1 must lose", mib(sent), mib(undo))
	}
	if sent > 4*diff {
		t.Errorf("resync sent %s, far more than the %s that differ", mib(sent), mib(diff))
	}

	// The new primary holds A and C; after the stop both images are equal.
	foCheckBlocks(t, m1.NBD, "C", cOffs, blk)
	m1.Stop()
	p1.Stop()
	foRequireIdentical(t, p1, m1)
	// B's blocks not overwritten by C are zero again on both.
	img, err := foReadImage(p1.Image(), bOffs[1], blk)
	if err != nil {
		t.Fatal(err)
	}
	if string(img) == string(foPattern("B", 1, blk)) {
		t.Errorf("p1 still holds quarantined write B 1 in its image")
	}
}

// TestFailoverFailbackClean: every write of p1 reached m1 before p1 died
// (sync, all acknowledged), so when p1 rejoins as m1's mirror there is
// nothing to quarantine and no reason to resync the disk: it catches up
// from m1's journal and ends identical.
func TestFailoverFailbackClean(t *testing.T) {
	const blk = 64 << 10
	p1, m1 := startFailbackPair(t, 186)
	aOffs := []int64{0, 5 << 20, 99 << 20}
	pc := foDial(t, p1.NBD)
	pc.foWriteBlocks(t, "A", aOffs, blk)
	foWaitCaughtUp(t, p1, m1, 20*time.Second)
	p1.Kill()
	if r := runFailover(t, "--primary", p1.NBD, "--admin", m1.Admin); r.Code != 0 {
		t.Fatalf("failover.sh exited %d", r.Code)
	}
	cOffs := []int64{7 << 20, 8 << 20}
	mc := foDial(t, m1.NBD)
	mc.foWriteBlocks(t, "C", cOffs, blk)
	runCmd(t, time.Minute, binPath, "demote", "--data", p1.Data)
	p1.StartMirror()
	foWaitCaughtUp(t, m1, p1, 30*time.Second)
	st, err := p1.Status()
	if err != nil || st.Mirror == nil {
		t.Fatalf("p1: %v %s", err, p1.RawStatus())
	}
	if len(st.Mirror.Quarantined) > 0 || len(foQuarantine(t, p1.Data)) > 0 {
		t.Errorf("a clean failback quarantined records: %+v", st.Mirror.Quarantined)
	}
	if st.Mirror.SplitBrain != "" {
		t.Errorf("a clean failback reported a split brain: %s", st.Mirror.SplitBrain)
	}
	var sent int64
	for _, r := range resyncRuns(t, m1.Proc.Log(), "p1") {
		sent += r.Sent
	}
	t.Logf("resync sent %s to the clean old primary", mib(sent))
	if sent > 1<<20 {
		t.Errorf("a clean failback resynced %s; nothing differed but m1's journaled writes", mib(sent))
	}
	m1.Stop()
	p1.Stop()
	foRequireIdentical(t, p1, m1)
}

// TestFailoverFailbackIndirect: a clean failover, then the promoted m1
// (the indirect path is on by default after a promotion too) takes 1 MiB
// writes while p1 is down, rewriting a 16 MiB region six times: its
// journal holds them as indirect records whose data later writes
// overwrote, most of them past the 64 MiB memory tail. p1, demoted and
// rejoining as m1's mirror, cannot be streamed to from those records: m1
// logs that and resyncs it, sending the rewritten region (not the 256 MiB
// disk), and the images end byte-identical with the last pass readable.
func TestFailoverFailbackIndirect(t *testing.T) {
	const (
		blk    = 1 << 20
		passes = 6
	)
	// The indirect path is off by default (docs/tuning.md, "Indirect
	// writes"): on here for the primary and, after its promotion, m1.
	p1, m1 := startFailbackPair(t, 192, "--indirect-min", "256K")
	var offs []int64
	for i := range 16 {
		offs = append(offs, 64<<20+int64(i)*blk)
	}
	pc := foDial(t, p1.NBD)
	pc.foWriteBlocks(t, "A", offs, blk)
	foWaitCaughtUp(t, p1, m1, 20*time.Second)
	p1.Kill()
	if r := runFailover(t, "--primary", p1.NBD, "--admin", m1.Admin); r.Code != 0 {
		t.Fatalf("failover.sh exited %d", r.Code)
	}
	mc := foDial(t, m1.NBD)
	tag := ""
	for pass := 1; pass <= passes; pass++ {
		tag = fmt.Sprintf("C%d", pass)
		mc.foWriteBlocks(t, tag, offs, blk)
	}
	runCmd(t, time.Minute, binPath, "demote", "--data", p1.Data)
	p1.StartMirror()
	foWaitCaughtUp(t, m1, p1, time.Minute)
	if !strings.Contains(m1.Proc.Log(), "a mirror is behind an indirect record whose data a later write overwrote") {
		t.Errorf("m1 did not log that p1 is behind overwritten indirect records\n%s", resyncLines(m1.Proc, p1.Proc))
	}
	// p1 rejoining is compared by hash (as in TestFailoverFailbackClean);
	// the drop at the overwritten indirect records may restart that resync
	// with what is left. What is sent is the rewritten region.
	runs := waitResyncComplete(t, m1.Proc, "p1")
	last := runs[len(runs)-1]
	if region := int64(len(offs)) * blk; last.Sent == 0 || last.Sent > region+2*resyncChunk {
		t.Errorf("the resync that completed sent %s; want the rewritten %s region, not more\n%s", mib(last.Sent), mib(region), resyncLines(m1.Proc, p1.Proc))
	}
	t.Logf("p1 resynced after %d overwritten passes on m1: runs %+v", passes, runs)
	foCheckBlocks(t, m1.NBD, tag, offs, blk)
	m1.Stop()
	p1.Stop()
	foRequireIdentical(t, p1, m1)
}

// startFailbackPair starts p1 as a sync primary of m1, and m1 as a mirror
// that replicates back to p1 (async, no lag bound) once promoted; extra
// goes to both.
func startFailbackPair(t *testing.T, host int, extra ...string) (p1, m1 *foNode) {
	t.Helper()
	c := newFoCluster(t, host, "p1", "m1")
	p1, m1 = c.N("p1"), c.N("m1")
	m1.StartMirror(append([]string{"--mirror", "p1=" + p1.Listen, "--mode", "async", "--max-lag", "0"}, extra...)...)
	p1.StartPrimary("256M", append([]string{"--mirror", "m1=" + m1.Listen, "--mode", "sync", "--listen", p1.Listen}, extra...)...)
	return p1, m1
}
