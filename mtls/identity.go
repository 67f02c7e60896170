// Package mtls gives meshlet its service identity and mutual TLS between sidecars: SPIFFE IDs in Consul's form,
// certificate sources (files made by `meshlet certs` or cert-manager, reloaded on change), and *tls.Config values
// that serve the current certificate through GetCertificate/GetClientCertificate, so rotation never closes an
// open connection and new handshakes use the new certificate at once.
package mtls

import (
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"strings"
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

// URL renders the SPIFFE URI as a *url.URL, for a certificate's URI SAN.
func (id ID) URL() *url.URL {
	return &url.URL{Scheme: "spiffe", Host: id.TrustDomain, Path: id.path()}
}

// ErrNoIdentity is returned for a certificate without a SPIFFE ID.
var ErrNoIdentity = errors.New("certificate has no SPIFFE ID (spiffe:// URI SAN)")

// ParseID parses a service SPIFFE ID.
func ParseID(s string) (ID, error) {
	u, err := url.Parse(s)
	if err != nil || u.Scheme != "spiffe" || u.Host == "" {
		return ID{}, fmt.Errorf("%q is not a spiffe:// URI", s)
	}
	parts := strings.Split(strings.TrimPrefix(u.Path, "/"), "/")
	partition := ""
	if len(parts) == 8 && parts[0] == "ap" && parts[1] != "" {
		partition, parts = parts[1], parts[2:]
		if partition == DefaultPartition {
			partition = ""
		}
	}
	if len(parts) != 6 || parts[0] != "ns" || parts[2] != "dc" || parts[4] != "svc" ||
		parts[1] == "" || parts[3] == "" || parts[5] == "" {
		return ID{}, fmt.Errorf("%q is not a service identity (spiffe://<trust-domain>[/ap/<partition>]/ns/<ns>/dc/<dc>/svc/<service>)", s)
	}
	return ID{TrustDomain: u.Host, Partition: partition, Namespace: parts[1], Datacenter: parts[3], Service: parts[5]}, nil
}

// CertID returns the service identity in a certificate's URI SAN.
func CertID(cert *x509.Certificate) (ID, error) {
	for _, u := range cert.URIs {
		if u.Scheme == "spiffe" {
			return ParseID(u.String())
		}
	}
	return ID{}, ErrNoIdentity
}

// TrustDomainOf returns the trust domain a CA certificate names in its spiffe:// URI SAN (as `meshlet certs`
// and Consul's CA write it), or "" when it names none.
func TrustDomainOf(ca *x509.Certificate) string {
	for _, u := range ca.URIs {
		if u.Scheme == "spiffe" {
			return u.Host
		}
	}
	return ""
}
