package mtls

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Lifetimes of what `meshlet certs` makes.
const (
	DefaultCALifetime   = 10 * 365 * 24 * time.Hour
	DefaultLeafLifetime = 90 * 24 * time.Hour
)

// CA is a certificate authority for one trust domain: a self-signed ECDSA P-256 certificate and its key.
type CA struct {
	Cert *x509.Certificate
	Key  *ecdsa.PrivateKey
}

// NewCA creates a CA for trustDomain, valid for lifetime.
func NewCA(trustDomain string, lifetime time.Duration) (*CA, error) {
	if trustDomain == "" {
		return nil, errors.New("trust domain is empty")
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "meshlet CA " + trustDomain},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(lifetime),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		URIs:                  []*url.URL{{Scheme: "spiffe", Host: trustDomain}},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &CA{Cert: cert, Key: key}, nil
}

// Issue signs a leaf certificate for id, valid from notBefore to notAfter, usable by servers and clients.
func (ca *CA) Issue(id ID, notBefore, notAfter time.Time) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: id.Service},
		NotBefore:    notBefore,
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		URIs:         []*url.URL{id.URL()},
		DNSNames:     []string{id.Service},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.Key)
	if err != nil {
		return nil, nil, err
	}
	cert, err := x509.ParseCertificate(der)
	return cert, key, err
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	return n
}

// WriteCA writes ca.crt and ca.key into dir; it refuses to overwrite an existing CA.
func (ca *CA) WriteCA(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for _, f := range []string{"ca.crt", "ca.key"} {
		if _, err := os.Lstat(filepath.Join(dir, f)); err == nil { // a symlink, even dangling, is there too
			return fmt.Errorf("%s already exists: not overwriting a CA", filepath.Join(dir, f))
		}
	}
	if err := writePEM(filepath.Join(dir, "ca.key"), 0o600, keyBlock(ca.Key)); err != nil {
		return err
	}
	return writePEM(filepath.Join(dir, "ca.crt"), 0o644, &pem.Block{Type: "CERTIFICATE", Bytes: ca.Cert.Raw})
}

// LoadCA reads ca.crt and ca.key from dir.
func LoadCA(dir string) (*CA, error) {
	certPEM, err := os.ReadFile(filepath.Join(dir, "ca.crt"))
	if err != nil {
		return nil, err
	}
	keyPEM, err := os.ReadFile(filepath.Join(dir, "ca.key"))
	if err != nil {
		return nil, err
	}
	certs, err := parseCerts(certPEM)
	if err != nil || len(certs) == 0 {
		return nil, fmt.Errorf("%s: no certificate: %v", filepath.Join(dir, "ca.crt"), err)
	}
	key, err := parseECKey(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, "ca.key"), err)
	}
	return &CA{Cert: certs[0], Key: key}, nil
}

// WriteLeaf writes <name>.crt (the leaf) and <name>.key into dir. name must be a single file name (no path
// separator, not "." or ".."): nothing is ever written outside dir.
func WriteLeaf(dir, name string, cert *x509.Certificate, key *ecdsa.PrivateKey) error {
	if name == "" || name == "." || name == ".." || strings.ContainsAny(name, `/\`) || name != filepath.Base(name) {
		return fmt.Errorf("%q is not a file name: certificates are written into %s only", name, dir)
	}
	if err := writePEM(filepath.Join(dir, name+".key"), 0o600, keyBlock(key)); err != nil {
		return err
	}
	return writePEM(filepath.Join(dir, name+".crt"), 0o644, &pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})
}

func keyBlock(key *ecdsa.PrivateKey) *pem.Block {
	der, _ := x509.MarshalECPrivateKey(key)
	return &pem.Block{Type: "EC PRIVATE KEY", Bytes: der}
}

// writePEM writes atomically, so a reader never sees half a file: a new temporary file in the same directory,
// created exclusively under a random name (O_EXCL: no symlink or existing file is followed or reused) with mode
// 0600, written, set to mode, synced, then renamed over path (a file or symlink already at path is replaced, not
// written through, and its mode is not kept). The temporary file is removed on failure.
func writePEM(path string, mode os.FileMode, b *pem.Block) (err error) {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*.tmp")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if _, err = f.Write(pem.EncodeToMemory(b)); err != nil {
		return err
	}
	if err = f.Chmod(mode); err != nil {
		return err
	}
	if err = f.Sync(); err != nil {
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func parseCerts(data []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			return out, nil
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
}

func parseECKey(data []byte) (*ecdsa.PrivateKey, error) {
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			return nil, errors.New("no private key")
		}
		switch b.Type {
		case "EC PRIVATE KEY":
			return x509.ParseECPrivateKey(b.Bytes)
		case "PRIVATE KEY":
			k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
			if err != nil {
				return nil, err
			}
			if ek, ok := k.(*ecdsa.PrivateKey); ok {
				return ek, nil
			}
			return nil, errors.New("the CA key must be ECDSA")
		}
	}
}
