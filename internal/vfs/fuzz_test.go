package vfs_test

import (
	"bytes"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/blockmirror/blockmirror/internal/vfs"
)

// memModel is the reference a MemFS is checked against: one file's
// current and synced contents and the writes and truncates since its last
// Sync, and one directory's current and synced names.
type memModel struct {
	cur, synced []byte
	pending     []modelOp
	names       map[string]bool
	syncedNames map[string]bool
}

type modelOp struct {
	truncate bool
	off      int
	n        int
	val      byte
}

// runMemOps interprets ops as a program against a MemFS and a memModel:
// 4 bytes per step (kind, and three argument bytes). Every few steps, and
// at the end, it crashes a clone and checks it.
func runMemOps(t *testing.T, ops []byte, seed uint64) {
	m := vfs.NewCrashableMem()
	if err := vfs.MkdirAllSynced(m, "/d", 0o700); err != nil {
		t.Fatal(err)
	}
	f, err := m.Create("/file", 0o600)
	if err != nil {
		t.Fatal(err)
	}
	mustSyncDir(t, m, "/")
	md := &memModel{names: map[string]bool{}, syncedNames: map[string]bool{}}
	rng := rand.New(rand.NewPCG(seed, 99))
	names := []string{"a", "b", "c"}
	for i := 0; i+4 <= len(ops) && i < 4*200; i += 4 {
		k, a, b, c := ops[i]%8, int(ops[i+1]), int(ops[i+2]), ops[i+3]
		switch k {
		case 0, 1, 2: // write c (never 0) at a*37, a+b*11 bytes
			off, n, val := a*37, 1+a+b*11, c|1
			f.WriteAt(bytes.Repeat([]byte{val}, n), int64(off))
			md.cur = grow(md.cur, off+n)
			for j := off; j < off+n; j++ {
				md.cur[j] = val
			}
			md.pending = append(md.pending, modelOp{off: off, n: n, val: val})
		case 3: // truncate
			size := a * 41
			f.Truncate(int64(size))
			if size < len(md.cur) {
				md.cur = md.cur[:size]
			} else {
				md.cur = grow(md.cur, size)
			}
			md.pending = append(md.pending, modelOp{truncate: true, n: size})
		case 4:
			f.Sync()
			md.synced = slices.Clone(md.cur)
			md.pending = nil
		case 5: // create or remove a name in /d
			p := "/d/" + names[a%3]
			if md.names[names[a%3]] {
				m.Remove(p)
				delete(md.names, names[a%3])
			} else {
				g, err := m.Create(p, 0o600)
				if err != nil {
					t.Fatal(err)
				}
				g.Close()
				md.names[names[a%3]] = true
			}
		case 6: // rename within /d
			from, to := names[a%3], names[b%3]
			if md.names[from] && from != to {
				if err := m.Rename("/d/"+from, "/d/"+to); err != nil {
					t.Fatal(err)
				}
				delete(md.names, from)
				md.names[to] = true
			}
		case 7:
			mustSyncDir(t, m, "/d")
			md.syncedNames = maps.Clone(md.names)
		}
		if got := contents(t, m, "/file"); !bytes.Equal(got, md.cur) {
			t.Fatalf("step %d: reads give %d bytes, the model %d", i/4, len(got), len(md.cur))
		}
		if i%32 == 28 {
			checkCrash(t, m, md, rng)
		}
	}
	checkCrash(t, m, md, rng)
}

func grow(b []byte, n int) []byte {
	for len(b) < n {
		b = append(b, 0)
	}
	return b
}

// checkCrash crashes a clone of m and checks it against the model:
// every byte is the synced one or one a pending operation could have put
// there; bytes no pending operation touched are exactly the synced ones;
// with nothing pending the file is exactly the synced one; the directory
// holds exactly the names of its last sync.
func checkCrash(t *testing.T, m *vfs.MemFS, md *memModel, rng *rand.Rand) {
	t.Helper()
	c := m.CrashClone(rng)
	got := contents(t, c, "/file")
	if len(md.pending) == 0 && !bytes.Equal(got, md.synced) {
		t.Fatalf("nothing pending, yet the crashed file (%d bytes) differs from the synced one (%d)", len(got), len(md.synced))
	}
	maxEnd, minTrunc := len(md.synced), len(md.synced)
	for _, op := range md.pending {
		if op.truncate {
			maxEnd, minTrunc = max(maxEnd, op.n), min(minTrunc, op.n)
		} else {
			maxEnd = max(maxEnd, op.off+op.n)
		}
	}
	if len(got) > maxEnd {
		t.Fatalf("crashed size %d beyond anything written (%d)", len(got), maxEnd)
	}
	for i, v := range got {
		allowed := []byte{}
		if i < len(md.synced) {
			allowed = append(allowed, md.synced[i])
		} else {
			allowed = append(allowed, 0)
		}
		touched := false
		for _, op := range md.pending {
			switch {
			case op.truncate && i >= op.n:
				allowed = append(allowed, 0)
				touched = true
			case !op.truncate && i >= op.off && i < op.off+op.n:
				allowed = append(allowed, op.val)
				touched = true
			}
		}
		if !slices.Contains(allowed, v) {
			t.Fatalf("crashed byte %d is %d, not one of %v", i, v, allowed)
		}
		if !touched && i < len(md.synced) && v != md.synced[i] {
			t.Fatalf("crashed byte %d changed though nothing pending touched it", i)
		}
	}
	if len(got) < min(minTrunc, len(md.synced)) {
		t.Fatalf("crashed size %d below the synced %d and every pending truncate", len(got), len(md.synced))
	}
	names, err := c.ReadDir("/d")
	if err != nil {
		t.Fatal(err)
	}
	if want := slices.Sorted(maps.Keys(md.syncedNames)); !slices.Equal(names, want) {
		t.Fatalf("crashed /d holds %v, want the synced %v", names, want)
	}
}

// TestMemCrashProperty runs random programs through runMemOps.
func TestMemCrashProperty(t *testing.T) {
	for seed := range uint64(100) {
		r := rand.New(rand.NewPCG(seed, 5))
		ops := make([]byte, 4*(20+r.IntN(100)))
		for i := range ops {
			ops[i] = byte(r.Uint32())
		}
		t.Run(fmt.Sprint(seed), func(t *testing.T) { runMemOps(t, ops, seed) })
	}
}

// FuzzMemCrash checks MemFS against the model for arbitrary programs.
func FuzzMemCrash(f *testing.F) {
	f.Add([]byte{0, 1, 2, 3, 4, 0, 0, 0, 0, 9, 9, 9}, uint64(1))
	f.Add([]byte{0, 200, 200, 7, 3, 5, 0, 0, 7, 0, 0, 0, 5, 1, 0, 0, 6, 1, 2, 0}, uint64(2))
	f.Fuzz(func(t *testing.T, ops []byte, seed uint64) { runMemOps(t, ops, seed) })
}
