package e2e

// NBD connections for tests that need control no client tool gives
// (pipelining, replies left unread, dropping the connection mid-request):
// nbd.Client, the project's one NBD client, with the helpers the tests use.

import (
	"context"
	"net"

	"github.com/blockmirror/blockmirror/nbd"
)

// Request types and flags for send (the NBD protocol's numbers).
const (
	cmdRead  = nbd.CmdRead
	cmdWrite = nbd.CmdWrite
	cmdFlush = nbd.CmdFlush

	cmdFlagFUA = nbd.CmdFlagFUA
)

// nbdError is an error value an NBD server replied with.
type nbdError = nbd.Errno

// rawConn is one NBD connection in the transmission phase.
type rawConn struct {
	*nbd.Client
	// c is the connection (deadlines bound every request; raw bytes).
	c      net.Conn
	size   uint64
	tflags uint16
}

// rawDial connects to addr ("HOST:PORT" or "unix:PATH") and selects
// export (NBD_OPT_GO, or NBD_OPT_EXPORT_NAME for a server without it).
func rawDial(ctx context.Context, addr, export string) (*rawConn, error) {
	return dialOpts(ctx, addr, nbd.ConnectOptions{Export: export})
}

// rawDialIgnoringReplies is rawDial for a client that never reads a
// reply: they pile up on the socket.
func rawDialIgnoringReplies(ctx context.Context, addr, export string) (*rawConn, error) {
	return dialOpts(ctx, addr, nbd.ConnectOptions{Export: export, IgnoreReplies: true})
}

func dialOpts(ctx context.Context, addr string, o nbd.ConnectOptions) (*rawConn, error) {
	c, err := nbd.Connect(ctx, addr, o)
	if err != nil {
		return nil, err
	}
	return &rawConn{Client: c, c: c.Conn(), size: c.Size(), tflags: c.Flags()}, nil
}

// send issues one request (with its payload for writes) without waiting
// for the reply; the error says the request could not be sent.
func (r *rawConn) send(typ, flags uint16, off uint64, length uint32, payload []byte) (*nbd.Call, error) {
	cl := r.Send(typ, flags, off, length, payload)
	select {
	case <-cl.Done:
		return cl, cl.Err
	default:
		return cl, nil
	}
}

func (r *rawConn) pwrite(p []byte, off uint64, flags uint16) error {
	return r.WriteAt(context.Background(), p, int64(off), flags&cmdFlagFUA != 0)
}

func (r *rawConn) pread(n int, off uint64) ([]byte, error) {
	p := make([]byte, n)
	if err := r.ReadAt(context.Background(), p, int64(off)); err != nil {
		return nil, err
	}
	return p, nil
}

func (r *rawConn) flush() error { return r.Flush(context.Background()) }

// disconnect sends NBD_CMD_DISC and closes the connection.
func (r *rawConn) disconnect() error { return r.Disconnect() }
