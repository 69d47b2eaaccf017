package vfs

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"golang.org/x/sys/unix"
)

// OS is the operating system's file system.
var OS FS = osFS{}

type osFS struct{}

func (osFS) MkdirAll(dir string, perm os.FileMode) error { return os.MkdirAll(dir, perm) }

func (osFS) ReadDir(dir string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	names := make([]string, len(ents))
	for i, e := range ents {
		names[i] = e.Name()
	}
	return names, nil
}

func (osFS) Create(path string, perm os.FileMode) (File, error) {
	return openOS(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, perm)
}

func (osFS) OpenRW(path string) (File, error) { return openOS(path, os.O_RDWR, 0) }

func (osFS) Open(path string) (File, error) { return openOS(path, os.O_RDONLY, 0) }

func openOS(path string, flag int, perm os.FileMode) (File, error) {
	f, err := os.OpenFile(path, flag, perm)
	if err != nil {
		return nil, err
	}
	return &osFile{f}, nil
}

func (osFS) Remove(path string) error { return os.Remove(path) }

func (osFS) Rename(oldpath, newpath string) error { return os.Rename(oldpath, newpath) }

func (osFS) Stat(path string) (os.FileInfo, error) { return os.Stat(path) }

func (osFS) SyncDir(dir string) error {
	d, err := os.Open(filepath.Clean(dir))
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// osFile is an *os.File with the capabilities listed in the package doc.
type osFile struct{ f *os.File }

func (o *osFile) ReadAt(p []byte, off int64) (int, error)  { return o.f.ReadAt(p, off) }
func (o *osFile) WriteAt(p []byte, off int64) (int, error) { return o.f.WriteAt(p, off) }
func (o *osFile) Truncate(size int64) error                { return o.f.Truncate(size) }
func (o *osFile) Close() error                             { return o.f.Close() }
func (o *osFile) Stat() (os.FileInfo, error)               { return o.f.Stat() }
func (o *osFile) Fd() uintptr                              { return o.f.Fd() }
func (o *osFile) Chmod(mode os.FileMode) error             { return o.f.Chmod(mode) }

func (o *osFile) Size() (int64, error) {
	st, err := o.f.Stat()
	if err != nil {
		return 0, err
	}
	return st.Size(), nil
}

// Sync issues fdatasync(2): the data and the file size, not timestamps.
func (o *osFile) Sync() error {
	err := o.control(func(fd int) error {
		for {
			if err := syscall.Fdatasync(fd); err != syscall.EINTR {
				return err
			}
		}
	})
	if err != nil {
		return fmt.Errorf("fdatasync %s: %w", o.f.Name(), err)
	}
	return nil
}

// Preallocate reserves n bytes of disk blocks without changing the size
// (fallocate FALLOC_FL_KEEP_SIZE). Appending into reserved blocks skips
// the file system's delayed-allocation work.
func (o *osFile) Preallocate(n int64) error {
	return o.control(func(fd int) error { return unix.Fallocate(fd, unix.FALLOC_FL_KEEP_SIZE, 0, n) })
}

// StartWriteback starts writing [off, off+n) back to disk without waiting
// (sync_file_range SYNC_FILE_RANGE_WRITE).
func (o *osFile) StartWriteback(off, n int64) error {
	return o.control(func(fd int) error { return unix.SyncFileRange(fd, off, n, unix.SYNC_FILE_RANGE_WRITE) })
}

// PunchHole deallocates [off, off+n) (FALLOC_FL_PUNCH_HOLE, size kept).
// The error is the raw errno, so callers can tell "unsupported".
func (o *osFile) PunchHole(off, n int64) error {
	return unix.Fallocate(int(o.f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
}

// ZeroRange zeroes [off, off+n) without writing it (FALLOC_FL_ZERO_RANGE,
// size kept). The error is the raw errno.
func (o *osFile) ZeroRange(off, n int64) error {
	return unix.Fallocate(int(o.f.Fd()), unix.FALLOC_FL_ZERO_RANGE|unix.FALLOC_FL_KEEP_SIZE, off, n)
}

// DataRanges calls fn for each range in [off, off+n) that may hold data,
// skipping holes (SEEK_DATA/SEEK_HOLE). Where the file system cannot find
// holes, the rest of the range is reported.
func (o *osFile) DataRanges(off, n int64, fn func(off, n int64) error) error {
	fd := int(o.f.Fd())
	end := off + n
	for pos := off; pos < end; {
		d, err := unix.Seek(fd, pos, unix.SEEK_DATA)
		if err != nil {
			if err == unix.ENXIO { // no data after pos
				return nil
			}
			if Unsupported(err) || err == unix.EINVAL {
				return fn(pos, end-pos)
			}
			return fmt.Errorf("seek data %s at %d: %w", o.f.Name(), pos, err)
		}
		if d >= end {
			return nil
		}
		h, err := unix.Seek(fd, d, unix.SEEK_HOLE)
		if err != nil {
			return fmt.Errorf("seek hole %s at %d: %w", o.f.Name(), d, err)
		}
		h = min(h, end)
		if err := fn(d, h-d); err != nil {
			return err
		}
		pos = h
	}
	return nil
}

// control runs op on the file's descriptor and returns op's error (or the
// error of reaching the descriptor).
func (o *osFile) control(op func(fd int) error) error {
	rc, err := o.f.SyscallConn()
	if err != nil {
		return err
	}
	var opErr error
	if err := rc.Control(func(fd uintptr) { opErr = op(int(fd)) }); err != nil {
		return err
	}
	return opErr
}
