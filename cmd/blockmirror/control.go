package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
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
	"strings"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

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

// controlFlags are --control and --control-group (serve and mirror).
type controlFlags struct {
	path  string
	group string
	// explicit: the group was given (flag or file), so a missing group is
	// an error rather than a warning.
	explicit bool
}

func (c *controlFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&c.path, "control", controlAuto,
		"unix socket for control (promote, demote, verify): "+controlAuto+" is "+controlDir+"/NAME.sock, NAME the node name (or the volume's, or the export's); '' disables online control")
	fs.StringVar(&c.group, "control-group", defaultControlGroup,
		"group whose members may use the control socket besides root (the socket is 0660 root:GROUP; without the group, 0600)")
}

// resolve returns the socket path ("" when disabled).
func (c *controlFlags) resolve(names ...string) string {
	if c.path == controlAuto {
		return defaultControlPath(names...)
	}
	return c.path
}

// peerCred is the process at the other end of a unix socket connection,
// as the kernel recorded it when it connected.
type peerCred struct {
	PID    int32
	UID    uint32
	GID    uint32
	Groups []uint32 // supplementary groups
}

func (p peerCred) String() string {
	return fmt.Sprintf("pid %d (uid %d, gid %d)", p.PID, p.UID, p.GID)
}

// peerCredOf reads the credentials of c's peer: SO_PEERCRED, and the
// supplementary groups from SO_PEERGROUPS (Linux 4.13+) or, failing that,
// /proc/PID/status.
func peerCredOf(c net.Conn) (peerCred, error) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return peerCred{}, fmt.Errorf("peer credentials: %T is not a unix socket", c)
	}
	rc, err := uc.SyscallConn()
	if err != nil {
		return peerCred{}, fmt.Errorf("peer credentials: %w", err)
	}
	var (
		cred       *unix.Ucred
		groups     []uint32
		credErr    error
		groupsErr  error
		controlErr = rc.Control(func(fd uintptr) {
			cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
			if credErr == nil {
				groups, groupsErr = peerGroups(int(fd))
			}
		})
	)
	switch {
	case controlErr != nil:
		return peerCred{}, fmt.Errorf("peer credentials: %w", controlErr)
	case credErr != nil:
		return peerCred{}, fmt.Errorf("peer credentials: SO_PEERCRED: %w", credErr)
	}
	p := peerCred{PID: cred.Pid, UID: cred.Uid, GID: cred.Gid, Groups: groups}
	if groupsErr != nil {
		if p.Groups, err = procGroups(p.PID); err != nil {
			return p, fmt.Errorf("peer credentials: groups of pid %d: SO_PEERGROUPS: %v; %w", p.PID, groupsErr, err)
		}
	}
	return p, nil
}

// peerGroups is getsockopt(SO_PEERGROUPS): the peer's supplementary groups
// at connect time.
func peerGroups(fd int) ([]uint32, error) {
	buf := make([]uint32, 64)
	for {
		n := uint32(len(buf) * 4)
		_, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_SOCKET, unix.SO_PEERGROUPS,
			uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&n)), 0)
		if e == unix.ERANGE && int(n/4) > len(buf) {
			buf = make([]uint32, n/4)
			continue
		}
		if e != 0 {
			return nil, e
		}
		return buf[:n/4], nil
	}
}

// procGroups reads the Groups: line of /proc/PID/status.
func procGroups(pid int32) ([]uint32, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), "Groups:")
		if !ok {
			continue
		}
		var gs []uint32
		for _, g := range strings.Fields(rest) {
			v, err := strconv.ParseUint(g, 10, 32)
			if err != nil {
				return nil, fmt.Errorf("/proc/%d/status: bad group %q", pid, g)
			}
			gs = append(gs, uint32(v))
		}
		return gs, nil
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return nil, fmt.Errorf("/proc/%d/status has no Groups line", pid)
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
func (a controlAccess) check(p peerCred) error {
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

// The client side: the CLI's state-changing commands.

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
	st, _, err := fetchStatus(ctx, &http.Client{Timeout: 5 * time.Second}, t.admin)
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
			p, err := peerCredOf(c)
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
