package journal_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/blockmirror/blockmirror/journal"
)

// Benchmarks run in b.TempDir(); set TMPDIR to a directory on a real disk
// (not tmpfs, where fdatasync is free) for meaningful numbers.

var benchSizes = []int{4 << 10, 64 << 10}

func sizeName(n int) string { return fmt.Sprintf("%dKiB", n>>10) }

func reportLatency(b *testing.B, lat []time.Duration, elapsed time.Duration) {
	slices.Sort(lat)
	if len(lat) > 0 {
		p99 := lat[(len(lat)*99)/100]
		b.ReportMetric(float64(p99.Nanoseconds())/1e3, "p99-µs")
	}
	b.ReportMetric(float64(len(lat))/elapsed.Seconds(), "records/s")
}

func BenchmarkAppend(b *testing.B) {
	for _, size := range benchSizes {
		for _, writers := range []int{1, 8, 64} {
			for _, level := range []journal.Level{journal.Written, journal.Durable} {
				name := fmt.Sprintf("%s/w%d/%s", sizeName(size), writers, map[journal.Level]string{journal.Written: "written", journal.Durable: "durable"}[level])
				b.Run(name, func(b *testing.B) { benchAppend(b, size, writers, level) })
			}
		}
	}
}

func benchAppend(b *testing.B, size, writers int, level journal.Level) {
	j, err := journal.Open(journal.Options{Dir: b.TempDir(), Volume: testVolume, MaxBytes: 1 << 30})
	if err != nil {
		b.Fatal(err)
	}
	defer j.Close()
	data := payload(1, size) // shared read-only by every record
	ctx := context.Background()
	var n atomic.Int64
	lats := make([][]time.Duration, writers)
	b.SetBytes(int64(size))
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			var lat []time.Duration
			for n.Add(1) <= int64(b.N) {
				t0 := time.Now()
				r := journal.Record{Op: journal.OpWrite, Offset: 0, Length: uint32(size), Data: data}
				seq, err := j.SubmitNext(ctx, r)
				if err == nil {
					err = j.Wait(ctx, seq, level)
				}
				if err != nil {
					b.Error(err)
					return
				}
				lat = append(lat, time.Since(t0))
			}
			lats[w] = lat
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	reportLatency(b, slices.Concat(lats...), elapsed)
	st := j.Stats()
	b.ReportMetric(float64(st.RecordsWritten)/float64(max(st.Syncs, 1)), "records/sync")
}

// BenchmarkBaselineFdatasync is the comparison point for group commit: a
// plain file, one write and one fdatasync per record.
func BenchmarkBaselineFdatasync(b *testing.B) {
	for _, size := range benchSizes {
		b.Run(sizeName(size), func(b *testing.B) {
			f, err := os.OpenFile(filepath.Join(b.TempDir(), "plain"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
			if err != nil {
				b.Fatal(err)
			}
			defer f.Close()
			buf := payload(1, size+journal.RecordHeaderSize)
			fd := int(f.Fd())
			lat := make([]time.Duration, 0, b.N)
			b.SetBytes(int64(size))
			b.ReportAllocs()
			b.ResetTimer()
			start := time.Now()
			for range b.N {
				t0 := time.Now()
				if _, err := f.Write(buf); err != nil {
					b.Fatal(err)
				}
				if err := syscall.Fdatasync(fd); err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(t0))
			}
			elapsed := time.Since(start)
			b.StopTimer()
			reportLatency(b, lat, elapsed)
		})
	}
}

// BenchmarkReader measures reading back from the files (tail disabled).
func BenchmarkReader(b *testing.B) {
	const size = 4 << 10
	j, err := journal.Open(journal.Options{Dir: b.TempDir(), Volume: testVolume, NoSync: true, TailBytes: 1})
	if err != nil {
		b.Fatal(err)
	}
	defer j.Close()
	data := payload(1, size)
	ctx := context.Background()
	const total = 20000
	for range total {
		if _, err := j.SubmitNext(ctx, journal.Record{Op: journal.OpWrite, Length: size, Data: data}); err != nil {
			b.Fatal(err)
		}
	}
	if err := j.Sync(ctx); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(size)
	b.ReportAllocs()
	b.ResetTimer()
	var r *journal.Reader
	left := 0
	for done := 0; done < b.N; {
		if left == 0 {
			if r != nil {
				r.Close()
			}
			if r, err = j.NewReader(1); err != nil {
				b.Fatal(err)
			}
			left = total
		}
		recs, err := r.Next(ctx, min(256, b.N-done, left), 1<<20)
		if err != nil {
			b.Fatal(err)
		}
		left -= len(recs)
		done += len(recs)
	}
	if r != nil {
		r.Close()
	}
}

// BenchmarkSequential1MiB is the journal's share of a large sequential
// write (a VM image copied in): 1 MiB records from 8 writers that wait
// for Written, in 64 MiB segments, and a consumer that releases the
// records as a checkpoint would, 256 MiB behind. With flush256, every
// 256 MiB of records one writer also waits for Durable (a FLUSH every
// 256 MiB). Without it nobody asks for durability, and released
// segments need never reach the disk. Reports the disk bytes the kernel
// wrote for the process (/proc/self/io write_bytes) per record byte.
func BenchmarkSequential1MiB(b *testing.B) {
	for _, flush := range []bool{false, true} {
		name := map[bool]string{false: "noflush", true: "flush256"}[flush]
		b.Run(name, func(b *testing.B) { benchSequential(b, flush) })
	}
}

func benchSequential(b *testing.B, flush bool) {
	const size, writers, every = 1 << 20, 8, 256
	j, err := journal.Open(journal.Options{Dir: b.TempDir(), Volume: testVolume, MaxBytes: 1 << 40})
	if err != nil {
		b.Fatal(err)
	}
	defer j.Close()
	if err := j.AddConsumer("checkpoint", 1, false); err != nil {
		b.Fatal(err)
	}
	data := payload(1, size)
	ctx := context.Background()
	var n atomic.Int64
	b.SetBytes(size)
	io0 := diskWriteBytes(b)
	b.ResetTimer()
	var wg sync.WaitGroup
	for range writers {
		wg.Go(func() {
			for n.Add(1) <= int64(b.N) {
				seq, err := j.SubmitNext(ctx, journal.Record{Op: journal.OpWrite, Length: size, Data: data})
				if err == nil {
					err = j.Wait(ctx, seq, journal.Written)
				}
				if err == nil && seq%every == 0 {
					if flush {
						err = j.Wait(ctx, seq, journal.Durable)
					}
					if seq > every {
						j.Release("checkpoint", seq-every)
					}
				}
				if err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	b.StopTimer()
	b.ReportMetric(float64(diskWriteBytes(b)-io0)/float64(int64(b.N)*size), "disk-bytes/byte")
}

// diskWriteBytes is what this process has sent to storage so far: Linux
// counts bytes when pages are dirtied (/proc/self/io write_bytes) and
// takes back those of dirty pages that were truncated or deleted before
// writeback (cancelled_write_bytes). 0 where /proc/self/io is missing.
func diskWriteBytes(b *testing.B) int64 {
	raw, err := os.ReadFile("/proc/self/io")
	if err != nil {
		return 0
	}
	var written, cancelled int64
	for _, line := range strings.Split(string(raw), "\n") {
		k, v, ok := strings.Cut(line, ": ")
		if !ok || (k != "write_bytes" && k != "cancelled_write_bytes") {
			continue
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			b.Fatalf("/proc/self/io %s: %v", k, err)
		}
		if k == "write_bytes" {
			written = n
		} else {
			cancelled = n
		}
	}
	return written - cancelled
}
