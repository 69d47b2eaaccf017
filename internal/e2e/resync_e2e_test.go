package e2e

// Resync with real processes: a new mirror joins a primary whose journal
// no longer reaches back to seq 1; resync under fio --verify load; status
// while a resync runs.

import (
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/blockmirror/blockmirror/internal/testutil"
)

// TestResyncNewMirror: a new, empty mirror joins a 1 GiB primary holding
// ~10% random data. The whole disk is compared, only the differing data
// is sent: resync sent_bytes ≤ 1.2 × the bytes that differ. The primary's
// own count is checked against the UDP bytes a relay between the two
// counted: what went over the wire ≥ sent_bytes, and ≤ 1.1 × (sent_bytes
// + the journal records replayed to the mirror) + 4 MiB of protocol and
// hash traffic. The images are identical afterwards.
func TestResyncNewMirror(t *testing.T) {
	s := newResyncSetup(t, 103)
	c := s.c
	m := c.StartMirror("m1")
	relay := testutil.StartProxy(t, testutil.FreeUDPAddr(t), m.Listen)
	start := time.Now()
	c.StartPrimary(primaryOpts{Via: map[string]string{"m1": relay.Addr().String()}})
	c.WaitPeerState(2*time.Minute, "in-sync", "m1")
	elapsed := time.Since(start)
	c.WaitApplied(30*time.Second, "m1")
	relayed := relay.Stats()
	wire, back := int64(relayed.Up.Bytes), int64(relayed.Down.Bytes)

	runs := resyncRuns(t, c.Primary.Proc.Log(), "m1")
	if len(runs) != 1 || !runs[0].Complete {
		t.Fatalf("want one complete resync, got %+v\n%s", runs, resyncLines(c.Primary.Proc, m.Proc))
	}
	run := runs[0]
	if run.Compare != resyncDiskSize {
		t.Errorf("a new mirror compared %d bytes, want the whole disk (%d)", run.Compare, resyncDiskSize)
	}
	prog, _, err := peerResync(c, "m1")
	if err != nil {
		t.Fatal(err)
	}
	if prog.Active || prog.SentBytes != run.Sent || prog.DoneBytes != prog.TotalBytes {
		t.Errorf("status after the resync: %+v; want inactive, sent_bytes %d as logged, done = total", prog, run.Sent)
	}
	ms, err := c.MirrorStatus("m1")
	if err != nil {
		t.Fatal(err)
	}
	if ms.Inconsistent {
		t.Error("mirror still reports inconsistent after the resync")
	}
	if got := ms.ResyncChunks * resyncChunk; got < run.Sent {
		t.Errorf("mirror wrote %d resync chunks (%s), fewer than the %s the primary says it sent", ms.ResyncChunks, mib(got), mib(run.Sent))
	}

	// Live records replayed from the journal (every record is one 1 MiB
	// extent; the mirror's journal restarts at from_seq).
	from, err := testutil.LogInt(c.Primary.Proc.LogLine("resyncing mirror"), "from_seq")
	if err != nil {
		t.Fatal(err)
	}
	st, err := c.PrimaryStatus()
	if err != nil {
		t.Fatal(err)
	}
	replay := (int64(st.LastSeq) - from + 1) * resyncExtent
	diff, diffChunks := s.DiffBytes(), s.DiffChunkBytes()
	t.Logf("differing: %s (%s in 64 KiB chunks); resync sent %s (%.3f × differing) in %.2f s, "+
		"journal replay %s (seq %d..%d); relay: %s to the mirror, %s back; new mirror to in-sync: %v",
		mib(diff), mib(diffChunks), mib(run.Sent), float64(run.Sent)/float64(diff), run.Seconds,
		mib(replay), from, st.LastSeq, mib(wire), mib(back), elapsed.Round(time.Millisecond))
	if lim := diff * 12 / 10; run.Sent > lim {
		t.Errorf("resync sent %s for %s of differing data: more than 1.2× (%s)", mib(run.Sent), mib(diff), mib(lim))
	}
	if wire < run.Sent {
		t.Errorf("the relay forwarded %s to the mirror, less than the %s resync claims to have sent", mib(wire), mib(run.Sent))
	}
	if lim := (run.Sent+replay)*11/10 + 4<<20; wire > lim {
		t.Errorf("the relay forwarded %s to the mirror, more than 1.1 × (resync %s + replay %s) + 4 MiB = %s: the primary sent data its counters do not show",
			mib(wire), mib(run.Sent), mib(replay), mib(lim))
	}
	if back > 8<<20 {
		t.Errorf("the mirror sent %s back (hashes and acks for 1 GiB should be well under 8 MiB)", mib(back))
	}
	c.StopAll()
	c.RequireIdentical("m1")
}

// TestResyncUnderFio: fio writes 4 KiB blocks with crc32c verify headers
// through the primary while a rate-limited resync of a new mirror runs;
// fio reports no verify errors, the resync was active while fio wrote,
// and the images are identical at the end.
func TestResyncUnderFio(t *testing.T) {
	fio := needTool(t, "fio")
	s := newResyncSetup(t, 103)
	c := s.c
	c.StartMirror("m1")
	c.StartPrimary(primaryOpts{Args: []string{"--resync-rate", "30M"}})

	size := 48 * MiB
	out := filepath.Join(t.TempDir(), "fio.json")
	var (
		mu       sync.Mutex
		samples  []string
		overlaps int // status samples taken while fio ran that showed an active resync
	)
	fioDone := make(chan struct{})
	go func() {
		defer close(fioDone)
		// Offsets overlap the random extents, so fio's blocks race with the
		// resync's copies of the same chunks.
		runCmd(t, 3*time.Minute, fio,
			"--name=resync", "--ioengine=nbd", "--uri="+c.Primary.URI,
			"--rw=randwrite", "--bs=4k", "--iodepth=16",
			"--offset="+strconv.Itoa(256*MiB), "--size="+strconv.Itoa(size),
			"--verify=crc32c", "--do_verify=1", "--verify_fatal=1",
			"--verify_state_save=0", "--randrepeat=0",
			"--output-format=json", "--output="+out)
	}()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
wait:
	for {
		select {
		case <-fioDone:
			break wait
		case <-tick.C:
			prog, state, err := peerResync(c, "m1")
			if err != nil {
				continue
			}
			mu.Lock()
			samples = append(samples, fmt.Sprintf("%s %s/%s", state, mib(prog.DoneBytes), mib(prog.TotalBytes)))
			if prog.Active && state == "resyncing" {
				overlaps++
			}
			mu.Unlock()
		}
	}
	if t.Failed() {
		return
	}
	j := readFioVerify(t, out, int64(size))
	t.Logf("fio 4k randwrite qd16 during resync: %.0f IOPS, %d MiB verified; %d status samples with the resync active", j.Write.IOPS, size/MiB, overlaps)
	if overlaps < 3 {
		t.Fatalf("the resync was active in only %d status samples while fio ran (samples %v): the test did not overlap them", overlaps, samples)
	}
	c.WaitPeerState(2*time.Minute, "in-sync", "m1")
	c.WaitApplied(30*time.Second, "m1")
	runs := resyncRuns(t, c.Primary.Proc.Log(), "m1")
	t.Logf("resync runs: %+v", runs)
	c.StopAll()
	c.RequireIdentical("m1")
}

// TestResyncStatus: while a rate-limited resync runs, the primary reports
// the peer as resyncing with done_bytes growing and sent_bytes > 0, and
// the mirror reports inconsistent; the byte counters in /metrics move on
// both sides (sent on the primary, received and applied on the mirror).
// Afterwards the peer is in sync, the progress inactive and complete, the
// mirror consistent, and the counters agree with status's sent_bytes.
func TestResyncStatus(t *testing.T) {
	s := newResyncSetup(t, 103)
	c := s.c
	c.StartMirror("m1")
	c.StartPrimary(primaryOpts{Args: []string{"--resync-rate", "40M"}})
	var done []int64
	var sawInconsistent bool
	const sentSeries = `blockmirror_peer_resync_sent_bytes_total{peer="m1",volume="disk"}`
	const recvSeries = `blockmirror_resync_received_bytes_total{volume="disk"}`
	const applSeries = `blockmirror_resync_applied_bytes_total{volume="disk"}`
	var sent, recv []float64 // counter samples while the resync runs
	testutil.WaitFor(t, 30*time.Second, "resync progress moving in 4 samples", func() (bool, string) {
		prog, state, err := peerResync(c, "m1")
		if err != nil {
			return false, err.Error()
		}
		if state != "resyncing" || !prog.Active {
			return false, fmt.Sprintf("state %s, progress %+v", state, prog)
		}
		if prog.TotalBytes != resyncDiskSize || prog.Pass < 1 {
			t.Fatalf("resync of a new mirror: total_bytes %d (want %d), pass %d", prog.TotalBytes, resyncDiskSize, prog.Pass)
		}
		if n := len(done); n == 0 || prog.DoneBytes > done[n-1] {
			done = append(done, prog.DoneBytes)
		}
		if ms, err := c.MirrorStatus("m1"); err == nil && ms.Inconsistent {
			sawInconsistent = true
		}
		if v := metricValues(t, c.Primary.Admin)[sentSeries]; len(sent) == 0 || v > sent[len(sent)-1] {
			sent = append(sent, v)
		}
		if v := metricValues(t, c.M("m1").Admin)[recvSeries]; len(recv) == 0 || v > recv[len(recv)-1] {
			recv = append(recv, v)
		}
		time.Sleep(150 * time.Millisecond)
		return len(done) >= 4 && sawInconsistent && prog.SentBytes > 0 && prog.Rate > 0 && len(sent) >= 3 && len(recv) >= 3,
			fmt.Sprintf("done_bytes samples %v, mirror inconsistent seen %v, progress %+v, %s samples %v, %s samples %v",
				done, sawInconsistent, prog, sentSeries, sent, recvSeries, recv)
	})
	t.Logf("done_bytes while resyncing: %v; sent counter %v; received counter %v", done, sent, recv)
	c.WaitPeerState(2*time.Minute, "in-sync", "m1")
	prog, _, err := peerResync(c, "m1")
	if err != nil {
		t.Fatal(err)
	}
	if prog.Active || prog.DoneBytes != prog.TotalBytes {
		t.Errorf("after the resync: progress %+v, want inactive with done = total", prog)
	}
	// One resync in the processes' lifetime: the counters are its bytes.
	pm, mm := metricValues(t, c.Primary.Admin), metricValues(t, c.M("m1").Admin)
	t.Logf("after the resync: sent_bytes %d; %s %v; %s %v; %s %v", prog.SentBytes, sentSeries, pm[sentSeries],
		recvSeries, mm[recvSeries], applSeries, mm[applSeries])
	if pm[sentSeries] != float64(prog.SentBytes) || prog.SentBytes == 0 {
		t.Errorf("%s = %v, status resync.sent_bytes = %d: want equal and > 0", sentSeries, pm[sentSeries], prog.SentBytes)
	}
	if mm[recvSeries] != float64(prog.SentBytes) {
		t.Errorf("mirror %s = %v, primary sent %d", recvSeries, mm[recvSeries], prog.SentBytes)
	}
	if mm[applSeries] < float64(prog.SentBytes) || mm[applSeries] > float64(resyncDiskSize)*2 {
		t.Errorf("mirror %s = %v: want at least the %d data bytes received, and not far above the disk's %d bytes",
			applSeries, mm[applSeries], prog.SentBytes, resyncDiskSize)
	}
	ms, err := c.MirrorStatus("m1")
	if err != nil {
		t.Fatal(err)
	}
	if ms.Inconsistent || ms.NeedsResync {
		t.Errorf("mirror after the resync: inconsistent %v, needs_resync %v", ms.Inconsistent, ms.NeedsResync)
	}
	c.WaitApplied(30*time.Second, "m1")
	c.StopAll()
	c.RequireIdentical("m1")
}

// TestResyncBehindOverwrittenIndirect: the indirect path on
// with 1 MiB writes. m1 is killed; the primary (async) rewrites a 16 MiB
// region six times, so its journal holds 96 indirect records whose data
// later writes overwrote, most of them past the 64 MiB memory tail — and
// keeps every segment (104 bytes a record), so what follows is not the
// journal dropping records. m1 restarted cannot be streamed to from those
// records: the primary logs that it resyncs it, the one resync compares
// the region (not the 1 GiB disk), and the images end identical.
func TestResyncBehindOverwrittenIndirect(t *testing.T) {
	const (
		region = 16 * MiB
		base   = 256 * MiB
		passes = 6
	)
	c := newReplCluster(t, "1G", "m1")
	c.StartMirror("m1")
	// The indirect path is off by default: on here.
	c.StartPrimary(primaryOpts{Args: []string{"--mode", "async", "--max-lag", "0", "--indirect-min", "256K"}})
	conn := foDial(t, c.Primary.NBD)
	seed := rand.Uint64()
	t.Logf("seed %d", seed)
	buf := make([]byte, resyncExtent)
	write := func(pass int) {
		t.Helper()
		for i := range region / resyncExtent {
			fillRandom(buf, seed, uint64(pass*1000+i))
			if err := conn.pwrite(buf, uint64(base+i*resyncExtent), 0); err != nil {
				t.Fatalf("pass %d: write %d: %v", pass, i, err)
			}
		}
		if err := conn.flush(); err != nil {
			t.Fatalf("pass %d: flush: %v", pass, err)
		}
	}
	write(0)
	c.WaitPeerState(time.Minute, "in-sync", "m1")
	c.WaitApplied(30*time.Second, "m1")

	c.M("m1").Proc.Kill()
	for pass := 1; pass <= passes; pass++ {
		write(pass)
	}
	if segs := journalSegments(t, c.Primary.Data); segs[0] != 1 {
		t.Fatalf("the primary's journal dropped records (segments start at %v): 1 MiB writes were journaled with their data, not as indirect records", segs)
	}
	c.StartMirror("m1")
	c.WaitPeerState(2*time.Minute, "in-sync", "m1")
	c.WaitApplied(30*time.Second, "m1")
	// The peer may show in-sync a moment before the primary logs the end.
	runs := waitResyncComplete(t, c.Primary.Proc, "m1")
	if !strings.Contains(c.Primary.Proc.Log(), "a mirror is behind an indirect record whose data a later write overwrote") {
		t.Errorf("the primary did not log that m1 is behind overwritten indirect records\n%s", resyncLines(c.Primary.Proc, c.M("m1").Proc))
	}
	if len(runs) != 1 || !runs[0].Complete {
		t.Fatalf("want one complete resync of m1, got %+v\n%s", runs, resyncLines(c.Primary.Proc, c.M("m1").Proc))
	}
	if runs[0].Compare == 0 || runs[0].Compare > region+2*resyncChunk {
		t.Errorf("the resync compared %s; want the rewritten %s region (its bitmap), not more", mib(runs[0].Compare), mib(region))
	}
	t.Logf("resync after %d overwritten passes: compared %s, sent %s in %.2f s", passes, mib(runs[0].Compare), mib(runs[0].Sent), runs[0].Seconds)
	c.StopAll()
	c.RequireIdentical("m1")
}
