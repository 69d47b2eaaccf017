package main

import (
	"context"
	"flag"
	"fmt"
	"net/http"
	"time"

	"github.com/blockmirror/blockmirror/internal/daemon"
)

// controlTarget is where a command sends control requests: the socket
// (--control), or the socket a running node names in its status
// (--admin).
type controlTarget struct {
	control string
	admin   string
}

// register adds --admin (default admin) and --control; what names the
// node.
func (t *controlTarget) register(fs *flag.FlagSet, admin, what string) {
	fs.StringVar(&t.admin, "admin", admin, "admin endpoint of "+what+": the command reads the node's control socket from its status")
	fs.StringVar(&t.control, "control", "", "control socket of "+what+" (instead of --admin)")
}

func (t controlTarget) empty() bool { return t.admin == "" && t.control == "" }

// socket returns the control socket path: --control, else the one the
// node at --admin reports.
func (t controlTarget) socket(ctx context.Context) (string, error) {
	if t.control != "" {
		return t.control, nil
	}
	st, _, err := daemon.FetchStatus(ctx, &http.Client{Timeout: 5 * time.Second}, t.admin)
	if err != nil {
		return "", err
	}
	if st.Control == "" {
		return "", fmt.Errorf("the node at %s has no control socket (it was started with --control ''): restart it with one, or use the offline command with --data", t.admin)
	}
	return st.Control, nil
}

// post sends a control request to the target and decodes the answer into
// out; a refusal comes back as an error with the node's message.
func (t controlTarget) post(ctx context.Context, path string, out any) error {
	sock, err := t.socket(ctx)
	if err != nil {
		return err
	}
	return daemon.Post(ctx, sock, path, out)
}
