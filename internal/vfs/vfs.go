// Package vfs is the file-system seam of everything a node keeps on disk:
// the journal's segments, the disk image, meta.json and the other small
// files replaced atomically, dirty bitmaps and quarantine files.
//
// Three implementations:
//
//   - OS, the operating system's file system, which every production path
//     uses; its files keep the fast paths the callers rely on (fdatasync,
//     fallocate, sync_file_range, SEEK_DATA) as optional methods.
//   - MemFS (NewCrashableMem), an in-memory file system that remembers what
//     is durable — each file's contents as of its last Sync, each
//     directory's entries as of its last SyncDir — so that CrashClone can
//     produce the state a power loss leaves behind. A process crash
//     (kill -9) is simply carrying on with the same MemFS: like the page
//     cache, it keeps everything written.
//   - WithErrors, a wrapper that fails chosen operations (the Nth one that
//     matches an operation kind and path) to test error paths.
//
// # Optional capabilities
//
// Beyond File, a file may have any of these methods; callers type-assert
// for the ones they use (declaring the small interface where they use it)
// and fall back when a file lacks one or its error wraps
// errors.ErrUnsupported (or EOPNOTSUPP, ENOSYS, ENOTTY from the OS):
//
//	Preallocate(n int64) error                 // reserve blocks, size unchanged (fallocate KEEP_SIZE)
//	StartWriteback(off, n int64) error         // start writeback without waiting (sync_file_range)
//	PunchHole(off, n int64) error              // deallocate, reads as zeroes, size unchanged
//	ZeroRange(off, n int64) error              // zero without writing, size unchanged
//	DataRanges(off, n int64, fn func(off, n int64) error) error // ranges that may hold data (SEEK_DATA/SEEK_HOLE)
//	Stat() (os.FileInfo, error)                // fstat
//	Fd() uintptr                               // the OS descriptor (block-device ioctls)
//	Chmod(mode os.FileMode) error
//
// Paths are full paths in the host's syntax (filepath); MemFS treats a
// relative path as relative to its root.
package vfs

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
)

// File is an open file.
type File interface {
	io.ReaderAt
	io.WriterAt
	// Sync makes the file's data and size durable (fdatasync: timestamps
	// are not needed). Directory entries need SyncDir.
	Sync() error
	// Truncate changes the file's size.
	Truncate(size int64) error
	// Size returns the file's current size.
	Size() (int64, error)
	Close() error
}

// FS is a file system. Implementations are safe for concurrent use.
type FS interface {
	// MkdirAll creates dir and any missing parents. The new entries are
	// not durable until their parents are synced (see MkdirAllSynced).
	MkdirAll(dir string, perm os.FileMode) error
	// ReadDir returns the names of the entries of dir, sorted.
	ReadDir(dir string) ([]string, error)
	// Create creates a new file for reading and writing; it fails
	// (wrapping fs.ErrExist) if the name exists.
	Create(path string, perm os.FileMode) (File, error)
	// OpenRW opens an existing file for reading and writing.
	OpenRW(path string) (File, error)
	// Open opens an existing file read-only.
	Open(path string) (File, error)
	// Remove removes a file or an empty directory.
	Remove(path string) error
	// Rename replaces newpath with oldpath atomically.
	Rename(oldpath, newpath string) error
	// Stat describes path; a missing one gives an error wrapping
	// fs.ErrNotExist.
	Stat(path string) (os.FileInfo, error)
	// SyncDir makes the entries of dir (creations, removals, renames)
	// durable.
	SyncDir(dir string) error
}

// ReadFile returns the whole contents of path.
func ReadFile(fsys FS, path string) ([]byte, error) {
	f, err := fsys.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	size, err := f.Size()
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	b := make([]byte, size)
	n, err := f.ReadAt(b, 0)
	if err != nil && !(errors.Is(err, io.EOF) && n == len(b)) {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	return b, nil
}

// MkdirAllSynced is MkdirAll that also makes every directory it creates
// durable, by syncing the parent of each (from the outermost new one in).
// Without that, a power loss can take a new directory, and every file in
// it that was synced, away with it.
func MkdirAllSynced(fsys FS, dir string, perm os.FileMode) error {
	dir = filepath.Clean(dir)
	var created []string // missing directories, innermost first
	for d := dir; ; d = filepath.Dir(d) {
		_, err := fsys.Stat(d)
		if err == nil {
			break
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		created = append(created, d)
		if filepath.Dir(d) == d {
			break
		}
	}
	if len(created) == 0 {
		return nil
	}
	if err := fsys.MkdirAll(dir, perm); err != nil {
		return err
	}
	for i := len(created) - 1; i >= 0; i-- {
		parent := filepath.Dir(created[i])
		if parent == created[i] {
			continue
		}
		if err := fsys.SyncDir(parent); err != nil {
			return fmt.Errorf("sync dir %s: %w", parent, err)
		}
	}
	return nil
}

// Unsupported reports whether err says that a file or file system lacks
// an operation: errors.ErrUnsupported (which the OS's ENOSYS, ENOTSUP and
// EOPNOTSUPP match) or ENOTTY.
func Unsupported(err error) bool {
	return errors.Is(err, errors.ErrUnsupported) || errors.Is(err, syscall.ENOTTY)
}
