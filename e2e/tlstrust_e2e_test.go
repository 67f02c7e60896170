package e2e_test

// End-to-end tests of what a meshlet trusts (issue 11, items 11 to 13): roots removed from ca_file while it runs
// (session resumption must not outlive them), a ca_file that holds the roots of two trust domains (a foreign CA
// must not mint local identities), and certificates that break the X.509-SVID rules. Real meshlet processes,
// real TLS clients and servers on loopback; certificates made by `meshlet certs` and, for the odd ones, by the
// mtls package.

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"meshlet.dev/meshlet/internal/meshlettest"
	"meshlet.dev/meshlet/mtls"
)

// trustDir makes a certificate directory for an mtlsSidecar: leaf.crt and leaf.key copied from leafDir, and
// ca.crt the concatenation of the CA files roots (paths). It returns the directory.
func trustDir(t testing.TB, leafDir, leaf string, roots ...string) string {
	t.Helper()
	dir := t.TempDir()
	for _, ext := range []string{".crt", ".key"} {
		b, err := os.ReadFile(filepath.Join(leafDir, leaf+ext))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, leaf+ext), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	trustWriteCA(t, dir, roots...)
	return dir
}

// trustWriteCA replaces dir/ca.crt, atomically (a new file renamed into place, as a secret update does), with
// the concatenation of the files roots.
func trustWriteCA(t testing.TB, dir string, roots ...string) {
	t.Helper()
	var all []byte
	for _, r := range roots {
		b, err := os.ReadFile(r)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, b...)
	}
	tmp := filepath.Join(dir, "ca.crt.new")
	if err := os.WriteFile(tmp, all, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, "ca.crt")); err != nil {
		t.Fatal(err)
	}
}

// TestTLSTrustResumptionAfterRootRemoved: a client whose CA root is removed from a running meshlet's ca_file
// (reloaded every reload_interval) is refused, although it holds a session ticket it resumed with before.
func TestTLSTrustResumptionAfterRootRemoved(t *testing.T) {
	current, retired := mtlsCerts(t, "api"), mtlsCerts(t, "web") // two CAs of trust domain example.mesh
	dir := trustDir(t, current, "api", filepath.Join(current, "ca.crt"), filepath.Join(retired, "ca.crt"))
	app := mtlsStartApp(t, "api")
	a := meshlettest.FreeAddrs(t, 2)
	api := mtlsStart(t, mtlsSidecar{name: "api", app: app.addr, inbound: a[0], mode: "mtls", certDir: dir,
		cert: "api", reload: "100ms", admin: a[1]})

	client := mtlsClientTLS(t, retired, "web", "http/1.1")
	client.ClientSessionCache = tls.NewLRUClientSessionCache(8)
	for i, wantResumed := range []bool{false, true} {
		code, resumed, err := meshlettest.TLSGet(a[0], fmt.Sprintf("/before/%d", i), client)
		if err != nil || code != http.StatusOK || resumed != wantResumed {
			t.Fatalf("call %d before the change: status %d, resumed %v, error %v; want 200, resumed %v", i, code,
				resumed, err, wantResumed)
		}
	}

	successes := api.MetricSum(t, "meshlet_tls_rotations_total", map[string]string{"result": "success"})
	refusals := api.MetricSum(t, "meshlet_tls_handshake_failures_total", mtlsFailures("inbound", mtls.ReasonUnknownCA))
	trustWriteCA(t, dir, filepath.Join(current, "ca.crt")) // the root that signed web's certificate is gone
	mtlsWaitMetric(t, api, "meshlet_tls_rotations_total", map[string]string{"result": "success"}, successes+1)

	code, resumed, err := meshlettest.TLSGet(a[0], "/after", client)
	if err == nil {
		t.Fatalf("a client whose root was removed got status %d (resumed: %v)", code, resumed)
	}
	t.Logf("refused: %v", err)
	mtlsWaitMetric(t, api, "meshlet_tls_handshake_failures_total", mtlsFailures("inbound", mtls.ReasonUnknownCA),
		refusals+1)
	if n := app.saw("/after"); n != 0 {
		t.Fatalf("the app saw the request of the removed client %d times", n)
	}
	// A client of the root that stays is still served.
	if code, _, err := meshlettest.TLSGet(a[0], "/still", mtlsClientTLS(t, current, "api", "http/1.1")); err != nil ||
		code != http.StatusOK {
		t.Fatalf("a client of the remaining root: %d %v", code, err)
	}
}

// trustWriteLeaf writes dir/name.crt and .key: a leaf signed by ca for the URI SANs uris (as written), edited
// by edit (nil: none).
func trustWriteLeaf(t testing.TB, ca *mtls.CA, dir, name string, uris []string, edit func(*x509.Certificate)) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(now.UnixNano()), Subject: pkix.Name{CommonName: name},
		NotBefore: now.Add(-time.Minute), NotAfter: now.Add(time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}
	for _, u := range uris {
		scheme, rest, _ := strings.Cut(u, ":")
		tmpl.URIs = append(tmpl.URIs, &url.URL{Scheme: scheme, Opaque: rest})
	}
	if edit != nil {
		edit(tmpl)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, name+".crt"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, name+".key"), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestTLSTrustForeignTrustDomain: api's ca_file holds the roots of its trust domain (example.mesh) and of
// foreign.mesh. `meshlet check` warns about the mix; the foreign CA cannot mint an identity of example.mesh,
// neither for a caller of api's inbound listener nor for a server that web's sidecar calls; callers whose
// certificates break the X.509-SVID rules are refused too.
func TestTLSTrustForeignTrustDomain(t *testing.T) {
	local := mtlsCerts(t, "api", "web")
	foreignDir := filepath.Join(t.TempDir(), "foreign")
	if out, code := meshlettest.Exec(t, "certs", "ca", "-dir", foreignDir, "-trust-domain", "foreign.mesh"); code != 0 {
		t.Fatalf("meshlet certs ca: exit %d\n%s", code, out)
	}
	foreign, err := mtls.LoadCA(foreignDir)
	if err != nil {
		t.Fatal(err)
	}
	localCA, err := mtls.LoadCA(local)
	if err != nil {
		t.Fatal(err)
	}
	odd := t.TempDir()
	web := mtls.ServiceID(mtlsTrustDomain, "", "", "web").String()
	trustWriteLeaf(t, foreign, odd, "forged-web", []string{web}, nil)
	trustWriteLeaf(t, foreign, odd, "forged-api", []string{mtls.ServiceID(mtlsTrustDomain, "", "", "api").String()}, nil)
	trustWriteLeaf(t, foreign, odd, "foreign-web", []string{mtls.ServiceID("foreign.mesh", "", "", "web").String()}, nil)
	trustWriteLeaf(t, localCA, odd, "two-uris", []string{web, "https://web.example"}, nil)
	trustWriteLeaf(t, localCA, odd, "upper-scheme", []string{"SPIFFE:" + strings.TrimPrefix(web, "spiffe:")}, nil)
	trustWriteLeaf(t, localCA, odd, "ca-leaf", []string{web}, func(c *x509.Certificate) {
		c.IsCA, c.BasicConstraintsValid = true, true
	})
	mixed := []string{filepath.Join(local, "ca.crt"), filepath.Join(foreignDir, "ca.crt")}
	apiDir, webDir := trustDir(t, local, "api", mixed...), trustDir(t, local, "web", mixed...)

	app := mtlsStartApp(t, "api")
	a := meshlettest.FreeAddrs(t, 5)
	apiCfg := mtlsSidecar{name: "api", app: app.addr, inbound: a[0], mode: "mtls", certDir: apiDir, cert: "api", admin: a[1]}
	t.Run("check warns about the mix", func(t *testing.T) {
		out, code := meshlettest.Exec(t, "check", "-config", meshlettest.WriteConfig(t, apiCfg.yaml()))
		want := "warning: tls.ca_file: root \"CN=meshlet CA foreign.mesh\""
		if code != 0 || !strings.Contains(out, want) || !strings.Contains(out, "is of trust domain foreign.mesh, not the local example.mesh") ||
			!strings.Contains(out, "config ok") {
			t.Fatalf("exit %d, want 0 with a warning %q:\n%s", code, want, out)
		}
	})
	api := mtlsStart(t, apiCfg)

	for _, tc := range []struct {
		name, dir, cert, reason string
	}{
		{"control: web", local, "web", ""},
		{"the foreign CA mints web of example.mesh", odd, "forged-web", mtls.ReasonUnknownCA},
		{"web of foreign.mesh", odd, "foreign-web", mtls.ReasonBadIdentity},
		{"two URI SANs", odd, "two-uris", mtls.ReasonBadIdentity},
		{"an upper-case scheme", odd, "upper-scheme", mtls.ReasonBadIdentity},
		{"a CA certificate as leaf", odd, "ca-leaf", mtls.ReasonBadIdentity},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := "/" + tc.cert
			if tc.reason == "" {
				if code, err := mtlsProbe(a[0], path, mtlsClientTLS(t, tc.dir, tc.cert, "http/1.1")); err != nil || code != http.StatusOK {
					t.Fatalf("got %d %v, want 200", code, err)
				}
				return
			}
			labels := mtlsFailures("inbound", tc.reason)
			before := api.MetricSum(t, "meshlet_tls_handshake_failures_total", labels)
			if code, err := mtlsProbe(a[0], path, mtlsClientTLS(t, tc.dir, tc.cert, "http/1.1")); err == nil {
				t.Fatalf("accepted with status %d", code)
			}
			mtlsWaitMetric(t, api, "meshlet_tls_handshake_failures_total", labels, before+1)
			if n := app.saw(path); n != 0 {
				t.Fatalf("the app saw %s %d times", path, n)
			}
		})
	}

	t.Run("the calling sidecar refuses a server the foreign CA made", func(t *testing.T) {
		forged, err := tls.LoadX509KeyPair(filepath.Join(odd, "forged-api.crt"), filepath.Join(odd, "forged-api.key"))
		if err != nil {
			t.Fatal(err)
		}
		ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{forged},
			NextProtos: []string{"h2", "http/1.1"}, ClientAuth: tls.RequestClientCert})
		if err != nil {
			t.Fatal(err)
		}
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprint(w, "forged api")
		})}
		go srv.Serve(ln)
		t.Cleanup(func() { srv.Close() })
		w := mtlsStart(t, mtlsSidecar{name: "web", certDir: webDir, cert: "web", admin: a[2],
			upstreams: []mtlsUpstream{{name: "api", listen: a[3], peer: "sidecar", endpoint: ln.Addr().String()}}})
		code, body := meshlettest.GetBody(t, meshlettest.H1Client(nil), "http://"+a[3]+"/forged")
		if code == http.StatusOK || strings.Contains(body, "forged api") {
			t.Fatalf("web called the forged server: %d %q", code, body)
		}
		mtlsWaitMetric(t, w, "meshlet_tls_handshake_failures_total", mtlsFailures("outbound", mtls.ReasonUnknownCA), 1)
	})
}

// TestTLSTrustCheck: `meshlet check` reads the certificate files: a ca_file that can never verify the leaf's
// trust domain is an error (run would fail the same way), and SPIFFE IDs in inbound.tls.allow follow the
// SPIFFE-ID rules exactly.
func TestTLSTrustCheck(t *testing.T) {
	local := mtlsCerts(t, "api")
	foreignDir := filepath.Join(t.TempDir(), "foreign")
	if out, code := meshlettest.Exec(t, "certs", "ca", "-dir", foreignDir, "-trust-domain", "foreign.mesh"); code != 0 {
		t.Fatalf("meshlet certs ca: exit %d\n%s", code, out)
	}
	base := "service: {name: api, address: 127.0.0.1:8080}\nadmin: {listen: 127.0.0.1:15001}\n"
	tlsSection := func(dir string) string {
		return fmt.Sprintf("tls: {cert_file: %s, key_file: %s, ca_file: %s}\n", filepath.Join(dir, "api.crt"),
			filepath.Join(dir, "api.key"), filepath.Join(dir, "ca.crt"))
	}
	for _, tc := range []struct {
		name, config string
		code         int
		want         string // a substring of the output
	}{
		{"valid", base + tlsSection(local), 0, "config ok"},
		{"only a foreign root", base + tlsSection(trustDir(t, local, "api", filepath.Join(foreignDir, "ca.crt"))), 1,
			"tls: the certificate does not chain to the CA bundle: it holds no root of the certificate's trust domain example.mesh"},
		{"files not readable here", base + "tls: {cert_file: /nonexistent/api.crt, key_file: /nonexistent/api.key, " +
			"ca_file: /nonexistent/ca.crt}\n", 0, "warning: tls: the certificate files were not checked"},
		{"allow entry with a query", base + tlsSection(local) + "inbound: {listen: 127.0.0.1:21001, tls: {allow: " +
			"[\"spiffe://example.mesh/ns/default/dc/dc1/svc/web?x=1\"]}}\n", 1, "inbound.tls.allow[0]:"},
		{"allow entry with percent-encoding", base + tlsSection(local) + "inbound: {listen: 127.0.0.1:21001, tls: " +
			"{allow: [\"spiffe://example.mesh/ns/default/dc/dc1/svc/w%65b\"]}}\n", 1, "inbound.tls.allow[0]:"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, code := meshlettest.Exec(t, "check", "-config", meshlettest.WriteConfig(t, tc.config))
			if code != tc.code || !strings.Contains(out, tc.want) {
				t.Fatalf("exit %d, want %d with %q:\n%s\nconfig:\n%s", code, tc.code, tc.want, out, tc.config)
			}
		})
	}
}
