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
		// The replication core and its messages: no drivers, no I/O
		// packages of the project (see also TestCorePurity).
		"mirror/wire":   {"mirror", "nbd", "journal", "store", "transport", "cmd", "internal"},
		"mirror/core":   {"mirror/resync", "nbd", "journal", "store", "transport", "cmd", "internal"},
		"mirror/resync": {"mirror/core", "nbd", "journal", "store", "transport", "cmd"},
	}
	for pkg, bad := range forbidden {
		out, err := exec.Command("go", "list", "-deps", "./"+pkg).Output()
		if err != nil {
			t.Fatalf("go list -deps ./%s: %v", pkg, err)
		}
		for _, dep := range strings.Fields(string(out)) {
			for _, b := range bad {
				if dep == mod+pkg {
					continue
				}
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

// TestEtcdOnlyInCoord: go.etcd.io/etcd (and its gRPC and zap stack) is
// imported only by internal/coord, the coordination package, and by cmd,
// which wires it; the replication code stays free of it, so a node without
// automatic failover does not depend on it and the coordination rules live
// in one place.
func TestEtcdOnlyInCoord(t *testing.T) {
	const mod = "github.com/blockmirror/blockmirror"
	out, err := exec.Command("go", "list", "-f", `{{.ImportPath}} {{join .Deps " "}}`, "./...").Output()
	if err != nil {
		t.Fatalf("go list ./...: %v", err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		pkg := f[0]
		if pkg == mod+"/internal/coord" || strings.HasPrefix(pkg, mod+"/cmd/") {
			continue
		}
		for _, dep := range f[1:] {
			if strings.HasPrefix(dep, "go.etcd.io/etcd/") || dep == mod+"/internal/coord" {
				t.Errorf("%s imports %s: only internal/coord (and cmd) may depend on etcd", pkg, dep)
				break
			}
		}
	}
}

// pureImports are the standard packages the replication core and its
// message package may import: computation only. No clock (time), no
// files, sockets or processes (os, io/fs, net, syscall), no randomness,
// no concurrency (sync, sync/atomic): every input of the core is an event
// its driver feeds in, so a simulation that feeds the same events gets
// the same outputs.
var pureImports = map[string]bool{
	"bytes": true, "cmp": true, "encoding/binary": true, "encoding/hex": true, "errors": true,
	"fmt": true, "hash/crc32": true, "iter": true, "maps": true, "math": true, "math/bits": true,
	"slices": true, "sort": true, "strconv": true, "strings": true, "unicode/utf8": true,
}

// TestCorePurity: mirror/core and mirror/wire (which the core uses) import
// only pureImports and, for the core, mirror/wire. (fmt itself depends on
// os, so the rule is about what the packages import, not what the standard
// library does underneath.)
func TestCorePurity(t *testing.T) {
	const mod = "github.com/blockmirror/blockmirror/"
	allowed := map[string]map[string]bool{
		"mirror/wire": {},
		"mirror/core": {mod + "mirror/wire": true},
	}
	for pkg, extra := range allowed {
		out, err := exec.Command("go", "list", "-f", "{{join .Imports \"\\n\"}}", "./"+pkg).Output()
		if err != nil {
			t.Fatalf("go list ./%s: %v", pkg, err)
		}
		for _, imp := range strings.Fields(string(out)) {
			if !pureImports[imp] && !extra[imp] {
				t.Errorf("%s imports %s: the core decides, its drivers do I/O (clock, files, sockets, randomness, locks)", pkg, imp)
			}
		}
	}
}
