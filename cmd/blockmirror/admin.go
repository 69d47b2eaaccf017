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
	a := &adminServer{mux: http.NewServeMux(), log: log}
	a.mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, status())
	})
	return a
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

// handle adds a POST control endpoint; fn's error becomes a 409 with the
// message, so the CLI can show it.
func (a *adminServer) handle(path string, fn func(ctx context.Context, q url.Values) (any, error)) {
	a.mux.HandleFunc("POST "+path, func(w http.ResponseWriter, r *http.Request) {
		res, err := fn(r.Context(), r.URL.Query())
		if err != nil {
			writeJSON(w, http.StatusConflict, map[string]string{"error": err.Error()})
			return
		}
		writeJSON(w, http.StatusOK, res)
	})
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
