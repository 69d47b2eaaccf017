// Package unixsock opens unix socket listeners the way blockmirror's
// daemons need them: a stale socket file left by a process that died is
// replaced, while a live socket (another process serves it) or any other
// kind of file at the path is an error that says so.
package unixsock

import (
	"errors"
	"fmt"
	"net"
	"os"
	"time"
)

// MaxPath is the longest socket path the kernel accepts (sun_path holds
// 108 bytes including the terminating NUL).
const MaxPath = 107

// ErrInUse is wrapped by Listen's error when another process accepts on
// the path.
var ErrInUse = errors.New("socket is in use by another process")

// Listen listens on the unix socket path. The listener removes the file
// when closed.
func Listen(path string) (*net.UnixListener, error) {
	if path == "" {
		return nil, errors.New("empty socket path")
	}
	if len(path) > MaxPath {
		return nil, fmt.Errorf("socket path %s is %d bytes, longer than the %d a unix socket allows: choose a shorter one", path, len(path), MaxPath)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("%s exists and is not a socket", path)
		}
		d := net.Dialer{Timeout: time.Second}
		if c, err := d.Dial("unix", path); err == nil {
			c.Close()
			return nil, fmt.Errorf("%s: %w", path, ErrInUse)
		}
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("remove stale socket %s: %w", path, err)
		}
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, err
	}
	return ln, nil
}
