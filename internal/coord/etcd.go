package coord

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	etcdtls "go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
)

// The configuration names, as flags and as keys of the config file's
// [node] table (internal/config; cmd and internal/daemon wire them):
//
//	--etcd ENDPOINTS             etcd                   comma-separated client URLs
//	--etcd-certs DIR             etcd_certs             ca.crt, client.crt, client.key
//	--etcd-prefix PREFIX         etcd_prefix            default /blockmirror
//	--etcd-embed DIR             etcd_embed             run an etcd member in this node
//	--etcd-embed-client URL      etcd_embed_client      its client URL
//	--etcd-embed-peer URL        etcd_embed_peer        its peer URL
//	--etcd-embed-cluster N=U,..  etcd_embed_cluster     every member
//	--failover-ttl D             failover_ttl           leader lease TTL, default 5s
//	--failover-min-interval D    failover_min_interval  default 5m
//	--failover-no-failsafe       failover_no_failsafe   fence when etcd is unreachable, whatever the mirrors say
//	--failover-hook CMD          failover_hook          run on promotion/demotion/fence (move a VIP, notify): Config.OnEvent
//
// Certificate files in --etcd-certs.
const (
	EtcdCAFile   = "ca.crt"
	EtcdCertFile = "client.crt"
	EtcdKeyFile  = "client.key"
	// An embedded member's server certificate (EmbedConfig.CertsDir).
	EtcdServerCertFile = "server.crt"
	EtcdServerKeyFile  = "server.key"
)

// ClientConfig says how to reach etcd.
type ClientConfig struct {
	// Endpoints are client URLs (http:// or https://).
	Endpoints []string
	// CertsDir, if set, holds ca.crt (the CA that signed etcd's server
	// certificates) and client.crt/client.key (this node's client
	// certificate); the connection then uses TLS.
	CertsDir string
	// DialTimeout bounds the first connection (default 5 s).
	DialTimeout time.Duration
}

// ParseEndpoints splits a --etcd value.
func ParseEndpoints(s string) ([]string, error) {
	var out []string
	for _, e := range strings.Split(s, ",") {
		e = strings.TrimSpace(e)
		if e == "" {
			continue
		}
		u, err := url.Parse(e)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, fmt.Errorf("etcd endpoint %q: want http://HOST:PORT or https://HOST:PORT", e)
		}
		out = append(out, e)
	}
	if len(out) == 0 {
		return nil, errors.New("no etcd endpoints given")
	}
	return out, nil
}

// TLSConfig loads the client TLS configuration from dir.
func TLSConfig(dir string) (*tls.Config, error) {
	ca, err := os.ReadFile(filepath.Join(dir, EtcdCAFile))
	if err != nil {
		return nil, fmt.Errorf("etcd certificates: %w (--etcd-certs needs %s, %s and %s)", err, EtcdCAFile, EtcdCertFile, EtcdKeyFile)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca) {
		return nil, fmt.Errorf("etcd certificates: %s holds no PEM certificate", filepath.Join(dir, EtcdCAFile))
	}
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, EtcdCertFile), filepath.Join(dir, EtcdKeyFile))
	if err != nil {
		return nil, fmt.Errorf("etcd certificates: load client certificate: %w", err)
	}
	return &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}, nil
}

// Client is etcd's client (so that callers name it without importing
// etcd: this package is its only importer).
type Client = clientv3.Client

// Connect makes an etcd client. It does not wait for etcd to answer: the
// coordinator copes with etcd being down.
func Connect(cfg ClientConfig) (*Client, error) {
	if len(cfg.Endpoints) == 0 {
		return nil, errors.New("connect to etcd: no endpoints")
	}
	// gRPC's default reconnect backoff grows to 2 minutes: a primary
	// fenced while etcd was away would stay fenced that long after etcd
	// returns. Retry at least every second instead; keepalives find a
	// dead connection within 4 s.
	cc := clientv3.Config{Endpoints: cfg.Endpoints, DialTimeout: cfg.DialTimeout, Logger: zap.NewNop(),
		DialKeepAliveTime: 2 * time.Second, DialKeepAliveTimeout: 2 * time.Second,
		DialOptions: []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: time.Second},
			MinConnectTimeout: 2 * time.Second,
		})}}
	if cc.DialTimeout == 0 {
		cc.DialTimeout = 5 * time.Second
	}
	if cfg.CertsDir != "" {
		t, err := TLSConfig(cfg.CertsDir)
		if err != nil {
			return nil, err
		}
		cc.TLS = t
	}
	cli, err := clientv3.New(cc)
	if err != nil {
		return nil, fmt.Errorf("connect to etcd %v: %w", cfg.Endpoints, err)
	}
	return cli, nil
}

// EmbedConfig configures an etcd member run inside a blockmirror node.
type EmbedConfig struct {
	// Dir holds the member's data (created if missing).
	Dir string
	// Name is the member's name (default "default").
	Name string
	// ClientURL and PeerURL are where it listens (defaults
	// http://127.0.0.1:2379 and http://127.0.0.1:2380).
	ClientURL, PeerURL string
	// InitialCluster is NAME=PEERURL,... for a cluster of several
	// members (default: this member alone).
	InitialCluster string
	// Existing: join an existing cluster rather than bootstrap a new one.
	Existing bool
	// CertsDir, if set, makes the member serve clients over TLS with
	// ca.crt, server.crt and server.key from it, and require a client
	// certificate signed by ca.crt (the ClientURL must be https://).
	CertsDir string
	// Logger receives the member's warnings and errors (default: none).
	Logger *slog.Logger
	// StartTimeout bounds the wait until the member serves (default 30 s).
	StartTimeout time.Duration
}

// Embedded is a running etcd member.
type Embedded struct {
	e     *embed.Etcd
	cfg   EmbedConfig
	close sync.Once
}

// StartEmbedded starts an etcd member and waits until it serves (a new
// single member: about a second).
func StartEmbedded(ctx context.Context, cfg EmbedConfig) (*Embedded, error) {
	if cfg.Dir == "" {
		return nil, errors.New("embedded etcd: no data directory")
	}
	if cfg.Name == "" {
		cfg.Name = "default"
	}
	if cfg.ClientURL == "" {
		cfg.ClientURL = "http://127.0.0.1:2379"
	}
	if cfg.PeerURL == "" {
		cfg.PeerURL = "http://127.0.0.1:2380"
	}
	if cfg.InitialCluster == "" {
		cfg.InitialCluster = cfg.Name + "=" + cfg.PeerURL
	}
	if cfg.StartTimeout == 0 {
		cfg.StartTimeout = 30 * time.Second
	}
	ec := embed.NewConfig()
	ec.Name = cfg.Name
	ec.Dir = cfg.Dir
	cu, err := url.Parse(cfg.ClientURL)
	if err != nil {
		return nil, fmt.Errorf("embedded etcd client URL: %w", err)
	}
	pu, err := url.Parse(cfg.PeerURL)
	if err != nil {
		return nil, fmt.Errorf("embedded etcd peer URL: %w", err)
	}
	ec.ListenClientUrls, ec.AdvertiseClientUrls = []url.URL{*cu}, []url.URL{*cu}
	ec.ListenPeerUrls, ec.AdvertisePeerUrls = []url.URL{*pu}, []url.URL{*pu}
	ec.InitialCluster = cfg.InitialCluster
	ec.InitialClusterToken = "blockmirror"
	if cfg.Existing {
		ec.ClusterState = embed.ClusterStateFlagExisting
	}
	if cfg.CertsDir != "" {
		if cu.Scheme != "https" {
			return nil, fmt.Errorf("embedded etcd: client URL %s must be https:// with certificates", cfg.ClientURL)
		}
		ec.ClientTLSInfo = etcdtls.TLSInfo{
			CertFile:       filepath.Join(cfg.CertsDir, EtcdServerCertFile),
			KeyFile:        filepath.Join(cfg.CertsDir, EtcdServerKeyFile),
			TrustedCAFile:  filepath.Join(cfg.CertsDir, EtcdCAFile),
			ClientCertAuth: true,
		}
	}
	ec.ListenMetricsUrls = nil
	lg := zap.NewNop()
	if cfg.Logger != nil {
		lg = zap.New(slogCore{log: cfg.Logger.With("component", "etcd", "member", cfg.Name)})
	}
	ec.ZapLoggerBuilder = embed.NewZapLoggerBuilder(lg)
	e, err := embed.StartEtcd(ec)
	if err != nil {
		return nil, fmt.Errorf("start embedded etcd %s in %s: %w", cfg.Name, cfg.Dir, err)
	}
	t := time.NewTimer(cfg.StartTimeout)
	defer t.Stop()
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return nil, fmt.Errorf("embedded etcd %s: %w", cfg.Name, err)
	case <-t.C:
		e.Close()
		return nil, fmt.Errorf("embedded etcd %s did not become ready within %v (a cluster of several members needs a majority started)", cfg.Name, cfg.StartTimeout)
	case <-ctx.Done():
		e.Close()
		return nil, ctx.Err()
	}
	return &Embedded{e: e, cfg: cfg}, nil
}

// Endpoint is the member's client URL.
func (m *Embedded) Endpoint() string { return m.cfg.ClientURL }

// Name is the member's name.
func (m *Embedded) Name() string { return m.cfg.Name }

// IsLeader reports whether the member is etcd's raft leader now.
func (m *Embedded) IsLeader() bool { return m.e.Server.Leader() == m.e.Server.MemberID() }

// Close stops the member (in a test: kills it, as far as its peers and
// clients can tell).
func (m *Embedded) Close() { m.close.Do(m.e.Close) }

// Err reports a fatal error of the running member.
func (m *Embedded) Err() <-chan error { return m.e.Err() }
