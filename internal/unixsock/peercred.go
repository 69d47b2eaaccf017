package unixsock

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// PeerCred is the process at the other end of a unix socket connection,
// as the kernel recorded it when it connected.
type PeerCred struct {
	PID    int32
	UID    uint32
	GID    uint32
	Groups []uint32 // supplementary groups
}

func (p PeerCred) String() string {
	return fmt.Sprintf("pid %d (uid %d, gid %d)", p.PID, p.UID, p.GID)
}

// PeerCredOf reads the credentials of c's peer: SO_PEERCRED, and the
// supplementary groups from SO_PEERGROUPS (Linux 4.13+) or, failing that,
// /proc/PID/status.
func PeerCredOf(c net.Conn) (PeerCred, error) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return PeerCred{}, fmt.Errorf("peer credentials: %T is not a unix socket", c)
	}
	rc, err := uc.SyscallConn()
	if err != nil {
		return PeerCred{}, fmt.Errorf("peer credentials: %w", err)
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
		return PeerCred{}, fmt.Errorf("peer credentials: %w", controlErr)
	case credErr != nil:
		return PeerCred{}, fmt.Errorf("peer credentials: SO_PEERCRED: %w", credErr)
	}
	p := PeerCred{PID: cred.Pid, UID: cred.Uid, GID: cred.Gid, Groups: groups}
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
