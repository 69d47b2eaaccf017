package e2e

// Online verify with real processes: corruption written into a running
// mirror's image is reported as exactly the 64 KiB chunks that hold it,
// `verify --resync` repairs it, and verify under a live write load reports
// nothing.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/blockmirror/blockmirror/internal/testutil"
	"github.com/blockmirror/blockmirror/journal"
	"github.com/blockmirror/blockmirror/mirror"
)

// runVerify runs `blockmirror verify --json [--resync]` against the
// primary and returns the report and the exit status.
func runVerify(t *testing.T, admin string, resync bool) (mirror.VerifyReport, int) {
	t.Helper()
	args := []string{"verify", "--admin", admin, "--json"}
	if resync {
		args = append(args, "--resync")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, binPath, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		code = ee.ExitCode()
	case err != nil:
		t.Fatalf("blockmirror %v: %v\n%s", args, err, stderr.Bytes())
	}
	var rep mirror.VerifyReport
	if err := json.Unmarshal(stdout.Bytes(), &rep); err != nil {
		t.Fatalf("blockmirror %v (exit %d): %v\nstdout: %s\nstderr: %s", args, code, err, stdout.Bytes(), stderr.Bytes())
	}
	t.Logf("blockmirror %v: exit %d in %v: %s", args[1:], code, time.Since(start).Round(time.Millisecond), bytes.TrimSpace(stdout.Bytes()))
	return rep, code
}

// corruptAt overwrites n bytes at off of the image with their complement
// (so every byte changes), using dd on the live file.
func corruptAt(t *testing.T, image string, off, n int64) {
	t.Helper()
	f, err := os.Open(image)
	if err != nil {
		t.Fatal(err)
	}
	old := make([]byte, n)
	_, err = f.ReadAt(old, off)
	f.Close()
	if err != nil {
		t.Fatalf("read %d bytes at %d of %s: %v", n, off, image, err)
	}
	for i := range old {
		old[i] ^= 0xff
	}
	src := filepath.Join(t.TempDir(), "garbage")
	if err := os.WriteFile(src, old, 0o600); err != nil {
		t.Fatal(err)
	}
	runCmd(t, 30*time.Second, "dd", "if="+src, "of="+image, "bs=1", "seek="+strconv.FormatInt(off, 10),
		"count="+strconv.FormatInt(n, 10), "conv=notrunc", "status=none")
}

// TestResyncVerifyCorruption: the mirror is in sync with a 1 GiB primary
// holding random data; verify under a live write load reports it
// identical. Then bytes are corrupted at known offsets of the running
// mirror's image: verify exits 3 and reports exactly the 64 KiB chunks
// holding them (coalesced), verify --resync resyncs exactly those chunks,
// a second verify is clean, and the images are identical after stopping.
func TestResyncVerifyCorruption(t *testing.T) {
	s := &resyncSetup{c: newReplCluster(t, "1G", "m1"), seed: rand.Uint64()}
	t.Logf("seed %d", s.seed)
	c := s.c
	c.StartMirror("m1")
	c.StartPrimary(primaryOpts{})
	c.WaitPeerState(15*time.Second, "in-sync", "m1")
	// No flush: a repeated flush with a mirror fails (TestReplRepeatedFlush).
	s.fill(t, 0, 48, false)

	// No false report while writes are in flight.
	w := startLoad(t, c.Primary.NBD, s.seed, 4096)
	time.Sleep(300 * time.Millisecond)
	rep, code := runVerify(t, c.Primary.Admin, false)
	w.Stop()
	if code != 0 || len(rep.Peers) != 1 || len(rep.Peers[0].Differing) != 0 || rep.Peers[0].Error != "" {
		t.Fatalf("verify under load: exit %d, report %+v; want identical", code, rep)
	}
	if rep.Peers[0].ComparedBytes != resyncDiskSize {
		t.Errorf("verify compared %d bytes, want %d", rep.Peers[0].ComparedBytes, resyncDiskSize)
	}
	c.WaitApplied(30*time.Second, "m1")

	// Corrupt: inside one chunk (a data extent, if any), across a chunk
	// boundary, two neighbouring chunks (coalesced into one range), and
	// the disk's last bytes.
	ext := s.data.Merged()[0]
	corrupt := []testutil.Extent{
		{Off: ext.Off + 5000, Len: 512},
		{Off: 300*resyncChunk - 1000, Len: 2000},
		{Off: 700*resyncChunk + 10, Len: 1},
		{Off: 701*resyncChunk + 4096, Len: 4096},
		{Off: resyncDiskSize - 4096, Len: 4096},
	}
	var bad testutil.Extents
	for _, e := range corrupt {
		corruptAt(t, c.M("m1").Image(), e.Off, e.Len)
		bad.Add(e.Off, e.Len)
	}
	var want []journal.Region
	for _, ch := range bad.Chunks(resyncChunk) {
		want = append(want, journal.Region{Offset: uint64(ch * resyncChunk), Length: uint64(resyncChunk)})
	}
	want = journal.CoalesceRegions(want)
	wantBytes := bad.ChunkBytes(resyncChunk, resyncDiskSize)

	rep, code = runVerify(t, c.Primary.Admin, false)
	if len(rep.Peers) != 1 {
		t.Fatalf("verify after corrupting the mirror: exit %d, report %+v", code, rep)
	}
	got := rep.Peers[0]
	if !slices.Equal(got.Differing, want) || got.DifferingBytes != wantBytes || got.Resync {
		t.Fatalf("verify reported %v (%d bytes, resync %v); want %v (%d bytes), no resync", got.Differing, got.DifferingBytes, got.Resync, want, wantBytes)
	}
	if code != 3 {
		t.Errorf("verify --json reported differences but exited %d, want 3", code)
	}
	// The text report: exit 3 and one line per range.
	out, err := runCmdErr(t, time.Minute, binPath, "verify", "--admin", c.Primary.Admin)
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 3 {
		t.Errorf("verify (text) after corrupting the mirror: %v, want exit status 3\n%s", err, out)
	}
	for _, g := range want {
		line := fmt.Sprintf("m1 differs at [%d, %d) (%d bytes)", g.Offset, g.Offset+g.Length, g.Length)
		if !strings.Contains(out, line) {
			t.Errorf("verify (text) output lacks %q:\n%s", line, out)
		}
	}
	// Plain verify changes nothing: the corruption is still there.
	if off, err := testutil.CompareFiles(c.Primary.Image(), c.M("m1").Image()); err != nil || off != bad.Merged()[0].Off {
		t.Fatalf("after a plain verify the images first differ at %d (%v), want %d", off, err, bad.Merged()[0].Off)
	}

	runsBefore := len(resyncRuns(t, c.Primary.Proc.Log(), "m1"))
	rep, code = runVerify(t, c.Primary.Admin, true)
	if len(rep.Peers) != 1 || !rep.Peers[0].Resync || !slices.Equal(rep.Peers[0].Differing, want) {
		t.Fatalf("verify --resync: exit %d, report %+v; want the same ranges, resync started", code, rep)
	}
	var run resyncRun
	testutil.WaitFor(t, time.Minute, "the resync of the differing chunks completed", func() (bool, string) {
		runs := resyncRuns(t, c.Primary.Proc.Log(), "m1")
		if len(runs) > runsBefore && runs[len(runs)-1].Complete {
			run = runs[len(runs)-1]
			return true, ""
		}
		return false, fmt.Sprintf("resync runs %+v", runs)
	})
	c.WaitPeerState(30*time.Second, "in-sync", "m1")
	t.Logf("repair resync: compared %d bytes, sent %d", run.Compare, run.Sent)
	if run.Compare != wantBytes {
		t.Errorf("the repair resync compared %d bytes, want only the %d differing", run.Compare, wantBytes)
	}
	if run.Sent > wantBytes {
		t.Errorf("the repair resync sent %d bytes, more than the %d differing", run.Sent, wantBytes)
	}

	rep, code = runVerify(t, c.Primary.Admin, false)
	if code != 0 || len(rep.Peers) != 1 || len(rep.Peers[0].Differing) != 0 || rep.Peers[0].Error != "" ||
		rep.Peers[0].ComparedBytes != resyncDiskSize {
		t.Errorf("verify after the repair: exit %d, report %+v; want identical", code, rep)
	}
	c.WaitApplied(30*time.Second, "m1")
	c.StopAll()
	c.RequireIdentical("m1")
}
