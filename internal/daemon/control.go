package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"

	"github.com/blockmirror/blockmirror/internal/config"
	"github.com/blockmirror/blockmirror/internal/unixsock"
)

// The control socket: every state-changing operation (promote, demote,
// verify) is served only here, on a unix socket that only root and the
// members of the control group can open (mode 0660, group --control-group),
// and the kernel's record of each caller (SO_PEERCRED, SO_PEERGROUPS) is
// checked again and logged for every request.

const (
	// controlAuto selects the default control socket path.
	controlAuto = config.ControlAuto
	// controlDir is where the default control sockets live.
	controlDir = "/run/blockmirror"
	// defaultControlGroup may use the control socket besides root.
	defaultControlGroup = "blockmirror"
)

// ControlDir is where the default control sockets live.
const ControlDir = controlDir

// DefaultControlGroup may use the control socket besides root when the
// node names no group.
const DefaultControlGroup = defaultControlGroup

// controlSocket returns the control socket path of node n ("" when
// disabled): n.Control, or for ControlAuto the default path named after
// the first of names that makes a plain file name.
func controlSocket(n config.NodeConfig, names ...string) string {
	if n.Control == controlAuto {
		return defaultControlPath(names...)
	}
	return n.Control
}

// controlGroup returns the control group of node n and whether it was
// named (then a missing group is an error rather than a warning).
func controlGroup(n config.NodeConfig) (string, bool) {
	if n.ControlGroup == "" {
		return defaultControlGroup, false
	}
	return n.ControlGroup, true
}

// defaultControlPath is /run/blockmirror/NAME.sock for the first name
// that makes a plain file name (the node name, then the volume's, then
// the export's: an export name may hold anything, "../" included).
func defaultControlPath(names ...string) string {
	for _, n := range names {
		if plainFileName(n) {
			return filepath.Join(controlDir, n+".sock")
		}
	}
	return filepath.Join(controlDir, "blockmirror.sock")
}

// plainFileName: 1-64 letters, digits, '-', '_' and '.', not starting
// with a dot.
func plainFileName(n string) bool {
	if n == "" || len(n) > 64 || n[0] == '.' {
		return false
	}
	for _, c := range n {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

// controlAccess decides who may use a control socket: root, the daemon's
// own user, and members of the control group (if the socket has one).
type controlAccess struct {
	group string // "" when the socket is root-only
	gid   uint32
	self  uint32 // the daemon's uid
}

// check returns nil when p may use the socket, else an error saying why
// not and what to do.
func (a controlAccess) check(p unixsock.PeerCred) error {
	if p.UID == 0 || p.UID == a.self {
		return nil
	}
	if a.group != "" && (p.GID == a.gid || slices.Contains(p.Groups, a.gid)) {
		return nil
	}
	if a.group == "" {
		return fmt.Errorf("permission denied: %s is not root, and this node's control socket is root-only (no control group)", p)
	}
	return fmt.Errorf("permission denied: %s is neither root nor in group %s: control needs root or membership in %s (usermod -aG %s USER, then log in again)",
		p, a.group, a.group, a.group)
}

// listenControl creates the control socket at path: its directory 0755 if
// missing, the socket 0660 with group group (0600 when the group does not
// exist and was not asked for explicitly: a warning says how to create
// it). A live socket at path is an error (another daemon with the same
// name); a stale one is replaced.
func listenControl(path, group string, explicit bool, log *slog.Logger) (*net.UnixListener, controlAccess, error) {
	access := controlAccess{self: uint32(os.Geteuid())}
	dir := filepath.Dir(path)
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, access, fmt.Errorf("control socket: create %s: %w (choose another place with --control PATH, or --control '' to disable online control)", dir, err)
		}
		// MkdirAll's mode is reduced by the umask (0077 under the
		// systemd units); group members must be able to reach the socket.
		if err := os.Chmod(dir, 0o755); err != nil {
			return nil, access, fmt.Errorf("control socket: chmod %s: %w", dir, err)
		}
	}
	mode := os.FileMode(0o600)
	gid := -1
	if group != "" {
		g, err := user.LookupGroup(group)
		switch {
		case err == nil:
			v, perr := strconv.Atoi(g.Gid)
			if perr != nil {
				return nil, access, fmt.Errorf("control socket: group %s has gid %q", group, g.Gid)
			}
			gid, mode = v, 0o660
			access.group, access.gid = group, uint32(v)
		case explicit:
			return nil, access, fmt.Errorf("control socket: --control-group %s: %w (create it with `groupadd --system %s`, or choose another group)", group, err, group)
		default:
			log.Warn("the control group does not exist: the control socket is root-only (mode 0600). Create the group to let operators control this node without root: groupadd --system "+group+" && usermod -aG "+group+" USER",
				"group", group, "socket", path)
		}
	}
	ln, err := unixsock.Listen(path)
	if err != nil {
		hint := "(choose another with --control PATH, or --control '' to disable online control)"
		if errors.Is(err, unixsock.ErrInUse) {
			hint = "(another blockmirror daemon with the same name runs on this host? give each its own --control PATH)"
		}
		return nil, access, fmt.Errorf("control socket: listen %s: %w %s", path, err, hint)
	}
	if gid >= 0 {
		if err := os.Chown(path, -1, gid); err != nil {
			ln.Close()
			return nil, access, fmt.Errorf("control socket: chgrp %s %s: %w (the daemon must run as root or with the group, e.g. Group=%s in its systemd unit)", group, path, err, group)
		}
	}
	if err := os.Chmod(path, mode); err != nil {
		ln.Close()
		return nil, access, fmt.Errorf("control socket: chmod %s: %w", path, err)
	}
	return ln, access, nil
}

// The client side: the CLI's commands.

// Post sends a control request (POST path) to the control socket sock
// and decodes the answer into out; a refusal comes back as an error with
// the node's message.
func Post(ctx context.Context, sock, path string, out any) error {
	resp, err := controlDo(ctx, sock, "POST", path)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return responseError(resp)
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

// responseError is the error message of a refused request.
func responseError(resp *http.Response) error {
	var e struct{ Error string }
	json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&e)
	if e.Error == "" {
		e.Error = resp.Status
	}
	return errors.New(e.Error)
}

// controlDo sends one request over the control socket at sock. The
// daemon at the other end must run as root or as the caller: a socket
// someone else put there is refused before anything is sent.
func controlDo(ctx context.Context, sock, method, path string) (*http.Response, error) {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			c, err := d.DialContext(ctx, "unix", sock)
			if err != nil {
				return nil, dialControlError(sock, err)
			}
			p, err := unixsock.PeerCredOf(c)
			if err != nil {
				c.Close()
				return nil, fmt.Errorf("control socket %s: %w", sock, err)
			}
			if p.UID != 0 && p.UID != uint32(os.Geteuid()) {
				c.Close()
				return nil, fmt.Errorf("control socket %s is served by %s, which is neither root nor you: refusing to use it", sock, p)
			}
			return c, nil
		},
		DisableKeepAlives: true,
	}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, method, "http://control"+path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		if ue := (*url.Error)(nil); errors.As(err, &ue) {
			err = ue.Err // the dial error says it all; drop "Post http://control/...:"
		}
		return nil, err
	}
	return resp, nil
}

// dialControlError explains a failed connection to the control socket.
func dialControlError(sock string, err error) error {
	switch {
	case errors.Is(err, syscall.EACCES), errors.Is(err, syscall.EPERM):
		need := "root"
		if fi, serr := os.Stat(sock); serr == nil {
			if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Gid != 0 && fi.Mode().Perm()&0o060 != 0 {
				name := strconv.Itoa(int(st.Gid))
				if g, gerr := user.LookupGroupId(name); gerr == nil {
					name = g.Name
				}
				need = "root or membership in group " + name
			}
		}
		return fmt.Errorf("permission denied on the control socket %s: control needs %s", sock, need)
	case errors.Is(err, os.ErrNotExist):
		return fmt.Errorf("no control socket at %s: is the node running? (`blockmirror status --admin ADDR` shows its socket)", sock)
	case errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Errorf("nothing listens on the control socket %s: the node is not running (the socket is stale)", sock)
	}
	return fmt.Errorf("connect to the control socket %s: %w", sock, err)
}

// FetchStatus reads GET /v1/status from the admin endpoint at admin
// (HOST:PORT); it returns the decoded status and the raw JSON.
func FetchStatus(ctx context.Context, c *http.Client, admin string) (*NodeStatus, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, "GET", "http://"+admin+"/v1/status", nil)
	if err != nil {
		return nil, nil, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, nil, fmt.Errorf("no node answers on %s (is it running, with --admin %s?): %w", admin, admin, err)
	}
	return decodeStatus(resp, admin)
}

// ControlStatus reads GET /v1/status from the control socket sock.
func ControlStatus(ctx context.Context, sock string) (*NodeStatus, []byte, error) {
	resp, err := controlDo(ctx, sock, "GET", "/v1/status")
	if err != nil {
		return nil, nil, err
	}
	return decodeStatus(resp, sock)
}

func decodeStatus(resp *http.Response, from string) (*NodeStatus, []byte, error) {
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, nil, fmt.Errorf("status from %s: %w", from, responseError(resp))
	}
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return nil, nil, err
	}
	var st NodeStatus
	if err := json.Unmarshal(raw, &st); err != nil {
		return nil, nil, fmt.Errorf("bad status from %s: %w", from, err)
	}
	return &st, raw, nil
}
