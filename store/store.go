package store

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/blockmirror/blockmirror/internal/vfs"
)

// ErrSize reports a size that does not fit the image.
var ErrSize = errors.New("store: bad size")

// File is a disk image backed by a regular file or a block device.
type File struct {
	f      vfs.File
	path   string
	size   int64
	device bool
	wb     window
}

// DefaultWritebackBytes is the image's default dirty window (see
// SetWritebackWindow; docs/tuning.md has the measurements).
const DefaultWritebackBytes = 8 << 20

// window tracks the image's writes since its writeback was last started:
// how many bytes, and the span [lo, hi) they fall in.
type window struct {
	mu     sync.Mutex
	max    int64 // 0: off
	n      int64
	lo, hi int64
}

// SetWritebackWindow sets the image's dirty window to n bytes (0 or
// negative turns it off; Create and Open set DefaultWritebackBytes): once
// more than n bytes were written since the last sync or writeback start,
// and they lie dense in the range they span (at least a quarter of it: a
// stream of large writes, not scattered small ones, which the page cache
// is better left to gather), the writeback of that range is started
// (sync_file_range WRITE: no wait, no durability promise). Sync and the
// kernel's own writeback then find at most about n bytes of such a
// stream still to write, instead of everything since the last sync.
func (s *File) SetWritebackWindow(n int64) {
	s.wb.mu.Lock()
	s.wb.max = max(n, 0)
	s.wb.n = 0
	s.wb.mu.Unlock()
}

// wrote notes a completed write of [off, off+n) and starts the
// writeback of the window's span when it is due.
func (s *File) wrote(off, n int64) {
	w := &s.wb
	w.mu.Lock()
	if w.max == 0 || n == 0 {
		w.mu.Unlock()
		return
	}
	if w.n == 0 {
		w.lo, w.hi = off, off+n
	} else {
		w.lo, w.hi = min(w.lo, off), max(w.hi, off+n)
	}
	w.n += n
	if w.n < w.max {
		w.mu.Unlock()
		return
	}
	// The range stops at a page boundary: a write going on where the
	// last one ended would fill that page while it is under writeback.
	lo, hi, dense := w.lo, w.hi&^(4096-1), w.n*4 >= w.hi-w.lo
	w.n = 0
	w.mu.Unlock()
	if wb, ok := s.f.(writebacker); ok && dense && hi > lo {
		// Best effort: a real I/O error shows at the next Sync.
		_ = wb.StartWriteback(lo, hi-lo)
	}
}

// Create makes a new sparse image of size bytes at path. It fails if path
// exists, so an existing disk is never truncated by mistake.
func Create(path string, size int64) (*File, error) { return CreateFS(vfs.OS, path, size) }

// CreateFS is Create on the file system fsys.
func CreateFS(fsys vfs.FS, path string, size int64) (*File, error) {
	if size <= 0 || size%512 != 0 {
		return nil, fmt.Errorf("store: create %s: size %d: %w (must be a positive multiple of 512)", path, size, ErrSize)
	}
	f, err := fsys.Create(path, 0o600)
	if err != nil {
		return nil, fmt.Errorf("store: create %s: %w", path, err)
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		fsys.Remove(path)
		return nil, fmt.Errorf("store: create %s: set size %d: %w", path, size, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return nil, fmt.Errorf("store: create %s: sync: %w", path, err)
	}
	dir := filepath.Dir(path)
	if err := fsys.SyncDir(dir); err != nil {
		f.Close()
		return nil, fmt.Errorf("store: sync dir %s: %w", dir, err)
	}
	s := &File{f: f, path: path, size: size}
	s.SetWritebackWindow(DefaultWritebackBytes)
	return s, nil
}

// Open opens an existing image file or block device read-write.
func Open(path string) (*File, error) { return OpenFS(vfs.OS, path) }

// OpenFS is Open on the file system fsys. Block devices are recognised on
// file systems whose files have a descriptor (vfs.OS).
func OpenFS(fsys vfs.FS, path string) (*File, error) {
	f, err := fsys.OpenRW(path)
	if err != nil {
		return nil, fmt.Errorf("store: open %s: %w", path, err)
	}
	s := &File{f: f, path: path}
	s.SetWritebackWindow(DefaultWritebackBytes)
	mode, size, err := statFile(f)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("store: stat %s: %w", path, err)
	}
	switch {
	case mode.IsRegular():
		s.size = size
	case mode&os.ModeDevice != 0 && mode&os.ModeCharDevice == 0:
		fd, ok := f.(fder)
		if !ok {
			f.Close()
			return nil, fmt.Errorf("store: open %s: a block device on a file system without descriptors", path)
		}
		s.device = true
		n, err := unix.IoctlGetUint64(int(fd.Fd()), unix.BLKGETSIZE64)
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("store: %s: read device size: %w", path, err)
		}
		s.size = int64(n)
	default:
		f.Close()
		return nil, fmt.Errorf("store: open %s: not a regular file or block device (mode %v)", path, mode)
	}
	if s.size <= 0 {
		f.Close()
		return nil, fmt.Errorf("store: open %s: size is %d: %w", path, s.size, ErrSize)
	}
	return s, nil
}

// The optional capabilities of a vfs.File the store uses (see package vfs).
type (
	fder        interface{ Fd() uintptr }
	statter     interface{ Stat() (os.FileInfo, error) }
	holePuncher interface{ PunchHole(off, n int64) error }
	zeroRanger  interface{ ZeroRange(off, n int64) error }
	writebacker interface{ StartWriteback(off, n int64) error }
	dataRanger  interface {
		DataRanges(off, n int64, fn func(off, n int64) error) error
	}
)

// statFile returns the file's type and size; a file that cannot say its
// type is a regular file.
func statFile(f vfs.File) (os.FileMode, int64, error) {
	if st, ok := f.(statter); ok {
		fi, err := st.Stat()
		if err != nil {
			return 0, 0, err
		}
		return fi.Mode(), fi.Size(), nil
	}
	size, err := f.Size()
	return 0, size, err
}

// Path is the file or device path.
func (s *File) Path() string { return s.path }

// Size is the image size in bytes.
func (s *File) Size() int64 { return s.size }

func (s *File) check(op string, off, n int64) error {
	if off < 0 || n < 0 || off > s.size || n > s.size-off {
		return fmt.Errorf("store: %s [%d, +%d) outside image of %d bytes: %w", op, off, n, s.size, syscall.EINVAL)
	}
	return nil
}

// ReadAt reads len(p) bytes at off. Reading past the end is an error.
func (s *File) ReadAt(p []byte, off int64) (int, error) {
	if err := s.check("read", off, int64(len(p))); err != nil {
		return 0, err
	}
	n, err := s.f.ReadAt(p, off)
	if err == io.EOF && n == len(p) {
		err = nil
	}
	if err != nil {
		return n, fmt.Errorf("store: read %s at %d: %w", s.path, off, err)
	}
	return n, nil
}

// writePiece is the largest single pwrite WriteAt issues. The kernel sizes
// the page-cache folios a buffered write creates after the write's length,
// and every later write into a folio walks all of the folio's buffer heads
// (ext4_block_write_begin, block_commit_write, and writeback again), so
// the piece size trades large writes against later small overwrites of
// the same range. Measured on the 2-core test VM (ext4, 6.18;
// BenchmarkWriteAt/1024KiB and BenchmarkOverwrite4KAfter1MiB):
//
//	piece   1 MiB write   4 KiB overwrite after it
//	4 KiB   1.45 ms       3.2 µs
//	16 KiB  0.48 ms       4.0 µs
//	64 KiB  0.30 ms       5.2 µs
//	1 MiB   0.20 ms       6.6 µs
//
// At 4 KiB the store alone could not take 1 MiB writes faster than
// ~0.7 GB/s on one core (256 syscalls per MiB: the largest cost of the
// no-mirror 1 MiB job's profile); 16 KiB triples that while a random
// small write into such a range costs 0.8 µs more (ranges written in
// small requests keep small folios either way).
const writePiece = 16 << 10

// WriteAt writes p at off.
func (s *File) WriteAt(p []byte, off int64) (int, error) {
	if err := s.check("write", off, int64(len(p))); err != nil {
		return 0, err
	}
	done := 0
	for done < len(p) {
		at := off + int64(done)
		n := writePiece - int(at%writePiece)
		n = min(n, len(p)-done)
		m, err := s.f.WriteAt(p[done:done+n], at)
		done += m
		if err != nil {
			s.wrote(off, int64(done))
			return done, fmt.Errorf("store: write %s at %d: %w", s.path, at, err)
		}
	}
	s.wrote(off, int64(done))
	return done, nil
}

// Trim discards [off, off+n): afterwards the range reads as zeroes.
func (s *File) Trim(off, n int64) error {
	if err := s.check("trim", off, n); err != nil || n == 0 {
		return err
	}
	if s.device {
		// A discard need not make a device read back zeroes; BLKZEROOUT
		// (which unmaps where the device can) keeps the store's promise.
		return s.Zero(off, n, false)
	}
	if p, ok := s.f.(holePuncher); ok {
		err := p.PunchHole(off, n)
		if err == nil {
			return nil
		}
		if !unsupported(err) {
			return fmt.Errorf("store: punch hole %s [%d, +%d): %w", s.path, off, n, err)
		}
	}
	return s.writeZeroes(off, n)
}

// Zero makes [off, off+n) read as zeroes. With noHole the range stays
// allocated (no hole is punched).
func (s *File) Zero(off, n int64, noHole bool) error {
	if err := s.check("zero", off, n); err != nil || n == 0 {
		return err
	}
	if err := s.ZeroFast(off, n, noHole); err == nil {
		return nil
	} else if !errors.Is(err, syscall.ENOTSUP) {
		return err
	}
	return s.writeZeroes(off, n)
}

// ZeroFast zeroes [off, off+n) only if the filesystem or device can do it
// without writing the bytes; otherwise it returns an error wrapping
// syscall.ENOTSUP and changes nothing.
func (s *File) ZeroFast(off, n int64, noHole bool) error {
	if err := s.check("zero", off, n); err != nil || n == 0 {
		return err
	}
	if s.device {
		if err := ioctlRange(s.f.(fder).Fd(), unix.BLKZEROOUT, off, n); err != nil {
			if unsupported(err) {
				return fmt.Errorf("store: zero %s: %w", s.path, syscall.ENOTSUP)
			}
			return fmt.Errorf("store: zero %s [%d, +%d): %w", s.path, off, n, err)
		}
		return nil
	}
	err := error(syscall.ENOTSUP)
	if z, ok := s.f.(zeroRanger); ok {
		err = z.ZeroRange(off, n)
	}
	if p, ok := s.f.(holePuncher); ok && err != nil && unsupported(err) && !noHole {
		err = p.PunchHole(off, n)
	}
	if err != nil {
		if unsupported(err) {
			return fmt.Errorf("store: zero %s: %w", s.path, syscall.ENOTSUP)
		}
		return fmt.Errorf("store: zero %s [%d, +%d): %w", s.path, off, n, err)
	}
	return nil
}

var zeroBuf = make([]byte, 1<<20) // read-only

func (s *File) writeZeroes(off, n int64) error {
	for n > 0 {
		c := min(n, int64(len(zeroBuf)))
		if _, err := s.f.WriteAt(zeroBuf[:c], off); err != nil {
			return fmt.Errorf("store: write zeroes %s at %d: %w", s.path, off, err)
		}
		off += c
		n -= c
	}
	return nil
}

// Sync makes every completed write durable (fdatasync).
func (s *File) Sync() error {
	s.wb.mu.Lock()
	s.wb.n = 0 // what was written so far is written back below
	s.wb.mu.Unlock()
	if err := s.f.Sync(); err != nil {
		return fmt.Errorf("store: sync %s: %w", s.path, err)
	}
	return nil
}

// DataRanges calls fn for each range in [off, off+n) that may hold data,
// skipping holes (SEEK_DATA/SEEK_HOLE). Where holes cannot be found (block
// devices, filesystems without support) the whole range is reported.
func (s *File) DataRanges(off, n int64, fn func(off, n int64) error) error {
	if err := s.check("scan", off, n); err != nil {
		return err
	}
	d, ok := s.f.(dataRanger)
	if s.device || !ok {
		return fn(off, n)
	}
	return d.DataRanges(off, n, fn)
}

// Close closes the image without syncing it.
func (s *File) Close() error {
	if err := s.f.Close(); err != nil {
		return fmt.Errorf("store: close %s: %w", s.path, err)
	}
	return nil
}

func unsupported(err error) bool { return vfs.Unsupported(err) }

func ioctlRange(fd uintptr, req uint, off, n int64) error {
	r := [2]uint64{uint64(off), uint64(n)}
	return ioctlPtr(int(fd), req, &r)
}
