package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/blockmirror/blockmirror/internal/testutil"
)

// Server kinds selectable with E2E_SERVER.
const (
	kindBlockmirror = "blockmirror"
	kindNbdkit      = "nbdkit"
)

var (
	// serverKind is the server the tests drive.
	serverKind = kindBlockmirror
	// binPath is the blockmirror binary (kindBlockmirror only).
	binPath string
	// skipAll, if set, is why every test skips.
	skipAll string
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	if k := os.Getenv("E2E_SERVER"); k != "" {
		serverKind = k
	}
	switch serverKind {
	case kindNbdkit:
	case kindBlockmirror:
		if p := os.Getenv("BLOCKMIRROR_BIN"); p != "" {
			binPath = p
			break
		}
		root, err := testutil.ModuleRoot()
		if err != nil {
			fmt.Fprintln(os.Stderr, "e2e:", err)
			return 1
		}
		if m, _ := filepath.Glob(filepath.Join(root, "cmd", "blockmirror", "*.go")); len(m) == 0 {
			skipAll = "cmd/blockmirror does not exist yet"
			break
		}
		dir, err := os.MkdirTemp("", "blockmirror-e2e-bin-")
		if err != nil {
			fmt.Fprintln(os.Stderr, "e2e:", err)
			return 1
		}
		defer os.RemoveAll(dir)
		binPath = filepath.Join(dir, "blockmirror")
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		// The test build: it has the test-only flags (--test-journal-delay).
		err = testutil.BuildBinary(ctx, "./cmd/blockmirror", binPath, "blockmirror_testhooks")
		cancel()
		if err != nil {
			fmt.Fprintln(os.Stderr, "e2e:", err)
			return 1
		}
	default:
		fmt.Fprintf(os.Stderr, "e2e: E2E_SERVER=%q: want %q or %q\n", serverKind, kindBlockmirror, kindNbdkit)
		return 2
	}
	return m.Run()
}
