package transport

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/quic-go/quic-go"
)

// Defaults applied to zero Config fields.
const (
	DefaultKeepAlive        = 2 * time.Second
	DefaultIdleTimeout      = 10 * time.Second
	DefaultHandshakeTimeout = 5 * time.Second
	// DefaultMaxStreamWindow is the per-stream receive window ceiling. It
	// bounds a single stream's throughput to window/RTT.
	DefaultMaxStreamWindow = 16 << 20
	// DefaultMaxConnWindow is the per-connection receive window ceiling.
	DefaultMaxConnWindow = 48 << 20
	// DefaultMaxIncomingStreams is how many bidirectional streams a peer may
	// have open at once.
	DefaultMaxIncomingStreams = 256
)

// Config configures Listen and Dial. The zero value of every field except
// Identity selects a default.
type Config struct {
	// Identity is this node's certificate and the cluster CA. Required.
	Identity *Identity
	// AllowPeers restricts which client node names a Listener accepts.
	// Empty: any node whose certificate the cluster CA signed. Ignored by Dial.
	AllowPeers []string
	// KeepAlive is the period of keep-alive packets on an otherwise idle
	// connection (default 2 s; negative disables keep-alives). QUIC sends
	// them at most every IdleTimeout/2.
	KeepAlive time.Duration
	// IdleTimeout closes a connection after this long without any packet
	// from the peer (default 10 s). The effective value is the smaller of
	// both sides' settings. With keep-alives on, this is how fast a dead or
	// partitioned peer is detected.
	IdleTimeout time.Duration
	// HandshakeTimeout bounds connection establishment (default 5 s): QUIC
	// gives up if the peer is silent this long, and Dial fails if the whole
	// handshake, including the listener's acceptance, takes twice that.
	HandshakeTimeout time.Duration
	// MaxStreamWindow and MaxConnWindow are the receive flow-control window
	// ceilings (defaults 16 MiB and 48 MiB); a connection starts with them
	// open in full. Throughput per stream is at most MaxStreamWindow/RTT
	// (16 MiB: 210 MB/s at 80 ms); memory per connection at most
	// MaxConnWindow.
	MaxStreamWindow uint64
	MaxConnWindow   uint64
	// MaxIncomingStreams limits the peer's concurrently open bidirectional
	// streams (default 256).
	MaxIncomingStreams int64
	// Logger receives connection-level events (refused peers, closes).
	// nil discards.
	Logger *slog.Logger
}

func (c Config) withDefaults() Config {
	if c.KeepAlive == 0 {
		c.KeepAlive = DefaultKeepAlive
	}
	if c.IdleTimeout == 0 {
		c.IdleTimeout = DefaultIdleTimeout
	}
	if c.HandshakeTimeout == 0 {
		c.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if c.MaxStreamWindow == 0 {
		c.MaxStreamWindow = DefaultMaxStreamWindow
	}
	if c.MaxConnWindow == 0 {
		c.MaxConnWindow = DefaultMaxConnWindow
	}
	if c.MaxIncomingStreams == 0 {
		c.MaxIncomingStreams = DefaultMaxIncomingStreams
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	c.AllowPeers = append([]string(nil), c.AllowPeers...)
	return c
}

func (c Config) validate() error {
	if c.Identity == nil || c.Identity.Roots == nil || c.Identity.Leaf == nil {
		return fmt.Errorf("%w: Identity is required (see LoadNode)", ErrConfig)
	}
	if c.IdleTimeout < 0 {
		return fmt.Errorf("%w: IdleTimeout %v must be positive", ErrConfig, c.IdleTimeout)
	}
	if c.HandshakeTimeout < 0 {
		return fmt.Errorf("%w: HandshakeTimeout %v must be positive", ErrConfig, c.HandshakeTimeout)
	}
	if c.KeepAlive > 0 && c.KeepAlive >= c.IdleTimeout {
		return fmt.Errorf("%w: KeepAlive %v must be shorter than IdleTimeout %v", ErrConfig, c.KeepAlive, c.IdleTimeout)
	}
	if c.MaxConnWindow < c.MaxStreamWindow {
		return fmt.Errorf("%w: MaxConnWindow %d must be at least MaxStreamWindow %d", ErrConfig, c.MaxConnWindow, c.MaxStreamWindow)
	}
	if c.MaxIncomingStreams < 0 {
		return fmt.Errorf("%w: MaxIncomingStreams %d must not be negative", ErrConfig, c.MaxIncomingStreams)
	}
	for _, p := range c.AllowPeers {
		if err := ValidateNodeName(p); err != nil {
			return fmt.Errorf("AllowPeers: %w", err)
		}
	}
	return nil
}

func (c Config) quicConfig(server bool) *quic.Config {
	ka := c.KeepAlive
	if ka < 0 {
		ka = 0
	}
	// The windows start at their ceilings: a replication connection
	// lives long and carries bulk data from its first write, and growing
	// the windows from 1 MiB (quic-go doubles one when the peer used it
	// within a few round trips) cost the first seconds on a long path —
	// at 80 ms RTT a 1 MiB window carries 13 MB/s. What the windows let
	// the peer send ahead is bounded by MaxConnWindow either way, and
	// congestion control, not flow control, paces a lossy path.
	initStream := c.MaxStreamWindow
	q := &quic.Config{
		HandshakeIdleTimeout:           c.HandshakeTimeout,
		MaxIdleTimeout:                 c.IdleTimeout,
		KeepAlivePeriod:                ka,
		InitialStreamReceiveWindow:     initStream,
		MaxStreamReceiveWindow:         c.MaxStreamWindow,
		InitialConnectionReceiveWindow: c.MaxConnWindow,
		MaxConnectionReceiveWindow:     c.MaxConnWindow,
		MaxIncomingStreams:             c.MaxIncomingStreams,
	}
	if server {
		q.MaxIncomingUniStreams = -1 // clients never open uni streams
	} else {
		q.MaxIncomingUniStreams = 1 // the listener's welcome stream
	}
	return q
}

// acceptBacklog is how many admitted connections may wait for Accept
// before the accept loop stops admitting more (and so stops confirming
// handshakes).
const acceptBacklog = 64

// welcome is the whole content of the unidirectional stream a Listener
// opens on every connection it accepts (format constant). The dialer waits
// for it: in TLS 1.3 the client finishes its handshake before the server
// has checked the client certificate, so only this message proves that the
// listener accepted us.
var welcome = [4]byte{'B', 'M', 'O', 'K'}

// Listener accepts mutually authenticated connections. Safe for concurrent
// use.
type Listener struct {
	cfg    Config
	tr     *quic.Transport
	ql     *quic.Listener
	log    *slog.Logger
	conns  chan *Conn
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{} // closed when the accept loop exits
	once   sync.Once

	mu   sync.Mutex
	live map[*Conn]struct{} // accepted connections, closed by Close
}

// Listen starts accepting connections on UDP address addr (e.g.
// "127.0.0.1:7000"; port 0 picks one, see Addr). A goroutine owned by the
// Listener completes handshakes in the background until Close.
func Listen(addr string, cfg Config) (*Listener, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	ua, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, fmt.Errorf("transport: listen %s: %w", addr, err)
	}
	udp, err := net.ListenUDP("udp", ua)
	if err != nil {
		return nil, fmt.Errorf("transport: listen %s: %w", addr, err)
	}
	tr := &quic.Transport{Conn: udp, ConnContext: withRemoteAddr}
	ql, err := tr.Listen(serverTLS(cfg.Identity, cfg.AllowPeers, cfg.Logger), cfg.quicConfig(true))
	if err != nil {
		tr.Close()
		udp.Close()
		return nil, fmt.Errorf("transport: listen %s: %w", addr, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	l := &Listener{
		cfg: cfg, tr: tr, ql: ql, log: cfg.Logger,
		conns: make(chan *Conn, acceptBacklog), live: make(map[*Conn]struct{}), ctx: ctx, cancel: cancel, done: make(chan struct{}),
	}
	go l.acceptLoop()
	cfg.Logger.Info("transport: listening", "addr", udp.LocalAddr().String(), "node", cfg.Identity.Name)
	warnSmallUDPBuffers(cfg.Logger)
	return l, nil
}

func (l *Listener) acceptLoop() {
	defer close(l.done)
	for {
		qc, err := l.ql.Accept(l.ctx)
		if err != nil {
			if l.ctx.Err() == nil {
				l.log.Error("transport: accept loop stopped", "err", err)
			}
			return
		}
		c, err := l.admit(qc)
		if err != nil {
			l.log.Warn("transport: dropping accepted connection", "remote", qc.RemoteAddr().String(), "err", err)
			qc.CloseWithError(1, "internal error")
			continue
		}
		l.track(c)
		select {
		case l.conns <- c:
		case <-l.ctx.Done():
			return // Close closes c
		}
	}
}

// admit names the peer and sends the welcome.
func (l *Listener) admit(qc *quic.Conn) (*Conn, error) {
	certs := qc.ConnectionState().TLS.PeerCertificates
	if len(certs) == 0 { // cannot happen: the TLS config requires one
		return nil, errors.New("no peer certificate after handshake")
	}
	us, err := qc.OpenUniStream()
	if err != nil {
		return nil, fmt.Errorf("open welcome stream: %w", err)
	}
	if _, err := us.Write(welcome[:]); err != nil {
		return nil, fmt.Errorf("write welcome: %w", err)
	}
	if err := us.Close(); err != nil {
		return nil, fmt.Errorf("close welcome stream: %w", err)
	}
	c := newConn(qc, certName(certs[0]), nil, l.log)
	l.log.Info("transport: accepted connection", "peer", c.peer, "remote", qc.RemoteAddr().String())
	return c, nil
}

func (l *Listener) track(c *Conn) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for o := range l.live {
		if o.qc.Context().Err() != nil {
			delete(l.live, o)
		}
	}
	l.live[c] = struct{}{}
}

// Accept waits for the next authenticated connection. It fails with
// ErrClosed after Close, or with ctx's error.
func (l *Listener) Accept(ctx context.Context) (*Conn, error) {
	select {
	case <-l.done: // closed: do not hand out connections Close has ended
		return nil, fmt.Errorf("transport: accept: %w", ErrClosed)
	default:
	}
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, fmt.Errorf("transport: accept: %w", ErrClosed)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Addr is the local UDP address.
func (l *Listener) Addr() net.Addr { return l.tr.Conn.LocalAddr() }

// Close stops accepting, closes every connection accepted from this
// Listener (they share its UDP socket) and releases the socket. Idempotent.
func (l *Listener) Close() error {
	var err error
	l.once.Do(func() {
		l.cancel()
		l.ql.Close()
		<-l.done
		l.mu.Lock()
		live := l.live
		l.live = nil
		l.mu.Unlock()
		for c := range live {
			c.Close(0, "listener closed")
		}
		err = l.tr.Close()
		if cerr := l.tr.Conn.Close(); err == nil && cerr != nil && !errors.Is(cerr, net.ErrClosed) {
			err = cerr
		}
	})
	if err != nil {
		return fmt.Errorf("transport: close listener: %w", err)
	}
	return nil
}

// Dial connects to the listener at addr, which must present a certificate
// for node peerName signed by the cluster CA. It returns once the listener
// has accepted our certificate too; a refusal by the listener yields
// ErrRejected, a wrong server name ErrPeerName, a foreign CA
// ErrUntrustedPeer.
func Dial(ctx context.Context, addr, peerName string, cfg Config) (*Conn, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if err := ValidateNodeName(peerName); err != nil {
		return nil, err
	}
	c, err := dial(ctx, addr, peerName, cfg)
	if err != nil {
		cfg.Logger.Warn("transport: dial failed", "peer", peerName, "addr", addr, "err", err)
		return nil, fmt.Errorf("transport: dial %s at %s: %w", peerName, addr, err)
	}
	cfg.Logger.Info("transport: connected", "peer", peerName, "addr", addr)
	return c, nil
}

func dial(ctx context.Context, addr, peerName string, cfg Config) (*Conn, error) {
	ra, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, err
	}
	network, local := "udp6", &net.UDPAddr{IP: net.IPv6unspecified}
	if ra.IP == nil || ra.IP.To4() != nil {
		network, local = "udp4", &net.UDPAddr{IP: net.IPv4zero}
	}
	udp, err := net.ListenUDP(network, local)
	if err != nil {
		return nil, err
	}
	tr := &quic.Transport{Conn: udp}
	release := func() { tr.Close(); udp.Close() }
	ctx, cancel := context.WithTimeout(ctx, 2*cfg.HandshakeTimeout)
	defer cancel()
	qc, err := tr.Dial(ctx, ra, clientTLS(cfg.Identity, peerName, cfg.Logger), cfg.quicConfig(false))
	if err != nil {
		release()
		var idle *quic.IdleTimeoutError
		var hs *quic.HandshakeTimeoutError
		if errors.As(err, &idle) || errors.As(err, &hs) {
			return nil, fmt.Errorf("%w: no answer within %v (is the peer running and reachable?): %w", ErrHandshakeTimeout, cfg.HandshakeTimeout, err)
		}
		return nil, mapErr(err)
	}
	if err := awaitWelcome(ctx, qc); err != nil {
		qc.CloseWithError(0, "handshake failed")
		release()
		return nil, err
	}
	return newConn(qc, peerName, release, cfg.Logger), nil
}

func awaitWelcome(ctx context.Context, qc *quic.Conn) error {
	us, err := qc.AcceptUniStream(ctx)
	if err != nil {
		if ctx.Err() != nil && qc.Context().Err() == nil {
			return fmt.Errorf("%w: listener did not confirm the connection: %w", ErrHandshakeTimeout, ctx.Err())
		}
		// err itself carries the close reason; the connection's context may
		// not be cancelled yet at this point.
		return mapErr(err)
	}
	var b [len(welcome)]byte
	if dl, ok := ctx.Deadline(); ok {
		us.SetReadDeadline(dl)
	}
	if _, err := io.ReadFull(us, b[:]); err != nil {
		return fmt.Errorf("read welcome: %w", mapErr(err))
	}
	if b != welcome {
		return fmt.Errorf("unexpected welcome %q: peer does not speak %s", b[:], ALPN)
	}
	return nil
}

// Conn is an authenticated connection to one peer node. Safe for
// concurrent use; streams are independent of each other.
type Conn struct {
	qc      *quic.Conn
	peer    string
	log     *slog.Logger
	release func() // dialer only: closes the private UDP socket
	once    sync.Once
}

func newConn(qc *quic.Conn, peer string, release func(), log *slog.Logger) *Conn {
	c := &Conn{qc: qc, peer: peer, release: release, log: log.With("peer", peer)}
	if release != nil {
		// Owned by c; exits when the connection ends for any reason.
		go func() {
			<-qc.Context().Done()
			c.cleanup()
		}()
	}
	return c
}

func (c *Conn) cleanup() {
	c.once.Do(func() {
		if c.release != nil {
			c.release()
		}
	})
}

// PeerName is the peer's node name, verified by its certificate.
func (c *Conn) PeerName() string { return c.peer }

// LocalAddr and RemoteAddr are the UDP addresses of the two ends.
func (c *Conn) LocalAddr() net.Addr  { return c.qc.LocalAddr() }
func (c *Conn) RemoteAddr() net.Addr { return c.qc.RemoteAddr() }

// OpenStream opens a new bidirectional stream, waiting while the peer's
// stream limit is reached. The peer sees it (AcceptStream) only once the
// first frame is flushed.
func (c *Conn) OpenStream(ctx context.Context) (*Stream, error) {
	s, err := c.qc.OpenStreamSync(ctx)
	if err != nil {
		return nil, fmt.Errorf("transport: open stream to %s: %w", c.peer, mapErr(err))
	}
	return newStream(s), nil
}

// AcceptStream waits for the peer to open a stream.
func (c *Conn) AcceptStream(ctx context.Context) (*Stream, error) {
	s, err := c.qc.AcceptStream(ctx)
	if err != nil {
		return nil, fmt.Errorf("transport: accept stream from %s: %w", c.peer, mapErr(err))
	}
	return newStream(s), nil
}

// Close closes the connection, sending code and reason to the peer (it sees
// a *CloseError with Remote set). Pending stream data may be lost: flush
// and wait for the peer's acknowledgement first if it matters. Idempotent.
func (c *Conn) Close(code uint64, reason string) error {
	err := c.qc.CloseWithError(quic.ApplicationErrorCode(code), reason)
	c.cleanup()
	return err
}

// Done is closed when the connection has ended, for whatever reason.
func (c *Conn) Done() <-chan struct{} { return c.qc.Context().Done() }

// Err is nil while the connection is open, afterwards why it ended:
// *CloseError, ErrIdleTimeout, ErrRejected, or a QUIC transport error.
func (c *Conn) Err() error {
	if c.qc.Context().Err() == nil {
		return nil
	}
	return mapErr(context.Cause(c.qc.Context()))
}

// ConnStats is a snapshot of connection statistics.
type ConnStats struct {
	SmoothedRTT  time.Duration // RFC 9002 smoothed RTT
	MinRTT       time.Duration
	LatestRTT    time.Duration
	RTTDeviation time.Duration // mean deviation of the samples
	// CongestionWindow is the sender's congestion window in bytes.
	CongestionWindow uint64
	BytesSent        uint64 // UDP payload bytes, including retransmissions
	BytesReceived    uint64
	PacketsSent      uint64
	PacketsReceived  uint64
	PacketsLost      uint64
	BytesLost        uint64
}

// Stats returns the current statistics.
func (c *Conn) Stats() ConnStats {
	s := c.qc.ConnectionStats()
	return ConnStats{
		SmoothedRTT: s.SmoothedRTT, MinRTT: s.MinRTT, LatestRTT: s.LatestRTT, RTTDeviation: s.MeanDeviation,
		CongestionWindow: s.CongestionWindow,
		BytesSent:        s.BytesSent, BytesReceived: s.BytesReceived,
		PacketsSent: s.PacketsSent, PacketsReceived: s.PacketsReceived,
		PacketsLost: s.PacketsLost, BytesLost: s.BytesLost,
	}
}

// wantUDPBuffer is the socket buffer size quic-go tries to set (7 MiB).
const wantUDPBuffer = 7 << 20

// warnSmallUDPBuffers logs once per Listen if the kernel caps UDP socket
// buffers below what quic-go asks for (it then prints its own warning to
// stderr and throughput suffers from drops).
func warnSmallUDPBuffers(log *slog.Logger) {
	for _, f := range []string{"/proc/sys/net/core/rmem_max", "/proc/sys/net/core/wmem_max"} {
		b, err := os.ReadFile(f)
		if err != nil {
			return // not Linux, or no /proc: nothing to say
		}
		if n, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && n < wantUDPBuffer {
			log.Warn("transport: UDP socket buffers capped below 7 MiB; raise them with "+
				"`sysctl -w net.core.rmem_max=8388608 net.core.wmem_max=8388608`", "sysctl", f, "value", n)
		}
	}
}
