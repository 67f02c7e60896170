package mtls

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
)

// testUnnamedCA makes a CA whose certificate names no trust domain (no URI SAN), as some private CAs and
// cert-manager issuers write them.
func testUnnamedCA(t testing.TB) *CA { return testCAWithURIs(t) }

// testCAWithURIs makes a CA whose certificate has exactly the URI SANs uris, as written.
func testCAWithURIs(t testing.TB, uris ...string) *CA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{SerialNumber: serial(), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: now.Add(-time.Minute), NotAfter: now.Add(time.Hour),
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature, BasicConstraintsValid: true, IsCA: true}
	for _, u := range uris {
		scheme, rest, _ := strings.Cut(u, ":")
		tmpl.URIs = append(tmpl.URIs, &url.URL{Scheme: scheme, Opaque: rest})
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &CA{Cert: cert, Key: key}
}

// TestRootsBoundToTrustDomain: with a ca_file that holds the roots of two trust domains, or a root that names
// none beside one that does, a root vouches only for the trust domain it names: a foreign CA cannot mint an
// identity of the local trust domain, whatever the order of the roots. The inbound listener (server) and the
// calling sidecar (client) both refuse such a peer.
func TestRootsBoundToTrustDomain(t *testing.T) {
	const local = "example.mesh"
	localCA, foreignCA, unnamedCA := testCA(t, local), testCA(t, "foreign.mesh"), testUnnamedCA(t)
	apiCert, apiKey := testLeaf(t, localCA, ServiceID(local, "", "", "api").String(), nil)
	webCert, webKey := testLeaf(t, localCA, ServiceID(local, "", "", "web").String(), nil)
	forgedByForeign, forgedByForeignKey := testLeaf(t, foreignCA, ServiceID(local, "", "", "web").String(), nil)
	forgedByUnnamed, forgedByUnnamedKey := testLeaf(t, unnamedCA, ServiceID(local, "", "", "web").String(), nil)
	foreignWeb, foreignWebKey := testLeaf(t, foreignCA, ServiceID("foreign.mesh", "", "", "web").String(), nil)

	for _, tc := range []struct {
		name          string
		roots         []*CA
		peer, peerKey []byte
		reason        string // "": accepted
	}{
		{"control: a local peer", []*CA{localCA, foreignCA}, webCert, webKey, ""},
		{"foreign CA mints a local identity", []*CA{localCA, foreignCA}, forgedByForeign, forgedByForeignKey, ReasonUnknownCA},
		{"foreign CA first in the file", []*CA{foreignCA, localCA}, forgedByForeign, forgedByForeignKey, ReasonUnknownCA},
		{"a foreign identity of a listed trust domain", []*CA{localCA, foreignCA}, foreignWeb, foreignWebKey, ReasonBadIdentity},
		{"an unnamed root beside a named one", []*CA{localCA, unnamedCA}, forgedByUnnamed, forgedByUnnamedKey, ReasonUnknownCA},
		{"an unnamed root first", []*CA{unnamedCA, localCA}, forgedByUnnamed, forgedByUnnamedKey, ReasonUnknownCA},
	} {
		t.Run(tc.name, func(t *testing.T) {
			roots := testRoots(tc.roots...)
			t.Run("server", func(t *testing.T) {
				scfg, err := ServerConfig(staticSource{testBundle(t, apiCert, apiKey, roots)}, "1.3")
				if err != nil {
					t.Fatal(err)
				}
				addr, refused := testServer(t, scfg)
				// The peer trusts everything it needs to: the test is the server's verdict.
				peer := &Bundle{}
				*peer = *testBundle(t, apiCert, apiKey, roots)
				cert, err := tlsPair(tc.peer, tc.peerKey)
				if err != nil {
					t.Fatal(err)
				}
				peer.Cert = cert
				ccfg, err := ClientConfig(staticSource{peer}, "1.3", "h2", nil)
				if err != nil {
					t.Fatal(err)
				}
				_, err = testDial(addr, ccfg)
				checkVerdict(t, err, refused, tc.reason)
			})
			t.Run("client", func(t *testing.T) {
				cert, err := tlsPair(tc.peer, tc.peerKey)
				if err != nil {
					t.Fatal(err)
				}
				srv := testBundle(t, apiCert, apiKey, roots)
				srv.Cert = cert // the server presents the peer's certificate
				scfg, err := ServerConfig(staticSource{srv}, "1.3")
				if err != nil {
					t.Fatal(err)
				}
				addr, _ := testServer(t, scfg)
				ccfg, err := ClientConfig(staticSource{testBundle(t, webCert, webKey, roots)}, "1.3", "h2", nil)
				if err != nil {
					t.Fatal(err)
				}
				_, err = testDial(addr, ccfg)
				if tc.reason == "" {
					if err != nil {
						t.Fatalf("refused: %v", err)
					}
					return
				}
				if r := Reason(err); err == nil || r != tc.reason {
					t.Fatalf("client verdict %q (%v), want %q", r, err, tc.reason)
				}
			})
		})
	}
}

// checkVerdict checks the server's verdict on a client: accepted (reason "") or refused with reason.
func checkVerdict(t *testing.T, err error, refused <-chan string, reason string) {
	t.Helper()
	if reason == "" {
		if err != nil {
			t.Fatalf("refused: %v", err)
		}
		return
	}
	if err == nil {
		t.Fatal("accepted")
	}
	select {
	case r := <-refused:
		if r != reason {
			t.Fatalf("refused with reason %q, want %q", r, reason)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the server reported no refusal")
	}
}

// TestUnnamedRootsOnly: a ca_file whose roots name no trust domain at all vouches for the local trust domain
// (the leaf's): such files (a private CA, cert-manager) keep working.
func TestUnnamedRootsOnly(t *testing.T) {
	const local = "example.mesh"
	ca := testUnnamedCA(t)
	apiCert, apiKey := testLeaf(t, ca, ServiceID(local, "", "", "api").String(), nil)
	webCert, webKey := testLeaf(t, ca, ServiceID(local, "", "", "web").String(), nil)
	scfg, err := ServerConfig(staticSource{testBundle(t, apiCert, apiKey, testRoots(ca))}, "1.3")
	if err != nil {
		t.Fatal(err)
	}
	addr, _ := testServer(t, scfg)
	ccfg, err := ClientConfig(staticSource{testBundle(t, webCert, webKey, testRoots(ca))}, "1.3", "h2", nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := testDial(addr, ccfg); err != nil {
		t.Fatalf("refused: %v", err)
	}
}

// TestBundleBindsRoots: how NewBundle binds each root of a ca_file to a trust domain, and what it warns about.
func TestBundleBindsRoots(t *testing.T) {
	const local = "example.mesh"
	localCA, otherLocal := testCA(t, local), testCAWithURIs(t, "spiffe://"+local+"/ns/default/dc/dc1/svc/ca")
	foreignCA, unnamed := testCA(t, "foreign.mesh"), testUnnamedCA(t)
	twoDomains := testCAWithURIs(t, "spiffe://"+local, "spiffe://foreign.mesh")
	upper := testCAWithURIs(t, "SPIFFE://"+local)
	apiCert, apiKey := testLeaf(t, localCA, ServiceID(local, "", "", "api").String(), nil)
	for _, tc := range []struct {
		name     string
		roots    []*CA
		bound    []string // the trust domain of each root that vouches for one, in order
		warnings []string // a substring of each warning, in order
		err      string   // a substring of NewBundle's error
	}{
		{"one root", []*CA{localCA}, []string{local}, nil, ""},
		{"two roots of the trust domain", []*CA{localCA, otherLocal}, []string{local, local}, nil, ""},
		{"a foreign root", []*CA{foreignCA, localCA}, []string{"foreign.mesh", local},
			[]string{"is of trust domain foreign.mesh, not the local example.mesh: never used"}, ""},
		{"an unnamed root beside a named one", []*CA{unnamed, localCA}, []string{local},
			[]string{"vouches for nothing: it names no trust domain"}, ""},
		{"a root naming two trust domains", []*CA{localCA, twoDomains}, []string{local},
			[]string{"vouches for nothing: URI SANs name two trust domains"}, ""},
		{"an upper-case scheme", []*CA{upper, localCA}, []string{local},
			[]string{"vouches for nothing: URI SAN \"SPIFFE://example.mesh\" is not a valid SPIFFE ID"}, ""},
		{"only a foreign root", []*CA{foreignCA}, nil, nil, "holds no root of the certificate's trust domain example.mesh"},
		{"the leaf's root unnamed beside a named one", nil, nil, nil, "holds no root"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			certPEM, keyPEM, roots := apiCert, apiKey, tc.roots
			if roots == nil {
				certPEM, keyPEM = testLeaf(t, unnamed, ServiceID(local, "", "", "api").String(), nil)
				roots = []*CA{unnamed, foreignCA}
			}
			b, err := NewBundle(certPEM, keyPEM, testRoots(roots...))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want one with %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var bound []string
			for _, r := range b.Roots {
				bound = append(bound, r.TrustDomain)
			}
			if strings.Join(bound, ",") != strings.Join(tc.bound, ",") || b.TrustDomain != local {
				t.Errorf("roots bound to %v (local %s), want %v (local %s)", bound, b.TrustDomain, tc.bound, local)
			}
			if len(b.Warnings) != len(tc.warnings) {
				t.Fatalf("warnings %q, want %d", b.Warnings, len(tc.warnings))
			}
			for i, w := range tc.warnings {
				if !strings.Contains(b.Warnings[i], w) {
					t.Errorf("warning %q, want one with %q", b.Warnings[i], w)
				}
			}
		})
	}
}

// TestConsulBundleBindsRoots: Consul's roots are bound to the trust domain Consul lists them for, whether their
// certificates name it or not; one that names another trust domain vouches for nothing, and without a trust
// domain from Consul nothing is trusted.
func TestConsulBundleBindsRoots(t *testing.T) {
	const local = "11111111-2222-3333-4444-555555555555.consul"
	named, unnamed, foreign := testCA(t, local), testUnnamedCA(t), testCA(t, "foreign.consul")
	leafPEM, keyPEM := testLeaf(t, unnamed, ServiceID(local, "", "", "api").String(), nil)
	forged, _ := testLeaf(t, foreign, ServiceID(local, "", "", "web").String(), nil)
	webPEM, _ := testLeaf(t, named, ServiceID(local, "", "", "web").String(), nil)
	list := &api.CARootList{TrustDomain: local, Roots: []*api.CARoot{
		{ID: "named", RootCertPEM: string(testRoots(named))},
		{ID: "unnamed", RootCertPEM: string(testRoots(unnamed))},
		{ID: "foreign", RootCertPEM: string(testRoots(foreign))},
	}}
	b, err := ConsulBundle(&api.LeafCert{CertPEM: string(leafPEM), PrivateKeyPEM: string(keyPEM)}, list)
	if err != nil {
		t.Fatal(err)
	}
	if len(b.Roots) != 2 || b.Roots[0].TrustDomain != local || b.Roots[1].TrustDomain != local ||
		len(b.Warnings) != 1 || !strings.Contains(b.Warnings[0], "names trust domain foreign.consul") {
		t.Fatalf("roots %+v, warnings %q", b.Roots, b.Warnings)
	}
	for _, tc := range []struct {
		name          string
		cert          []byte
		wantRefusedAs string
	}{{"a peer of the named root", webPEM, ""}, {"a local identity forged by the foreign root", forged, ReasonUnknownCA}} {
		t.Run(tc.name, func(t *testing.T) {
			chain, err := parseCerts(tc.cert)
			if err != nil {
				t.Fatal(err)
			}
			_, err = b.verifyPeer(chain, x509.ExtKeyUsageClientAuth, nil)
			if Reason(err) != tc.wantRefusedAs && !(err == nil && tc.wantRefusedAs == "") {
				t.Fatalf("verdict %v, want %q", err, tc.wantRefusedAs)
			}
		})
	}
	list.TrustDomain = ""
	if _, err := ConsulBundle(&api.LeafCert{CertPEM: string(leafPEM), PrivateKeyPEM: string(keyPEM)}, list); err == nil {
		t.Fatal("a bundle was made without a trust domain from consul")
	}
}
