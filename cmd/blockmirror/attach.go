package main

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/pojntfx/go-nbd/pkg/ioctl"
	"github.com/pojntfx/go-nbd/pkg/protocol"
)

// Kernel NBD ioctls that go-nbd's ioctl package does not name.
const (
	nbdSetFlags = 0xab0a // NBD_SET_FLAGS
)

func runAttach(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("attach", "attach --nbd ADDR [--export NAME] /dev/nbdX", stderr)
	addr := fs.String("nbd", "127.0.0.1:10809", "NBD server address: HOST:PORT or unix:PATH")
	export := fs.String("export", "disk", "export name")
	timeout := fs.Duration("timeout", 30*time.Second, "kernel request timeout")
	if err := parseFlags(fs, args, true); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		fmt.Fprintln(stderr, "attach needs exactly one device, e.g. /dev/nbd0")
		fs.Usage()
		return errUsage
	}
	return attach(ctx, *addr, *export, fs.Arg(0), *timeout, stdout)
}

// attach connects the kernel NBD device dev to the export and blocks until
// ctx ends (then disconnects) or the kernel drops the connection. It uses
// go-nbd's ioctl numbers and protocol constants, but negotiates itself so
// that the export's transmission flags (FLUSH, FUA, TRIM, …) reach the
// kernel: go-nbd's client does not pass them on, and a kernel that does not
// know the export can flush never sends a flush.
func attach(ctx context.Context, addr, export, dev string, timeout time.Duration, stdout io.Writer) error {
	if _, err := os.Stat(dev); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("%s does not exist: this kernel has no nbd module loaded (try `modprobe nbd`); "+
				"without it use a user-space NBD client instead (qemu, nbdfuse, libnbd) with the server's NBD URI", dev)
		}
		return fmt.Errorf("stat %s: %w", dev, err)
	}
	f, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", dev, err)
	}
	defer f.Close()
	network, address := "tcp", addr
	if p, ok := strings.CutPrefix(addr, "unix:"); ok {
		network, address = "unix", p
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, network, address)
	if err != nil {
		return fmt.Errorf("connect to %s: %w", addr, err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	size, flags, err := negotiateGo(conn, export)
	if err != nil {
		return fmt.Errorf("negotiate with %s: %w", addr, err)
	}
	conn.SetDeadline(time.Time{})
	var sock *os.File
	switch c := conn.(type) {
	case *net.TCPConn:
		sock, err = c.File()
	case *net.UnixConn:
		sock, err = c.File()
	default:
		err = fmt.Errorf("unsupported connection type %T", conn)
	}
	if err != nil {
		return fmt.Errorf("socket fd: %w", err)
	}
	defer sock.Close()
	const blockSize = 4096
	fd := f.Fd()
	steps := []struct {
		name string
		req  uintptr
		arg  uintptr
	}{
		{"NBD_SET_SOCK", ioctl.NEGOTIATION_IOCTL_SET_SOCK, sock.Fd()},
		{"NBD_SET_BLKSIZE", ioctl.NEGOTIATION_IOCTL_SET_BLOCKSIZE, blockSize},
		{"NBD_SET_SIZE_BLOCKS", ioctl.NEGOTIATION_IOCTL_SET_SIZE_BLOCKS, uintptr(size / blockSize)},
		{"NBD_SET_TIMEOUT", ioctl.NEGOTIATION_IOCTL_SET_TIMEOUT, uintptr(timeout / time.Second)},
		{"NBD_SET_FLAGS", nbdSetFlags, uintptr(flags)},
	}
	for _, s := range steps {
		if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, fd, s.req, s.arg); e != 0 {
			return fmt.Errorf("%s on %s: %w", s.name, dev, e)
		}
	}
	go func() {
		<-ctx.Done()
		for _, req := range []uintptr{ioctl.TRANSMISSION_IOCTL_CLEAR_QUE, ioctl.TRANSMISSION_IOCTL_DISCONNECT, ioctl.TRANSMISSION_IOCTL_CLEAR_SOCK} {
			syscall.Syscall(syscall.SYS_IOCTL, fd, req, 0)
		}
	}()
	fmt.Fprintf(stdout, "attached %s to %s export %q (%d bytes); Ctrl-C or SIGTERM detaches\n", dev, addr, export, size)
	// NBD_DO_IT blocks until the device is disconnected.
	if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, fd, ioctl.NEGOTIATION_IOCTL_DO_IT, 0); e != 0 && ctx.Err() == nil {
		return fmt.Errorf("NBD_DO_IT on %s: %w", dev, e)
	}
	syscall.Syscall(syscall.SYS_IOCTL, fd, ioctl.TRANSMISSION_IOCTL_CLEAR_SOCK, 0)
	return nil
}

// negotiateGo performs a fixed-newstyle handshake with NBD_OPT_GO and
// returns the export size and transmission flags.
func negotiateGo(c net.Conn, export string) (uint64, uint16, error) {
	var hs struct {
		Magic, OptMagic uint64
		Flags           uint16
	}
	if err := binary.Read(c, binary.BigEndian, &hs); err != nil {
		return 0, 0, fmt.Errorf("read greeting: %w", err)
	}
	if hs.Magic != protocol.NEGOTIATION_MAGIC_OLDSTYLE || hs.OptMagic != protocol.NEGOTIATION_MAGIC_OPTION {
		return 0, 0, errors.New("not a newstyle NBD server")
	}
	if hs.Flags&protocol.NEGOTIATION_HANDSHAKE_FLAG_FIXED_NEWSTYLE == 0 {
		return 0, 0, errors.New("server does not speak fixed newstyle")
	}
	const clientFixedNewstyle, clientNoZeroes = 1, 2
	cflags := uint32(clientFixedNewstyle)
	if hs.Flags&2 != 0 {
		cflags |= clientNoZeroes
	}
	name := []byte(export)
	opt := binary.BigEndian.AppendUint32(nil, cflags)
	opt = binary.BigEndian.AppendUint64(opt, protocol.NEGOTIATION_MAGIC_OPTION)
	opt = binary.BigEndian.AppendUint32(opt, protocol.NEGOTIATION_ID_OPTION_GO)
	opt = binary.BigEndian.AppendUint32(opt, uint32(4+len(name)+2))
	opt = binary.BigEndian.AppendUint32(opt, uint32(len(name)))
	opt = append(opt, name...)
	opt = binary.BigEndian.AppendUint16(opt, 0)
	if _, err := c.Write(opt); err != nil {
		return 0, 0, fmt.Errorf("send NBD_OPT_GO: %w", err)
	}
	var size uint64
	var flags uint16
	for {
		var rh protocol.NegotiationReplyHeader
		if err := binary.Read(c, binary.BigEndian, &rh); err != nil {
			return 0, 0, fmt.Errorf("read option reply: %w", err)
		}
		if rh.ReplyMagic != protocol.NEGOTIATION_MAGIC_REPLY {
			return 0, 0, errors.New("bad option reply magic")
		}
		if rh.Length > 1<<16 {
			return 0, 0, fmt.Errorf("option reply of %d bytes is too long", rh.Length)
		}
		body := make([]byte, rh.Length)
		if _, err := io.ReadFull(c, body); err != nil {
			return 0, 0, fmt.Errorf("read option reply: %w", err)
		}
		switch {
		case rh.Type == protocol.NEGOTIATION_TYPE_REPLY_ACK:
			if size == 0 {
				return 0, 0, errors.New("server sent no export size")
			}
			return size, flags, nil
		case rh.Type == protocol.NEGOTIATION_TYPE_REPLY_INFO:
			if len(body) >= 12 && binary.BigEndian.Uint16(body) == protocol.NEGOTIATION_TYPE_INFO_EXPORT {
				size = binary.BigEndian.Uint64(body[2:])
				flags = binary.BigEndian.Uint16(body[10:])
			}
		case rh.Type == 1<<31|5: // NBD_REP_ERR_TLS_REQD
			return 0, 0, fmt.Errorf("the server requires TLS (--nbd-tls require), which the kernel's NBD client cannot speak: " +
				"use a user-space client with TLS instead (nbdfuse or qemu with an nbds:// URI and certificates), or a plaintext export on a local address")
		case rh.Type&(1<<31) != 0:
			return 0, 0, fmt.Errorf("server refused export %q (error %#x): %s", export, rh.Type, body)
		}
	}
}
