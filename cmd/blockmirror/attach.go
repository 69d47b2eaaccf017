package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"time"

	"github.com/pojntfx/go-nbd/pkg/ioctl"

	"github.com/blockmirror/blockmirror/nbd"
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
// go-nbd's ioctl numbers, and negotiates with nbd.Client so that the
// export's transmission flags (FLUSH, FUA, TRIM, …) reach the kernel: a
// kernel that does not know the export can flush never sends a flush.
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
	nctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	// The kernel reads the replies: the client must not.
	c, err := nbd.Connect(nctx, addr, nbd.ConnectOptions{Export: export, IgnoreReplies: true})
	cancel()
	if errors.Is(err, nbd.ErrTLSRequired) {
		return fmt.Errorf("the server requires TLS (--nbd-tls require), which the kernel's NBD client cannot speak: " +
			"use a user-space client with TLS instead (nbdfuse or qemu with an nbds:// URI and certificates), or a plaintext export on a local address")
	}
	if err != nil {
		return err
	}
	defer c.Close()
	size, flags := c.Size(), c.Flags()
	if size == 0 {
		return fmt.Errorf("negotiate with %s: the server sent no export size", addr)
	}
	var sock *os.File
	switch nc := c.Conn().(type) {
	case *net.TCPConn:
		sock, err = nc.File()
	case *net.UnixConn:
		sock, err = nc.File()
	default:
		err = fmt.Errorf("unsupported connection type %T", nc)
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
