package store_test

import (
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"testing"

	"github.com/blockmirror/blockmirror/store"
)

// Benchmarks run in b.TempDir(); set TMPDIR to a directory on a real disk
// for meaningful numbers. They use only the package's public API, so the
// same file measures any two versions of it.

const benchImage = 256 << 20

func benchStore(b *testing.B) *store.File {
	s, err := store.Create(filepath.Join(b.TempDir(), "disk.img"), benchImage)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	return s
}

// BenchmarkWriteAt writes blocks of each size at random aligned offsets
// (into the page cache; Sync is measured separately).
func BenchmarkWriteAt(b *testing.B) {
	for _, size := range []int{4 << 10, 64 << 10, 1 << 20} {
		b.Run(fmt.Sprintf("%dKiB", size>>10), func(b *testing.B) {
			s := benchStore(b)
			buf := make([]byte, size)
			rng := rand.New(rand.NewPCG(1, 2))
			b.SetBytes(int64(size))
			b.ReportAllocs()
			for b.Loop() {
				off := rng.Int64N(benchImage/int64(size)) * int64(size)
				if _, err := s.WriteAt(buf, off); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkReadAt reads 4 KiB blocks at random offsets of a written range.
func BenchmarkReadAt(b *testing.B) {
	s := benchStore(b)
	const span = 16 << 20
	if _, err := s.WriteAt(make([]byte, span), 0); err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 4<<10)
	rng := rand.New(rand.NewPCG(3, 4))
	b.SetBytes(int64(len(buf)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := s.ReadAt(buf, rng.Int64N(span/4096)*4096); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkTrimZero trims and zeroes 64 KiB ranges (punch hole and zero
// range where the file system has them).
func BenchmarkTrimZero(b *testing.B) {
	s := benchStore(b)
	rng := rand.New(rand.NewPCG(5, 6))
	b.ReportAllocs()
	for b.Loop() {
		off := rng.Int64N(benchImage/(64<<10)) * (64 << 10)
		if err := s.Trim(off, 64<<10); err != nil {
			b.Fatal(err)
		}
		if err := s.Zero(off, 64<<10, false); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSync measures fdatasync after a 4 KiB write.
func BenchmarkSync(b *testing.B) {
	s := benchStore(b)
	buf := make([]byte, 4<<10)
	rng := rand.New(rand.NewPCG(7, 8))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := s.WriteAt(buf, rng.Int64N(benchImage/4096)*4096); err != nil {
			b.Fatal(err)
		}
		if err := s.Sync(); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkOverwrite4KAfter1MiB is the pattern a VM image sees after it
// was copied in: the range was written in 1 MiB requests (a restore, an
// image copy), then the guest writes 4 KiB blocks at random into it. The
// page-cache folios the large writes left decide what each 4 KiB write
// costs (see writePiece).
func BenchmarkOverwrite4KAfter1MiB(b *testing.B) {
	s := benchStore(b)
	const span = 64 << 20
	big := make([]byte, 1<<20)
	for off := int64(0); off < span; off += int64(len(big)) {
		if _, err := s.WriteAt(big, off); err != nil {
			b.Fatal(err)
		}
	}
	buf := make([]byte, 4<<10)
	rng := rand.New(rand.NewPCG(9, 10))
	b.SetBytes(int64(len(buf)))
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := s.WriteAt(buf, rng.Int64N(span/4096)*4096); err != nil {
			b.Fatal(err)
		}
	}
}
