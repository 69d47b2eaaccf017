package vfs

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
)

// Op names an operation of FS or File, for error injection.
type Op uint8

// Operations. The File operations carry the path the file was opened by;
// Rename carries its old path.
const (
	OpMkdirAll Op = iota + 1
	OpReadDir
	OpCreate
	OpOpenRW
	OpOpen
	OpRemove
	OpRename
	OpStat
	OpSyncDir
	OpRead
	OpWrite
	OpSync
	OpTruncate
	OpSize
	OpClose
	OpPreallocate
	OpStartWriteback
	OpPunchHole
	OpZeroRange
	OpDataRanges
)

var opNames = [...]string{OpMkdirAll: "mkdirall", OpReadDir: "readdir", OpCreate: "create", OpOpenRW: "openrw",
	OpOpen: "open", OpRemove: "remove", OpRename: "rename", OpStat: "stat", OpSyncDir: "syncdir", OpRead: "read",
	OpWrite: "write", OpSync: "sync", OpTruncate: "truncate", OpSize: "size", OpClose: "close",
	OpPreallocate: "preallocate", OpStartWriteback: "startwriteback", OpPunchHole: "punchhole",
	OpZeroRange: "zerorange", OpDataRanges: "dataranges"}

func (o Op) String() string {
	if int(o) < len(opNames) && opNames[o] != "" {
		return opNames[o]
	}
	return fmt.Sprintf("op(%d)", uint8(o))
}

// Mutates reports whether o changes the file system's state (what a crash
// in the middle of a sequence of operations is about).
func (o Op) Mutates() bool {
	switch o {
	case OpMkdirAll, OpCreate, OpRemove, OpRename, OpSyncDir, OpWrite, OpSync, OpTruncate,
		OpPreallocate, OpPunchHole, OpZeroRange:
		return true
	}
	return false
}

// Injector decides, before each operation, whether it fails: a non-nil
// error is returned instead of performing the operation.
type Injector interface {
	MaybeError(op Op, path string) error
}

// InjectorFunc is an Injector as a function.
type InjectorFunc func(op Op, path string) error

func (f InjectorFunc) MaybeError(op Op, path string) error { return f(op, path) }

// WithErrors wraps fsys so that inj is consulted before every operation
// of it and of the files it opens. The wrapped files have every optional
// capability; one the underlying file lacks fails with an error wrapping
// errors.ErrUnsupported, which callers treat as "use the fallback".
func WithErrors(fsys FS, inj Injector) FS { return &errFS{fs: fsys, inj: inj} }

// Match selects operations for FailNth.
type Match func(op Op, path string) bool

// OpIs matches the given operations on any path.
func OpIs(ops ...Op) Match {
	return func(op Op, _ string) bool {
		for _, o := range ops {
			if o == op {
				return true
			}
		}
		return false
	}
}

// And matches when every one of ms does.
func And(ms ...Match) Match {
	return func(op Op, path string) bool {
		for _, m := range ms {
			if !m(op, path) {
				return false
			}
		}
		return true
	}
}

// PathContains matches operations whose path contains s.
func PathContains(s string) Match {
	return func(_ Op, path string) bool { return strings.Contains(path, s) }
}

// Nth is an Injector that fails the nth operation matching a Match (1 for
// the first) and lets every other one through.
type Nth struct {
	mu    sync.Mutex
	n     int
	match Match
	err   error
	seen  int
}

// FailNth returns an Injector failing the nth operation that match selects
// with err.
func FailNth(n int, match Match, err error) *Nth { return &Nth{n: n, match: match, err: err} }

func (f *Nth) MaybeError(op Op, path string) error {
	if !f.match(op, path) {
		return nil
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.seen++
	if f.seen == f.n {
		return fmt.Errorf("injected %s %s: %w", op, path, f.err)
	}
	return nil
}

// Seen is how many matching operations ran (including the failed one).
func (f *Nth) Seen() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.seen
}

// Fired reports whether the failure was injected.
func (f *Nth) Fired() bool { return f.Seen() >= f.n }

type errFS struct {
	fs  FS
	inj Injector
}

func (e *errFS) MkdirAll(dir string, perm os.FileMode) error {
	if err := e.inj.MaybeError(OpMkdirAll, dir); err != nil {
		return err
	}
	return e.fs.MkdirAll(dir, perm)
}

func (e *errFS) ReadDir(dir string) ([]string, error) {
	if err := e.inj.MaybeError(OpReadDir, dir); err != nil {
		return nil, err
	}
	return e.fs.ReadDir(dir)
}

func (e *errFS) Create(path string, perm os.FileMode) (File, error) {
	return e.wrap(OpCreate, path, func() (File, error) { return e.fs.Create(path, perm) })
}

func (e *errFS) OpenRW(path string) (File, error) {
	return e.wrap(OpOpenRW, path, func() (File, error) { return e.fs.OpenRW(path) })
}

func (e *errFS) Open(path string) (File, error) {
	return e.wrap(OpOpen, path, func() (File, error) { return e.fs.Open(path) })
}

func (e *errFS) wrap(op Op, path string, open func() (File, error)) (File, error) {
	if err := e.inj.MaybeError(op, path); err != nil {
		return nil, err
	}
	f, err := open()
	if err != nil {
		return nil, err
	}
	return &errFile{f: f, path: path, inj: e.inj}, nil
}

func (e *errFS) Remove(path string) error {
	if err := e.inj.MaybeError(OpRemove, path); err != nil {
		return err
	}
	return e.fs.Remove(path)
}

func (e *errFS) Rename(oldpath, newpath string) error {
	if err := e.inj.MaybeError(OpRename, oldpath); err != nil {
		return err
	}
	return e.fs.Rename(oldpath, newpath)
}

func (e *errFS) Stat(path string) (os.FileInfo, error) {
	if err := e.inj.MaybeError(OpStat, path); err != nil {
		return nil, err
	}
	return e.fs.Stat(path)
}

func (e *errFS) SyncDir(dir string) error {
	if err := e.inj.MaybeError(OpSyncDir, dir); err != nil {
		return err
	}
	return e.fs.SyncDir(dir)
}

type errFile struct {
	f    File
	path string
	inj  Injector
}

func (e *errFile) ReadAt(p []byte, off int64) (int, error) {
	if err := e.inj.MaybeError(OpRead, e.path); err != nil {
		return 0, err
	}
	return e.f.ReadAt(p, off)
}

func (e *errFile) WriteAt(p []byte, off int64) (int, error) {
	if err := e.inj.MaybeError(OpWrite, e.path); err != nil {
		return 0, err
	}
	return e.f.WriteAt(p, off)
}

func (e *errFile) Sync() error { return e.do(OpSync, e.f.Sync) }

func (e *errFile) Truncate(size int64) error {
	return e.do(OpTruncate, func() error { return e.f.Truncate(size) })
}

func (e *errFile) Size() (int64, error) {
	if err := e.inj.MaybeError(OpSize, e.path); err != nil {
		return 0, err
	}
	return e.f.Size()
}

func (e *errFile) Close() error { return e.do(OpClose, e.f.Close) }

func (e *errFile) do(op Op, fn func() error) error {
	if err := e.inj.MaybeError(op, e.path); err != nil {
		return err
	}
	return fn()
}

// unsupported is the error of a capability the wrapped file lacks.
func (e *errFile) unsupported(op Op) error {
	return fmt.Errorf("%s %s: %w", op, e.path, errors.ErrUnsupported)
}

func (e *errFile) Preallocate(n int64) error {
	return e.do(OpPreallocate, func() error {
		if c, ok := e.f.(interface{ Preallocate(int64) error }); ok {
			return c.Preallocate(n)
		}
		return e.unsupported(OpPreallocate)
	})
}

func (e *errFile) StartWriteback(off, n int64) error {
	return e.do(OpStartWriteback, func() error {
		if c, ok := e.f.(interface{ StartWriteback(int64, int64) error }); ok {
			return c.StartWriteback(off, n)
		}
		return e.unsupported(OpStartWriteback)
	})
}

func (e *errFile) PunchHole(off, n int64) error {
	return e.do(OpPunchHole, func() error {
		if c, ok := e.f.(interface{ PunchHole(int64, int64) error }); ok {
			return c.PunchHole(off, n)
		}
		return e.unsupported(OpPunchHole)
	})
}

func (e *errFile) ZeroRange(off, n int64) error {
	return e.do(OpZeroRange, func() error {
		if c, ok := e.f.(interface{ ZeroRange(int64, int64) error }); ok {
			return c.ZeroRange(off, n)
		}
		return e.unsupported(OpZeroRange)
	})
}

func (e *errFile) DataRanges(off, n int64, fn func(off, n int64) error) error {
	return e.do(OpDataRanges, func() error {
		if c, ok := e.f.(interface {
			DataRanges(int64, int64, func(int64, int64) error) error
		}); ok {
			return c.DataRanges(off, n, fn)
		}
		return fn(off, n) // no hole information: all of it may hold data
	})
}
