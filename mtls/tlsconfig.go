package mtls

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"time"
)

// Reasons a handshake fails: the reason label of meshlet_tls_handshake_failures_total.
const (
	ReasonUnknownCA   = "unknown_ca"   // the peer's certificate does not chain to our roots
	ReasonBadIdentity = "bad_identity" // no SPIFFE ID, another trust domain, or not the identity expected
	ReasonExpired     = "expired"      // the peer's certificate is expired or not yet valid
	ReasonNoCert      = "no_cert"      // the client sent no certificate
	ReasonPlaintext   = "plaintext"    // a plaintext connection on an mTLS-only listener
	ReasonOther       = "other"        // anything else (protocol versions, timeouts, resets)
)

// HandshakeError is a peer verification failure with its reason.
type HandshakeError struct {
	Reason string
	Err    error
}

func (e *HandshakeError) Error() string { return e.Reason + ": " + e.Err.Error() }
func (e *HandshakeError) Unwrap() error { return e.Err }

// Reason returns the failure reason of a handshake error.
func Reason(err error) string {
	var he *HandshakeError
	if errors.As(err, &he) {
		return he.Reason
	}
	var re tls.RecordHeaderError
	if errors.As(err, &re) {
		return ReasonPlaintext
	}
	var ae tls.AlertError
	if errors.As(err, &ae) {
		switch tls.AlertError(ae) {
		case 42, 116: // bad_certificate, certificate_required (TLS 1.3)
			return ReasonNoCert
		}
	}
	return ReasonOther
}

// verifyPeer checks a peer's chain (leaf first, as the peer sent it) and identity: the leaf must be an
// X.509-SVID (CertID), chain to a root of the trust domain its SPIFFE ID names (roots are bound to their trust
// domains: a root of another trust domain cannot vouch for it), be valid now, allow usage (server auth for a
// server, client auth for a client), and name the local trust domain; then want (nil: any identity) decides.
func (b *Bundle) verifyPeer(certs []*x509.Certificate, usage x509.ExtKeyUsage, want func(ID) error) (ID, error) {
	if len(certs) == 0 {
		return ID{}, &HandshakeError{ReasonNoCert, errNoCert}
	}
	id, err := CertID(certs[0])
	if err != nil {
		return ID{}, &HandshakeError{ReasonBadIdentity, err}
	}
	roots := b.pools[id.TrustDomain]
	if roots == nil {
		return ID{}, &HandshakeError{ReasonUnknownCA, fmt.Errorf("%s: no root of trust domain %s is trusted", id, id.TrustDomain)}
	}
	if err := verifyChain(certs, roots, usage, time.Time{}); err != nil {
		var ie x509.CertificateInvalidError
		var ua x509.UnknownAuthorityError
		switch {
		case errors.As(err, &ie) && ie.Reason == x509.Expired:
			return ID{}, &HandshakeError{ReasonExpired, err}
		case errors.As(err, &ua):
			return ID{}, &HandshakeError{ReasonUnknownCA, err}
		}
		return ID{}, &HandshakeError{ReasonOther, err}
	}
	if id.TrustDomain != b.TrustDomain {
		return ID{}, &HandshakeError{ReasonBadIdentity, fmt.Errorf("%s is not of trust domain %s", id, b.TrustDomain)}
	}
	if want != nil {
		if err := want(id); err != nil {
			return ID{}, &HandshakeError{ReasonBadIdentity, err}
		}
	}
	return id, nil
}

// ServerConfig is the inbound listener's TLS: TLS 1.3 (or minVersion), ALPN h2 and http/1.1, the current leaf
// from src at every handshake, and a client certificate required and verified (Bundle.verifyPeer) against the
// current roots at every handshake, full or resumed: any identity of the local trust domain (authorization
// comes after, per connection or request).
func ServerConfig(src Source, minVersion string) (*tls.Config, error) {
	v, err := tlsVersion(minVersion)
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		MinVersion: v,
		NextProtos: []string{"h2", "http/1.1"},
		// Requested, then required and verified below against roots that rotate, so that a client without a
		// certificate is refused by verifyPeer with its own reason (no_cert).
		ClientAuth:     tls.RequestClientCert,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return leaf(src) },
		// VerifyConnection, unlike VerifyPeerCertificate, runs on resumed handshakes too: a session ticket
		// carries the client's certificates, which are checked again against the roots of this moment.
		VerifyConnection: func(cs tls.ConnectionState) error {
			return verifyWith(src, cs.PeerCertificates, x509.ExtKeyUsageClientAuth, nil)
		},
	}, nil
}

// InboundConfig is ServerConfig whose versions and cipher suites are decided at each handshake: minVersion and
// Go's, unless mesh (nil: never) says otherwise (MeshTLS). Consul's mesh config entry (TLS.Incoming) is such a
// source: Envoy clients that stop at TLS 1.2 are accepted only where the operator allows them.
func InboundConfig(src Source, minVersion string, mesh func() MeshTLS) (*tls.Config, error) {
	base, err := ServerConfig(src, minVersion)
	if err != nil || mesh == nil {
		return base, err
	}
	fileMin := base.MinVersion
	var cache meshConfigs
	plain := base.Clone()
	base.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
		m := mesh()
		if m.Min == "" && m.Max == "" && len(m.CipherSuites) == 0 {
			return nil, nil // base itself
		}
		return cache.get(plain, fileMin, m), nil
	}
	return base, nil
}

// ClientConfig is the TLS of a connection to another sidecar: the current leaf as client certificate, the
// server verified against the current roots at every handshake (full or resumed), and its identity checked by
// want (nil: any identity of the local trust domain). alpn is the one protocol to offer ("h2", or "http/1.1" for upgrades; "" for none, raw TCP).
func ClientConfig(src Source, minVersion, alpn string, want func(ID) error) (*tls.Config, error) {
	return ClientConfigMesh(src, minVersion, MeshTLS{}, alpn, want)
}

// ClientConfigMesh is ClientConfig with what the mesh says of outgoing TLS (Consul's mesh entry, TLS.Outgoing).
func ClientConfigMesh(src Source, minVersion string, mesh MeshTLS, alpn string, want func(ID) error) (*tls.Config, error) {
	v, err := tlsVersion(minVersion)
	if err != nil {
		return nil, err
	}
	var protos []string
	if alpn != "" {
		protos = []string{alpn}
	}
	c := &tls.Config{
		MinVersion: v,
		NextProtos: protos,
		// The chain and the SPIFFE identity are verified below against roots that rotate; host names mean
		// nothing between sidecars.
		InsecureSkipVerify:   true,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return leaf(src) },
		// On every handshake, resumed ones too (a caller may set ClientSessionCache).
		VerifyConnection: func(cs tls.ConnectionState) error {
			return verifyWith(src, cs.PeerCertificates, x509.ExtKeyUsageServerAuth, want)
		},
	}
	mesh.apply(c, v)
	return c, nil
}

var errNoBundle = errors.New("no certificate loaded")

// leaf is the current certificate of src, read at each handshake (so a rotation applies at once).
func leaf(src Source) (*tls.Certificate, error) {
	b := src.Bundle()
	if b == nil {
		return nil, errNoBundle
	}
	return b.Cert, nil
}

// verifyWith checks a peer's chain against the current roots of src; without a bundle it refuses.
func verifyWith(src Source, certs []*x509.Certificate, usage x509.ExtKeyUsage, want func(ID) error) error {
	b := src.Bundle()
	if b == nil {
		return errNoBundle
	}
	_, err := b.verifyPeer(certs, usage, want)
	return err
}
