package vfs

import (
	"io"
	"io/fs"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
)

// SectorSize is the unit a torn write keeps or loses in CrashClone.
const SectorSize = 512

// MemFS is an in-memory file system that can simulate a power loss.
//
// Every file has its current contents (what reads see, as the page cache
// would) and its durable contents, those of its last Sync; every directory
// has its current entries and its durable entries, those of its last
// SyncDir. CrashClone returns a new MemFS holding what a power loss would
// leave: only the durable entries, starting at the root (a directory whose
// own entry was never synced vanishes with everything in it), and for each
// file its durable contents with every operation since its last Sync
// replayed or not, independently: a write is lost, kept, or torn (kept for
// a random subset of its 512-byte sectors); a truncate is lost or kept.
// A write past the durable size that survives extends the file, so an
// earlier lost write can leave a zeroed gap before it, as unwritten
// extents do on a real file system.
//
// A process crash needs no support: a restarted process simply uses the
// same MemFS (its files keep everything written, as the page cache does).
// Handles opened before CrashClone keep working on the old MemFS and do
// not affect the clone. The zero value is not usable; call
// NewCrashableMem.
type MemFS struct {
	mu   sync.Mutex
	root *memNode
}

// NewCrashableMem returns an empty MemFS holding only the root directory.
func NewCrashableMem() *MemFS {
	return &MemFS{root: newDir(0o755)}
}

var _ FS = (*MemFS)(nil)

type memNode struct {
	mode os.FileMode // os.ModeDir set for directories

	// directory
	entries map[string]*memNode
	durable map[string]*memNode // as of the last SyncDir

	// file
	data    *sparse // current contents
	synced  *sparse // as of the last Sync
	pending []pendingOp
}

// pendingOp is a file change since the file's last Sync.
type pendingOp struct {
	truncate bool
	off      int64 // write offset, or the size a truncate set
	data     []byte
}

func newDir(perm os.FileMode) *memNode {
	return &memNode{mode: os.ModeDir | perm&os.ModePerm, entries: map[string]*memNode{}, durable: map[string]*memNode{}}
}

func (n *memNode) isDir() bool { return n.mode&os.ModeDir != 0 }

// parts splits a cleaned path into its components below the root.
func parts(path string) []string {
	p := filepath.ToSlash(filepath.Clean("/" + path))
	if p == "/" {
		return nil
	}
	return strings.Split(p[1:], "/")
}

func pathErr(op, path string, err error) error { return &fs.PathError{Op: op, Path: path, Err: err} }

// lookup returns the node at path. m.mu is held.
func (m *MemFS) lookup(op, path string) (*memNode, error) {
	n := m.root
	for _, c := range parts(path) {
		if !n.isDir() {
			return nil, pathErr(op, path, syscall.ENOTDIR)
		}
		if n = n.entries[c]; n == nil {
			return nil, pathErr(op, path, syscall.ENOENT)
		}
	}
	return n, nil
}

// parent returns the directory holding path's last component and that
// component. m.mu is held.
func (m *MemFS) parent(op, path string) (*memNode, string, error) {
	ps := parts(path)
	if len(ps) == 0 {
		return nil, "", pathErr(op, path, syscall.EINVAL) // the root has no parent entry
	}
	d, err := m.lookup(op, strings.Join(ps[:len(ps)-1], "/"))
	if err != nil {
		return nil, "", err
	}
	if !d.isDir() {
		return nil, "", pathErr(op, path, syscall.ENOTDIR)
	}
	return d, ps[len(ps)-1], nil
}

func (m *MemFS) MkdirAll(dir string, perm os.FileMode) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := m.root
	for _, c := range parts(dir) {
		next := n.entries[c]
		if next == nil {
			next = newDir(perm)
			n.entries[c] = next
		} else if !next.isDir() {
			return pathErr("mkdir", dir, syscall.ENOTDIR)
		}
		n = next
	}
	return nil
}

func (m *MemFS) ReadDir(dir string) ([]string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	d, err := m.lookup("readdir", dir)
	if err != nil {
		return nil, err
	}
	if !d.isDir() {
		return nil, pathErr("readdir", dir, syscall.ENOTDIR)
	}
	return slices.Sorted(maps.Keys(d.entries)), nil
}

func (m *MemFS) Create(path string, perm os.FileMode) (File, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	d, name, err := m.parent("open", path)
	if err != nil {
		return nil, err
	}
	if d.entries[name] != nil {
		return nil, pathErr("open", path, syscall.EEXIST)
	}
	n := &memNode{mode: perm & os.ModePerm, data: newSparse(), synced: newSparse()}
	d.entries[name] = n
	return &memFile{fs: m, n: n, path: path}, nil
}

func (m *MemFS) OpenRW(path string) (File, error) { return m.open(path, false) }

func (m *MemFS) Open(path string) (File, error) { return m.open(path, true) }

func (m *MemFS) open(path string, readOnly bool) (File, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	n, err := m.lookup("open", path)
	if err != nil {
		return nil, err
	}
	if n.isDir() {
		return nil, pathErr("open", path, syscall.EISDIR)
	}
	return &memFile{fs: m, n: n, path: path, readOnly: readOnly}, nil
}

func (m *MemFS) Remove(path string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	d, name, err := m.parent("remove", path)
	if err != nil {
		return err
	}
	n := d.entries[name]
	switch {
	case n == nil:
		return pathErr("remove", path, syscall.ENOENT)
	case n.isDir() && len(n.entries) > 0:
		return pathErr("remove", path, syscall.ENOTEMPTY)
	}
	delete(d.entries, name)
	return nil
}

func (m *MemFS) Rename(oldpath, newpath string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	od, oname, err := m.parent("rename", oldpath)
	if err != nil {
		return err
	}
	n := od.entries[oname]
	if n == nil {
		return &os.LinkError{Op: "rename", Old: oldpath, New: newpath, Err: syscall.ENOENT}
	}
	nd, nname, err := m.parent("rename", newpath)
	if err != nil {
		return err
	}
	if old := nd.entries[nname]; old != nil && old != n && (old.isDir() || n.isDir()) {
		return &os.LinkError{Op: "rename", Old: oldpath, New: newpath, Err: syscall.EEXIST}
	}
	if n.isDir() && strings.HasPrefix(filepath.Clean("/"+newpath)+"/", filepath.Clean("/"+oldpath)+"/") {
		return &os.LinkError{Op: "rename", Old: oldpath, New: newpath, Err: syscall.EINVAL}
	}
	delete(od.entries, oname)
	nd.entries[nname] = n
	return nil
}

func (m *MemFS) Stat(path string) (os.FileInfo, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	n, err := m.lookup("stat", path)
	if err != nil {
		return nil, err
	}
	return n.info(filepath.Base(path)), nil
}

func (m *MemFS) SyncDir(dir string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	d, err := m.lookup("sync", dir)
	if err != nil {
		return err
	}
	if !d.isDir() {
		return pathErr("sync", dir, syscall.ENOTDIR)
	}
	d.durable = maps.Clone(d.entries)
	return nil
}

// CrashClone returns the state a power loss would leave now (see MemFS),
// drawing every lost/kept/torn decision from rng, so a seed reproduces
// it. m is not changed.
func (m *MemFS) CrashClone(rng *rand.Rand) *MemFS { return m.crashClone(rng) }

// CrashCloneDropUnsynced is CrashClone where every unsynced change is
// lost: the oldest state a power loss can leave.
func (m *MemFS) CrashCloneDropUnsynced() *MemFS { return m.crashClone(nil) }

func (m *MemFS) crashClone(rng *rand.Rand) *MemFS {
	m.mu.Lock()
	defer m.mu.Unlock()
	done := map[*memNode]*memNode{} // a node reachable by two names stays one
	var crash func(n *memNode) *memNode
	crash = func(n *memNode) *memNode {
		if c := done[n]; c != nil {
			return c
		}
		var c *memNode
		if n.isDir() {
			c = newDir(n.mode)
			done[n] = c
			// Sorted, so that a seed draws the same decisions every time.
			for _, name := range slices.Sorted(maps.Keys(n.durable)) {
				c.entries[name] = crash(n.durable[name])
			}
			c.durable = maps.Clone(c.entries)
		} else {
			data := n.synced.clone()
			for _, op := range n.pending {
				replay(data, op, rng)
			}
			c = &memNode{mode: n.mode, data: data, synced: data.clone()}
			done[n] = c
		}
		return c
	}
	return &MemFS{root: crash(m.root)}
}

// replay applies op to data as a power loss may have left it.
func replay(data *sparse, op pendingOp, rng *rand.Rand) {
	if rng == nil {
		return // lost
	}
	if op.truncate {
		if rng.IntN(2) == 1 {
			data.truncate(op.off)
		}
		return
	}
	switch rng.IntN(3) {
	case 0: // lost
	case 1:
		data.writeAt(op.data, op.off)
	case 2: // torn: each sector it touches kept or lost
		end := op.off + int64(len(op.data))
		for at := op.off; at < end; {
			next := min((at/SectorSize+1)*SectorSize, end)
			if rng.IntN(2) == 1 {
				data.writeAt(op.data[at-op.off:next-op.off], at)
			}
			at = next
		}
	}
}

func (n *memNode) info(name string) os.FileInfo {
	fi := memInfo{name: name, mode: n.mode}
	if !n.isDir() {
		fi.size = n.data.size
	}
	return fi
}

type memInfo struct {
	name string
	size int64
	mode os.FileMode
}

func (fi memInfo) Name() string       { return fi.name }
func (fi memInfo) Size() int64        { return fi.size }
func (fi memInfo) Mode() os.FileMode  { return fi.mode }
func (fi memInfo) ModTime() time.Time { return time.Time{} }
func (fi memInfo) IsDir() bool        { return fi.mode.IsDir() }
func (fi memInfo) Sys() any           { return nil }

// memFile is an open MemFS file.
type memFile struct {
	fs       *MemFS
	n        *memNode
	path     string
	readOnly bool
	closed   bool
}

// usable checks the handle for op; fs.mu is held.
func (f *memFile) usable(op string, write bool) error {
	if f.closed {
		return pathErr(op, f.path, os.ErrClosed)
	}
	if write && f.readOnly {
		return pathErr(op, f.path, syscall.EBADF)
	}
	return nil
}

func (f *memFile) ReadAt(p []byte, off int64) (int, error) {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	if err := f.usable("read", false); err != nil {
		return 0, err
	}
	if off < 0 {
		return 0, pathErr("read", f.path, syscall.EINVAL)
	}
	n := f.n.data.readAt(p, off)
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (f *memFile) WriteAt(p []byte, off int64) (int, error) {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	if err := f.usable("write", true); err != nil {
		return 0, err
	}
	if off < 0 {
		return 0, pathErr("write", f.path, syscall.EINVAL)
	}
	if len(p) == 0 {
		return 0, nil
	}
	f.n.data.writeAt(p, off)
	f.n.pending = append(f.n.pending, pendingOp{off: off, data: slices.Clone(p)})
	return len(p), nil
}

func (f *memFile) Truncate(size int64) error {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	if err := f.usable("truncate", true); err != nil {
		return err
	}
	if size < 0 {
		return pathErr("truncate", f.path, syscall.EINVAL)
	}
	f.n.data.truncate(size)
	f.n.pending = append(f.n.pending, pendingOp{truncate: true, off: size})
	return nil
}

func (f *memFile) Sync() error {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	if err := f.usable("sync", false); err != nil {
		return err
	}
	f.n.synced = f.n.data.clone()
	f.n.pending = nil
	return nil
}

func (f *memFile) Size() (int64, error) {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	if err := f.usable("stat", false); err != nil {
		return 0, err
	}
	return f.n.data.size, nil
}

func (f *memFile) Stat() (os.FileInfo, error) {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	if err := f.usable("stat", false); err != nil {
		return nil, err
	}
	return f.n.info(filepath.Base(f.path)), nil
}

func (f *memFile) Close() error {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	if err := f.usable("close", false); err != nil {
		return err
	}
	f.closed = true
	return nil
}
