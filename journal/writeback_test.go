package journal_test

import (
	"os"
	"sync"
	"testing"

	"github.com/blockmirror/blockmirror/internal/vfs"
	"github.com/blockmirror/blockmirror/journal"
)

// wbFS wraps a file system and gives its files a StartWriteback that
// records, per path, how far the file was written and how far writeback
// was asked for.
type wbFS struct {
	vfs.FS
	mu    sync.Mutex
	files map[string]*wbState
}

type wbState struct {
	written int64 // end of the furthest write
	kicked  int64 // end of the last writeback range
	gaps    int   // writeback ranges that did not start where the previous one ended
	ragged  int   // writeback ranges that did not end on a page boundary
	// worst is the most bytes written past kicked at any write.
	worst int64
}

func (w *wbFS) wrap(p string, f vfs.File, err error) (vfs.File, error) {
	if err != nil {
		return nil, err
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.files[p] == nil {
		w.files[p] = &wbState{}
	}
	return &wbFile{File: f, fs: w, st: w.files[p]}, nil
}

func (w *wbFS) Create(p string, perm os.FileMode) (vfs.File, error) {
	f, err := w.FS.Create(p, perm)
	return w.wrap(p, f, err)
}

func (w *wbFS) OpenRW(p string) (vfs.File, error) {
	f, err := w.FS.OpenRW(p)
	return w.wrap(p, f, err)
}

type wbFile struct {
	vfs.File
	fs *wbFS
	st *wbState
}

func (f *wbFile) WriteAt(b []byte, off int64) (int, error) {
	n, err := f.File.WriteAt(b, off)
	f.fs.mu.Lock()
	if off > 0 { // the header rewrite at offset 0 is no growth
		f.st.written = max(f.st.written, off+int64(n))
		f.st.worst = max(f.st.worst, f.st.written-f.st.kicked)
	}
	f.fs.mu.Unlock()
	return n, err
}

func (f *wbFile) StartWriteback(off, n int64) error {
	f.fs.mu.Lock()
	if off != f.st.kicked {
		f.st.gaps++
	}
	f.st.kicked = off + n
	if f.st.kicked%4096 != 0 {
		f.st.ragged++
	}
	f.fs.mu.Unlock()
	return nil
}

// TestDirtyWindowBounded: records nobody asked to be durable are handed
// to the disk's writeback once more than WritebackBytes of them wait, and
// a segment's rest when rotation closes it, so a later sync never has
// more than the window to write back — without any fdatasync (durability
// still only where asked). A negative window leaves writeback alone.
func TestDirtyWindowBounded(t *testing.T) {
	const window = 64 << 10
	const recBytes = 1000
	for _, tc := range []struct {
		name   string
		window int64
	}{{"window", window}, {"off", -1}} {
		t.Run(tc.name, func(t *testing.T) {
			w := &wbFS{FS: vfs.NewCrashableMem(), files: map[string]*wbState{}}
			o := rotOpts(w)
			o.SegmentBytes = 1 << 20
			o.WritebackBytes = tc.window
			j, err := journal.Open(o)
			if err != nil {
				t.Fatal(err)
			}
			defer j.Close()
			// One record per write (writeOnly waits for each batch it
			// submits; submit one at a time so a batch is one record).
			const n = 2500 // ~2.4 segments
			for s := uint64(1); s <= n; s++ {
				writeOnly(t, j, s, s)
			}
			st := j.Stats()
			if st.Segments < 3 {
				t.Fatalf("%d segments: the test needs rotations", st.Segments)
			}
			if st.Syncs != 0 {
				t.Fatalf("%d fdatasyncs for records nobody asked to be durable", st.Syncs)
			}
			w.mu.Lock()
			defer w.mu.Unlock()
			if len(w.files) != st.Segments {
				t.Fatalf("%d files seen, %d segments", len(w.files), st.Segments)
			}
			active := 0
			for p, f := range w.files {
				if f.written > 0 && f.kicked == 0 && tc.window < 0 {
					continue
				}
				if tc.window < 0 {
					t.Fatalf("%s: writeback asked through %d with the window off", p, f.kicked)
				}
				if f.gaps != 0 {
					t.Errorf("%s: %d writeback ranges left a gap or overlapped", p, f.gaps)
				}
				// Only the rotation's range, the segment's rest, may end
				// inside a page: the next append would fill that page.
				if f.ragged > 1 {
					t.Errorf("%s: %d writeback ranges end inside a page", p, f.ragged)
				}
				// One record and a page over the window at most: it is
				// checked after each write.
				if f.worst > window+recBytes+4096 {
					t.Errorf("%s: %d bytes written and not handed to writeback, window %d", p, f.worst, window)
				}
				if f.kicked < f.written {
					active++ // only the active segment may keep a dirty rest
				}
			}
			if active > 1 {
				t.Errorf("%d segments keep bytes not handed to writeback; only the active one may", active)
			}
			if tc.window > 0 && st.Writebacks < n*recBytes/window {
				t.Errorf("%d writeback requests for %d bytes, window %d", st.Writebacks, n*recBytes, window)
			}
		})
	}
}

// TestDirtyWindowAfterTruncate: after TruncateAfter cuts the active
// segment, the records written again below the old writeback mark are
// handed to writeback like any others.
func TestDirtyWindowAfterTruncate(t *testing.T) {
	const window = 64 << 10
	w := &wbFS{FS: vfs.NewCrashableMem(), files: map[string]*wbState{}}
	o := rotOpts(w)
	o.SegmentBytes = 1 << 20
	o.WritebackBytes = window
	j, err := journal.Open(o)
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	for s := uint64(1); s <= 500; s++ {
		writeOnly(t, j, s, s)
	}
	if err := j.TruncateAfter(100); err != nil {
		t.Fatal(err)
	}
	before := j.Stats().Writebacks
	for s := uint64(101); s <= 300; s++ { // ends ~200 KB below the old mark
		writeOnly(t, j, s, s)
	}
	if st := j.Stats(); st.Segments != 1 || st.Writebacks-before < 200*1000/window {
		t.Fatalf("%d writeback requests for 200 KB written again after the cut (window %d, %d segments)",
			st.Writebacks-before, window, st.Segments)
	}
}
