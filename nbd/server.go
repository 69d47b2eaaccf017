package nbd

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/bits"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/blockmirror/blockmirror/internal/unixsock"
)

// Export describes one named device the server offers.
type Export struct {
	// Name is what clients ask for (NBD_OPT_GO / NBD_OPT_EXPORT_NAME). At
	// most 4096 bytes, no NUL. The empty name is allowed and then is also
	// the default export.
	Name string
	// Description is shown to clients by NBD_OPT_LIST and NBD_INFO_DESCRIPTION.
	Description string
	// Device serves the data; required.
	Device Device
	// ReadOnly advertises NBD_FLAG_READ_ONLY; write, trim and write-zeroes
	// requests then fail with EPERM without reaching the device.
	ReadOnly bool
	// MinBlockSize is the advertised minimum block size: a power of two in
	// [1, 65536]; default 1. Requests whose offset or length is not a
	// multiple of it fail with EINVAL.
	MinBlockSize uint32
	// PreferredBlockSize is a power of two ≥ max(MinBlockSize, 512);
	// default 4096.
	PreferredBlockSize uint32
	// Observe, when set, is called after each request the device served
	// (op is read, write, flush, trim or zero) with its length, duration
	// and error; it must be cheap and safe for concurrent use (metrics).
	Observe func(op string, bytes int, d time.Duration, err error)
	// MaxBlockSize is the largest request length accepted; a multiple of
	// MinBlockSize, ≥ PreferredBlockSize, ≤ MaxRequestLen; default
	// MaxRequestLen (32 MiB). Longer requests fail with EINVAL.
	MaxBlockSize uint32
}

// withDefaults returns a copy of e with zero block sizes defaulted.
func (e Export) withDefaults() Export {
	if e.MinBlockSize == 0 {
		e.MinBlockSize = 1
	}
	if e.PreferredBlockSize == 0 {
		e.PreferredBlockSize = max(4096, e.MinBlockSize)
	}
	if e.MaxBlockSize == 0 {
		e.MaxBlockSize = MaxRequestLen
	}
	return e
}

func isPow2(v uint32) bool { return v != 0 && bits.OnesCount32(v) == 1 }

// validate reports the first problem with e (after defaults).
func (e Export) validate() error {
	switch {
	case e.Device == nil:
		return errors.New("device is nil")
	case len(e.Name) > maxStringLen:
		return fmt.Errorf("name is %d bytes, max %d", len(e.Name), maxStringLen)
	case strings.IndexByte(e.Name, 0) >= 0:
		return errors.New("name contains NUL")
	case len(e.Description) > maxStringLen:
		return fmt.Errorf("description is %d bytes, max %d", len(e.Description), maxStringLen)
	case strings.IndexByte(e.Description, 0) >= 0:
		return errors.New("description contains NUL")
	case e.Device.Size() < 0:
		return fmt.Errorf("device size %d is negative", e.Device.Size())
	case !isPow2(e.MinBlockSize) || e.MinBlockSize > 64<<10:
		return fmt.Errorf("MinBlockSize %d: want a power of two in [1, 65536]", e.MinBlockSize)
	case !isPow2(e.PreferredBlockSize) || e.PreferredBlockSize < max(e.MinBlockSize, 512):
		return fmt.Errorf("PreferredBlockSize %d: want a power of two ≥ max(MinBlockSize, 512)", e.PreferredBlockSize)
	case e.MaxBlockSize > MaxRequestLen || e.MaxBlockSize < e.PreferredBlockSize || e.MaxBlockSize%e.MinBlockSize != 0:
		return fmt.Errorf("MaxBlockSize %d: want a multiple of MinBlockSize in [PreferredBlockSize, %d]", e.MaxBlockSize, MaxRequestLen)
	}
	return nil
}

// Options configure a Server. The zero value is usable.
type Options struct {
	// Logger receives connection-level events; nil discards.
	Logger *slog.Logger
	// MaxInFlight caps the requests being served concurrently per
	// connection; when reached the server stops reading requests from that
	// connection until one completes. Default 256.
	MaxInFlight int
	// MaxBufferBytes caps the payload bytes (read and write buffers) held
	// per connection; like MaxInFlight it throttles reading. Must be ≥
	// MaxRequestLen. Default 128 MiB.
	MaxBufferBytes int64
	// ShutdownTimeout bounds how long a cancelled Serve/ServeConn waits for
	// in-flight requests before cancelling their context and closing the
	// connection. Default 10s.
	ShutdownTimeout time.Duration
	// HandshakeTimeout bounds the option-haggling phase (the TLS
	// handshake included). Default 30s.
	HandshakeTimeout time.Duration
	// TLS, when set, lets clients upgrade with NBD_OPT_STARTTLS; it must
	// hold a server certificate, and may demand client certificates
	// (ClientAuth, ClientCAs). Nil: STARTTLS is answered
	// NBD_REP_ERR_UNSUP. The server does not modify it.
	TLS *tls.Config
	// RequireTLS refuses every option but NBD_OPT_STARTTLS and
	// NBD_OPT_ABORT before TLS with NBD_REP_ERR_TLS_REQD and closes
	// connections that send NBD_OPT_EXPORT_NAME in plaintext (the
	// protocol's FORCEDTLS mode). Needs TLS.
	RequireTLS bool
}

func (o Options) withDefaults() Options {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.MaxInFlight == 0 {
		o.MaxInFlight = 256
	}
	if o.MaxBufferBytes == 0 {
		o.MaxBufferBytes = 128 << 20
	}
	if o.ShutdownTimeout == 0 {
		o.ShutdownTimeout = 10 * time.Second
	}
	if o.HandshakeTimeout == 0 {
		o.HandshakeTimeout = 30 * time.Second
	}
	return o
}

func (o Options) validate() error {
	switch {
	case o.MaxInFlight < 1 || o.MaxInFlight > 1<<16:
		return fmt.Errorf("nbd: MaxInFlight %d: want 1..65536", o.MaxInFlight)
	case o.MaxBufferBytes < MaxRequestLen:
		return fmt.Errorf("nbd: MaxBufferBytes %d: want ≥ %d", o.MaxBufferBytes, MaxRequestLen)
	case o.ShutdownTimeout < 0:
		return fmt.Errorf("nbd: ShutdownTimeout %v is negative", o.ShutdownTimeout)
	case o.HandshakeTimeout < 0:
		return fmt.Errorf("nbd: HandshakeTimeout %v is negative", o.HandshakeTimeout)
	case o.RequireTLS && o.TLS == nil:
		return errors.New("nbd: RequireTLS needs a TLS configuration")
	case o.TLS != nil && len(o.TLS.Certificates) == 0 && o.TLS.GetCertificate == nil && o.TLS.GetConfigForClient == nil:
		return errors.New("nbd: the TLS configuration has no server certificate")
	}
	return nil
}

// Server serves NBD exports. Its methods are safe for concurrent use.
type Server struct {
	opts Options
	log  *slog.Logger
	bufs bufPool

	mu       sync.RWMutex
	exports  map[string]*Export
	defName  string
	defIsSet bool
}

// NewServer returns a server with no exports. Invalid options (negative
// or out-of-range values) are replaced by defaults and logged, except TLS
// and RequireTLS, which are kept (an unusable TLS setup refuses clients
// rather than serving them in plaintext); use NewServerChecked to get an
// error instead.
func NewServer(opts Options) *Server {
	s, err := NewServerChecked(opts)
	if err == nil {
		return s
	}
	// The TLS settings are kept as given even when they are the invalid
	// part: a broken TLS setup then refuses every client instead of
	// serving them in plaintext.
	o := Options{Logger: opts.Logger, TLS: opts.TLS, RequireTLS: opts.RequireTLS}.withDefaults()
	o.Logger.Warn("nbd: invalid options, using defaults", "err", err)
	return newServer(o)
}

func newServer(o Options) *Server {
	return &Server{opts: o, log: o.Logger, exports: make(map[string]*Export)}
}

// NewServerChecked is NewServer that reports invalid options.
func NewServerChecked(opts Options) (*Server, error) {
	o := opts.withDefaults()
	if err := o.validate(); err != nil {
		return nil, err
	}
	return newServer(o), nil
}

// AddExport registers e. The name must not be in use. Connections that
// later select the name serve e.Device.
func (s *Server) AddExport(e Export) error {
	e = e.withDefaults()
	if err := e.validate(); err != nil {
		return fmt.Errorf("nbd: export %q: %w", e.Name, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.exports[e.Name]; ok {
		return fmt.Errorf("nbd: export %q: %w", e.Name, ErrExportExists)
	}
	s.exports[e.Name] = &e
	return nil
}

// ErrExportExists is returned by AddExport for a duplicate name.
var ErrExportExists = errors.New("export name already in use")

// RemoveExport unregisters the named export. Connections already serving
// it carry on until they end; new connections cannot select it.
func (s *Server) RemoveExport(name string) {
	s.mu.Lock()
	delete(s.exports, name)
	s.mu.Unlock()
}

// SetDefaultExport chooses the export a client selects with the empty
// name. Without it (and with no export named ""), the empty name selects
// the only export if exactly one is registered.
func (s *Server) SetDefaultExport(name string) {
	s.mu.Lock()
	s.defName, s.defIsSet = name, true
	s.mu.Unlock()
}

// lookup resolves a client-supplied export name.
func (s *Server) lookup(name string) *Export {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if e, ok := s.exports[name]; ok {
		return e
	}
	if name != "" {
		return nil
	}
	if s.defIsSet {
		return s.exports[s.defName]
	}
	if len(s.exports) == 1 {
		for _, e := range s.exports {
			return e
		}
	}
	return nil
}

// list returns a snapshot of the exports, sorted by name.
func (s *Server) list() []*Export {
	s.mu.RLock()
	l := make([]*Export, 0, len(s.exports))
	for _, e := range s.exports {
		l = append(l, e)
	}
	s.mu.RUnlock()
	for i := 1; i < len(l); i++ { // small n: insertion sort
		for j := i; j > 0 && l[j].Name < l[j-1].Name; j-- {
			l[j], l[j-1] = l[j-1], l[j]
		}
	}
	return l
}

// Serve accepts connections on ln and serves each in its own goroutine
// until ctx is cancelled; then it closes ln, lets every connection finish
// its in-flight requests (bounded by ShutdownTimeout), and returns nil.
// Serve closes ln in every case. An Accept error other than a timeout
// shuts the connections down the same way and is returned.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	defer ln.Close()
	var wg sync.WaitGroup
	defer wg.Wait()
	backoff := time.Duration(0)
	for {
		nc, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				s.log.Warn("nbd: accept", "err", err, "retry_in", backoff)
				t := time.NewTimer(backoff)
				select {
				case <-t.C:
				case <-ctx.Done():
					t.Stop()
					return nil
				}
				continue
			}
			cancel()
			return fmt.Errorf("nbd: accept on %s: %w", ln.Addr(), err)
		}
		backoff = 0
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.ServeConn(ctx, nc); err != nil {
				s.log.Debug("nbd: connection ended", "remote", nc.RemoteAddr().String(), "err", err)
			}
		}()
	}
}

// ServeConn runs the handshake and then serves requests on nc until the
// client disconnects, a protocol violation, or ctx is cancelled (graceful:
// in-flight requests are completed and answered first, bounded by
// ShutdownTimeout). It always closes nc. It returns nil for an orderly end
// (NBD_CMD_DISC, NBD_OPT_ABORT, EOF between messages, shutdown) and an
// error describing anything else.
func (s *Server) ServeConn(ctx context.Context, nc net.Conn) error {
	c := newConn(s, nc)
	return c.serve(ctx)
}

// Listen opens a listener for addr: "unix:/path/to.sock" for a unix
// socket, otherwise a TCP "host:port". A stale unix socket file (one
// nobody accepts on) is removed first; a live one or a non-socket file at
// the path is an error.
func Listen(addr string) (net.Listener, error) {
	path, ok := strings.CutPrefix(addr, "unix:")
	if !ok {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, fmt.Errorf("nbd: listen %s: %w", addr, err)
		}
		return ln, nil
	}
	ln, err := unixsock.Listen(path)
	if err != nil {
		return nil, fmt.Errorf("nbd: listen %s: %w", addr, err)
	}
	return ln, nil
}
