package mirror

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"path/filepath"
	"slices"
	"sync"

	"github.com/blockmirror/blockmirror/internal/atomicfile"
	"github.com/blockmirror/blockmirror/internal/vfs"
	"github.com/blockmirror/blockmirror/journal"
)

// The activity log (DRBD's term) is a primary's write intent: the disk
// extents that may hold writes whose journal records are not durable yet.
//
// The volume writes a record to the store once its journal write is handed
// to the kernel, not once it is durable (reads must see it at once). A
// power loss can then keep sectors of such a write in the image while its
// journal record is lost — and a mirror may never have received it. The
// image is then no longer a prefix of the history the mirrors follow. So
// before the first store write of a run into an extent, the extent is
// recorded durably here; after an unclean stop the node marks every
// extent listed for every mirror it knows (their dirty bitmaps), and the
// resync that follows compares those extents and copies what differs.
//
// The log holds at most activityExtents extents; the least recently
// written one whose records are all durable in the journal makes room
// (after a journal sync if needed). Checkpoints drop the extents idle
// since the one before. Extent size and capacity bound the compare after
// a crash: 64 MiB × 1024 = 64 GiB at most. The file records its extent
// size, so a log written with another size (the simulation uses small
// extents, NodeOptions.activityExtent) is read as it was written.
//
// File DIR/activity, replaced atomically (little endian):
//
//	| "BMAL" | version u16 (1) | 0 u16 | extent size u64 | count u32 | count × extent index u32 | crc32c u32 |

const (
	activityFile    = "activity"
	activityMagic   = "BMAL"
	activityVersion = 1
	// ActivityExtent is the size of an activity log extent.
	ActivityExtent = 64 << 20
	// minActivityExtent and maxActivityExtent bound the extent size a log
	// file may name (a power of two).
	minActivityExtent = 4 << 10
	maxActivityExtent = 1 << 40
	// activityExtents bounds the extents in the log.
	activityExtents = 1024
)

type activityLog struct {
	fs     vfs.FS
	path   string
	j      *journal.Journal
	extent uint64 // bytes per extent

	persistMu sync.Mutex // one writer of the file at a time (group commit)

	mu      sync.Mutex
	hot     map[uint32]*activityExtent
	pinned  map[uint32]int // extents of writes whose seq is not known yet (Pin)
	gen     uint64         // bumped by every change that must reach the file
	durable uint64         // gen of the last file written

	prevCheckpoint uint64 // the seq of the previous Checkpointed
}

type activityExtent struct {
	last uint64 // highest seq written into it
	gen  uint64 // the extent is in the file once durable ≥ gen
}

func newActivityLog(fsys vfs.FS, dir string, j *journal.Journal, extent uint64) *activityLog {
	return &activityLog{fs: fsys, path: filepath.Join(dir, activityFile), j: j, extent: extent,
		hot: make(map[uint32]*activityExtent), pinned: make(map[uint32]int)}
}

// loadActivity reads the extents a previous run left in the log and their
// size (no extents if it has none).
func loadActivity(fsys vfs.FS, dir string) (extent uint64, ext []uint32, err error) {
	p := filepath.Join(dir, activityFile)
	b, err := vfs.ReadFile(fsys, p)
	if errors.Is(err, fs.ErrNotExist) {
		return ActivityExtent, nil, nil
	}
	if err != nil {
		return 0, nil, fmt.Errorf("mirror: read the activity log: %w", err)
	}
	extent, ext, err = decodeActivity(b)
	if err != nil {
		return 0, nil, fmt.Errorf("mirror: activity log %s: %w", p, err)
	}
	return extent, ext, nil
}

func encodeActivity(extent uint64, ext []uint32) []byte {
	b := append([]byte(activityMagic), 0, 0, 0, 0)
	binary.LittleEndian.PutUint16(b[4:], activityVersion)
	b = binary.LittleEndian.AppendUint64(b, extent)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(ext)))
	for _, e := range ext {
		b = binary.LittleEndian.AppendUint32(b, e)
	}
	return binary.LittleEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
}

var errActivity = errors.New("bad activity log")

// castagnoli is the CRC32C table of the file format.
var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func decodeActivity(b []byte) (extent uint64, ext []uint32, err error) {
	const head = 4 + 2 + 2 + 8 + 4
	if len(b) < head+4 || string(b[:4]) != activityMagic {
		return 0, nil, fmt.Errorf("%w: short or bad magic", errActivity)
	}
	body, sum := b[:len(b)-4], binary.LittleEndian.Uint32(b[len(b)-4:])
	if crc32.Checksum(body, castagnoli) != sum {
		return 0, nil, fmt.Errorf("%w: checksum mismatch", errActivity)
	}
	if v := binary.LittleEndian.Uint16(b[4:]); v != activityVersion {
		return 0, nil, fmt.Errorf("%w: version %d, this build reads %d", errActivity, v, activityVersion)
	}
	extent = binary.LittleEndian.Uint64(b[8:])
	if extent < minActivityExtent || extent > maxActivityExtent || extent&(extent-1) != 0 {
		return 0, nil, fmt.Errorf("%w: extent size %d (a power of two from %d to %d)", errActivity, extent, minActivityExtent, uint64(maxActivityExtent))
	}
	n := binary.LittleEndian.Uint32(b[16:])
	if uint64(n) > activityExtents*16 || len(body) != head+4*int(n) {
		return 0, nil, fmt.Errorf("%w: %d extents in %d bytes", errActivity, n, len(b))
	}
	ext = make([]uint32, n)
	for i := range ext {
		ext[i] = binary.LittleEndian.Uint32(b[head+4*i:])
	}
	return extent, ext, nil
}

// extentsOf returns the extents [off, off+n) touches.
func (a *activityLog) extentsOf(off, n uint64) (first, last uint32) {
	if n == 0 {
		n = 1
	}
	return uint32(off / a.extent), uint32((off + n - 1) / a.extent)
}

// Ensure returns once every extent of [off, off+n) is in the log durably,
// recording that seq is the latest write there. Called before the store
// write of every record.
func (a *activityLog) Ensure(ctx context.Context, off, n, seq uint64) error {
	first, last := a.extentsOf(off, n)
	a.mu.Lock()
	var need uint64
	for e := first; e <= last; e++ {
		x := a.hot[e]
		if x == nil {
			a.gen++
			x = &activityExtent{gen: a.gen}
			a.hot[e] = x
		}
		x.last = max(x.last, seq)
		need = max(need, x.gen)
	}
	if need <= a.durable {
		a.mu.Unlock()
		return nil
	}
	a.mu.Unlock()
	return a.persist(ctx, need)
}

// Pin is Ensure for a write that reaches the store before it has a seq (an
// indirect write): the extents of [off, off+n) are in the log durably when
// it returns, and neither making room nor a checkpoint removes them until
// settle, given the write's seq (0: it got none), records it as the latest
// write there and unpins them.
func (a *activityLog) Pin(ctx context.Context, off, n uint64) (settle func(seq uint64), err error) {
	first, last := a.extentsOf(off, n)
	a.mu.Lock()
	for e := first; e <= last; e++ {
		a.pinned[e]++
	}
	a.mu.Unlock()
	settle = func(seq uint64) {
		a.mu.Lock()
		defer a.mu.Unlock()
		for e := first; e <= last; e++ {
			if x := a.hot[e]; x != nil {
				x.last = max(x.last, seq)
			}
			if a.pinned[e]--; a.pinned[e] <= 0 {
				delete(a.pinned, e)
			}
		}
	}
	if err := a.Ensure(ctx, off, n, 0); err != nil {
		settle(0)
		return nil, err
	}
	return settle, nil
}

// persist writes the log once durable < need: the first writer in writes
// every extent added so far (group commit), making room first if needed.
func (a *activityLog) persist(ctx context.Context, need uint64) error {
	a.persistMu.Lock()
	defer a.persistMu.Unlock()
	a.mu.Lock()
	if need <= a.durable {
		a.mu.Unlock()
		return nil
	}
	if over := len(a.hot) - activityExtents; over > 0 {
		// Evict the least recently written extents; their records must be
		// durable in the journal first (then a crash replays them).
		victims := a.oldestLocked(over)
		var through uint64
		for _, e := range victims {
			through = max(through, a.hot[e].last)
		}
		a.mu.Unlock()
		if err := a.j.Wait(ctx, through, journal.Durable); err != nil && !errors.Is(err, journal.ErrTruncated) {
			return fmt.Errorf("mirror: activity log: make room: %w", err)
		}
		a.mu.Lock()
		for _, e := range victims {
			if x := a.hot[e]; x != nil && x.last <= through {
				delete(a.hot, e)
			}
		}
	}
	gen, ext := a.gen, a.snapshotLocked()
	a.mu.Unlock()
	if err := atomicfile.WriteFS(a.fs, a.path, encodeActivity(a.extent, ext), 0o600); err != nil {
		return fmt.Errorf("mirror: activity log: %w", err)
	}
	a.mu.Lock()
	a.durable = max(a.durable, gen)
	a.mu.Unlock()
	return nil
}

func (a *activityLog) snapshotLocked() []uint32 {
	ext := make([]uint32, 0, len(a.hot))
	for e := range a.hot {
		ext = append(ext, e)
	}
	slices.Sort(ext)
	return ext
}

// oldestLocked returns the n extents written longest ago.
func (a *activityLog) oldestLocked(n int) []uint32 {
	ext := slices.DeleteFunc(a.snapshotLocked(), func(e uint32) bool { return a.pinned[e] > 0 })
	slices.SortFunc(ext, func(x, y uint32) int {
		lx, ly := a.hot[x].last, a.hot[y].last
		switch {
		case lx < ly:
			return -1
		case lx > ly:
			return 1
		}
		return 0
	})
	return ext[:min(n, len(ext))]
}

// Checkpointed reports a checkpoint through seq (every write ≤ seq is in
// the journal and the store durably). Extents not written since the
// checkpoint before it are dropped — idle for a whole checkpoint interval,
// so that a busy extent is not dropped and added again (an fsync on a
// write's path) at every checkpoint; with all, every extent ≤ seq is
// (a clean stop). The log is written if that changed it.
func (a *activityLog) Checkpointed(seq uint64, all bool) error {
	a.mu.Lock()
	limit := a.prevCheckpoint
	if all {
		limit = seq
	}
	a.prevCheckpoint = seq
	changed := false
	for e, x := range a.hot {
		if x.last <= limit && a.pinned[e] == 0 {
			delete(a.hot, e)
			changed = true
		}
	}
	if !changed {
		a.mu.Unlock()
		return nil
	}
	a.gen++
	need := a.gen
	a.mu.Unlock()
	return a.persist(context.Background(), need)
}
