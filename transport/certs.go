package transport

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// KeyType selects the key algorithm of generated certificates.
type KeyType uint8

const (
	// KeyECDSAP256 is ECDSA on NIST P-256 (the default).
	KeyECDSAP256 KeyType = iota
	// KeyEd25519 is Ed25519.
	KeyEd25519
)

func (k KeyType) String() string {
	switch k {
	case KeyECDSAP256:
		return "ecdsa-p256"
	case KeyEd25519:
		return "ed25519"
	}
	return fmt.Sprintf("keytype(%d)", uint8(k))
}

// DefaultValidity is the lifetime of generated certificates (about 20 years;
// the cluster CA is private and rotation is manual).
const DefaultValidity = 20 * 365 * 24 * time.Hour

// File names inside a certificate directory.
const (
	CACertFile = "ca.crt"
	CAKeyFile  = "ca.key"
)

// CA is a cluster certificate authority that signs node certificates.
type CA struct {
	Cert *x509.Certificate
	Key  crypto.Signer
}

// Identity is one node's credentials: its certificate chain and key, and the
// cluster CA pool its peers are verified against. Immutable after creation;
// safe to share between goroutines.
type Identity struct {
	// Name is the node name (the certificate's DNS SAN).
	Name string
	// Cert is the node certificate and private key as used by crypto/tls.
	Cert tls.Certificate
	// Leaf is the parsed node certificate.
	Leaf *x509.Certificate
	// CA is the cluster CA certificate.
	CA *x509.Certificate
	// Roots holds exactly the cluster CA.
	Roots *x509.CertPool
}

// ValidateNodeName checks that name can be used as a node name: 1–63 bytes
// of ASCII letters, digits, '-' and '.', starting and ending with a letter or
// digit. (Names become DNS SANs and file names.)
func ValidateNodeName(name string) error {
	if name == "" || len(name) > 63 {
		return fmt.Errorf("%w: node name %q must be 1-63 characters", ErrConfig, name)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		alnum := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		if !alnum && !(c == '-' || c == '.') || (i == 0 || i == len(name)-1) && !alnum {
			return fmt.Errorf("%w: node name %q: only letters, digits, '-' and '.' allowed, starting and ending with a letter or digit", ErrConfig, name)
		}
	}
	if strings.Contains(name, "..") {
		return fmt.Errorf("%w: node name %q contains \"..\"", ErrConfig, name)
	}
	return nil
}

func newKey(kt KeyType) (crypto.Signer, error) {
	switch kt {
	case KeyECDSAP256:
		return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case KeyEd25519:
		_, k, err := ed25519.GenerateKey(rand.Reader)
		return k, err
	}
	return nil, fmt.Errorf("%w: unknown key type %d", ErrConfig, kt)
}

func serial() (*big.Int, error) {
	return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
}

// GenerateCA creates a self-signed cluster CA named commonName.
// validity <= 0 means DefaultValidity.
func GenerateCA(commonName string, kt KeyType, validity time.Duration) (*CA, error) {
	if validity <= 0 {
		validity = DefaultValidity
	}
	key, err := newKey(kt)
	if err != nil {
		return nil, fmt.Errorf("transport: generate CA key: %w", err)
	}
	sn, err := serial()
	if err != nil {
		return nil, fmt.Errorf("transport: generate CA serial: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          sn,
		Subject:               pkix.Name{CommonName: commonName, Organization: []string{"blockmirror"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("transport: create CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("transport: parse CA certificate: %w", err)
	}
	return &CA{Cert: cert, Key: key}, nil
}

// IssueNode creates a certificate for node name signed by ca, usable both
// as TLS server and client (serverAuth + clientAuth EKU), with name as CN
// and DNS SAN. validity <= 0 means DefaultValidity.
func (ca *CA) IssueNode(name string, kt KeyType, validity time.Duration) (*Identity, error) {
	return ca.issue(name, nil, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}, kt, validity)
}

// IssueClient creates a certificate for an NBD client (a hypervisor, a
// backup host) named name: clientAuth only, so an NBD server that checks
// client certificates against the cluster CA accepts it, while nodes never
// accept it as a peer (they want both usages, see checkClient).
func (ca *CA) IssueClient(name string, kt KeyType, validity time.Duration) (*Identity, error) {
	return ca.issue(name, nil, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, kt, validity)
}

// IssueServer creates an NBD server certificate for node name that NBD
// clients can check against the address they connect to: serverAuth only,
// DNS SANs name and every host name in hosts, IP SANs every IP address in
// hosts. Nodes do not accept it as a peer.
func (ca *CA) IssueServer(name string, hosts []string, kt KeyType, validity time.Duration) (*Identity, error) {
	return ca.issue(name, hosts, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, kt, validity)
}

func (ca *CA) issue(name string, hosts []string, usages []x509.ExtKeyUsage, kt KeyType, validity time.Duration) (*Identity, error) {
	if err := ValidateNodeName(name); err != nil {
		return nil, err
	}
	if validity <= 0 {
		validity = DefaultValidity
	}
	key, err := newKey(kt)
	if err != nil {
		return nil, fmt.Errorf("transport: generate key for %s: %w", name, err)
	}
	sn, err := serial()
	if err != nil {
		return nil, fmt.Errorf("transport: generate serial for %s: %w", name, err)
	}
	now := time.Now()
	notAfter := now.Add(validity)
	if notAfter.After(ca.Cert.NotAfter) {
		notAfter = ca.Cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber: sn,
		Subject:      pkix.Name{CommonName: name, Organization: []string{"blockmirror"}},
		DNSNames:     []string{name},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  usages,
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else if h != "" && !slices.Contains(tmpl.DNSNames, h) {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	if kt == KeyECDSAP256 {
		tmpl.KeyUsage |= x509.KeyUsageKeyEncipherment
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.Key)
	if err != nil {
		return nil, fmt.Errorf("transport: create certificate for %s: %w", name, err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("transport: parse certificate for %s: %w", name, err)
	}
	return newIdentity(name, leaf, key, ca.Cert), nil
}

func newIdentity(name string, leaf *x509.Certificate, key crypto.PrivateKey, ca *x509.Certificate) *Identity {
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return &Identity{
		Name:  name,
		Cert:  tls.Certificate{Certificate: [][]byte{leaf.Raw}, PrivateKey: key, Leaf: leaf},
		Leaf:  leaf,
		CA:    ca,
		Roots: pool,
	}
}

// CertPEM returns the node certificate in PEM form.
func (id *Identity) CertPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: id.Leaf.Raw})
}

// KeyPEM returns the node private key in PKCS#8 PEM form.
func (id *Identity) KeyPEM() ([]byte, error) { return keyPEM(id.Cert.PrivateKey) }

// CertPEM returns the CA certificate in PEM form.
func (ca *CA) CertPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Cert.Raw})
}

// KeyPEM returns the CA private key in PKCS#8 PEM form.
func (ca *CA) KeyPEM() ([]byte, error) { return keyPEM(ca.Key) }

func keyPEM(k crypto.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, fmt.Errorf("transport: marshal private key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// CertOptions tunes InitCertsWith.
type CertOptions struct {
	// KeyType of newly generated keys (CA and nodes). Default ECDSA P-256.
	KeyType KeyType
	// Validity of new certificates; 0 = DefaultValidity.
	Validity time.Duration
	// CAName is the CA's common name; "" = "blockmirror cluster CA".
	CAName string
	// ReplaceCA generates a new CA even if dir already holds one, and
	// re-issues every name in names. Certificates of other nodes signed by
	// the old CA stop being accepted by nodes that load the new one.
	ReplaceCA bool
}

// InitCerts makes dir a certificate directory holding ca.crt, ca.key and
// NAME.crt/NAME.key for every name in names, with default options. If dir
// already holds a CA it is kept and only missing node pairs are issued.
func InitCerts(dir string, names []string) error {
	_, err := InitCertsWith(dir, names, CertOptions{})
	return err
}

// InitCertsWith is InitCerts with options. It returns the names for which
// a new certificate was written. Keys are written with mode 0600,
// certificates 0644; the directory is created 0700 if missing. An existing
// node pair is checked against the CA and left alone; an existing CA is
// never overwritten unless opts.ReplaceCA.
func InitCertsWith(dir string, names []string, opts CertOptions) (issued []string, err error) {
	for _, n := range names {
		if err := ValidateNodeName(n); err != nil {
			return nil, err
		}
	}
	if opts.CAName == "" {
		opts.CAName = "blockmirror cluster CA"
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("transport: create certificate dir %s: %w", dir, err)
	}
	var ca *CA
	_, statErr := os.Stat(filepath.Join(dir, CACertFile))
	switch {
	case statErr == nil && !opts.ReplaceCA:
		if ca, err = LoadCA(dir); err != nil {
			return nil, err
		}
	case statErr == nil || errors.Is(statErr, fs.ErrNotExist):
		if ca, err = GenerateCA(opts.CAName, opts.KeyType, opts.Validity); err != nil {
			return nil, err
		}
		kp, err := ca.KeyPEM()
		if err != nil {
			return nil, err
		}
		if err := writeFile(filepath.Join(dir, CAKeyFile), kp, 0o600); err != nil {
			return nil, err
		}
		if err := writeFile(filepath.Join(dir, CACertFile), ca.CertPEM(), 0o644); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("transport: stat %s: %w", filepath.Join(dir, CACertFile), statErr)
	}
	for _, name := range names {
		certPath := filepath.Join(dir, name+".crt")
		if _, err := os.Stat(certPath); err == nil && !opts.ReplaceCA {
			// Keep it, but refuse to silently leave a pair the CA does not sign.
			if _, err := LoadNode(dir, name); err != nil {
				return issued, err
			}
			continue
		}
		id, err := ca.IssueNode(name, opts.KeyType, opts.Validity)
		if err != nil {
			return issued, err
		}
		kp, err := id.KeyPEM()
		if err != nil {
			return issued, err
		}
		if err := writeFile(filepath.Join(dir, name+".key"), kp, 0o600); err != nil {
			return issued, err
		}
		if err := writeFile(certPath, id.CertPEM(), 0o644); err != nil {
			return issued, err
		}
		issued = append(issued, name)
	}
	return issued, nil
}

// writeFile writes atomically (temp file + rename) with the given mode.
func writeFile(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("transport: write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name()) // no-op after a successful rename
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return fmt.Errorf("transport: write %s: %w", path, err)
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("transport: write %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("transport: write %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("transport: write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("transport: write %s: %w", path, err)
	}
	return nil
}

const hintInit = "run `blockmirror certs init` to create it"

func readPEM(dir, file, wantType string) (*pem.Block, error) {
	path := filepath.Join(dir, file)
	data, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("transport: load %s from %s: no such file — %s: %w", file, dir, hintInit, err)
		}
		return nil, fmt.Errorf("transport: load %s from %s: %w", file, dir, err)
	}
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			return nil, fmt.Errorf("transport: load %s from %s: no PEM block of type %q", file, dir, wantType)
		}
		if b.Type == wantType || (wantType == "PRIVATE KEY" && strings.HasSuffix(b.Type, "PRIVATE KEY")) {
			return b, nil
		}
	}
}

func loadCert(dir, file string) (*x509.Certificate, error) {
	b, err := readPEM(dir, file, "CERTIFICATE")
	if err != nil {
		return nil, err
	}
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		return nil, fmt.Errorf("transport: load %s from %s: %w", file, dir, err)
	}
	return c, nil
}

func loadKey(dir, file string) (crypto.Signer, error) {
	b, err := readPEM(dir, file, "PRIVATE KEY")
	if err != nil {
		return nil, err
	}
	var k any
	switch b.Type {
	case "EC PRIVATE KEY":
		k, err = x509.ParseECPrivateKey(b.Bytes)
	default:
		k, err = x509.ParsePKCS8PrivateKey(b.Bytes)
	}
	if err != nil {
		return nil, fmt.Errorf("transport: load %s from %s: %w", file, dir, err)
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("transport: load %s from %s: unsupported key type %T", file, dir, k)
	}
	return s, nil
}

func sameKey(pub crypto.PublicKey, priv crypto.Signer) bool {
	type equaler interface{ Equal(crypto.PublicKey) bool }
	e, ok := priv.Public().(equaler)
	return ok && e.Equal(pub)
}

// LoadCA loads ca.crt and ca.key from dir (needed only to issue certificates).
func LoadCA(dir string) (*CA, error) {
	cert, err := loadCert(dir, CACertFile)
	if err != nil {
		return nil, err
	}
	key, err := loadKey(dir, CAKeyFile)
	if err != nil {
		return nil, err
	}
	if !sameKey(cert.PublicKey, key) {
		return nil, fmt.Errorf("transport: load CA from %s: %s does not match %s", dir, CAKeyFile, CACertFile)
	}
	if !cert.IsCA {
		return nil, fmt.Errorf("transport: load CA from %s: %s is not a CA certificate", dir, CACertFile)
	}
	return &CA{Cert: cert, Key: key}, nil
}

// LoadNode loads the identity of node name from dir: ca.crt, NAME.crt and
// NAME.key (ca.key is not needed). It checks that the key matches the
// certificate, that the certificate is signed by the CA for both client
// and server use, and that it names the node.
func LoadNode(dir, name string) (*Identity, error) {
	if err := ValidateNodeName(name); err != nil {
		return nil, err
	}
	ca, err := loadCert(dir, CACertFile)
	if err != nil {
		return nil, err
	}
	leaf, err := loadCert(dir, name+".crt")
	if err != nil {
		return nil, err
	}
	key, err := loadKey(dir, name+".key")
	if err != nil {
		return nil, err
	}
	if !sameKey(leaf.PublicKey, key) {
		return nil, fmt.Errorf("transport: load node %s from %s: %s.key does not match %s.crt", name, dir, name, name)
	}
	id := newIdentity(name, leaf, key, ca)
	if _, err := verifyChain(id.Roots, []*x509.Certificate{leaf}, x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth); err != nil {
		return nil, fmt.Errorf("transport: load node %s from %s: %s.crt is not valid under %s: %w", name, dir, name, CACertFile, err)
	}
	if !certHasName(leaf, name) {
		return nil, fmt.Errorf("transport: load node %s from %s: %s.crt is issued to %q, not %q", name, dir, name, certName(leaf), name)
	}
	return id, nil
}

// equalFoldASCII compares node names case-insensitively.
func equalFoldASCII(a, b string) bool { return bytes.EqualFold([]byte(a), []byte(b)) }

// File names of a certificate directory in the layout of qemu's
// tls-creds-x509 object (dir=) and libnbd's tls-certificates (format).
const (
	PEMCACert     = "ca-cert.pem"
	PEMClientCert = "client-cert.pem"
	PEMClientKey  = "client-key.pem"
	PEMServerCert = "server-cert.pem"
	PEMServerKey  = "server-key.pem"
)

// WritePEMDir writes id's certificate and key into dir in the qemu/libnbd
// layout, with the cluster CA as ca-cert.pem: client-cert.pem and
// client-key.pem, or server-cert.pem and server-key.pem when server is
// set. dir is created 0700 if missing; the key is written 0600, the
// certificates 0644. Existing files are never overwritten: the call fails
// naming them, before writing anything.
func WritePEMDir(dir string, id *Identity, server bool) error {
	certFile, keyFile := PEMClientCert, PEMClientKey
	if server {
		certFile, keyFile = PEMServerCert, PEMServerKey
	}
	kp, err := id.KeyPEM()
	if err != nil {
		return err
	}
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: id.CA.Raw})
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("transport: create certificate dir %s: %w", dir, err)
	}
	files := []struct {
		name string
		data []byte
		mode os.FileMode
	}{{keyFile, kp, 0o600}, {certFile, id.CertPEM(), 0o644}, {PEMCACert, caPEM, 0o644}}
	for _, f := range files {
		path := filepath.Join(dir, f.name)
		if _, err := os.Lstat(path); err == nil {
			if f.name == PEMCACert {
				if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, caPEM) {
					continue
				}
			}
			return fmt.Errorf("transport: %s already exists; remove it or write to another directory", path)
		}
	}
	for _, f := range files {
		path := filepath.Join(dir, f.name)
		if _, err := os.Lstat(path); err == nil {
			continue // the same CA certificate
		}
		if err := writeFile(path, f.data, f.mode); err != nil {
			return err
		}
	}
	return nil
}
