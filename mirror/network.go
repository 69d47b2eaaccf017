package mirror

import (
	"context"
	"net"
	"time"

	"github.com/blockmirror/blockmirror/transport"
)

// The network seam: the drivers talk through these small interfaces, so
// they run over QUIC (package transport) in production and over an
// in-memory network in the whole-node simulation (sim_nodes_test.go).

// frameStream is one ordered, reliable, bidirectional stream of frames
// (*transport.Stream). One goroutine may read while another writes;
// writers serialise among themselves (sendFrame).
type frameStream interface {
	WriteFrame(typ uint8, parts ...[]byte) error
	Flush() error
	// ReadFrame returns io.EOF after the peer's CloseWrite and a
	// *transport.StreamError once either side cancelled the stream.
	ReadFrame(buf []byte) (typ uint8, payload []byte, err error)
	CloseWrite() error
	Cancel(code uint64)
	SetReadDeadline(t time.Time) error
}

// streamConn is a connection to a peer that carries streams
// (*transport.Conn).
type streamConn interface {
	OpenStream(ctx context.Context) (frameStream, error)
	AcceptStream(ctx context.Context) (frameStream, error)
	PeerName() string
	RemoteAddr() net.Addr
	// Err is nil while the connection is up.
	Err() error
	Close(code uint64, reason string) error
	Stats() transport.ConnStats
}

// streamListener accepts connections (*transport.Listener).
type streamListener interface {
	Accept(ctx context.Context) (streamConn, error)
	Addr() net.Addr
	Close() error
}

// dialFunc connects to node name at addr.
type dialFunc func(ctx context.Context, addr, name string, cfg transport.Config) (streamConn, error)

// quicConn adapts *transport.Conn to streamConn.
type quicConn struct{ *transport.Conn }

func (c quicConn) OpenStream(ctx context.Context) (frameStream, error) {
	st, err := c.Conn.OpenStream(ctx)
	if err != nil {
		return nil, err
	}
	return st, nil
}

func (c quicConn) AcceptStream(ctx context.Context) (frameStream, error) {
	st, err := c.Conn.AcceptStream(ctx)
	if err != nil {
		return nil, err
	}
	return st, nil
}

// quicDial dials over QUIC.
func quicDial(ctx context.Context, addr, name string, cfg transport.Config) (streamConn, error) {
	c, err := transport.Dial(ctx, addr, name, cfg)
	if err != nil {
		return nil, err
	}
	return quicConn{c}, nil
}

// quicListener adapts *transport.Listener to streamListener.
type quicListener struct{ *transport.Listener }

func (l quicListener) Accept(ctx context.Context) (streamConn, error) {
	c, err := l.Listener.Accept(ctx)
	if err != nil {
		return nil, err
	}
	return quicConn{c}, nil
}

// quicListen listens over QUIC.
func quicListen(addr string, cfg transport.Config) (streamListener, error) {
	ln, err := transport.Listen(addr, cfg)
	if err != nil {
		return nil, err
	}
	return quicListener{ln}, nil
}
