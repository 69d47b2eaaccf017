package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/blockmirror/blockmirror/internal/unixsock"
)

// controlFunc is one control operation (POST /v1/OP on the control
// socket); its error becomes a 409 with the message, so the CLI can show
// it.
type controlFunc func(ctx context.Context, q url.Values) (any, error)

// adminServer holds what a daemon reports and the control operations it
// offers, and serves them on two endpoints:
//
//   - the TCP admin endpoint (--admin) is read-only: GET and HEAD of
//     /v1/status, /metrics and, with --pprof, /debug/pprof/. Any other
//     method answers 403 naming the control socket. A request whose Host
//     header is not the endpoint's own address is refused with 421 (DNS
//     rebinding), one with a foreign Origin with 403, and no
//     Access-Control-* header is ever sent: a web page cannot read or
//     change anything.
//   - the control socket (--control) serves GET /v1/status and POST
//     /v1/OP for the control operations, to root and the members of the
//     control group only; every request is logged with the caller's pid,
//     uid and gid.
type adminServer struct {
	mux *http.ServeMux // the read-only handlers
	log *slog.Logger

	mu       sync.Mutex
	status   func() NodeStatus
	controls map[string]controlFunc
	control  string // the control socket's path, once listening
	servers  []*http.Server
	wg       sync.WaitGroup
}

func newAdminServer(log *slog.Logger, status func() NodeStatus) *adminServer {
	a := &adminServer{mux: http.NewServeMux(), log: log, status: status, controls: make(map[string]controlFunc)}
	a.mux.HandleFunc("GET /v1/status", a.serveStatus)
	return a
}

func (a *adminServer) serveStatus(w http.ResponseWriter, r *http.Request) {
	a.mu.Lock()
	fn, control := a.status, a.control
	a.mu.Unlock()
	st := fn()
	st.Control = control
	writeJSON(w, http.StatusOK, st)
}

// enablePprof serves Go's profiler under /debug/pprof/ (only with --pprof:
// profiles reveal internals and cost CPU).
func (a *adminServer) enablePprof() {
	a.mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	a.mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
	a.mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	a.mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
	a.mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
}

// handle sets the control operation op (nil removes it).
func (a *adminServer) handle(op string, fn controlFunc) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if fn == nil {
		delete(a.controls, op)
		return
	}
	a.controls[op] = fn
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, map[string]string{"error": msg})
}

// serve runs srv on ln until close.
func (a *adminServer) serve(srv *http.Server, ln net.Listener, what string) {
	a.mu.Lock()
	a.servers = append(a.servers, srv)
	a.mu.Unlock()
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			a.log.Error(what+" stopped", "err", err)
		}
	}()
}

// close stops both endpoints, letting requests in progress (a demote's
// answer) finish for up to 2 s, and removes the control socket.
func (a *adminServer) close() {
	a.mu.Lock()
	servers := a.servers
	a.servers = nil
	a.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	for _, s := range servers {
		if s.Shutdown(ctx) != nil {
			s.Close()
		}
	}
	a.wg.Wait()
}

// run serves the read-only TCP endpoint on addr until close. An empty
// addr disables it.
func (a *adminServer) run(addr string) error {
	if addr == "" {
		return nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("admin endpoint: listen %s: %w (choose another with --admin, or --admin '' to disable)", addr, err)
	}
	a.serve(&http.Server{Handler: a.readOnly(), ReadHeaderTimeout: 5 * time.Second}, ln, "admin endpoint")
	a.log.Info("admin endpoint listening (read-only)", "addr", ln.Addr().String())
	return nil
}

// readOnly guards the TCP endpoint (see adminServer).
func (a *adminServer) readOnly() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		local, _ := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
		if !ownHost(r.Host, local) {
			a.log.Warn("admin endpoint: refused a request for another host (DNS rebinding?)", "host", r.Host, "path", r.URL.Path, "remote", r.RemoteAddr)
			writeError(w, http.StatusMisdirectedRequest, fmt.Sprintf("Host %q is not this endpoint's address (%v): request refused (a name that resolves here is not enough; use the address)", r.Host, local))
			return
		}
		if o := r.Header.Get("Origin"); o != "" && o != "http://"+r.Host {
			a.log.Warn("admin endpoint: refused a cross-origin request", "origin", o, "method", r.Method, "path", r.URL.Path, "remote", r.RemoteAddr)
			writeError(w, http.StatusForbidden, fmt.Sprintf("cross-origin requests (Origin %s) are refused", o))
			return
		}
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			a.mu.Lock()
			control := a.control
			a.mu.Unlock()
			where := "this node has no control socket (it was started with --control '')"
			if control != "" {
				where = "control is on the unix socket " + control + " (root or its group only): run `blockmirror promote|demote|verify --admin " + r.Host + "` (the CLI finds the socket) or pass --control " + control
			}
			a.log.Warn("admin endpoint: refused a request that is not a read", "method", r.Method, "path", r.URL.Path, "remote", r.RemoteAddr)
			writeError(w, http.StatusForbidden, "this endpoint is read-only: "+where)
			return
		}
		a.mux.ServeHTTP(w, r)
	})
}

// ownHost reports whether host (a Host header) names local, the address
// the request came in on: that IP and port, or localhost and the port
// when the IP is a loopback address.
func ownHost(host string, local net.Addr) bool {
	la, err := netip.ParseAddrPort(fmt.Sprint(local))
	if err != nil {
		return false
	}
	h, port, err := net.SplitHostPort(host)
	if err != nil {
		h, port = host, "80"
	}
	if port != fmt.Sprint(la.Port()) {
		return false
	}
	if strings.EqualFold(h, "localhost") {
		return la.Addr().IsLoopback()
	}
	ip, err := netip.ParseAddr(strings.TrimSuffix(strings.TrimPrefix(h, "["), "]"))
	return err == nil && ip.Unmap() == la.Addr().Unmap()
}

// credKey carries a control connection's peer credentials.
type credKey struct{}

type credResult struct {
	cred unixsock.PeerCred
	err  error
}

// runControl serves the control socket at path until close; "" disables
// it. group is --control-group (explicit: given by the operator).
func (a *adminServer) runControl(path, group string, explicit bool) error {
	if path == "" {
		a.log.Warn("online control is disabled (--control ''): promote, demote and verify need the offline commands (--data) or a restart with a control socket")
		return nil
	}
	ln, access, err := listenControl(path, group, explicit, a.log)
	if err != nil {
		return err
	}
	a.mu.Lock()
	a.control = path
	a.mu.Unlock()
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", a.serveStatus)
	mux.HandleFunc("POST /v1/{op}", a.serveControl)
	srv := &http.Server{
		ReadHeaderTimeout: 5 * time.Second,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			cred, err := unixsock.PeerCredOf(c)
			return context.WithValue(ctx, credKey{}, credResult{cred, err})
		},
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			cr, _ := r.Context().Value(credKey{}).(credResult)
			err := cr.err
			if err == nil {
				err = access.check(cr.cred)
			}
			if err != nil {
				a.log.Warn("control request refused", "method", r.Method, "path", r.URL.Path,
					"pid", cr.cred.PID, "uid", cr.cred.UID, "gid", cr.cred.GID, "err", err)
				writeError(w, http.StatusForbidden, err.Error())
				return
			}
			mux.ServeHTTP(w, r)
		}),
	}
	a.serve(srv, ln, "control socket")
	who := "root"
	if access.group != "" {
		who = "root and group " + access.group
	}
	a.log.Info("control socket listening", "path", path, "allowed", who)
	return nil
}

// serveControl runs POST /v1/OP for a caller already allowed in, and logs
// the request with the caller and the outcome.
func (a *adminServer) serveControl(w http.ResponseWriter, r *http.Request) {
	cr, _ := r.Context().Value(credKey{}).(credResult)
	op := r.PathValue("op")
	a.mu.Lock()
	fn := a.controls[op]
	a.mu.Unlock()
	log := a.log.With("op", op, "query", r.URL.RawQuery, "pid", cr.cred.PID, "uid", cr.cred.UID, "gid", cr.cred.GID)
	if fn == nil {
		log.Warn("control request for an operation this node does not offer now")
		writeError(w, http.StatusNotFound, "this node does not offer "+op+" in its current role")
		return
	}
	log.Info("control request accepted")
	res, err := fn(r.Context(), r.URL.Query())
	if err != nil {
		log.Warn("control request failed", "err", err)
		writeError(w, http.StatusConflict, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, res)
}
