package daemon

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/blockmirror/blockmirror/internal/config"
	"github.com/blockmirror/blockmirror/nbd"
	"github.com/blockmirror/blockmirror/transport"
)

// nbdTLSCiphers are the TLS 1.2 suites offered: forward-secret AEAD only
// (TLS 1.3 suites are not configurable and all qualify).
var nbdTLSCiphers = []uint16{
	tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256, tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
}

// nbdTLS returns the NBD server's TLS configuration (nil when off) and
// whether TLS is required, from the node's nbd_tls settings; the node
// certificate (certs, name) and the cluster CA serve when no files are
// given.
func nbdTLS(n config.NodeConfig) (*tls.Config, bool, error) {
	t := struct{ mode, cert, key, clientCA string }{n.NBDTLS, n.NBDTLSCert, n.NBDTLSKey, n.NBDTLSClientCA}
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
	case n.Certs != "" && n.Name != "":
		nodeID, err := transport.LoadNode(n.Certs, n.Name)
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
			if n.Certs == "" {
				return nil, false, errors.New("--nbd-tls-client-ca cluster needs --certs DIR (the directory with the cluster's ca.crt)")
			}
			file = filepath.Join(n.Certs, transport.CACertFile)
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

// nbdServerOptions returns the options of the process's NBD servers:
// logger and TLS.
func nbdServerOptions(n config.NodeConfig, log *slog.Logger) (nbd.Options, error) {
	cfg, require, err := nbdTLS(n)
	if err != nil {
		return nbd.Options{}, err
	}
	if cfg != nil {
		verify := "no client certificates"
		if cfg.ClientCAs != nil {
			verify = "client certificates required"
		}
		log.Info("NBD over TLS", "mode", n.NBDTLS, "clients", verify)
	}
	return nbd.Options{Logger: log, TLS: cfg, RequireTLS: require}, nil
}
