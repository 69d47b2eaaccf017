package atomicfile_test

import (
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/blockmirror/blockmirror/internal/atomicfile"
	"github.com/blockmirror/blockmirror/internal/vfs"
)

func TestWriteReplaces(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "meta.json")
	for _, s := range []string{"one", "two, longer"} {
		if err := atomicfile.Write(p, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(p)
		if err != nil || string(got) != s {
			t.Fatalf("got %q, %v; want %q", got, err, s)
		}
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Fatalf("temp files left behind: %v", ents)
	}
	if err := atomicfile.Write(filepath.Join(dir, "missing", "x"), nil, 0o600); err == nil {
		t.Fatal("write into a missing directory succeeded")
	}
}

// TestWriteFSCrashAtEveryStep: a power loss at any point of WriteFS — before
// any of its operations, or after the last — leaves the old contents or the
// new ones, never a mix, an empty file or none. Invariant: meta.json and
// the other files replaced this way are always a complete version.
func TestWriteFSCrashAtEveryStep(t *testing.T) {
	const old, new = "old contents", "new contents, longer than the old"
	for step := 1; ; step++ {
		m := vfs.NewCrashableMem()
		if err := vfs.MkdirAllSynced(m, "/d", 0o700); err != nil {
			t.Fatal(err)
		}
		if err := atomicfile.WriteFS(m, "/d/meta.json", []byte(old), 0o600); err != nil {
			t.Fatal(err)
		}
		var crashed []*vfs.MemFS
		n := 0
		inj := vfs.InjectorFunc(func(op vfs.Op, path string) error {
			if !op.Mutates() {
				return nil
			}
			if n++; n == step {
				for seed := range uint64(8) {
					crashed = append(crashed, m.CrashClone(rand.New(rand.NewPCG(seed, uint64(step)))))
				}
				crashed = append(crashed, m.CrashCloneDropUnsynced())
				return errors.New("power lost")
			}
			return nil
		})
		err := atomicfile.WriteFS(vfs.WithErrors(m, inj), "/d/meta.json", []byte(new), 0o600)
		done := err == nil
		if done {
			crashed = append(crashed, m.CrashCloneDropUnsynced())
		}
		for i, c := range crashed {
			got, rerr := vfs.ReadFile(c, "/d/meta.json")
			if rerr != nil || (string(got) != old && string(got) != new) {
				t.Fatalf("crash before mutating operation %d (clone %d): %q, %v", step, i, got, rerr)
			}
			if done && i == len(crashed)-1 && string(got) != new {
				t.Fatalf("WriteFS returned but a power loss brings back %q", got)
			}
		}
		if done {
			if step < 5 {
				t.Fatalf("WriteFS finished after %d mutating operations; expected create, write, sync, rename, sync dir", step-1)
			}
			return
		}
	}
}
