package mtls

import (
	"crypto/tls"
	"crypto/x509"
	"net/url"
	"strings"
	"testing"
	"time"
)

// TestParseIDStrict: ParseID takes exactly the SPIFFE IDs of the SPIFFE-ID standard (as go-spiffe's spiffeid
// reads them) whose path is a Consul service path, and nothing that a URL parser would forgive.
func TestParseIDStrict(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want ID // zero: refused
	}{
		{"spiffe://example.mesh/ns/default/dc/dc1/svc/web", ID{TrustDomain: "example.mesh", Namespace: "default", Datacenter: "dc1", Service: "web"}},
		{"spiffe://11111111-2222-3333-4444-555555555555.consul/ns/default/dc/dc1/svc/api",
			ID{TrustDomain: "11111111-2222-3333-4444-555555555555.consul", Namespace: "default", Datacenter: "dc1", Service: "api"}},
		{"spiffe://td_1.mesh/ap/team-a/ns/ops/dc/eu_1/svc/Web.v2",
			ID{TrustDomain: "td_1.mesh", Partition: "team-a", Namespace: "ops", Datacenter: "eu_1", Service: "Web.v2"}},
		{"spiffe://td/ap/default/ns/a/dc/b/svc/c", ID{TrustDomain: "td", Namespace: "a", Datacenter: "b", Service: "c"}},
		// Scheme and trust domain.
		{"SPIFFE://td/ns/a/dc/b/svc/c", ID{}},
		{"Spiffe://td/ns/a/dc/b/svc/c", ID{}},
		{"spiffe://TD/ns/a/dc/b/svc/c", ID{}},
		{"spiffe://Example.mesh/ns/a/dc/b/svc/c", ID{}},
		{"spiffe:td/ns/a/dc/b/svc/c", ID{}},
		{"spiffe:///ns/a/dc/b/svc/c", ID{}},
		{"https://td/ns/a/dc/b/svc/c", ID{}},
		{"spiffe://user@td/ns/a/dc/b/svc/c", ID{}},
		{"spiffe://td:8443/ns/a/dc/b/svc/c", ID{}},
		{"spiffe://[::1]/ns/a/dc/b/svc/c", ID{}},
		{"spiffe://td%2e/ns/a/dc/b/svc/c", ID{}},
		{" spiffe://td/ns/a/dc/b/svc/c", ID{}},
		// Path.
		{"spiffe://td/ns/a/dc/b/svc/c?x=1", ID{}},
		{"spiffe://td/ns/a/dc/b/svc/c?", ID{}},
		{"spiffe://td/ns/a/dc/b/svc/c#frag", ID{}},
		{"spiffe://td/ns/a/dc/b/svc/c#", ID{}},
		{"spiffe://td/ns/def%61ult/dc/b/svc/c", ID{}},
		{"spiffe://td/ns/a%2Fb/dc/b/svc/c", ID{}},
		{"spiffe://td/ns/a/dc/b/svc/c/", ID{}},
		{"spiffe://td/ns//dc/b/svc/c", ID{}},
		{"spiffe://td//ns/a/dc/b/svc/c", ID{}},
		{"spiffe://td/ns/./dc/b/svc/c", ID{}},
		{"spiffe://td/ns/../dc/b/svc/c", ID{}},
		{"spiffe://td/x/../ns/a/dc/b/svc/c", ID{}},
		{"spiffe://td/ns/a b/dc/b/svc/c", ID{}},
		{"spiffe://td/ns/a~b/dc/b/svc/c", ID{}},
		{"spiffe://td/ns/a+b/dc/b/svc/c", ID{}},
		{"spiffe://td/ns/a:b/dc/b/svc/c", ID{}},
		{"spiffe://td/ns/a/dc/b/svc/c\n", ID{}},
		// Consul's shape.
		{"spiffe://td", ID{}},
		{"spiffe://td/", ID{}},
		{"spiffe://td/web", ID{}},
		{"spiffe://td/ns/a/svc/c", ID{}},
		{"spiffe://td/ns/a/dc/b/svc/c/extra", ID{}},
		{"spiffe://td/ap//ns/a/dc/b/svc/c", ID{}},
		{"spiffe://td/NS/a/dc/b/svc/c", ID{}},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseID(tc.in)
			if tc.want == (ID{}) {
				if err == nil {
					t.Fatalf("accepted as %+v", got)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("got %+v, %v; want %+v", got, err, tc.want)
			}
		})
	}
}

// TestCertIDStrict: a certificate names a service only as an X.509-SVID does: exactly one URI SAN, a valid
// SPIFFE ID as written in the certificate, and a leaf that is not a CA and may sign (digitalSignature) but not
// sign certificates or CRLs.
func TestCertIDStrict(t *testing.T) {
	td := "example.mesh"
	ca := testCA(t, td)
	web := ServiceID(td, "", "", "web").String()
	uris := func(us ...*url.URL) func(*x509.Certificate) {
		return func(c *x509.Certificate) { c.URIs = us }
	}
	mustURL := func(s string) *url.URL {
		u, err := url.Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		return u
	}
	for _, tc := range []struct {
		name string
		edit func(*x509.Certificate)
		ok   bool
	}{
		{"valid", nil, true},
		{"a DNS SAN beside the URI SAN", func(c *x509.Certificate) { c.DNSNames = []string{"web"} }, true},
		{"no URI SAN", uris(), false},
		{"a second URI SAN after the SPIFFE ID", uris(mustURL(web), mustURL("https://web.example")), false},
		{"a second SPIFFE ID", uris(mustURL(web), mustURL(ServiceID(td, "", "", "admin").String())), false},
		{"another URI SAN before the SPIFFE ID", uris(mustURL("urn:x:y"), mustURL(web)), false},
		{"upper-case scheme as written", uris(&url.URL{Scheme: "SPIFFE", Host: td, Path: "/ns/default/dc/dc1/svc/web"}), false},
		{"percent-encoding", uris(mustURL("spiffe://example.mesh/ns/def%61ult/dc/dc1/svc/web")), false},
		{"query", uris(mustURL(web + "?x=1")), false},
		{"empty fragment", uris(&url.URL{Scheme: "spiffe", Opaque: strings.TrimPrefix(web, "spiffe:") + "#"}), false},
		{"empty query", uris(&url.URL{Scheme: "spiffe", Opaque: strings.TrimPrefix(web, "spiffe:") + "?"}), false},
		{"user info", uris(mustURL("spiffe://u@example.mesh/ns/default/dc/dc1/svc/web")), false},
		{"port", uris(mustURL("spiffe://example.mesh:1/ns/default/dc/dc1/svc/web")), false},
		{"a CA", func(c *x509.Certificate) { c.IsCA, c.BasicConstraintsValid = true, true }, false},
		{"keyCertSign", func(c *x509.Certificate) { c.KeyUsage |= x509.KeyUsageCertSign }, false},
		{"cRLSign", func(c *x509.Certificate) { c.KeyUsage |= x509.KeyUsageCRLSign }, false},
		{"no digitalSignature", func(c *x509.Certificate) { c.KeyUsage = x509.KeyUsageKeyEncipherment }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			certPEM, _ := testLeaf(t, ca, web, tc.edit)
			leaf, err := parseCerts(certPEM)
			if err != nil || len(leaf) != 1 {
				t.Fatalf("test certificate: %v", err)
			}
			id, err := CertID(leaf[0])
			if tc.ok {
				if err != nil || id.String() != web {
					t.Fatalf("got %v, %v; want %s", id, err, web)
				}
				return
			}
			if err == nil {
				t.Fatalf("accepted as %s", id)
			}
		})
	}
}

// TestHandshakeRefusesNonSVID: peers whose certificates break the X.509-SVID rules are refused (bad_identity)
// by the inbound listener, although the chain is valid.
func TestHandshakeRefusesNonSVID(t *testing.T) {
	td := "example.mesh"
	ca := testCA(t, td)
	apiCert, apiKey := testLeaf(t, ca, ServiceID(td, "", "", "api").String(), nil)
	scfg, err := ServerConfig(staticSource{testBundle(t, apiCert, apiKey, testRoots(ca))}, "1.3")
	if err != nil {
		t.Fatal(err)
	}
	addr, refused := testServer(t, scfg)
	web := ServiceID(td, "", "", "web").String()
	for _, tc := range []struct {
		name string
		edit func(*x509.Certificate)
	}{
		{"two URI SANs", func(c *x509.Certificate) {
			c.URIs = append(c.URIs, &url.URL{Scheme: "https", Host: "web.example"})
		}},
		{"upper-case scheme", func(c *x509.Certificate) {
			c.URIs = []*url.URL{{Scheme: "SPIFFE", Host: td, Path: "/ns/default/dc/dc1/svc/web"}}
		}},
		{"a CA as leaf", func(c *x509.Certificate) { c.IsCA, c.BasicConstraintsValid = true, true }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			certPEM, keyPEM := testLeaf(t, ca, web, tc.edit)
			// The client presents the certificate as it is: NewBundle rightly refuses such a leaf of its own.
			cert, err := tls.X509KeyPair(certPEM, keyPEM)
			if err != nil {
				t.Fatal(err)
			}
			ccfg, err := ClientConfig(staticSource{testBundle(t, apiCert, apiKey, testRoots(ca))}, "1.3", "h2", nil)
			if err != nil {
				t.Fatal(err)
			}
			ccfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert, nil }
			if cs, err := testDial(addr, ccfg); err == nil {
				t.Fatalf("accepted (peer %v)", cs.PeerCertificates[0].URIs)
			}
			select {
			case r := <-refused:
				if r != ReasonBadIdentity {
					t.Fatalf("refused with reason %q, want %q", r, ReasonBadIdentity)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("the server reported no refusal")
			}
		})
	}
}
