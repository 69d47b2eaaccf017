package e2e

import (
	"bytes"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestFailoverSplitBrain: p1 replicates to m1 and m2 (sync, 2 of 2).
// m1 and m2 reach each other only through fault proxies, which partition
// them; p1 dies and scripts/failover.sh promotes both (epoch 2 on each,
// different epoch IDs). Each takes writes (S1 on m1, S2 on m2, one block
// on both). When the partition heals both report a split brain naming
// `--split-brain-loser`, and neither took the other's writes. The operator
// demotes m2 online with --split-brain-loser and restarts it as a mirror:
// S2 goes to m2's quarantine (report and .rec file hold it), m2 is resynced
// from m1 and the images end identical, holding A and S1.
func TestFailoverSplitBrain(t *testing.T) {
	const blk = 64 << 10
	c := newFoCluster(t, 170, "p1", "m1", "m2")
	p1, m1, m2 := c.N("p1"), c.N("m1"), c.N("m2")
	toM2 := foStartProxy(t, "127.0.0.173", m2.Listen) // m1 → m2
	toM1 := foStartProxy(t, "127.0.0.174", m1.Listen) // m2 → m1
	m1.StartMirror("--mirror", "m2="+toM2.Addr(), "--mode", "async", "--max-lag", "0")
	m2.StartMirror("--mirror", "m1="+toM1.Addr(), "--mode", "async", "--max-lag", "0")
	p1.StartPrimary("256M", "--mirror", "m1="+m1.Listen, "--mirror", "m2="+m2.Listen, "--mode", "sync", "--sync-acks", "2")

	aOffs := []int64{0, 32 << 20, 64 << 20, 200 << 20}
	pc := foDial(t, p1.NBD)
	pc.foWriteBlocks(t, "A", aOffs, blk)
	foWaitCaughtUp(t, p1, m1, 20*time.Second)
	foWaitCaughtUp(t, p1, m2, 20*time.Second)

	toM1.Partition(t, "both")
	toM2.Partition(t, "both")
	p1.Kill()
	for _, n := range []*foNode{m1, m2} {
		if r := runFailover(t, "--primary", p1.NBD, "--primary", p1.Admin, "--admin", n.Admin); r.Code != 0 {
			t.Fatalf("failover.sh on %s exited %d", n.Name, r.Code)
		}
	}
	ids := map[string]uint64{}
	for _, n := range []*foNode{m1, m2} {
		st := n.WaitStatus(10*time.Second, "primary", func(s *foStatus) (bool, string) { return s.Primary != nil, "not primary" })
		ids[n.Name] = st.Primary.Epoch
	}
	if ids["m1"] != ids["m2"] {
		t.Fatalf("epochs %v: the test wants both promoted into the same epoch", ids)
	}

	// Each side takes writes; the last block is written on both.
	shared := int64(128 << 20)
	s1 := []int64{8 << 20, 9 << 20, shared}
	s2 := []int64{10 << 20, 11 << 20, 12 << 20, shared}
	c1, c2 := foDial(t, m1.NBD), foDial(t, m2.NBD)
	c1.foWriteBlocks(t, "S1", s1, blk)
	c2.foWriteBlocks(t, "S2", s2, blk)

	toM1.Heal(t)
	toM2.Heal(t)
	healed := time.Now()
	for _, n := range []*foNode{m1, m2} {
		st := n.WaitStatus(45*time.Second, "split brain reported", func(s *foStatus) (bool, string) {
			if s.Primary == nil {
				return false, "not primary"
			}
			return s.Primary.SplitBrain != "", "no split brain reported"
		})
		t.Logf("%s reports after %v: %s", n.Name, time.Since(healed).Round(time.Millisecond), st.Primary.SplitBrain)
		if !strings.Contains(st.Primary.SplitBrain, "--split-brain-loser") {
			t.Errorf("%s's split-brain report does not name the resolving command: %s", n.Name, st.Primary.SplitBrain)
		}
		out := runCmd(t, 30*time.Second, binPath, "status", "--admin", n.Admin)
		if !strings.Contains(out, "SPLIT BRAIN") {
			t.Errorf("`blockmirror status` of %s does not show the split brain:\n%s", n.Name, out)
		}
	}
	// Nothing crossed over: each side still reads its own writes.
	foCheckBlocks(t, m1.NBD, "S1", s1, blk)
	foCheckBlocks(t, m2.NBD, "S2", s2, blk)
	foCheckBlocks(t, m1.NBD, "A", aOffs, blk)
	foCheckBlocks(t, m2.NBD, "A", aOffs, blk)

	// Resolve: m2 loses.
	out := runCmd(t, 30*time.Second, binPath, "demote", "--admin", m2.Admin, "--split-brain-loser")
	t.Logf("demote m2: %s", strings.TrimSpace(out))
	select {
	case <-m2.Proc.Done():
		if err := m2.Proc.ExitErr(); err != nil {
			t.Errorf("m2 exited with %v after the online demotion", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatalf("m2 still runs 15 s after `demote --admin`")
	}
	m2.StartMirror()
	foWaitCaughtUp(t, m1, m2, 60*time.Second)
	ms := m2.WaitStatus(10*time.Second, "quarantine listed, no split brain", func(s *foStatus) (bool, string) {
		if s.Mirror == nil {
			return false, "not a mirror"
		}
		return len(s.Mirror.Quarantined) > 0 && s.Mirror.SplitBrain == "", "quarantine/split brain state"
	})
	t.Logf("m2 quarantined %d report(s); first: %d records, %d bytes in %s", len(ms.Mirror.Quarantined),
		ms.Mirror.Quarantined[0].Records, ms.Mirror.Quarantined[0].DataBytes, ms.Mirror.Quarantined[0].File)
	if st, err := m1.Status(); err != nil || st.Primary == nil {
		t.Errorf("m1 after the resolution: %v %s", err, m1.RawStatus())
	} else if st.Primary.SplitBrain != "" {
		t.Errorf("m1 (the winner) still reports the resolved split brain, with advice to demote it: %s", st.Primary.SplitBrain)
	}

	// S2 is kept: listed in the report and its bytes are in the .rec file.
	reps := foQuarantine(t, m2.Data)
	var rec []byte
	for _, q := range reps {
		b, err := os.ReadFile(q.File)
		if err != nil {
			t.Fatal(err)
		}
		rec = append(rec, b...)
	}
	for i, off := range s2 {
		if !foCovered(reps, off, blk) {
			t.Errorf("S2 write %d at %d is not in m2's quarantine report", i, off)
		}
		if !bytes.Contains(rec, foPattern("S2", i, blk)) {
			t.Errorf("S2 write %d's data is not in m2's quarantine files", i)
		}
	}
	for i, off := range aOffs {
		if foCovered(reps, off, blk) {
			t.Errorf("A write %d at %d (before the fork) is in m2's quarantine report", i, off)
		}
	}

	// Converged on m1's side.
	foCheckBlocks(t, m1.NBD, "S1", s1, blk)
	m1.Stop()
	if err := m2.Proc.Stop(syscall.SIGTERM); err != nil {
		t.Errorf("stop m2: %v", err)
	}
	foRequireIdentical(t, m1, m2)
	for i, off := range s1 {
		got, err := foReadImage(m2.Image(), off, blk)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, foPattern("S1", i, blk)) {
			t.Errorf("m2's image lacks S1 write %d after the resync", i)
		}
	}
}

// TestFailoverSplitBrainUneven: the two promoted mirrors did not hold the
// same prefix of the old primary's writes (async; m2 was cut off while
// p1 wrote E, which only m1 received), so their epoch-2 histories start at
// different seqs. The side that is behind (m2) wins; the loser m1 must
// quarantine both E (epoch-1 records m2 never had) and its own S1, and end
// identical to m2.
func TestFailoverSplitBrainUneven(t *testing.T) {
	const blk = 64 << 10
	c := newFoCluster(t, 180, "p1", "m1", "m2")
	p1, m1, m2 := c.N("p1"), c.N("m1"), c.N("m2")
	toM2 := foStartProxy(t, "127.0.0.183", m2.Listen)   // m1 → m2
	toM1 := foStartProxy(t, "127.0.0.184", m1.Listen)   // m2 → m1
	p1ToM2 := foStartProxy(t, "127.0.0.185", m2.Listen) // p1 → m2
	m1.StartMirror("--mirror", "m2="+toM2.Addr(), "--mode", "async", "--max-lag", "0")
	m2.StartMirror("--mirror", "m1="+toM1.Addr(), "--mode", "async", "--max-lag", "0")
	p1.StartPrimary("256M", "--mirror", "m1="+m1.Listen, "--mirror", "m2="+p1ToM2.Addr(), "--mode", "async", "--max-lag", "0")

	aOffs := []int64{0, 40 << 20}
	eOffs := []int64{20 << 20, 21 << 20, 22 << 20, 150 << 20}
	pc := foDial(t, p1.NBD)
	pc.foWriteBlocks(t, "A", aOffs, blk)
	foWaitCaughtUp(t, p1, m1, 20*time.Second)
	foWaitCaughtUp(t, p1, m2, 20*time.Second)
	p1ToM2.Partition(t, "both")
	pc.foWriteBlocks(t, "E", eOffs, blk)
	foWaitCaughtUp(t, p1, m1, 20*time.Second)
	toM1.Partition(t, "both")
	toM2.Partition(t, "both")
	p1.Kill()
	for _, n := range []*foNode{m1, m2} {
		if r := runFailover(t, "--primary", p1.NBD, "--admin", n.Admin); r.Code != 0 {
			t.Fatalf("failover.sh on %s exited %d", n.Name, r.Code)
		}
		n.WaitStatus(10*time.Second, "primary", func(s *foStatus) (bool, string) { return s.Primary != nil, "not primary" })
	}
	foCheckBlocks(t, m1.NBD, "E", eOffs, blk)

	s1 := []int64{60 << 20, 21 << 20} // the second lands on an E block
	s2 := []int64{61 << 20, 62 << 20}
	c1, c2 := foDial(t, m1.NBD), foDial(t, m2.NBD)
	c1.foWriteBlocks(t, "S1", s1, blk)
	c2.foWriteBlocks(t, "S2", s2, blk)
	toM1.Heal(t)
	toM2.Heal(t)
	for _, n := range []*foNode{m1, m2} {
		n.WaitStatus(45*time.Second, "split brain reported", func(s *foStatus) (bool, string) {
			return s.Primary != nil && s.Primary.SplitBrain != "", "no split brain reported"
		})
	}

	// m2 (the one behind) wins; m1 gives up E and S1.
	runCmd(t, 30*time.Second, binPath, "demote", "--admin", m1.Admin, "--split-brain-loser")
	select {
	case <-m1.Proc.Done():
	case <-time.After(15 * time.Second):
		t.Fatalf("m1 still runs 15 s after `demote --admin`")
	}
	m1.StartMirror()
	foWaitCaughtUp(t, m2, m1, 60*time.Second)
	reps := foQuarantine(t, m1.Data)
	for _, q := range reps {
		t.Logf("m1 quarantine: seq %d..%d (fork %d), %d records, %d regions", q.FirstSeq, q.LastSeq, q.ForkSeq, q.Records, len(q.Regions))
	}
	for i, off := range eOffs {
		if !foCovered(reps, off, blk) {
			t.Errorf("E write %d (only m1 had it) is not in m1's quarantine", i)
		}
	}
	for i, off := range s1 {
		if !foCovered(reps, off, blk) {
			t.Errorf("S1 write %d is not in m1's quarantine", i)
		}
	}
	for i, off := range aOffs {
		if foCovered(reps, off, blk) {
			t.Errorf("A write %d (common to both) is in m1's quarantine", i)
		}
	}
	foCheckBlocks(t, m2.NBD, "S2", s2, blk)
	foCheckBlocks(t, m2.NBD, "A", aOffs, blk)
	m2.Stop()
	m1.Stop()
	foRequireIdentical(t, m1, m2)
	for i, off := range eOffs {
		got, err := foReadImage(m1.Image(), off, blk)
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Equal(got, foPattern("E", i, blk)) {
			t.Errorf("m1's image still holds E write %d after resyncing from m2, which never had it", i)
		}
	}
}
