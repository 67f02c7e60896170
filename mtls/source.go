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

	"github.com/hashicorp/consul/api"
)

// Bundle is what a sidecar proves and trusts at one moment: its leaf certificate and identity, and the roots it
// trusts, each bound to the one trust domain it may vouch for. Bundles are immutable; a rotation makes a new
// one. Make them with NewBundle (or LoadFiles, ConsulBundle); a Bundle built otherwise trusts no root.
type Bundle struct {
	Cert *tls.Certificate // the leaf (and its chain) with its private key
	Leaf *x509.Certificate
	ID   ID
	// TrustDomain is the local trust domain, the leaf's: only peers of this trust domain are accepted (meshlet
	// does not federate).
	TrustDomain string
	// Roots are the roots that vouch for a trust domain, each with it; a peer's chain is verified against the
	// roots of the trust domain its SPIFFE ID names, and no other.
	Roots []Root
	// Warnings say what the bundle leaves unused: roots that vouch for nothing (see NewBundle) and roots of
	// another trust domain than the local one. Nil when every root vouches for the local trust domain.
	Warnings []string

	pools map[string]*x509.CertPool // Roots by trust domain
}

// Root is a trust anchor and the trust domain it vouches for.
type Root struct {
	Cert        *x509.Certificate
	TrustDomain string
}

// BundleReady is the readiness of a Source whose current bundle is b (FileSource, consul.CASource): not ready
// without one (missing says why), or while the leaf is expired or not valid yet.
func BundleReady(b *Bundle, missing func() error) error {
	now := time.Now()
	switch {
	case b == nil:
		return missing()
	case now.After(b.Leaf.NotAfter):
		return fmt.Errorf("certificate %s expired at %s", b.ID, b.Leaf.NotAfter.Format(time.RFC3339))
	case now.Before(b.Leaf.NotBefore):
		return fmt.Errorf("certificate %s is not valid before %s", b.ID, b.Leaf.NotBefore.Format(time.RFC3339))
	}
	return nil
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

// NewBundle builds a bundle from PEM data: the leaf (with its chain) and its key, and caPEM, the roots (a
// ca_file). The leaf must be an X.509-SVID (CertID) and chain to a root of its own trust domain, the local one.
// Each root is bound to the trust domain its spiffe:// URI SAN names (as `meshlet certs` and Consul's CA write
// it). A root that names none vouches for the local trust domain when no root of caPEM names a trust domain
// (a private CA or a cert-manager issuer), and for nothing when another root does: nothing then says which
// trust domain it belongs to. A root whose URI SANs are not a valid SPIFFE ID, or name two trust domains,
// vouches for nothing. Roots that vouch for nothing, or for another trust domain, are listed in Warnings.
func NewBundle(certPEM, keyPEM, caPEM []byte) (*Bundle, error) {
	cert, leaf, id, err := keyPair(certPEM, keyPEM)
	if err != nil {
		return nil, err
	}
	certs, err := parseCerts(caPEM)
	if err != nil {
		return nil, fmt.Errorf("CA bundle: %w", err)
	}
	if len(certs) == 0 {
		return nil, errors.New("CA bundle holds no certificate")
	}
	roots, warnings := bindRoots(certs, id.TrustDomain)
	return newBundle(cert, leaf, id, roots, warnings)
}

// keyPair parses a leaf (with its chain) and its key, and reads the leaf's identity.
func keyPair(certPEM, keyPEM []byte) (*tls.Certificate, *x509.Certificate, ID, error) {
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, nil, ID{}, fmt.Errorf("certificate and key: %w", err)
	}
	leaf := cert.Leaf
	if leaf == nil {
		if leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return nil, nil, ID{}, err
		}
	}
	id, err := CertID(leaf)
	if err != nil {
		return nil, nil, ID{}, fmt.Errorf("the certificate: %w", err)
	}
	return &cert, leaf, id, nil
}

// bindRoots binds the roots of a CA file to their trust domains (see NewBundle); local is the leaf's.
func bindRoots(certs []*x509.Certificate, local string) ([]Root, []string) {
	named := make([]string, len(certs))
	var warnings []string
	anyNamed := false
	for i, c := range certs {
		td, err := rootTrustDomain(c)
		if err != nil {
			warnings = append(warnings, fmt.Sprintf("root %s vouches for nothing: %v", rootName(c), err))
			named[i] = "-"
			continue
		}
		named[i] = td
		anyNamed = anyNamed || td != ""
	}
	var roots []Root
	for i, c := range certs {
		switch td := named[i]; {
		case td == "-":
		case td != "":
			roots = append(roots, Root{Cert: c, TrustDomain: td})
		case !anyNamed:
			roots = append(roots, Root{Cert: c, TrustDomain: local})
		default:
			warnings = append(warnings, fmt.Sprintf("root %s vouches for nothing: it names no trust domain "+
				"(no spiffe:// URI SAN) while other roots of the file do", rootName(c)))
		}
	}
	return roots, warnings
}

// ConsulBundle makes a bundle of a leaf and the Connect CA roots. Consul lists its roots with the trust domain
// they belong to (CARootList.TrustDomain), and each root is bound to it, whether or not its certificate names a
// trust domain (Vault and other providers may write none); a root whose certificate names another trust domain,
// or an invalid one, vouches for nothing (see NewBundle). consul.CASource makes its bundles with it.
func ConsulBundle(leaf *api.LeafCert, list *api.CARootList) (*Bundle, error) {
	cert, leafCert, id, err := keyPair([]byte(leaf.CertPEM), []byte(leaf.PrivateKeyPEM))
	if err != nil {
		return nil, err
	}
	var roots []Root
	var warnings []string
	for _, r := range list.Roots {
		certs, err := parseCerts([]byte(r.RootCertPEM))
		if err != nil || len(certs) == 0 {
			warnings = append(warnings, fmt.Sprintf("root %s from consul does not parse: %v", r.ID, err))
			continue
		}
		for _, c := range certs {
			named, err := rootTrustDomain(c)
			switch {
			case list.TrustDomain == "":
				warnings = append(warnings, fmt.Sprintf("root %s vouches for nothing: consul names no trust domain", rootName(c)))
			case err != nil:
				warnings = append(warnings, fmt.Sprintf("root %s vouches for nothing: %v", rootName(c), err))
			case named != "" && named != list.TrustDomain:
				warnings = append(warnings, fmt.Sprintf("root %s vouches for nothing: it names trust domain %s, "+
					"consul lists it for %s", rootName(c), named, list.TrustDomain))
			default:
				roots = append(roots, Root{Cert: c, TrustDomain: list.TrustDomain})
			}
		}
	}
	return newBundle(cert, leafCert, id, roots, warnings)
}

// rootName names a root in messages: its subject and serial number.
func rootName(c *x509.Certificate) string {
	return fmt.Sprintf("%q (serial %x)", c.Subject.String(), c.SerialNumber)
}

// newBundle checks that leaf chains to a root of its own trust domain and makes the bundle. An expired leaf is
// checked as of its last valid second: it still loads (meshlet then runs not ready, and a renewed file is
// picked up), while a leaf from another CA does not.
func newBundle(cert *tls.Certificate, leaf *x509.Certificate, id ID, roots []Root, warnings []string) (*Bundle, error) {
	b := assemble(cert, leaf, id, roots, warnings)
	pool := b.pools[b.TrustDomain]
	if pool == nil {
		return nil, fmt.Errorf("the certificate does not chain to the CA bundle: it holds no root of the "+
			"certificate's trust domain %s", b.TrustDomain)
	}
	at := time.Now()
	if last := leaf.NotAfter.Add(-time.Second); last.Before(at) {
		at = last
	}
	chain, err := parseChain(cert.Certificate)
	if err == nil {
		err = verifyChain(chain, pool, x509.ExtKeyUsageAny, at)
	}
	if err != nil {
		return nil, fmt.Errorf("the certificate does not chain to the CA bundle's roots of trust domain %s: %w",
			b.TrustDomain, err)
	}
	return b, nil
}

// assemble makes a bundle of its parts without checking them: its pools of roots by trust domain, and a
// warning for each root of another trust domain than the local one (id's).
func assemble(cert *tls.Certificate, leaf *x509.Certificate, id ID, roots []Root, warnings []string) *Bundle {
	b := &Bundle{Cert: cert, Leaf: leaf, ID: id, TrustDomain: id.TrustDomain, Roots: roots, Warnings: warnings,
		pools: map[string]*x509.CertPool{}}
	for _, r := range roots {
		if b.pools[r.TrustDomain] == nil {
			b.pools[r.TrustDomain] = x509.NewCertPool()
		}
		b.pools[r.TrustDomain].AddCert(r.Cert)
		if r.TrustDomain != b.TrustDomain {
			b.Warnings = append(b.Warnings, fmt.Sprintf("root %s is of trust domain %s, not the local %s: never "+
				"used (only peers of the local trust domain are accepted)", rootName(r.Cert), r.TrustDomain, b.TrustDomain))
		}
	}
	return b
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
	LogWarnings(log, b, "ca_file", cfg.CAFile)
	return s, nil
}

// LogWarnings logs the warnings of a bundle just loaded (at Warn, one line each), with the key and value that say
// where it came from (FileSource: "ca_file" and the file; consul.CASource: "source", SourceConsul).
func LogWarnings(log *slog.Logger, b *Bundle, key, where string) {
	for _, w := range b.Warnings {
		log.Warn("CA bundle: "+w, key, where, "trust_domain", b.TrustDomain)
	}
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

// Ready is the readiness of the certificate: not ready once the leaf has expired (or before it is valid).
func (s *FileSource) Ready() error {
	return BundleReady(s.Bundle(), func() error { return errors.New("no valid certificate loaded") })
}

// Run checks the files every ReloadInterval until ctx ends; it returns nil then.
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
		s.log.Info("certificate reloaded", "id", b.ID.String(), "not_after", b.Leaf.NotAfter, "roots", len(b.Roots))
		LogWarnings(s.log, b, "ca_file", s.cfg.CAFile)
	}
	if s.OnReload != nil {
		s.OnReload(b, err)
	}
}

// parseChain parses a DER chain, leaf first.
func parseChain(raw [][]byte) ([]*x509.Certificate, error) {
	certs := make([]*x509.Certificate, len(raw))
	for i, r := range raw {
		c, err := x509.ParseCertificate(r)
		if err != nil {
			return nil, err
		}
		certs[i] = c
	}
	return certs, nil
}

// verifyChain checks a chain (leaf first, then the intermediates the peer sent) against roots, as of at (zero:
// now), for usage.
func verifyChain(certs []*x509.Certificate, roots *x509.CertPool, usage x509.ExtKeyUsage, at time.Time) error {
	if len(certs) == 0 {
		return errNoCert
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	_, err := certs[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter,
		KeyUsages: []x509.ExtKeyUsage{usage}, CurrentTime: at})
	return err
}

var errNoCert = errors.New("no certificate")
