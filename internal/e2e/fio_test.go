package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestFioVerify writes with fio's nbd engine at queue depth 32 and verifies
// every block with crc32c headers (fio reads everything back after the
// write phase); any verify error fails fio and the test.
func TestFioVerify(t *testing.T) {
	if testing.Short() {
		t.Skip("slow: fio verify runs (skipped with -short)")
	}
	fio := needTool(t, "fio")
	s := startServer(t, serverOpts{Size: "256M"})
	for i, bs := range []string{"4k", "64k"} {
		t.Run(bs, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "fio.json")
			size := 32 * MiB
			if bs == "64k" {
				size = 96 * MiB
			}
			offset := i * 128 * MiB
			runCmd(t, 5*time.Minute, fio,
				"--name=verify-"+bs, "--ioengine=nbd", "--uri="+s.URI,
				"--rw=randwrite", "--bs="+bs, "--iodepth=32",
				fmt.Sprintf("--offset=%d", offset), fmt.Sprintf("--size=%d", size),
				"--verify=crc32c", "--do_verify=1", "--verify_fatal=1",
				"--verify_state_save=0", "--randrepeat=0",
				"--output-format=json", "--output="+out)
			j := readFioVerify(t, out, int64(size))
			t.Logf("fio %s randwrite qd32: %.0f IOPS, %d bytes verified", bs, j.Write.IOPS, j.Read.IOBytes)
		})
	}
	s.requireAlive(t)
}

// fioJob is the part of fio's JSON report the tests check.
type fioJob struct {
	Error int `json:"error"`
	Read  struct {
		IOBytes int64 `json:"io_bytes"`
	} `json:"read"`
	Write struct {
		IOBytes int64   `json:"io_bytes"`
		IOPS    float64 `json:"iops"`
	} `json:"write"`
}

// readFioVerify reads fio's JSON output at path (one job) and fails the
// test unless the job wrote and verified size bytes without error.
func readFioVerify(t testing.TB, path string, size int64) fioJob {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var res struct {
		Jobs []fioJob `json:"jobs"`
	}
	if err := json.Unmarshal(b, &res); err != nil || len(res.Jobs) != 1 {
		t.Fatalf("fio json: %v\n%s", err, b)
	}
	j := res.Jobs[0]
	if j.Error != 0 || j.Write.IOBytes != size || j.Read.IOBytes != size {
		t.Fatalf("fio: error %d, wrote %d and verified %d bytes, want %d", j.Error, j.Write.IOBytes, j.Read.IOBytes, size)
	}
	return j
}
