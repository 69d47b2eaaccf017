package mirror

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/blockmirror/blockmirror/mirror/wire"
	"github.com/blockmirror/blockmirror/transport"
)

// ReplicaHostOptions configure a ReplicaHost.
type ReplicaHostOptions struct {
	// Listen is the QUIC address to accept primaries on, HOST:PORT.
	Listen string
	// Transport is the QUIC configuration (identity, allowed primaries).
	Transport transport.Config
	// Logger receives host-level events; nil discards.
	Logger *slog.Logger
}

// ReplicaHost serves several mirror volumes on one QUIC listener: a primary
// process opens one connection to the host and one set of streams per
// volume on it. Every stream names its volume in its first frame (Hello for
// a log stream, StreamVolume for a resync or verify stream) and the host
// hands it to that volume, so volumes never wait for each other.
//
// Add volumes with AddVolume before Run. Goroutines: the accept loop, one
// per connection (accepting its streams), one per stream, and each volume's
// own; all end when Run's ctx ends. Methods are safe for concurrent use.
type ReplicaHost struct {
	opts ReplicaHostOptions
	log  *slog.Logger
	ln   streamListener
	acc  *acceptor

	mu      sync.Mutex
	vols    map[string]*Replica
	running bool
}

// NewReplicaHost listens on opts.Listen.
func NewReplicaHost(opts ReplicaHostOptions) (*ReplicaHost, error) {
	ln, err := quicListen(opts.Listen, opts.Transport)
	if err != nil {
		return nil, fmt.Errorf("mirror: host listen %s: %w", opts.Listen, err)
	}
	return newReplicaHostOn(ln, opts), nil
}

// newReplicaHostOn serves the volumes added later on ln.
func newReplicaHostOn(ln streamListener, opts ReplicaHostOptions) *ReplicaHost {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	h := &ReplicaHost{opts: opts, log: opts.Logger, ln: ln, vols: make(map[string]*Replica)}
	h.acc = &acceptor{ln: ln, log: h.log, route: h.route}
	return h
}

// AddVolume opens the mirror volume called name (opts.Listen and
// opts.Transport are ignored: the host's are used). Sessions whose Hello
// names this volume are routed to it. Must be called before Run.
func (h *ReplicaHost) AddVolume(ctx context.Context, name string, opts ReplicaOptions) (*Replica, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.running {
		return nil, errors.New("mirror: AddVolume after the host started")
	}
	if _, dup := h.vols[name]; dup {
		return nil, fmt.Errorf("mirror: volume %q added twice", name)
	}
	opts.Listen, opts.Transport = "", transport.Config{}
	d, err := newMirrorVolume(ctx, opts)
	if err != nil {
		return nil, fmt.Errorf("mirror: volume %s: %w", name, err)
	}
	d.addr = h.ln.Addr().String()
	h.vols[name] = d
	return d, nil
}

// Volume returns the volume called name, or nil.
func (h *ReplicaHost) Volume(name string) *Replica {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.vols[name]
}

// Volumes returns the volumes' names, sorted.
func (h *ReplicaHost) Volumes() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	names := make([]string, 0, len(h.vols))
	for n := range h.vols {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Addr is the address the host listens on.
func (h *ReplicaHost) Addr() string { return h.ln.Addr().String() }

// Connections is the number of primary connections accepted so far.
func (h *ReplicaHost) Connections() int64 { return h.acc.accepted.Load() }

func (h *ReplicaHost) route(name string) *Replica {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.vols[name]
}

// Run serves every volume until ctx ends, then stops them (each
// checkpoints and closes its volume) and closes the listener. A volume
// promoted online stops alone; its node stays open for the caller.
func (h *ReplicaHost) Run(ctx context.Context) error {
	h.mu.Lock()
	if h.running {
		h.mu.Unlock()
		return errors.New("mirror: host already running")
	}
	h.running = true
	vols := make(map[string]*Replica, len(h.vols))
	for n, d := range h.vols {
		vols[n] = d
	}
	h.mu.Unlock()
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	for _, d := range vols {
		vctx, vstop := context.WithCancel(ctx)
		defer vstop()
		d.start(vctx, vstop)
	}
	h.log.Info("mirror listening", "addr", h.Addr(), "volumes", len(vols))
	err := h.acc.run(ctx)
	stop()
	var errs []error
	if err != nil {
		errs = append(errs, err)
	}
	for n, d := range vols {
		if ferr := d.finish(); ferr != nil && !errors.Is(ferr, ErrPromoted) {
			errs = append(errs, fmt.Errorf("volume %s: %w", n, ferr))
		}
	}
	return errors.Join(errs...)
}

// acceptor accepts connections on ln and their streams, reads each
// stream's first frame and hands the stream to the volume route names.
type acceptor struct {
	ln       streamListener
	log      *slog.Logger
	route    func(name string) *Replica
	accepted atomic.Int64
}

// run accepts until ctx ends or the listener fails, then closes the
// listener (and so every connection) and waits for its goroutines.
func (a *acceptor) run(ctx context.Context) error {
	var wg sync.WaitGroup
	var err error
	for {
		conn, aerr := a.ln.Accept(ctx)
		if aerr != nil {
			if ctx.Err() == nil {
				err = fmt.Errorf("mirror: accept: %w", aerr)
			}
			break
		}
		a.accepted.Add(1)
		a.log.Debug("serving a primary connection", "peer", conn.PeerName(), "remote", conn.RemoteAddr().String())
		wg.Add(1)
		go func() {
			defer wg.Done()
			a.serveConn(ctx, conn)
		}()
	}
	a.ln.Close()
	wg.Wait()
	return err
}

// serveConn accepts the connection's streams until it ends.
func (a *acceptor) serveConn(ctx context.Context, conn streamConn) {
	defer conn.Close(0, "")
	log := a.log.With("peer", conn.PeerName(), "remote", conn.RemoteAddr().String())
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		st, err := conn.AcceptStream(ctx)
		if err != nil {
			return
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			a.serveStream(conn, st, log)
		}()
	}
}

// serveStream reads the stream's first frame and routes the stream.
func (a *acceptor) serveStream(conn streamConn, st frameStream, log *slog.Logger) {
	st.SetReadDeadline(time.Now().Add(handshakeTimeout))
	typ, p, err := st.ReadFrame(nil)
	if err != nil {
		log.Warn("no hello from primary (nor a stream volume) on a new stream", "err", err)
		st.Cancel(0)
		return
	}
	st.SetReadDeadline(time.Time{})
	var name string
	switch wire.MsgType(typ) {
	case wire.MsgHello:
		h, err := wire.DecodeHello(p)
		if err != nil {
			refuseStream(st, wire.CodeProtocol, "malformed hello: "+err.Error(), log)
			return
		}
		name = h.VolumeName
	case wire.MsgStreamVolume:
		m, err := wire.DecodeStreamVolume(p)
		if err != nil {
			log.Warn("malformed stream volume", "err", err)
			st.Cancel(uint64(wire.CodeProtocol))
			return
		}
		name = m.Name
	case wire.MsgLaneJoin:
		m, err := wire.DecodeLaneJoin(p)
		if err != nil {
			log.Warn("malformed lane join", "err", err)
			st.Cancel(uint64(wire.CodeProtocol))
			return
		}
		name = m.Volume
	default:
		refuseStream(st, wire.CodeProtocol, fmt.Sprintf("expected hello, got %v", wire.MsgType(typ)), log)
		return
	}
	d := a.route(name)
	if d == nil {
		if wire.MsgType(typ) == wire.MsgHello {
			refuseStream(st, wire.CodeRefused, fmt.Sprintf("this host mirrors no volume called %q", name), log)
		} else {
			st.Cancel(uint64(wire.CodeRefused))
		}
		return
	}
	if name != "" {
		log = log.With("volume_name", name)
	}
	d.dispatch(conn, st, wire.MsgType(typ), p, log)
}

// refuseStream sends an Error as the stream's last message and cancels it.
func refuseStream(st frameStream, code wire.ErrCode, reason string, log *slog.Logger) {
	log.Warn("refusing primary", "code", code, "reason", reason)
	buf := wire.AppendError(nil, wire.ErrorMsg{Code: code, Message: reason})
	if st.WriteFrame(uint8(wire.MsgError), buf) == nil {
		st.Flush()
	}
	linger(st)
	st.Cancel(0)
}
