// Package atomicfile replaces small files atomically and durably: the new
// contents are written to a temporary file in the same directory, fsync'd,
// renamed over the old name, and the directory is fsync'd, so after a crash
// the file holds either the old or the new contents, never a mix.
package atomicfile

import (
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"

	"github.com/blockmirror/blockmirror/internal/vfs"
)

// Write replaces path with data (mode perm for a new file) on the
// operating system's file system.
func Write(path string, data []byte, perm os.FileMode) error {
	return WriteFS(vfs.OS, path, data, perm)
}

// WriteFS is Write on the file system fsys.
func WriteFS(fsys vfs.FS, path string, data []byte, perm os.FileMode) error {
	dir := filepath.Dir(path)
	tmp, name, err := createTemp(fsys, dir, "."+filepath.Base(path)+".tmp", perm)
	if err != nil {
		return fmt.Errorf("atomicfile: create temp in %s: %w", dir, err)
	}
	fail := func(step string, err error) error {
		tmp.Close()
		fsys.Remove(name)
		return fmt.Errorf("atomicfile: %s %s: %w", step, path, err)
	}
	if _, err := tmp.WriteAt(data, 0); err != nil {
		return fail("write", err)
	}
	if c, ok := tmp.(interface{ Chmod(os.FileMode) error }); ok {
		// The exact mode, whatever the umask made of it at creation.
		if err := c.Chmod(perm); err != nil {
			return fail("chmod", err)
		}
	}
	if err := tmp.Sync(); err != nil {
		return fail("fsync", err)
	}
	if err := tmp.Close(); err != nil {
		fsys.Remove(name)
		return fmt.Errorf("atomicfile: close %s: %w", path, err)
	}
	if err := fsys.Rename(name, path); err != nil {
		fsys.Remove(name)
		return fmt.Errorf("atomicfile: rename %s: %w", path, err)
	}
	if err := fsys.SyncDir(dir); err != nil {
		return fmt.Errorf("atomicfile: fsync dir %s: %w", dir, err)
	}
	return nil
}

// createTemp creates a new file dir/prefix<random>.
func createTemp(fsys vfs.FS, dir, prefix string, perm os.FileMode) (vfs.File, string, error) {
	for range 10000 {
		name := filepath.Join(dir, prefix+strconv.FormatUint(uint64(rand.Uint32()), 10))
		f, err := fsys.Create(name, perm)
		if errors.Is(err, fs.ErrExist) {
			continue
		}
		return f, name, err
	}
	return nil, "", fmt.Errorf("no unused temporary name %s* found", filepath.Join(dir, prefix))
}
