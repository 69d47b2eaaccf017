package mirror

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"syscall"

	"github.com/blockmirror/blockmirror/internal/vfs"
)

// errSimCrashed is what every file operation of a crashed node's process
// returns: from the instant of the crash nothing it does reaches the disk.
var errSimCrashed = errors.New("sim: the process crashed")

// simDisk is one incarnation's view of a node's disk: every operation goes
// to mem until the process dies (kill), or until its armed count of
// mutating operations runs out (a crash in the middle of whatever the
// process was doing); after that each one fails without effect, so the
// goroutines the dead process leaves behind cannot change the disk the
// next incarnation opens.
type simDisk struct {
	mem *vfs.MemFS
	fs  vfs.FS

	mu      sync.Mutex
	dead    bool
	armed   int // > 0: the process dies at the armed-th next mutating op
	ops     int // mutating operations so far
	onCrash func()
	// failWrite, if set: the next write to a path containing it fails with
	// EIO (once), as a disk's transient error would.
	failWrite string
}

// errSimIO is an injected I/O error.
var errSimIO = fmt.Errorf("sim: injected I/O error: %w", syscall.EIO)

func newSimDisk(mem *vfs.MemFS) *simDisk {
	d := &simDisk{mem: mem}
	d.fs = vfs.WithErrors(mem, vfs.InjectorFunc(d.maybeError))
	return d
}

func (d *simDisk) maybeError(op vfs.Op, path string) error {
	d.mu.Lock()
	if d.dead {
		d.mu.Unlock()
		return errSimCrashed
	}
	if !op.Mutates() {
		d.mu.Unlock()
		return nil
	}
	if d.failWrite != "" && op == vfs.OpWrite && strings.Contains(path, d.failWrite) {
		d.failWrite = ""
		d.mu.Unlock()
		return errSimIO
	}
	d.ops++
	if d.armed > 0 {
		if d.armed--; d.armed == 0 {
			d.dead = true
			f := d.onCrash
			d.mu.Unlock()
			if f != nil {
				f()
			}
			return errSimCrashed
		}
	}
	d.mu.Unlock()
	return nil
}

// kill makes every later operation fail.
func (d *simDisk) kill() {
	d.mu.Lock()
	d.dead = true
	d.mu.Unlock()
}

// arm makes the process die at the n-th next mutating operation (before
// it takes effect).
func (d *simDisk) arm(n int, onCrash func()) {
	d.mu.Lock()
	d.armed, d.onCrash = n, onCrash
	d.mu.Unlock()
}

func (d *simDisk) isDead() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.dead
}

// failNextWrite makes the next write to a path containing sub fail.
func (d *simDisk) failNextWrite(sub string) {
	d.mu.Lock()
	d.failWrite = sub
	d.mu.Unlock()
}
