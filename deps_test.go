package blockmirror_test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestDependencyDirection enforces the layout of DESIGN: cmd → mirror →
// {journal, store, transport}; cmd → nbd; the leaf packages import none of
// the others; internal/vfs, which all of them may use, imports none.
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
	// internal/vfs is a leaf every package may use: it imports nothing of
	// the project.
	out, err := exec.Command("go", "list", "-deps", "./internal/vfs").Output()
	if err != nil {
		t.Fatalf("go list -deps ./internal/vfs: %v", err)
	}
	for _, dep := range strings.Fields(string(out)) {
		if strings.HasPrefix(dep, mod) && dep != mod+"internal/vfs" {
			t.Errorf("internal/vfs imports %s; it must stay a leaf", dep)
		}
	}
}
