package mirror

import (
	"context"
	"slices"
	"testing"

	"github.com/blockmirror/blockmirror/internal/vfs"
	"github.com/blockmirror/blockmirror/journal"
)

func TestActivityLogEnsureAndTrim(t *testing.T) {
	fsys := vfs.NewCrashableMem()
	if err := vfs.MkdirAllSynced(fsys, "/d", 0o700); err != nil {
		t.Fatal(err)
	}
	j, err := journal.Open(journal.Options{FS: fsys, Dir: "/d/journal", Volume: [16]byte{1}})
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	a := newActivityLog(fsys, "/d", j, ActivityExtent)
	ctx := context.Background()
	// A write spanning two extents, then one in a third.
	if err := a.Ensure(ctx, ActivityExtent-4096, 8192, 1); err != nil {
		t.Fatal(err)
	}
	if err := a.Ensure(ctx, 5*ActivityExtent, 4096, 2); err != nil {
		t.Fatal(err)
	}
	// Durable before the store write: a power loss now keeps them.
	_, got, err := loadActivity(fsys.CrashCloneDropUnsynced(), "/d")
	if err != nil || !slices.Equal(got, []uint32{0, 1, 5}) {
		t.Fatalf("after a power loss the log lists %v (%v), want [0 1 5]", got, err)
	}
	// The first checkpoint only remembers; the next drops what was idle.
	if err := a.Checkpointed(2, false); err != nil {
		t.Fatal(err)
	}
	if err := a.Ensure(ctx, 5*ActivityExtent, 4096, 3); err != nil {
		t.Fatal(err)
	}
	if err := a.Checkpointed(3, false); err != nil {
		t.Fatal(err)
	}
	if _, got, _ := loadActivity(fsys, "/d"); !slices.Equal(got, []uint32{5}) {
		t.Fatalf("after two checkpoints the log lists %v, want [5] (the busy extent)", got)
	}
	if err := a.Checkpointed(3, true); err != nil {
		t.Fatal(err)
	}
	if _, got, _ := loadActivity(fsys, "/d"); len(got) != 0 {
		t.Fatalf("after a clean stop the log lists %v", got)
	}
}

func FuzzDecodeActivity(f *testing.F) {
	f.Add(encodeActivity(ActivityExtent, nil))
	f.Add(encodeActivity(ActivityExtent, []uint32{0, 7, 1 << 20}))
	f.Add(encodeActivity(16<<10, []uint32{3}))
	f.Add([]byte("BMAL"))
	f.Fuzz(func(t *testing.T, b []byte) {
		extent, ext, err := decodeActivity(b)
		if err != nil {
			return
		}
		if extent < minActivityExtent || extent&(extent-1) != 0 {
			t.Fatalf("accepted extent size %d", extent)
		}
		if gotExtent, got, err := decodeActivity(encodeActivity(extent, ext)); err != nil || gotExtent != extent || !slices.Equal(got, ext) {
			t.Fatalf("round trip: %d %v %v, want %d %v", gotExtent, got, err, extent, ext)
		}
	})
}
