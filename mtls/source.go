package mtls

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync/atomic"
	"time"
)

// Bundle is what a sidecar proves and trusts at one moment: its leaf certificate and identity, and the roots of
// its trust domain. Bundles are immutable; a rotation makes a new one.
type Bundle struct {
	Cert        *tls.Certificate // the leaf (and its chain) with its private key
	Leaf        *x509.Certificate
	ID          ID
	Roots       *x509.CertPool
	RootCerts   []*x509.Certificate
	TrustDomain string
}

// Source provides the current bundle. Bundle never blocks; it returns nil until a first bundle is loaded.
type Source interface {
	Bundle() *Bundle
}

// FilesConfig is the tls section of the config file for certificates on disk (as `meshlet certs`, Kubernetes
// secrets or cert-manager write them).
type FilesConfig struct {
	// Source is where certificates come from: "files" (the default when cert_file is set) or "consul" (the
	// local agent's Connect CA; needs discovery.consul).
	Source   string `yaml:"source" json:"source"`
	CertFile string `yaml:"cert_file" json:"cert_file"` // the leaf, PEM, optionally followed by intermediates
	KeyFile  string `yaml:"key_file" json:"key_file"`   // its private key, PEM
	CAFile   string `yaml:"ca_file" json:"ca_file"`     // the trust domain's roots, PEM; several during a CA rotation
	// ReloadInterval is how often the files are checked for changes. Default 2s.
	ReloadInterval time.Duration `yaml:"reload_interval" json:"reload_interval"`
	// MinVersion is the lowest TLS version accepted between sidecars: "1.3" (default) or "1.2".
	MinVersion string `yaml:"min_version" json:"min_version"`
}

// DefaultReloadInterval is how often file certificates are checked for changes.
const DefaultReloadInterval = 2 * time.Second

// Certificate sources.
const (
	SourceFiles  = "files"
	SourceConsul = "consul"
)

// Configured reports whether the section asks for TLS at all.
func (c *FilesConfig) Configured() bool {
	return c.Source == SourceConsul || c.CertFile != "" || c.KeyFile != "" || c.CAFile != ""
}

// SetDefaults fills zero fields.
func (c *FilesConfig) SetDefaults() {
	if c.Source == "" && c.Configured() {
		c.Source = SourceFiles
	}
	if c.ReloadInterval == 0 {
		c.ReloadInterval = DefaultReloadInterval
	}
	if c.MinVersion == "" {
		c.MinVersion = "1.3"
	}
}

// Validate reports problems with their field paths under prefix ("tls").
func (c *FilesConfig) Validate(prefix string) error {
	var errs []error
	switch c.Source {
	case SourceFiles:
		for _, f := range []struct{ name, v string }{{"cert_file", c.CertFile}, {"key_file", c.KeyFile}, {"ca_file", c.CAFile}} {
			if f.v == "" {
				errs = append(errs, fmt.Errorf("%s.%s: required with certificates from files", prefix, f.name))
			}
		}
	case SourceConsul:
		for _, f := range []struct{ name, v string }{{"cert_file", c.CertFile}, {"key_file", c.KeyFile}, {"ca_file", c.CAFile}} {
			if f.v != "" {
				errs = append(errs, fmt.Errorf("%s.%s: not used with source consul", prefix, f.name))
			}
		}
	case "":
	default:
		errs = append(errs, fmt.Errorf("%s.source: %q must be files or consul", prefix, c.Source))
	}
	if _, err := tlsVersion(c.MinVersion); err != nil {
		errs = append(errs, fmt.Errorf("%s.min_version: %w", prefix, err))
	}
	if c.ReloadInterval < 0 {
		errs = append(errs, fmt.Errorf("%s.reload_interval: must not be negative", prefix))
	}
	return errors.Join(errs...)
}

func tlsVersion(v string) (uint16, error) {
	switch v {
	case "1.3", "":
		return tls.VersionTLS13, nil
	case "1.2":
		return tls.VersionTLS12, nil
	}
	return 0, fmt.Errorf("%q must be 1.2 or 1.3", v)
}

// LoadFiles reads and checks a bundle: the key matches the leaf, the leaf has a SPIFFE ID and chains to one of
// the roots. The trust domain is the roots' (their spiffe:// URI SAN), else the leaf's.
func LoadFiles(c FilesConfig) (*Bundle, error) {
	certPEM, err := os.ReadFile(c.CertFile)
	if err != nil {
		return nil, err
	}
	keyPEM, err := os.ReadFile(c.KeyFile)
	if err != nil {
		return nil, err
	}
	caPEM, err := os.ReadFile(c.CAFile)
	if err != nil {
		return nil, err
	}
	return NewBundle(certPEM, keyPEM, caPEM)
}

// NewBundle builds a bundle from PEM data (see LoadFiles).
func NewBundle(certPEM, keyPEM, caPEM []byte) (*Bundle, error) {
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("certificate and key: %w", err)
	}
	leaf := cert.Leaf
	if leaf == nil {
		if leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return nil, err
		}
	}
	id, err := CertID(leaf)
	if err != nil {
		return nil, err
	}
	roots, err := parseCerts(caPEM)
	if err != nil {
		return nil, fmt.Errorf("CA bundle: %w", err)
	}
	if len(roots) == 0 {
		return nil, errors.New("CA bundle holds no certificate")
	}
	pool := x509.NewCertPool()
	td := ""
	for _, r := range roots {
		pool.AddCert(r)
		if t := TrustDomainOf(r); t != "" && td == "" {
			td = t
		}
	}
	if td == "" {
		td = id.TrustDomain
	}
	b := &Bundle{Cert: &cert, Leaf: leaf, ID: id, Roots: pool, RootCerts: roots, TrustDomain: td}
	// An expired leaf is checked as of its last valid second: it still loads (meshlet then runs not ready, and a
	// renewed file is picked up), while a leaf from another CA does not.
	at := time.Now()
	if last := leaf.NotAfter.Add(-time.Second); last.Before(at) {
		at = last
	}
	if _, err := b.verifyAt(cert.Certificate, x509.ExtKeyUsageAny, at); err != nil {
		return nil, fmt.Errorf("the certificate does not chain to the CA bundle: %w", err)
	}
	if id.TrustDomain != td {
		return nil, fmt.Errorf("the certificate's trust domain %q is not the CA's %q", id.TrustDomain, td)
	}
	return b, nil
}

// FileSource serves a bundle loaded from files and reloads it when they change. A change that does not load
// (a half-written file, a key that does not match) is logged and the previous bundle stays in use.
type FileSource struct {
	cfg      FilesConfig
	log      *slog.Logger
	cur      atomic.Pointer[Bundle]
	stamp    []byte
	OnReload func(*Bundle, error) // called after every reload attempt (nil error: rotated); optional
}

// NewFileSource loads the files once; it fails when they do not make a valid bundle.
func NewFileSource(cfg FilesConfig, log *slog.Logger) (*FileSource, error) {
	cfg.SetDefaults()
	b, err := LoadFiles(cfg)
	if err != nil {
		return nil, err
	}
	s := &FileSource{cfg: cfg, log: log}
	s.cur.Store(b)
	s.stamp = s.fingerprint()
	return s, nil
}

// Bundle implements Source.
func (s *FileSource) Bundle() *Bundle { return s.cur.Load() }

// fingerprint is the files' sizes and modification times (and, for symlinks as Kubernetes mounts them, their
// targets' identities): a change in any means a reload.
func (s *FileSource) fingerprint() []byte {
	var b bytes.Buffer
	for _, f := range []string{s.cfg.CertFile, s.cfg.KeyFile, s.cfg.CAFile} {
		if fi, err := os.Stat(f); err == nil {
			fmt.Fprintf(&b, "%s:%d:%d;", f, fi.Size(), fi.ModTime().UnixNano())
		}
	}
	return b.Bytes()
}

// Run checks the files every ReloadInterval until ctx ends.
func (s *FileSource) Run(ctx context.Context) error {
	t := time.NewTicker(s.cfg.ReloadInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			s.check()
		}
	}
}

// check reloads the bundle if the files changed.
func (s *FileSource) check() {
	fp := s.fingerprint()
	if bytes.Equal(fp, s.stamp) {
		return
	}
	b, err := LoadFiles(s.cfg)
	if err != nil {
		s.log.Error("certificate files changed but do not load; keeping the current certificate",
			"cert_file", s.cfg.CertFile, "error", err.Error())
	} else {
		s.stamp = fp
		s.cur.Store(b)
		s.log.Info("certificate reloaded", "id", b.ID.String(), "not_after", b.Leaf.NotAfter)
	}
	if s.OnReload != nil {
		s.OnReload(b, err)
	}
}

// verify checks a peer's chain against the bundle's roots now and returns the leaf.
func (b *Bundle) verify(raw [][]byte, usage x509.ExtKeyUsage) (*x509.Certificate, error) {
	return b.verifyAt(raw, usage, time.Time{})
}

// verifyAt checks a chain as of at (zero: now).
func (b *Bundle) verifyAt(raw [][]byte, usage x509.ExtKeyUsage, at time.Time) (*x509.Certificate, error) {
	if len(raw) == 0 {
		return nil, errNoCert
	}
	certs := make([]*x509.Certificate, len(raw))
	for i, r := range raw {
		c, err := x509.ParseCertificate(r)
		if err != nil {
			return nil, err
		}
		certs[i] = c
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	_, err := certs[0].Verify(x509.VerifyOptions{Roots: b.Roots, Intermediates: inter,
		KeyUsages: []x509.ExtKeyUsage{usage}, CurrentTime: at})
	return certs[0], err
}

var errNoCert = errors.New("no certificate")
