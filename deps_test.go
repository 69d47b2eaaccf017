package blockmirror_test

import (
	"fmt"
	"os/exec"
	"slices"
	"sort"
	"strings"
	"testing"
)

// The module's dependency rules, in the style of tailscale's
// tstest/deptest: for every package, what it may import besides the
// standard library, each allowance as "import => why". An import nobody
// allowed fails the test, and so does a package without rules (a new
// package states its dependencies when it is added) and an allowance no
// package uses any more (rules do not outlive the code they explain).
//
// Keys and project imports are paths relative to the module
// ("mirror", "internal/vfs"); third-party imports are full paths, and
// "PATH/..." allows every package under PATH. The standard library is
// allowed everywhere except where a rule lists the only standard packages
// the package may use (std).
//
// The direction of the layout (docs/design.md) follows from the rules:
// cmd → internal/daemon → {mirror, nbd}, mirror → {journal, store,
// transport}; nbd, journal,
// store and transport import no other layer; internal/vfs is a leaf every
// layer may use. Third-party modules each have one home: quic-go in
// transport, Prometheus in internal/metrics, golang.org/x/sys in the
// packages that make system calls the standard library lacks (journal and
// store through internal/vfs, internal/unixsock), etcd in internal/coord.

const module = "github.com/blockmirror/blockmirror"

// rule is what one package may import.
type rule struct {
	// imports: what the package's non-test files may import besides the
	// standard library.
	imports map[string]string
	// tests: what its tests may import in addition (the package itself and
	// internal/testutil are always allowed).
	tests map[string]string
	// std, when set, is the only standard-library packages the package
	// may import at all.
	std map[string]string
	// planned: the package does not exist yet; its rule is written ahead
	// of the work that creates it (the reason says which).
	planned string
}

const (
	whyVFS = "every file a node keeps goes through internal/vfs, so tests can crash it (power loss) and inject errors"
)

var rules = map[string]rule{
	"": {}, // the module's root: doc.go and this test

	// Leaves: the four layers below the replication code import no other
	// layer of the project.
	"nbd": {
		imports: map[string]string{
			"internal/unixsock": "NBD listens on unix sockets as well as TCP; unixsock replaces a stale socket file safely",
		},
	},
	"journal": {
		imports: map[string]string{"internal/vfs": whyVFS},
	},
	"store": {
		imports: map[string]string{
			"internal/vfs":     whyVFS,
			"golang.org/x/sys": "fallocate (punch hole, zero range) and the block-device size ioctl, which package syscall lacks",
		},
	},
	"transport": {
		imports: map[string]string{
			"github.com/quic-go/quic-go/...": "transport is QUIC's only home: the rest of the project sees streams and frames, so the QUIC library can change in one package",
		},
		tests: map[string]string{
			"internal/faultproxy": "the bulk benchmarks measure quic-go through the fault proxy's delay and loss (scripts/bench-wan.sh)",
		},
	},

	// The replication code.
	"mirror": {
		imports: map[string]string{
			"mirror/core":         "every replication decision is the cores'; mirror drives them",
			"mirror/wire":         "the replication messages the drivers send and receive",
			"mirror/resync":       "resync and verify: chunk hashes, dirty bitmaps, the race rule",
			"journal":             "the primary ships journal records, the mirror appends them",
			"store":               "records are applied to the disk image",
			"transport":           "sessions run over QUIC streams with mutual TLS",
			"internal/vfs":        whyVFS,
			"internal/atomicfile": "metadata and bitmaps are replaced atomically (temp file, fsync, rename, fsync dir)",
		},
		tests: map[string]string{
			"internal/faultproxy": "resync tests partition a live session",
		},
	},
	"mirror/core": {
		// The cores do no I/O, start no goroutines and read no clock
		// (time is a tick counter): only pure standard packages, so a
		// simulation that feeds the same events gets the same outputs.
		imports: map[string]string{
			"mirror/wire": "the cores take and return the replication messages",
		},
		std: map[string]string{
			"errors": "errors the cores report", "fmt": "messages of those errors",
			"math": "bounds", "slices": "quorum seqs",
		},
	},
	"mirror/wire": {
		// Messages, encoders and decoders: computation only.
		std: map[string]string{
			"errors": "decode errors", "fmt": "their messages", "encoding/binary": "wire encoding",
			"encoding/hex": "ids in text", "hash/crc32": "wire checksums",
		},
	},
	"mirror/resync": {
		imports: map[string]string{
			"mirror/wire":           "resync messages",
			"github.com/zeebo/xxh3": "resync and verify compare 64 KiB chunks by xxh3-128 (fast, and enough against corruption; not a security boundary)",
			"internal/vfs":          whyVFS,
			"internal/atomicfile":   "dirty bitmaps are replaced atomically (temp file, fsync, rename, fsync dir)",
		},
		tests: map[string]string{
			"store":                   "chunk tests hash a real image",
			"github.com/zeebo/blake3": "the hash benchmark compares xxh3 with a cryptographic hash",
		},
	},

	// The daemon: one binary wires the packages above.
	"cmd/blockmirror": {
		imports: map[string]string{
			"internal/daemon":                     "serve and mirror hand one config.Process to the node assembly; the CLI commands use its control client and status types",
			"internal/config":                     "flags and the config file become one config.Process before any wiring",
			"internal/coord":                      "`blockmirror cluster` reads and changes a volume's coordination state in etcd",
			"mirror":                              "offline promote and demote (--data) and the report types the CLI prints",
			"nbd":                                 "`blockmirror attach` negotiates with nbd.Client before it hands the socket to the kernel",
			"transport":                           "`blockmirror certs` issues certificates; --mirror names are checked as certificate names",
			"github.com/pojntfx/go-nbd/pkg/ioctl": "`blockmirror attach`: the kernel NBD ioctl numbers",
		},
	},
	"internal/daemon": {
		imports: map[string]string{
			"internal/config":   "the node assembly is wired from one config.Process",
			"internal/coord":    "automatic failover: the daemon owns each volume's coordinator and implements coord.Node",
			"internal/metrics":  "each volume's NBD, journal and peer metrics, served at /metrics",
			"internal/unixsock": "the control socket and its callers' peer credentials",
			"mirror":            "the volumes: node, replication, mirror daemon, responder",
			"journal":           "the journal gauges come from Journal.Stats",
			"nbd":               "the NBD servers of the process and their exports",
			"transport":         "the node's QUIC identity",
		},
	},
	"cmd/faultproxy": {
		imports: map[string]string{"internal/faultproxy": "the command is the proxy with an HTTP control endpoint"},
	},

	// internal/: helpers the layers share, each owning one dependency.
	"internal/vfs": {
		imports: map[string]string{
			"golang.org/x/sys": "fdatasync, fallocate and friends on the real file system",
		},
	},
	"internal/atomicfile": {
		imports: map[string]string{"internal/vfs": whyVFS},
	},
	"internal/unixsock": {
		imports: map[string]string{
			"golang.org/x/sys": "SO_PEERCRED and SO_PEERGROUPS (who is at the other end of a control connection), which package syscall does not offer",
		},
	},
	"internal/config": {
		imports: map[string]string{
			"github.com/BurntSushi/toml": "the node configuration file is TOML",
		},
	},
	"internal/metrics": {
		imports: map[string]string{
			"github.com/prometheus/client_golang/...": "Prometheus's only home: the rest of the project records through internal/metrics' small typed API",
		},
	},
	"internal/coord": {
		imports: map[string]string{
			"go.etcd.io/etcd/...":        "automatic failover on etcd; a node without it does not link etcd, and the coordination rules live in one place",
			"go.uber.org/zap/...":        "etcd's client and embedded server log through zap; coord bridges it to slog",
			"google.golang.org/grpc/...": "etcd's client dial options (backoff, blocking dial) are gRPC's",
		},
	},
	"internal/faultproxy": {
		tests: map[string]string{
			"transport": "a QUIC session survives the proxy's faults",
		},
	},
	"internal/testutil": {
		imports: map[string]string{
			"internal/faultproxy": "tests put an in-process fault proxy between a primary and a mirror",
		},
	},
	"internal/e2e": {
		tests: map[string]string{
			"internal/faultproxy":            "partitions in process when cmd/faultproxy cannot be built",
			"internal/coord":                 "automatic failover tests run real etcd members in the test process and read the nodes' coordinator status",
			"nbd":                            "nbd.Client, for what no client tool can do (pipelining, unread replies, dropped connections)",
			"journal":                        "tests read a node's journal after a crash",
			"mirror":                         "tests read a node's metadata and status types",
			"mirror/wire":                    "bad-input tests send hand-made replication frames",
			"mirror/resync":                  "resync crash tests read a mirror's dirty bitmap",
			"transport":                      "tests issue certificates and connect as a node would",
			"github.com/quic-go/quic-go/...": "bad-input tests speak raw QUIC to a mirror, as a broken or hostile peer would",
			"golang.org/x/sys":               "syncfs of the file system on nbdfuse before a kill",
		},
	},
}

// pkgInfo is one package as `go list` sees it.
type pkgInfo struct {
	path        string // module-relative ("" for the root)
	imports     []string
	testImports []string
}

// rel turns an import path into a rule path: module-relative for the
// project's packages, unchanged for others.
func rel(p string) string {
	if p == module {
		return ""
	}
	return strings.TrimPrefix(p, module+"/")
}

func isStd(p string) bool {
	first, _, _ := strings.Cut(p, "/")
	return !strings.Contains(first, ".") && p != module && !strings.HasPrefix(p, module+"/")
}

// allowedBy returns the allowance in m that covers imp, or "".
func allowedBy(m map[string]string, imp string) string {
	for k := range m {
		if k == imp {
			return k
		}
		if tree, ok := strings.CutSuffix(k, "/..."); ok && (imp == tree || strings.HasPrefix(imp, tree+"/")) {
			return k
		}
		// golang.org/x/sys allows its packages (unix, cpu, ...).
		if !strings.HasSuffix(k, "/...") && strings.Contains(strings.SplitN(k, "/", 2)[0], ".") && strings.HasPrefix(imp, k+"/") {
			return k
		}
	}
	return ""
}

// checkDeps applies rules to pkgs and returns every violation.
func checkDeps(pkgs []pkgInfo, rules map[string]rule) []string {
	var bad []string
	used := map[string]map[string]bool{}
	use := func(pkg, key string) {
		if used[pkg] == nil {
			used[pkg] = map[string]bool{}
		}
		used[pkg][key] = true
	}
	exists := map[string]bool{}
	for _, p := range pkgs {
		exists[p.path] = true
		r, ok := rules[p.path]
		if !ok {
			bad = append(bad, fmt.Sprintf("%s has no dependency rule: add one to deps_test.go saying what it may import and why", show(p.path)))
			continue
		}
		if r.planned != "" {
			bad = append(bad, fmt.Sprintf("%s exists now: drop \"planned\" from its rule in deps_test.go", show(p.path)))
		}
		check := func(imp string, test bool) {
			if isStd(imp) {
				// The standard-library allowlist binds the package's
				// code; its tests may use any (testing, flag, rand).
				if r.std == nil || test {
					return
				}
				if _, ok := r.std[imp]; ok {
					use(p.path, "std:"+imp)
					return
				}
				bad = append(bad, fmt.Sprintf("%s imports %s: it may use only these standard packages: %s", show(p.path), imp, keys(r.std)))
				return
			}
			ri := rel(imp)
			if test && (ri == p.path || ri == "internal/testutil") {
				return
			}
			if k := allowedBy(r.imports, ri); k != "" {
				use(p.path, k)
				return
			}
			if test {
				if k := allowedBy(r.tests, ri); k != "" {
					use(p.path, "test:"+k)
					return
				}
			}
			what := "imports"
			if test {
				what = "imports in its tests"
			}
			bad = append(bad, fmt.Sprintf("%s %s %s, which no rule allows: %s", show(p.path), what, show(ri), allowedText(r, test)))
		}
		for _, imp := range p.imports {
			check(imp, false)
		}
		for _, imp := range p.testImports {
			check(imp, true)
		}
	}
	for pkg, r := range rules {
		if !exists[pkg] {
			if r.planned == "" {
				bad = append(bad, fmt.Sprintf("deps_test.go has a rule for %s, which does not exist (mark it planned, or remove it)", show(pkg)))
			}
			continue
		}
		for k := range r.imports {
			if !used[pkg][k] {
				bad = append(bad, fmt.Sprintf("%s no longer imports %s: remove the allowance from deps_test.go", show(pkg), k))
			}
		}
		for k := range r.tests {
			if !used[pkg]["test:"+k] {
				bad = append(bad, fmt.Sprintf("%s's tests no longer import %s: remove the allowance from deps_test.go", show(pkg), k))
			}
		}
	}
	sort.Strings(bad)
	return bad
}

func show(p string) string {
	if p == "" {
		return "the module root"
	}
	return p
}

func keys(m map[string]string) string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return strings.Join(ks, ", ")
}

func allowedText(r rule, test bool) string {
	ks := keys(r.imports)
	if test && len(r.tests) > 0 {
		ks = strings.TrimPrefix(ks+", "+keys(r.tests), ", ")
	}
	if ks == "" {
		return "it may import only the standard library"
	}
	return "it may import " + ks
}

// listPackages runs go list over the module.
func listPackages(t *testing.T) []pkgInfo {
	t.Helper()
	out, err := exec.Command("go", "list", "-f",
		`{{.ImportPath}}|{{join .Imports " "}}|{{join .TestImports " "}} {{join .XTestImports " "}}`, "./...").Output()
	if err != nil {
		t.Fatalf("go list ./...: %v", err)
	}
	var pkgs []pkgInfo
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Split(line, "|")
		if len(f) != 3 {
			t.Fatalf("go list: unexpected line %q", line)
		}
		pkgs = append(pkgs, pkgInfo{path: rel(f[0]), imports: strings.Fields(f[1]), testImports: strings.Fields(f[2])})
	}
	return pkgs
}

// TestDependencyRules checks every package of the module against rules.
func TestDependencyRules(t *testing.T) {
	for _, v := range checkDeps(listPackages(t), rules) {
		t.Error(v)
	}
}

// TestDependencyRulesCatchViolations: the checker itself reports a broken
// rule, a package without rules, a stale allowance and an impure core.
func TestDependencyRulesCatchViolations(t *testing.T) {
	r := map[string]rule{
		"nbd":         {imports: map[string]string{"internal/unixsock": "unix sockets"}},
		"mirror/core": {std: map[string]string{"errors": "errors"}},
		"gone":        {planned: "later"},
	}
	pkgs := []pkgInfo{
		{path: "nbd", imports: []string{"fmt", module + "/internal/unixsock", "github.com/quic-go/quic-go"}},
		{path: "mirror/core", imports: []string{"errors", "os"}},
		{path: "newpkg", imports: []string{"fmt"}},
	}
	got := checkDeps(pkgs, r)
	want := []string{
		"mirror/core imports os: it may use only these standard packages: errors",
		"nbd imports github.com/quic-go/quic-go, which no rule allows: it may import internal/unixsock",
		"newpkg has no dependency rule: add one to deps_test.go saying what it may import and why",
	}
	if !slices.Equal(got, want) {
		t.Errorf("checkDeps found\n  %s\nwant\n  %s", strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
	pkgs[0].imports = []string{"fmt"}
	got = checkDeps(pkgs[:1], r)
	if !slices.Contains(got, "nbd no longer imports internal/unixsock: remove the allowance from deps_test.go") {
		t.Errorf("a stale allowance went unreported: %q", got)
	}
}
