// Command faultproxy runs a fault-injecting UDP proxy between two loopback
// peers, controlled over HTTP, so process-level tests can partition real
// blockmirror processes from each other.
//
//	faultproxy --listen 127.0.0.2:7001 --target 127.0.0.3:7000 --control 127.0.0.1:7101
//
//	curl -X POST 'http://127.0.0.1:7101/partition?dir=both'
//	curl -X POST 'http://127.0.0.1:7101/faults?dir=up&drop=0.1&delay=5ms&jitter=1ms&dup=0.01'
//	curl -X POST  http://127.0.0.1:7101/heal
//	curl          http://127.0.0.1:7101/stats
//
// It prints "faultproxy: ready listen=ADDR control=ADDR" on stdout once both
// sockets are bound (useful with port 0) and shuts down cleanly on SIGINT
// or SIGTERM.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/blockmirror/blockmirror/internal/faultproxy"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "faultproxy:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("faultproxy", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:0", "UDP address clients send to")
	target := fs.String("target", "", "UDP address to forward to (required)")
	control := fs.String("control", "127.0.0.1:0", "TCP address of the HTTP control endpoint")
	seed := fs.Uint64("seed", 1, "seed of the fault decisions")
	verbose := fs.Bool("v", false, "log every session")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *target == "" || fs.NArg() != 0 {
		fs.Usage()
		return errors.New("--target is required and no positional arguments are accepted")
	}
	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	ca, err := net.ResolveTCPAddr("tcp", *control)
	if err != nil || !ca.IP.IsLoopback() {
		return fmt.Errorf("--control %q must be a loopback TCP address", *control)
	}
	p, err := faultproxy.New(faultproxy.Config{Listen: *listen, Target: *target, Seed: *seed, Logger: log})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", *control)
	if err != nil {
		return fmt.Errorf("control listen %s: %w", *control, err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	srv := &http.Server{Handler: p.Handler(), ReadHeaderTimeout: 5 * time.Second}
	httpDone := make(chan error, 1)
	go func() { httpDone <- srv.Serve(ln) }()
	proxyDone := make(chan error, 1)
	go func() { proxyDone <- p.Run(ctx) }()
	fmt.Printf("faultproxy: ready listen=%s control=%s\n", p.Addr(), ln.Addr())

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-proxyDone:
		proxyDone = nil
	case err := <-httpDone:
		httpDone = nil
		runErr = fmt.Errorf("control server: %w", err)
	}
	stop()
	log.Info("faultproxy: shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	srv.Shutdown(sctx)
	if httpDone != nil {
		<-httpDone
	}
	if proxyDone != nil {
		if err := <-proxyDone; err != nil && runErr == nil {
			runErr = err
		}
	}
	return runErr
}
