package blockmirror_test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestDependencyDirection enforces the layout of DESIGN: cmd → mirror →
// {journal, store, transport}; cmd → nbd; the leaf packages import none of
// the others.
func TestDependencyDirection(t *testing.T) {
	const mod = "github.com/blockmirror/blockmirror/"
	forbidden := map[string][]string{
		"nbd":       {"mirror", "journal", "store", "transport", "cmd"},
		"journal":   {"mirror", "nbd", "store", "transport", "cmd"},
		"store":     {"mirror", "nbd", "journal", "transport", "cmd"},
		"transport": {"mirror", "nbd", "journal", "store", "cmd"},
		"mirror":    {"nbd", "cmd"},
	}
	for pkg, bad := range forbidden {
		out, err := exec.Command("go", "list", "-deps", "./"+pkg).Output()
		if err != nil {
			t.Fatalf("go list -deps ./%s: %v", pkg, err)
		}
		for _, dep := range strings.Fields(string(out)) {
			for _, b := range bad {
				if dep == mod+b || strings.HasPrefix(dep, mod+b+"/") {
					t.Errorf("%s imports %s, which the layout forbids", pkg, dep)
				}
			}
		}
	}
}
