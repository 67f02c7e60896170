package mtls

import (
	"crypto/tls"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestParseID(t *testing.T) {
	id, err := ParseID("spiffe://example.mesh/ns/default/dc/dc1/svc/api")
	if err != nil || id != (ID{TrustDomain: "example.mesh", Namespace: "default", Datacenter: "dc1", Service: "api"}) {
		t.Fatalf("%+v %v", id, err)
	}
	if id.String() != "spiffe://example.mesh/ns/default/dc/dc1/svc/api" || id.URL().String() != id.String() {
		t.Fatalf("round trip: %s %s", id, id.URL())
	}
	ap, err := ParseID("spiffe://example.mesh/ap/team-a/ns/ops/dc/dc1/svc/api")
	if err != nil || ap != (ID{TrustDomain: "example.mesh", Partition: "team-a", Namespace: "ops", Datacenter: "dc1", Service: "api"}) ||
		ap.PartitionName() != "team-a" || id.PartitionName() != DefaultPartition {
		t.Fatalf("partition: %+v %v", ap, err)
	}
	if ap.String() != "spiffe://example.mesh/ap/team-a/ns/ops/dc/dc1/svc/api" || ap.URL().String() != ap.String() {
		t.Fatalf("partition round trip: %s %s", ap, ap.URL())
	}
	for _, bad := range []string{"", "http://x/ns/a/dc/b/svc/c", "spiffe:///ns/a/dc/b/svc/c", "spiffe://td/ns/a/svc/c",
		"spiffe://td/ns//dc/b/svc/c", "spiffe://td/ns/a/dc/b/svc/c/extra"} {
		if _, err := ParseID(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// TestIDSNI: the SNI of an ID is Consul's (connect.ServiceSNI): the namespace always, the partition only when it
// is not the default one, with internal-v1 then.
func TestIDSNI(t *testing.T) {
	td := "11111111-2222-3333-4444-555555555555.consul"
	for _, tt := range []struct {
		id   string
		want string
	}{
		{"spiffe://" + td + "/ns/default/dc/dc1/svc/api", "api.default.dc1.internal." + td},
		{"spiffe://" + td + "/ns/team-a/dc/eu-1/svc/web", "web.team-a.eu-1.internal." + td},
		{"spiffe://" + td + "/ap/default/ns/ops/dc/dc1/svc/db", "db.ops.dc1.internal." + td},
		{"spiffe://" + td + "/ap/billing/ns/ops/dc/dc2/svc/db", "db.ops.billing.dc2.internal-v1." + td},
	} {
		id, err := ParseID(tt.id)
		if err != nil {
			t.Fatal(err)
		}
		if got := id.SNI(); got != tt.want {
			t.Errorf("%s: SNI %q, want %q", tt.id, got, tt.want)
		}
	}
}

// testPKI is a trust domain with a CA, for tests.
type testPKI struct {
	ca  *CA
	dir string
}

func newTestPKI(t *testing.T, td string) *testPKI {
	t.Helper()
	ca, err := NewCA(td, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := ca.WriteCA(dir); err != nil {
		t.Fatal(err)
	}
	return &testPKI{ca: ca, dir: dir}
}

// bundle issues a leaf for service valid in [from, to] and returns the bundle trusting this PKI's CA (plus extra
// roots).
func (p *testPKI) bundle(t *testing.T, service string, from, to time.Time, extraRoots ...*CA) *Bundle {
	t.Helper()
	cert, key, err := p.ca.Issue(ServiceID(p.ca.Cert.URIs[0].Host, "", "", service), from, to)
	if err != nil {
		t.Fatal(err)
	}
	if err := WriteLeaf(p.dir, service, cert, key); err != nil {
		t.Fatal(err)
	}
	certPEM, _ := os.ReadFile(filepath.Join(p.dir, service+".crt"))
	keyPEM, _ := os.ReadFile(filepath.Join(p.dir, service+".key"))
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: p.ca.Cert.Raw})
	for _, r := range extraRoots {
		caPEM = append(caPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: r.Cert.Raw})...)
	}
	b, err := NewBundle(certPEM, keyPEM, caPEM)
	if err != nil {
		// A leaf that expired before the CA was made does not load: build what NewBundle would.
		cert, leaf, id, kerr := keyPair(certPEM, keyPEM)
		if kerr != nil {
			t.Fatal(kerr)
		}
		roots := []Root{{Cert: p.ca.Cert, TrustDomain: id.TrustDomain}}
		for _, r := range extraRoots {
			roots = append(roots, Root{Cert: r.Cert, TrustDomain: TrustDomainOf(r.Cert)})
		}
		return assemble(cert, leaf, id, roots, nil)
	}
	return b
}

type staticSource struct{ b *Bundle }

func (s staticSource) Bundle() *Bundle { return s.b }

// handshake runs a server with server's bundle (mode mtls) and a client with client's bundle expecting want;
// it returns the reasons of the server-side and client-side failures ("" for success).
func handshake(t *testing.T, server, client *Bundle, want func(ID) error) (serverReason, clientReason string) {
	t.Helper()
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	scfg, _ := ServerConfig(staticSource{server}, "1.3")
	var mu sync.Mutex
	failed := make(chan string, 1)
	l := NewListener(inner, scfg, ModeMTLS, ListenerHooks{Failed: func(reason string, _ net.Addr, _ error) {
		mu.Lock()
		defer mu.Unlock()
		failed <- reason
	}})
	defer l.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := l.Accept()
		if err == nil {
			accepted <- c
		}
	}()
	ccfg, _ := ClientConfig(staticSource{client}, "1.3", "h2", want)
	raw, err := net.Dial("tcp", inner.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	tc := tls.Client(raw, ccfg)
	cerr := tc.Handshake()
	if cerr == nil {
		// TLS 1.3: the server's verdict on the client certificate arrives with the first read.
		tc.SetReadDeadline(time.Now().Add(2 * time.Second))
		_, cerr = tc.Read(make([]byte, 1))
		if errors.Is(cerr, os.ErrDeadlineExceeded) {
			cerr = nil
		}
	}
	if cerr != nil {
		clientReason = Reason(cerr)
	}
	select {
	case r := <-failed:
		serverReason = r
	case c := <-accepted:
		c.Close()
	case <-time.After(5 * time.Second):
		t.Fatal("server neither accepted nor failed")
	}
	return serverReason, clientReason
}

func TestHandshakes(t *testing.T) {
	now := time.Now()
	pki, other := newTestPKI(t, "example.mesh"), newTestPKI(t, "other.mesh")
	api := pki.bundle(t, "api", now.Add(-time.Minute), now.Add(time.Hour))
	web := pki.bundle(t, "web", now.Add(-time.Minute), now.Add(time.Hour))
	// A client whose leaf comes from another CA but who trusts ours: the server must refuse it as unknown.
	stranger := other.bundle(t, "web", now.Add(-time.Minute), now.Add(time.Hour))
	trusting := *api
	trusting.Cert, trusting.Leaf, trusting.ID = stranger.Cert, stranger.Leaf, stranger.ID
	stranger = &trusting
	expired := pki.bundle(t, "old", now.Add(-2*time.Hour), now.Add(-time.Hour))
	wantAPI := func(id ID) error {
		if id.Service != "api" {
			return fmt.Errorf("want api, got %s", id)
		}
		return nil
	}
	tests := []struct {
		name           string
		server, client *Bundle
		want           func(ID) error
		serverReason   string
		clientReason   string
	}{
		{"ok", api, web, wantAPI, "", ""},
		{"client from another CA", api, stranger, nil, ReasonUnknownCA, "other"},
		{"client expired", api, expired, nil, ReasonExpired, "other"},
		{"server is not who the client expects", web, api, wantAPI, "other", ReasonBadIdentity},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sr, cr := handshake(t, tt.server, tt.client, tt.want)
			if sr != tt.serverReason || (tt.clientReason != "other" && cr != tt.clientReason) || (tt.clientReason == "other" && cr == "") {
				t.Fatalf("server reason %q, client reason %q; want %q, %q", sr, cr, tt.serverReason, tt.clientReason)
			}
		})
	}
}

func TestListenerPlaintext(t *testing.T) {
	now := time.Now()
	pki := newTestPKI(t, "example.mesh")
	api := pki.bundle(t, "api", now.Add(-time.Minute), now.Add(time.Hour))
	scfg, _ := ServerConfig(staticSource{api}, "1.3")
	for _, mode := range []string{ModeMTLS, ModePermissive} {
		t.Run(mode, func(t *testing.T) {
			inner, _ := net.Listen("tcp", "127.0.0.1:0")
			reasons := make(chan string, 1)
			plain := make(chan bool, 1)
			l := NewListener(inner, scfg, mode, ListenerHooks{
				Failed:    func(r string, _ net.Addr, _ error) { reasons <- r },
				Plaintext: func(net.Addr) { plain <- true },
			})
			defer l.Close()
			go func() {
				c, err := l.Accept()
				if err != nil {
					return
				}
				io.WriteString(c, "hello")
				c.Close()
			}()
			c, err := net.Dial("tcp", inner.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			io.WriteString(c, "GET / HTTP/1.1\r\n\r\n")
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			got, _ := io.ReadAll(c)
			if mode == ModeMTLS {
				if len(got) != 0 || <-reasons != ReasonPlaintext {
					t.Fatalf("mtls listener let plaintext through: %q", got)
				}
				return
			}
			if string(got) != "hello" || !<-plain {
				t.Fatalf("permissive listener: %q", got)
			}
		})
	}
	// Close does not wait for a client that never speaks.
	inner, _ := net.Listen("tcp", "127.0.0.1:0")
	l := NewListener(inner, scfg, ModeMTLS, ListenerHooks{})
	silent, _ := net.Dial("tcp", inner.Addr().String())
	defer silent.Close()
	time.Sleep(20 * time.Millisecond) // let the silent connection reach its handshake goroutine
	start := time.Now()
	l.Close()
	if d := time.Since(start); d > time.Second {
		t.Fatalf("Close took %v", d)
	}
}

func TestFileSourceReload(t *testing.T) {
	pki := newTestPKI(t, "example.mesh")
	now := time.Now()
	pki.bundle(t, "api", now.Add(-time.Minute), now.Add(time.Hour))
	cfg := FilesConfig{CertFile: filepath.Join(pki.dir, "api.crt"), KeyFile: filepath.Join(pki.dir, "api.key"),
		CAFile: filepath.Join(pki.dir, "ca.crt")}
	src, err := NewFileSource(cfg, discardLogger())
	if err != nil {
		t.Fatal(err)
	}
	first := src.Bundle().Leaf.SerialNumber
	// A broken key keeps the old bundle.
	os.WriteFile(cfg.KeyFile, []byte("not a key"), 0o600)
	src.check()
	if src.Bundle().Leaf.SerialNumber.Cmp(first) != 0 {
		t.Fatal("a broken file replaced the bundle")
	}
	// A new valid pair is picked up.
	time.Sleep(10 * time.Millisecond) // a different modification time
	pki.bundle(t, "api", now.Add(-time.Minute), now.Add(2*time.Hour))
	src.check()
	if src.Bundle().Leaf.SerialNumber.Cmp(first) == 0 {
		t.Fatal("the new certificate was not loaded")
	}
	if _, err := NewFileSource(FilesConfig{CertFile: cfg.CertFile, KeyFile: cfg.KeyFile, CAFile: filepath.Join(newTestPKI(t, "other.mesh").dir, "ca.crt")}, discardLogger()); err == nil || !strings.Contains(err.Error(), "does not chain") {
		t.Fatalf("a leaf from another CA: %v", err)
	}
}

// TestNoClientCertificate: a client that sends no certificate is refused with reason no_cert.
func TestNoClientCertificate(t *testing.T) {
	now := time.Now()
	pki := newTestPKI(t, "example.mesh")
	api := pki.bundle(t, "api", now.Add(-time.Minute), now.Add(time.Hour))
	inner, _ := net.Listen("tcp", "127.0.0.1:0")
	scfg, _ := ServerConfig(staticSource{api}, "1.3")
	reasons := make(chan string, 1)
	l := NewListener(inner, scfg, ModeMTLS, ListenerHooks{Failed: func(r string, _ net.Addr, err error) {
		t.Logf("refused: %s: %v", r, err)
		reasons <- r
	}})
	defer l.Close()
	go l.Accept()
	c, err := tls.Dial("tcp", inner.Addr().String(), &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}})
	if err == nil {
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		c.Read(make([]byte, 1))
		c.Close()
	}
	select {
	case r := <-reasons:
		if r != ReasonNoCert {
			t.Fatalf("reason %q, want %q", r, ReasonNoCert)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no failure reported")
	}
}

// TestExpiredLeafLoads: an expired leaf still loads (the sidecar runs not ready and picks up a renewal), while a
// leaf from another CA does not.
func TestExpiredLeafLoads(t *testing.T) {
	pki := newTestPKI(t, "example.mesh")
	now := time.Now()
	pki.bundle(t, "old", now.Add(-30*time.Second), now.Add(-2*time.Second))
	b, err := LoadFiles(FilesConfig{CertFile: filepath.Join(pki.dir, "old.crt"), KeyFile: filepath.Join(pki.dir, "old.key"),
		CAFile: filepath.Join(pki.dir, "ca.crt")})
	if err != nil || !b.Leaf.NotAfter.Before(now) {
		t.Fatalf("expired leaf: %v", err)
	}
}

// TestListenerSniffsH2WithoutSNI: on an HTTP listener, a client that negotiated h2 without naming a server (as
// Consul's connect package does by default) is handed over as a *SniffedConn that replays its first bytes and names no
// protocol, whether they are HTTP/1.1 or HTTP/2's preface; a client that names a server, or asks for
// http/1.1, is the *tls.Conn as before; without HTTP the listener reads nothing.
func TestListenerSniffsH2WithoutSNI(t *testing.T) {
	now := time.Now()
	pki := newTestPKI(t, "example.mesh")
	api := pki.bundle(t, "api", now.Add(-time.Minute), now.Add(time.Hour))
	web := pki.bundle(t, "web", now.Add(-time.Minute), now.Add(time.Hour))
	scfg, _ := ServerConfig(staticSource{api}, "1.2")
	const h1 = "GET / HTTP/1.1\r\nHost: api\r\n\r\n"
	tests := []struct {
		name     string
		http     bool
		alpn     string
		sni      string
		send     string
		sniffed  bool
		protocol string // what the accepted connection's ConnectionState names
	}{
		{"Connect-native: h2 offered, HTTP/1.1 sent", true, "h2", "", h1, true, ""},
		{"h2 offered and spoken, no SNI", true, "h2", "", h2Preface + "\x00\x00\x00\x04\x00\x00\x00\x00\x00", true, ""},
		{"a short request that is not HTTP/2", true, "h2", "", "PUT", true, ""},
		{"meshlet names the server", true, "h2", "api.default.dc1.internal.example.mesh", h2Preface, false, "h2"},
		{"http/1.1 negotiated", true, "http/1.1", "", h1, false, "http/1.1"},
		{"not an HTTP listener", false, "h2", "", h1, false, "h2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			inner, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			l := NewListener(inner, scfg, ModeMTLS, ListenerHooks{HTTP: tt.http,
				Failed: func(r string, _ net.Addr, err error) { t.Errorf("refused: %s: %v", r, err) }})
			defer l.Close()
			ccfg, _ := ClientConfig(staticSource{web}, "1.2", tt.alpn, nil)
			ccfg.ServerName = tt.sni
			type result struct {
				conn net.Conn
				got  []byte
			}
			accepted := make(chan result, 1)
			go func() {
				c, err := l.Accept()
				if err != nil {
					accepted <- result{}
					return
				}
				c.SetDeadline(time.Now().Add(5 * time.Second))
				buf := make([]byte, len(tt.send))
				n, _ := io.ReadFull(c, buf)
				accepted <- result{c, buf[:n]}
			}()
			c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", inner.Addr().String(), ccfg)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if _, err := io.WriteString(c, tt.send); err != nil {
				t.Fatal(err)
			}
			if tt.send == "PUT" {
				c.CloseWrite() // the client says no more: the listener hands over what it has
			}
			r := <-accepted
			if r.conn == nil {
				t.Fatal("nothing accepted")
			}
			defer r.conn.Close()
			_, sniffed := r.conn.(*SniffedConn)
			cs := r.conn.(interface{ ConnectionState() tls.ConnectionState }).ConnectionState()
			if sniffed != tt.sniffed || cs.NegotiatedProtocol != tt.protocol || string(r.got) != tt.send {
				t.Fatalf("accepted %T (protocol %q) reading %q; want sniffed=%v, protocol %q, %q", r.conn,
					cs.NegotiatedProtocol, r.got, tt.sniffed, tt.protocol, tt.send)
			}
			if len(cs.PeerCertificates) == 0 {
				t.Fatal("no peer certificate")
			}
			if id, err := CertID(cs.PeerCertificates[0]); err != nil || id.Service != "web" {
				t.Fatalf("peer %v %v", id, err)
			}
		})
	}
}
