package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/blockmirror/blockmirror/internal/config"
	"github.com/blockmirror/blockmirror/nbd"
	"github.com/blockmirror/blockmirror/transport"
)

// nbdTLSFlags are --nbd-tls and the certificates it uses (serve and
// mirror; a mirror uses them once promoted).
type nbdTLSFlags struct {
	mode     string
	cert     string
	key      string
	clientCA string
}

func (t *nbdTLSFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&t.mode, "nbd-tls", config.NBDTLSOff, "NBD over TLS (NBD_OPT_STARTTLS): off; on (clients may use TLS); require (plaintext clients are refused)")
	fs.StringVar(&t.cert, "nbd-tls-cert", "", "NBD server certificate, PEM (default: this node's certificate from --certs and --node)")
	fs.StringVar(&t.key, "nbd-tls-key", "", "key of --nbd-tls-cert, PEM")
	fs.StringVar(&t.clientCA, "nbd-tls-client-ca", "", "require NBD clients to present a certificate from this CA: a PEM file, or 'cluster' for the cluster CA of --certs")
}

// nbdTLSCiphers are the TLS 1.2 suites offered: forward-secret AEAD only
// (TLS 1.3 suites are not configurable and all qualify).
var nbdTLSCiphers = []uint16{
	tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256, tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
}

// config returns the NBD server's TLS configuration (nil when off) and
// whether TLS is required. id supplies the node certificate and the
// cluster CA when no files are given.
func (t *nbdTLSFlags) config(id identityFlags) (*tls.Config, bool, error) {
	switch t.mode {
	case config.NBDTLSOff:
		if t.cert != "" || t.key != "" || t.clientCA != "" {
			return nil, false, errors.New("--nbd-tls-cert, --nbd-tls-key and --nbd-tls-client-ca need --nbd-tls on or require")
		}
		return nil, false, nil
	case config.NBDTLSOn, config.NBDTLSRequire:
	default:
		return nil, false, fmt.Errorf("--nbd-tls %q: want off, on or require", t.mode)
	}
	var cert tls.Certificate
	switch {
	case (t.cert == "") != (t.key == ""):
		return nil, false, errors.New("--nbd-tls-cert and --nbd-tls-key go together")
	case t.cert != "":
		c, err := tls.LoadX509KeyPair(t.cert, t.key)
		if err != nil {
			return nil, false, fmt.Errorf("--nbd-tls-cert %s / --nbd-tls-key %s: %w", t.cert, t.key, err)
		}
		cert = c
	case id.certs != "" && id.node != "":
		nodeID, err := transport.LoadNode(id.certs, id.node)
		if err != nil {
			return nil, false, fmt.Errorf("--nbd-tls %s: the node certificate: %w", t.mode, err)
		}
		cert = nodeID.Cert
	default:
		return nil, false, fmt.Errorf("--nbd-tls %s needs a server certificate: --certs DIR --node NAME (the node's certificate), or --nbd-tls-cert FILE --nbd-tls-key FILE (e.g. from `blockmirror certs server`)", t.mode)
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, CipherSuites: nbdTLSCiphers, Certificates: []tls.Certificate{cert}}
	if t.clientCA != "" {
		file := t.clientCA
		if file == config.NBDTLSClientCACluster {
			if id.certs == "" {
				return nil, false, errors.New("--nbd-tls-client-ca cluster needs --certs DIR (the directory with the cluster's ca.crt)")
			}
			file = filepath.Join(id.certs, transport.CACertFile)
		}
		pem, err := os.ReadFile(file)
		if err != nil {
			return nil, false, fmt.Errorf("--nbd-tls-client-ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, false, fmt.Errorf("--nbd-tls-client-ca: %s holds no PEM certificate", file)
		}
		cfg.ClientAuth, cfg.ClientCAs = tls.RequireAndVerifyClientCert, pool
	}
	return cfg, t.mode == config.NBDTLSRequire, nil
}

// newServerOptions returns the options of the process's NBD servers:
// logger and TLS.
func (t *nbdTLSFlags) newServerOptions(id identityFlags, log *slog.Logger) (nbd.Options, error) {
	cfg, require, err := t.config(id)
	if err != nil {
		return nbd.Options{}, err
	}
	if cfg != nil {
		verify := "no client certificates"
		if cfg.ClientCAs != nil {
			verify = "client certificates required"
		}
		log.Info("NBD over TLS", "mode", t.mode, "clients", verify)
	}
	return nbd.Options{Logger: log, TLS: cfg, RequireTLS: require}, nil
}
