// Package mtls gives meshlet its service identity and mutual TLS between sidecars: SPIFFE IDs in Consul's form,
// certificate sources (files made by `meshlet certs` or cert-manager, reloaded on change), and *tls.Config values
// that serve the current certificate through GetCertificate/GetClientCertificate, so rotation never closes an
// open connection and new handshakes use the new certificate at once. Intentions decides callers by Consul's
// intentions; package consul reads them, and the Connect CA's certificates, from the agent.
package mtls

import (
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"fmt"
	"net/url"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Defaults of a SPIFFE ID's path, as Consul names things.
const (
	DefaultNamespace  = "default"
	DefaultDatacenter = "dc1"
)

// ID is a service identity in Consul's form: spiffe://<trust-domain>/ns/<namespace>/dc/<datacenter>/svc/<service>,
// or spiffe://<trust-domain>/ap/<partition>/ns/<namespace>/dc/<datacenter>/svc/<service> for an admin partition
// other than the default (Consul Enterprise).
type ID struct {
	TrustDomain string
	Partition   string // "" for the default partition (no /ap/ segment)
	Namespace   string
	Datacenter  string
	Service     string
}

// DefaultPartition is the admin partition of an ID without an /ap/ segment.
const DefaultPartition = "default"

// PartitionName returns the ID's admin partition, DefaultPartition when the ID names none.
func (id ID) PartitionName() string {
	if id.Partition == "" {
		return DefaultPartition
	}
	return id.Partition
}

// path is the ID's path: [/ap/<partition>]/ns/<namespace>/dc/<datacenter>/svc/<service>.
func (id ID) path() string {
	p := "/ns/" + id.Namespace + "/dc/" + id.Datacenter + "/svc/" + id.Service
	if id.Partition != "" && id.Partition != DefaultPartition {
		p = "/ap/" + id.Partition + p
	}
	return p
}

// ServiceID returns the identity of service in trust domain td, with the default namespace and datacenter when
// those are empty.
func ServiceID(td, ns, dc, service string) ID {
	if ns == "" {
		ns = DefaultNamespace
	}
	if dc == "" {
		dc = DefaultDatacenter
	}
	return ID{TrustDomain: td, Namespace: ns, Datacenter: dc, Service: service}
}

// String renders the SPIFFE URI.
func (id ID) String() string {
	return "spiffe://" + id.TrustDomain + id.path()
}

// SNI is the TLS server name Consul gives the service of the ID, as its Envoy sidecars send it and its
// terminating and mesh gateways route by it (Consul's connect.ServiceSNI, without a subset):
// <service>.<namespace>.<datacenter>.internal.<trust-domain> in the default partition, and
// <service>.<namespace>.<partition>.<datacenter>.internal-v1.<trust-domain> in another.
func (id ID) SNI() string {
	ns := id.Namespace
	if ns == "" {
		ns = DefaultNamespace
	}
	if p := id.PartitionName(); p != DefaultPartition {
		return id.Service + "." + ns + "." + p + "." + id.Datacenter + ".internal-v1." + id.TrustDomain
	}
	return id.Service + "." + ns + "." + id.Datacenter + ".internal." + id.TrustDomain
}

// URL renders the SPIFFE URI as a *url.URL, for a certificate's URI SAN.
func (id ID) URL() *url.URL {
	return &url.URL{Scheme: "spiffe", Host: id.TrustDomain, Path: id.path()}
}

// ErrNoIdentity is returned for a certificate without a SPIFFE ID.
var ErrNoIdentity = errors.New("certificate has no SPIFFE ID (spiffe:// URI SAN)")

// serviceShape is the form of a service identity, for error messages.
const serviceShape = "spiffe://<trust-domain>[/ap/<partition>]/ns/<ns>/dc/<dc>/svc/<service>"

// ParseID parses a service SPIFFE ID. s must be a SPIFFE ID exactly as the SPIFFE-ID standard defines it (read
// by go-spiffe's spiffeid): the lower-case scheme spiffe, a trust domain of [a-z0-9.-_] with no user info or
// port, path segments of [A-Za-z0-9.-_] that are neither empty nor "." or "..", and no percent-encoding, query
// or fragment. Its path must be Consul's service path, with an optional /ap/<partition> first; the partition
// "default" is the zero Partition.
func ParseID(s string) (ID, error) {
	sid, err := spiffeid.FromString(s)
	if err != nil {
		return ID{}, fmt.Errorf("%q is not a SPIFFE ID: %w", s, err)
	}
	// A valid path is "" or "/seg/seg...": no empty, dot or encoded segment.
	parts := strings.Split(strings.TrimPrefix(sid.Path(), "/"), "/")
	partition := ""
	if len(parts) == 8 && parts[0] == "ap" {
		partition, parts = parts[1], parts[2:]
		if partition == DefaultPartition {
			partition = ""
		}
	}
	if len(parts) != 6 || parts[0] != "ns" || parts[2] != "dc" || parts[4] != "svc" {
		return ID{}, fmt.Errorf("%q is not a service identity (%s)", s, serviceShape)
	}
	return ID{TrustDomain: sid.TrustDomain().Name(), Partition: partition, Namespace: parts[1], Datacenter: parts[3],
		Service: parts[5]}, nil
}

// ErrNotSVID is wrapped by the errors of CertID for a certificate that breaks the X.509-SVID rules.
var ErrNotSVID = errors.New("not an X.509-SVID")

// CertID returns the service identity of an X.509-SVID leaf certificate, following the X.509-SVID standard:
// exactly one URI SAN (other SAN types may be there too), which ParseID accepts as written in the certificate
// (not as a URL parser reads it back), and a leaf that is not a CA, has digitalSignature and has neither
// keyCertSign nor cRLSign. A certificate with no URI SAN gives ErrNoIdentity; any other breach wraps
// ErrNotSVID.
func CertID(cert *x509.Certificate) (ID, error) {
	uris, err := uriSANs(cert)
	if err != nil {
		return ID{}, fmt.Errorf("%w: %v", ErrNotSVID, err)
	}
	switch {
	case len(uris) == 0:
		return ID{}, ErrNoIdentity
	case len(uris) > 1:
		return ID{}, fmt.Errorf("%w: %d URI SANs (%s), exactly one is allowed", ErrNotSVID, len(uris),
			strings.Join(uris, ", "))
	case cert.IsCA:
		return ID{}, fmt.Errorf("%w: the leaf is a CA certificate", ErrNotSVID)
	case cert.KeyUsage&x509.KeyUsageDigitalSignature == 0:
		return ID{}, fmt.Errorf("%w: the leaf's key usage lacks digitalSignature", ErrNotSVID)
	case cert.KeyUsage&(x509.KeyUsageCertSign|x509.KeyUsageCRLSign) != 0:
		return ID{}, fmt.Errorf("%w: the leaf's key usage has keyCertSign or cRLSign", ErrNotSVID)
	}
	id, err := ParseID(uris[0])
	if err != nil {
		return ID{}, fmt.Errorf("%w: %v", ErrNotSVID, err)
	}
	return id, nil
}

// TrustDomainOf returns the trust domain a CA certificate names in its spiffe:// URI SAN (as `meshlet certs`
// and Consul's CA write it), or "" when it names none, or no single valid one (see rootTrustDomain).
func TrustDomainOf(ca *x509.Certificate) string {
	td, _ := rootTrustDomain(ca)
	return td
}

// rootTrustDomain reads the trust domain a CA certificate names: the trust domain of its spiffe URI SANs
// (spiffe://<td> or a full SPIFFE ID), as written. It returns "" and a nil error when the certificate has no
// spiffe URI SAN, and an error when one is not valid or two name different trust domains: such a root can
// vouch for nothing.
func rootTrustDomain(ca *x509.Certificate) (string, error) {
	uris, err := uriSANs(ca)
	if err != nil {
		return "", err
	}
	td := ""
	for _, u := range uris {
		if !strings.HasPrefix(strings.ToLower(u), "spiffe:") {
			continue
		}
		id, err := spiffeid.FromString(u)
		if err != nil {
			return "", fmt.Errorf("URI SAN %q is not a valid SPIFFE ID: %w", u, err)
		}
		t := id.TrustDomain()
		if td != "" && td != t.Name() {
			return "", fmt.Errorf("URI SANs name two trust domains, %s and %s", td, t.Name())
		}
		td = t.Name()
	}
	return td, nil
}

// oidSubjectAltName is the X.509 subject alternative name extension.
var oidSubjectAltName = asn1.ObjectIdentifier{2, 5, 29, 17}

// uriTag is the context-specific tag of a uniformResourceIdentifier GeneralName.
const uriTag = 6

// uriSANs returns the URI SANs of a parsed certificate exactly as the certificate writes them: crypto/x509
// gives them as parsed URLs, which lower-case the scheme and drop an empty query or fragment. It fails on a SAN
// extension it cannot read, or when its count disagrees with crypto/x509's (a certificate not made by
// x509.ParseCertificate).
func uriSANs(cert *x509.Certificate) ([]string, error) {
	var out []string
	for _, ext := range cert.Extensions {
		if !ext.Id.Equal(oidSubjectAltName) {
			continue
		}
		var seq asn1.RawValue
		rest, err := asn1.Unmarshal(ext.Value, &seq)
		if err != nil || len(rest) != 0 || seq.Class != asn1.ClassUniversal || seq.Tag != asn1.TagSequence {
			return nil, errors.New("malformed subject alternative name extension")
		}
		for data := seq.Bytes; len(data) > 0; {
			var name asn1.RawValue
			if data, err = asn1.Unmarshal(data, &name); err != nil {
				return nil, errors.New("malformed subject alternative name")
			}
			if name.Class == asn1.ClassContextSpecific && name.Tag == uriTag {
				out = append(out, string(name.Bytes))
			}
		}
	}
	if len(out) != len(cert.URIs) {
		return nil, fmt.Errorf("%d URI SANs in the extension, %d parsed", len(out), len(cert.URIs))
	}
	return out, nil
}
