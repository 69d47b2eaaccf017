package journal_test

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/blockmirror/blockmirror/internal/vfs"
	"github.com/blockmirror/blockmirror/journal"
)

// TestSetStartBelowInterrupted: a SetStart to a lower seq than the empty
// journal's start creates the new first segment before it removes the old
// one, so an interruption between the two leaves a segment without a
// header (it never held a record) in front of the old one. The journal
// must reopen from that state, with the old start or the new one, and take
// records from there: a transient EIO on the header write (simulation seed
// 7807: "segment header cut short (0 bytes)" at the next start), and a
// process that dies right after creating the file.
func TestSetStartBelowInterrupted(t *testing.T) {
	newSeg := filepath.Join("/j", fmt.Sprintf("%020d.seg", 3))
	for _, tc := range []struct {
		name string
		// fault, consulted before each operation once armed, returns the
		// error it fails with.
		fault func() vfs.InjectorFunc
	}{
		{"eio on header write", func() vfs.InjectorFunc {
			var fired atomic.Bool
			return func(op vfs.Op, path string) error {
				if op == vfs.OpWrite && path == newSeg && fired.CompareAndSwap(false, true) {
					return fmt.Errorf("injected: %w", syscall.EIO)
				}
				return nil
			}
		}},
		{"process dies after create", func() vfs.InjectorFunc {
			var dead atomic.Bool
			return func(op vfs.Op, path string) error {
				if dead.Load() {
					return errors.New("injected: the process died")
				}
				if op == vfs.OpCreate && path == newSeg {
					dead.Store(true) // the create itself happens
				}
				return nil
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := vfs.NewCrashableMem()
			var armed atomic.Pointer[vfs.InjectorFunc]
			fsys := vfs.WithErrors(m, vfs.InjectorFunc(func(op vfs.Op, path string) error {
				if f := armed.Load(); f != nil {
					return (*f)(op, path)
				}
				return nil
			}))
			j, err := journal.Open(rotOpts(fsys))
			if err != nil {
				t.Fatal(err)
			}
			// An empty journal starting at 4 (the mirror's after a quarantine
			// truncated its only record, seq 4).
			if err := j.SetStart(4); err != nil {
				t.Fatal(err)
			}
			f := tc.fault()
			armed.Store(&f)
			if err := j.SetStart(3); err == nil {
				t.Fatal("SetStart(3) succeeded through the injected fault")
			}
			j.Close()
			armed.Store(nil)

			var files []string
			for _, p := range memSegs(t, m) {
				files = append(files, filepath.Base(p))
			}
			j, err = journal.Open(rotOpts(m))
			if err != nil {
				t.Fatalf("reopen after the interrupted SetStart (segments %s): %v", strings.Join(files, " "), err)
			}
			defer j.Close()
			first := j.FirstSeq()
			if (first != 3 && first != 4) || j.LastSeq() != first-1 {
				t.Fatalf("after reopen: seqs %d..%d, want an empty journal starting at 3 or 4", first, j.LastSeq())
			}
			appendN(t, j, first, first+40, func(uint64) int { return 1000 })
			j.Close()
			j, err = journal.Open(rotOpts(m))
			if err != nil {
				t.Fatalf("reopen with records: %v", err)
			}
			defer j.Close()
			if got := scanAll(t, j, first); len(got) != 41 || got[0] != first || got[40] != first+40 {
				t.Fatalf("after a second reopen: %d records %v, want %d..%d", len(got), got, first, first+40)
			}
		})
	}
}

// TestHeaderlessLeadingSegment: in front of the old segments recovery
// removes a header-less first segment only where nothing past its header
// was ever written (what SetStart leaves); a header-less segment with
// more bytes, or one in the middle of the chain, stays damage.
func TestHeaderlessLeadingSegment(t *testing.T) {
	for _, tc := range []struct {
		name    string
		seg     uint64 // the header-less segment's first seq
		content []byte
		corrupt bool
	}{
		{"cut short", 3, make([]byte, 17), false},
		{"a header's worth of zeros", 3, make([]byte, journal.SegmentHeaderSize), false},
		{"zeros past the header", 3, make([]byte, journal.SegmentHeaderSize+journal.RecordHeaderSize), true},
		{"in the middle", 20, nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := vfs.NewCrashableMem()
			j, err := journal.Open(rotOpts(m))
			if err != nil {
				t.Fatal(err)
			}
			if err := j.SetStart(4); err != nil {
				t.Fatal(err)
			}
			appendN(t, j, 4, 60, func(uint64) int { return 1000 }) // several segments
			j.Close()
			if err := writeFile(m, filepath.Join("/j", fmt.Sprintf("%020d.seg", tc.seg)), tc.content); err != nil {
				t.Fatal(err)
			}
			j, err = journal.Open(rotOpts(m))
			if tc.corrupt {
				if !errors.Is(err, journal.ErrCorrupt) {
					t.Fatalf("open: %v, want ErrCorrupt", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("open: %v", err)
			}
			defer j.Close()
			if got := scanAll(t, j, 4); j.FirstSeq() != 4 || len(got) != 57 {
				t.Fatalf("first seq %d, %d records, want 4..60", j.FirstSeq(), len(got))
			}
		})
	}
}
