package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"net/url"
	"sync"
	"time"
)

// defaultAdmin is where daemons serve status and control, and where
// `blockmirror status` looks, unless told otherwise. Loopback only.
const defaultAdmin = "127.0.0.1:7480"

// adminServer serves the local HTTP endpoint: GET /v1/status (JSON) and
// whatever control handlers the daemon adds.
type adminServer struct {
	mux  *http.ServeMux
	log  *slog.Logger
	addr string

	mu       sync.Mutex
	status   func() any
	controls map[string]func(ctx context.Context, q url.Values) (any, error)
}

// post calls a control endpoint of a running node and decodes its answer
// into out; a refusal comes back as an error with the node's message.
func post(ctx context.Context, admin, path string, out any) error {
	req, err := http.NewRequestWithContext(ctx, "POST", "http://"+admin+path, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("no node answers on %s (is it running, with --admin %s?): %w", admin, admin, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		var e struct{ Error string }
		json.NewDecoder(resp.Body).Decode(&e)
		if e.Error == "" {
			e.Error = resp.Status
		}
		return errors.New(e.Error)
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

func newAdminServer(log *slog.Logger, status func() any) *adminServer {
	a := &adminServer{mux: http.NewServeMux(), log: log, status: status,
		controls: make(map[string]func(context.Context, url.Values) (any, error))}
	a.mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		a.mu.Lock()
		fn := a.status
		a.mu.Unlock()
		writeJSON(w, http.StatusOK, fn())
	})
	a.mux.HandleFunc("POST /v1/{op}", func(w http.ResponseWriter, r *http.Request) {
		a.mu.Lock()
		fn := a.controls[r.PathValue("op")]
		a.mu.Unlock()
		if fn == nil {
			writeJSON(w, http.StatusNotFound, map[string]string{"error": "this node does not offer " + r.PathValue("op") + " in its current role"})
			return
		}
		res, err := fn(r.Context(), r.URL.Query())
		if err != nil {
			writeJSON(w, http.StatusConflict, map[string]string{"error": err.Error()})
			return
		}
		writeJSON(w, http.StatusOK, res)
	})
	return a
}

// setStatus replaces what GET /v1/status reports (after a role change).
func (a *adminServer) setStatus(fn func() any) {
	a.mu.Lock()
	a.status = fn
	a.mu.Unlock()
}

// enablePprof serves Go's profiler under /debug/pprof/ (only with --pprof:
// profiles reveal internals and cost CPU).
func (a *adminServer) enablePprof() {
	a.mux.HandleFunc("/debug/pprof/", pprof.Index)
	a.mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	a.mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	a.mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	a.mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
}

// handle sets the POST /v1/OP control endpoint (nil removes it); fn's
// error becomes a 409 with the message, so the CLI can show it.
func (a *adminServer) handle(op string, fn func(ctx context.Context, q url.Values) (any, error)) {
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

// run serves on addr until ctx ends. An empty addr disables the endpoint.
func (a *adminServer) run(ctx context.Context, addr string) error {
	if addr == "" {
		return nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("admin endpoint: listen %s: %w (choose another with --admin, or --admin '' to disable)", addr, err)
	}
	srv := &http.Server{Handler: a.mux, ReadHeaderTimeout: 5 * time.Second}
	a.addr = ln.Addr().String()
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	}()
	a.log.Info("admin endpoint listening", "addr", ln.Addr().String())
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			a.log.Error("admin endpoint stopped", "err", err)
		}
	}()
	return nil
}
