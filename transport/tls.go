package transport

import (
	"context"
	"crypto/tls"
	"net"
	"sync/atomic"

	"crypto/x509"
	"fmt"
	"github.com/quic-go/quic-go"
	"log/slog"
	"slices"
	"time"
)

// ALPN is the TLS application protocol both sides must offer.
const ALPN = "blockmirror/1"

// verifyChain verifies certs[0] (with certs[1:] as intermediates) against
// roots once per required extended key usage.
func verifyChain(roots *x509.CertPool, certs []*x509.Certificate, usages ...x509.ExtKeyUsage) ([][]*x509.Certificate, error) {
	if len(certs) == 0 {
		return nil, fmt.Errorf("%w: no certificate presented", ErrUntrustedPeer)
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	var chains [][]*x509.Certificate
	for _, u := range usages {
		ch, err := certs[0].Verify(x509.VerifyOptions{
			Roots:         roots,
			Intermediates: inter,
			CurrentTime:   time.Now(),
			KeyUsages:     []x509.ExtKeyUsage{u},
		})
		if err != nil {
			return nil, fmt.Errorf("%w: certificate %q (issuer %q): %w", ErrUntrustedPeer, certName(certs[0]), certs[0].Issuer.CommonName, err)
		}
		chains = ch
	}
	return chains, nil
}

// certName is the node name a certificate stands for: its first DNS SAN,
// or its CN if it has no DNS SANs.
func certName(c *x509.Certificate) string {
	if len(c.DNSNames) > 0 {
		return c.DNSNames[0]
	}
	return c.Subject.CommonName
}

// certHasName reports whether c was issued to node name (any DNS SAN, or
// the CN when there are no SANs; ASCII case-insensitive).
func certHasName(c *x509.Certificate, name string) bool {
	if len(c.DNSNames) == 0 {
		return equalFoldASCII(c.Subject.CommonName, name)
	}
	for _, n := range c.DNSNames {
		if equalFoldASCII(n, name) {
			return true
		}
	}
	return false
}

// checkNodeCert refuses certificates the cluster CA signed for something
// other than a node: node certificates carry both serverAuth and
// clientAuth, while those for NBD clients and servers (IssueClient,
// IssueServer) carry one, so a hypervisor's NBD certificate can never
// replicate, promote or fence anything.
func checkNodeCert(c *x509.Certificate) error {
	if !slices.Contains(c.ExtKeyUsage, x509.ExtKeyUsageServerAuth) || !slices.Contains(c.ExtKeyUsage, x509.ExtKeyUsageClientAuth) {
		return fmt.Errorf("%w: certificate %q is not a node certificate (it is not valid for both TLS server and client use; certificates for NBD clients and servers cannot join the cluster)",
			ErrUntrustedPeer, certName(c))
	}
	return nil
}

// serverTLS builds the listener's TLS config. Client certificates are
// verified by us (not crypto/tls) so that refusals are logged with a
// precise reason and the allow-list is applied in the same place. Every
// handshake gets its own copy of the config so that a handshake the client
// aborts before presenting a certificate (because it refused ours) can be
// logged too.
func serverTLS(id *Identity, allow []string, log *slog.Logger) *tls.Config {
	base := &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{id.Cert},
		NextProtos:   []string{ALPN},
		ClientAuth:   tls.RequireAnyClientCert,
	}
	verify := func(cs tls.ConnectionState, remote string) error {
		name, err := checkClient(id.Roots, cs.PeerCertificates, allow)
		if err != nil {
			log.Warn("transport: refused incoming connection", "remote", remote, "err", err)
			return err
		}
		log.Debug("transport: accepted peer certificate", "peer", name, "remote", remote)
		return nil
	}
	outer := base.Clone()
	outer.GetConfigForClient = func(chi *tls.ClientHelloInfo) (*tls.Config, error) {
		ctx := chi.Context()
		remote := "?"
		if a, ok := ctx.Value(remoteAddrKey{}).(net.Addr); ok {
			remote = a.String()
		}
		start := time.Now()
		var checked atomic.Bool
		cfg := base.Clone()
		cfg.VerifyConnection = func(cs tls.ConnectionState) error {
			checked.Store(true)
			return verify(cs, remote)
		}
		// The handshake context ends when the handshake does, either way.
		context.AfterFunc(ctx, func() {
			if !checked.Load() {
				log.Warn("transport: handshake ended before the client presented a certificate; "+
					"most likely it refused ours (different cluster CA, or it expected another node name), or it went away",
					"remote", remote, "after", time.Since(start).Round(time.Microsecond))
			}
		})
		return cfg, nil
	}
	return outer
}

type remoteAddrKey struct{}

// withRemoteAddr is the quic.Transport ConnContext hook: it records the
// client's address so handshake logs can name it.
func withRemoteAddr(ctx context.Context, ci *quic.ClientInfo) (context.Context, error) {
	return context.WithValue(ctx, remoteAddrKey{}, ci.RemoteAddr), nil
}

func checkClient(roots *x509.CertPool, certs []*x509.Certificate, allow []string) (string, error) {
	if _, err := verifyChain(roots, certs, x509.ExtKeyUsageClientAuth); err != nil {
		return "", err
	}
	if err := checkNodeCert(certs[0]); err != nil {
		return "", err
	}
	name := certName(certs[0])
	if len(allow) > 0 && !slices.ContainsFunc(allow, func(a string) bool { return certHasName(certs[0], a) }) {
		return "", fmt.Errorf("%w: client %q is not one of %v", ErrPeerNotAllowed, name, allow)
	}
	return name, nil
}

// clientTLS builds the dialer's TLS config: the server must chain to our CA
// and be issued to peerName. crypto/tls' own verification is replaced
// (InsecureSkipVerify) by the equivalent checks in VerifyConnection, which
// runs on every handshake and fails it on any error.
func clientTLS(id *Identity, peerName string, log *slog.Logger) *tls.Config {
	return &tls.Config{
		MinVersion:         tls.VersionTLS13,
		Certificates:       []tls.Certificate{id.Cert},
		NextProtos:         []string{ALPN},
		ServerName:         peerName,
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			if err := checkServer(id.Roots, cs.PeerCertificates, peerName); err != nil {
				log.Warn("transport: refused server certificate", "want", peerName, "err", err)
				return err
			}
			return nil
		},
	}
}

func checkServer(roots *x509.CertPool, certs []*x509.Certificate, peerName string) error {
	if _, err := verifyChain(roots, certs, x509.ExtKeyUsageServerAuth); err != nil {
		return err
	}
	if err := checkNodeCert(certs[0]); err != nil {
		return err
	}
	if !certHasName(certs[0], peerName) {
		return fmt.Errorf("%w: expected %q, server presented %q", ErrPeerName, peerName, certName(certs[0]))
	}
	return nil
}
