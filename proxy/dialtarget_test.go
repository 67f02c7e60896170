package proxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"meshlet.dev/meshlet/discovery"
	"meshlet.dev/meshlet/metrics"
	"meshlet.dev/meshlet/mtls"
)

// testTrustDomain is the trust domain of the certificates the transport tests issue.
const testTrustDomain = "test.consul"

// testPKI issues certificates of one test CA.
type testPKI struct{ ca *mtls.CA }

func newTestPKI(t testing.TB) *testPKI {
	t.Helper()
	ca, err := mtls.NewCA(testTrustDomain, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return &testPKI{ca: ca}
}

// id is the SPIFFE ID of service in the test trust domain.
func (p *testPKI) id(service string) string {
	return mtls.ServiceID(testTrustDomain, "", "", service).String()
}

// source returns a certificate source holding a leaf of service.
func (p *testPKI) source(t testing.TB, service string) mtls.Source {
	t.Helper()
	cert, key, err := p.ca.Issue(mtls.ServiceID(testTrustDomain, "", "", service), time.Now().Add(-time.Minute), time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	b, err := mtls.NewBundle(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: p.ca.Cert.Raw}))
	if err != nil {
		t.Fatal(err)
	}
	return bundleSource{b}
}

type bundleSource struct{ b *mtls.Bundle }

func (s bundleSource) Bundle() *mtls.Bundle { return s.b }

// testCluster returns an outbound upstream for cfg (after defaults) with TLS from src (nil: none).
func testCluster(t testing.TB, cfg UpstreamConfig, src mtls.Source) *cluster {
	t.Helper()
	c := Config{Service: ServiceConfig{Name: "web"}, Outbound: OutboundConfig{Listen: "127.0.0.1:0"}, Upstreams: []UpstreamConfig{cfg}}
	c.SetDefaults()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	var ts *tlsState
	if src != nil {
		ts = &tlsState{src: src, minVersion: "1.3"}
	}
	m := metrics.New(prometheus.NewRegistry(), "test")
	u := newCluster(&c.Upstreams[0], metrics.Outbound, m, slog.New(slog.NewTextHandler(io.Discard, nil)), ts)
	t.Cleanup(u.close)
	return u
}

// firstBytes is a raw TCP listener that records the first bytes of every connection and closes it.
type firstBytes struct {
	ln   net.Listener
	mu   sync.Mutex
	seen [][]byte
	wg   sync.WaitGroup
}

func newFirstBytes(t testing.TB) *firstBytes {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &firstBytes{ln: ln}
	f.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			f.wg.Go(func() {
				defer c.Close()
				c.SetReadDeadline(time.Now().Add(5 * time.Second))
				b := make([]byte, 24)
				n, _ := io.ReadAtLeast(c, b, 5)
				f.mu.Lock()
				f.seen = append(f.seen, b[:n])
				f.mu.Unlock()
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		f.wg.Wait()
	})
	return f
}

func (f *firstBytes) connections() [][]byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([][]byte(nil), f.seen...)
}

// waitConnections waits until n connections were recorded (5s at most).
func (f *firstBytes) waitConnections(t testing.TB, n int) [][]byte {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for len(f.connections()) < n && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	return f.connections()
}

// TestDialUsesPickedTarget: the endpoint leaves the endpoint list between the pick and the dial (a Consul update
// or a reload). The dial must still secure the connection as the picked endpoint requires: the endpoint sees a
// TLS ClientHello, never an HTTP/2 preface in plaintext (which would carry the request's headers in clear).
func TestDialUsesPickedTarget(t *testing.T) {
	pki := newTestPKI(t)
	ep := newFirstBytes(t)
	for _, peer := range []string{PeerSidecar, PeerApp} {
		t.Run("endpoint is a sidecar by "+map[string]string{PeerSidecar: "config", PeerApp: "discovery"}[peer], func(t *testing.T) {
			u := testCluster(t, UpstreamConfig{Name: "api", Peer: peer}, pki.source(t, "web"))
			addr := netip.MustParseAddrPort(ep.ln.Addr().String())
			u.endpoints.update(discovery.Snapshot{Service: "api", Index: 1, Endpoints: []discovery.Endpoint{{ID: "api-1", Addr: addr,
				Identity: pki.id("api"), Meta: map[string]string{"peer": PeerSidecar}}}})
			// Between the pick and the TLS decision: the endpoint leaves the list.
			var once sync.Once
			u.transport.Store(newTransports(func() time.Duration { return time.Second },
				func(ctx context.Context, c net.Conn, tgt *dialTarget, alpn string) (net.Conn, error) {
					once.Do(func() { u.endpoints.update(discovery.Snapshot{Service: "api", Index: 2}) })
					return u.secureDial(ctx, c, tgt, alpn)
				}, 0))
			before := len(ep.connections())
			req, _ := http.NewRequestWithContext(t.Context(), "GET", "http://api/secret", nil)
			req.Header.Set("Authorization", "Bearer secret-token")
			if resp, err := u.RoundTrip(req); err == nil {
				resp.Body.Close()
				t.Fatalf("the request got an answer (%d) from an endpoint that speaks no TLS", resp.StatusCode)
			}
			seen := ep.waitConnections(t, before+1)
			if len(seen) != before+1 {
				t.Fatalf("the endpoint saw %d connections, want 1", len(seen)-before)
			}
			first := seen[before]
			if bytes.HasPrefix(first, []byte("PRI * HTTP/2.0")) {
				t.Fatalf("the connection to the picked sidecar was made in plaintext: %q", first)
			}
			if len(first) == 0 || first[0] != 0x16 { // a TLS handshake record
				t.Fatalf("the connection did not start with a TLS handshake: %q", first)
			}
		})
	}
}

// TestDialWithoutTargetFailsClosed: a connection the transports ask for without the attempt's target, or for a
// pool address that is not the target's, is not made at all.
func TestDialWithoutTargetFailsClosed(t *testing.T) {
	pki := newTestPKI(t)
	ep := newFirstBytes(t)
	u := testCluster(t, UpstreamConfig{Name: "api", Peer: PeerSidecar}, pki.source(t, "web"))
	st := newEndpointState(discovery.Endpoint{ID: "api-1", Addr: netip.MustParseAddrPort(ep.ln.Addr().String()), Identity: pki.id("api")})
	tgt := u.targetOf(st, u.cfg.Load())
	other := u.targetOf(newEndpointState(discovery.Endpoint{ID: "api-2", Addr: netip.MustParseAddrPort("127.0.0.1:1")}), u.cfg.Load())
	tr := u.transport.Load()
	for _, tc := range []struct {
		name string
		req  *http.Request
	}{
		{"no target in the context", mustRequest(t, t.Context(), "http://"+tgt.poolHost+"/")},
		{"the endpoint's address without a target", mustRequest(t, t.Context(), "http://"+ep.ln.Addr().String()+"/")},
		{"a target of another pool", mustRequest(t, context.WithValue(t.Context(), dialTargetKey{}, other), "http://"+tgt.poolHost+"/")},
	} {
		for name, rt := range map[string]http.RoundTripper{"http1": tr.h1, "h2c": tr.h2c} {
			t.Run(tc.name+"/"+name, func(t *testing.T) {
				resp, err := rt.RoundTrip(tc.req)
				if err == nil {
					resp.Body.Close()
					t.Fatal("the transport made a connection without a matching target")
				}
				if !isNoDialTarget(err) {
					t.Fatalf("error %v, want the no-target refusal", err)
				}
			})
		}
	}
	if n := len(ep.connections()); n != 0 {
		t.Fatalf("the endpoint saw %d connections, want none", n)
	}
}

func mustRequest(t testing.TB, ctx context.Context, url string) *http.Request {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, "GET", url, nil)
	if err != nil {
		t.Fatal(err)
	}
	return req
}

// TestPooledConnectionsKeepTheirTarget: a pooled connection serves only requests for the target it was dialled
// for. When the endpoint at an address changes identity (re-registered, with the same or another ID) or changes
// from app to sidecar, the next request dials anew and is secured as the new target requires, instead of reusing a
// connection verified as someone else, or a plaintext one.
func TestPooledConnectionsKeepTheirTarget(t *testing.T) {
	pki := newTestPKI(t)
	tlsServer := startTestServer(t, pki.source(t, "api"))
	h2cServer := startTestServer(t, nil)
	for _, tc := range []struct {
		name         string
		server       *testServer
		protocol     string
		first, later discovery.Endpoint
	}{
		{"same ID, another identity", tlsServer, ProtocolHTTP,
			discovery.Endpoint{ID: "api-1", Identity: pki.id("api"), Meta: map[string]string{"peer": PeerSidecar}},
			discovery.Endpoint{ID: "api-1", Identity: pki.id("billing"), Meta: map[string]string{"peer": PeerSidecar}}},
		{"another ID, another identity", tlsServer, ProtocolHTTP,
			discovery.Endpoint{ID: "api-1", Identity: pki.id("api"), Meta: map[string]string{"peer": PeerSidecar}},
			discovery.Endpoint{ID: "billing-1", Identity: pki.id("billing"), Meta: map[string]string{"peer": PeerSidecar}}},
		{"app becomes a sidecar", h2cServer, ProtocolHTTP2,
			discovery.Endpoint{ID: "api-1"},
			discovery.Endpoint{ID: "api-1", Identity: pki.id("api"), Meta: map[string]string{"peer": PeerSidecar}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u := testCluster(t, UpstreamConfig{Name: "api", Protocol: tc.protocol}, pki.source(t, "web"))
			addr := netip.MustParseAddrPort(tc.server.ln.Addr().String())
			tc.first.Addr, tc.later.Addr = addr, addr
			u.endpoints.update(discovery.Snapshot{Service: "api", Index: 1, Endpoints: []discovery.Endpoint{tc.first}})
			dials := tc.server.conns()
			if code, err := roundTrip(t, u); err != nil || code != 200 {
				t.Fatalf("first request: %d %v", code, err)
			}
			if tc.server.conns() != dials+1 {
				t.Fatalf("first request: %d new connections, want 1", tc.server.conns()-dials)
			}
			u.endpoints.update(discovery.Snapshot{Service: "api", Index: 2, Endpoints: []discovery.Endpoint{tc.later}})
			code, err := roundTrip(t, u)
			if err == nil {
				t.Fatalf("second request answered %d over the connection pooled for the previous target", code)
			}
			if tc.server.conns() != dials+2 {
				t.Fatalf("second request: %d new connections in all, want a new one for the new target", tc.server.conns()-dials)
			}
		})
	}
}

// roundTrip sends one GET through u and returns its status.
func roundTrip(t testing.TB, u *cluster) (int, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	resp, err := u.RoundTrip(mustRequest(t, ctx, "http://api/"))
	if err != nil {
		return 0, err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, nil
}

// testServer is an HTTP server (HTTP/1.1 and h2c, or HTTP/2 over mutual TLS) that counts its connections.
type testServer struct {
	ln  net.Listener
	srv *http.Server
	mu  sync.Mutex
	n   int
}

func (s *testServer) conns() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.n
}

// startTestServer serves 200 on loopback; with src, over mutual TLS with src's certificate.
func startTestServer(t testing.TB, src mtls.Source) *testServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &testServer{ln: ln}
	s.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}),
		ErrorLog: log.New(io.Discard, "", 0), // the refused handshakes are the point
		ConnState: func(_ net.Conn, cs http.ConnState) {
			if cs == http.StateNew {
				s.mu.Lock()
				s.n++
				s.mu.Unlock()
			}
		}}
	s.srv.Protocols = new(http.Protocols)
	s.srv.Protocols.SetHTTP1(true)
	if src != nil {
		cfg, err := mtls.ServerConfig(src, "1.3")
		if err != nil {
			t.Fatal(err)
		}
		s.srv.Protocols.SetHTTP2(true)
		s.srv.TLSConfig = cfg
		ln = tls.NewListener(ln, cfg)
	} else {
		s.srv.Protocols.SetUnencryptedHTTP2(true)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.srv.Serve(ln)
	}()
	t.Cleanup(func() {
		s.srv.Close()
		<-done
	})
	return s
}

// TestMTLSWithoutTLSFailsClosed: an upstream that says tls.mode: mtls on a meshlet without TLS does not call its
// sidecars in plaintext: the connection is closed before a byte is sent.
func TestMTLSWithoutTLSFailsClosed(t *testing.T) {
	ep := newFirstBytes(t)
	u := testCluster(t, UpstreamConfig{Name: "api", Peer: PeerSidecar, TLS: UpstreamTLSConfig{Mode: mtls.ModeMTLS}}, nil)
	u.endpoints.update(discovery.Snapshot{Service: "api", Index: 1, Endpoints: []discovery.Endpoint{{ID: "api-1",
		Addr: netip.MustParseAddrPort(ep.ln.Addr().String())}}})
	_, err := roundTrip(t, u)
	if !errors.Is(err, errNoTLS) {
		t.Fatalf("error %v, want the refusal to call a sidecar in plaintext", err)
	}
	for _, first := range ep.connections() {
		if len(first) > 0 {
			t.Fatalf("the endpoint got %q", first)
		}
	}
}

// TestForeignSidecarProtocol: a sidecar discovery says is no meshlet (Meta proxy=foreign) is spoken to in the
// upstream's protocol, as Consul's Envoy does (HTTP/1.1 with ALPN http/1.1 for http, HTTP/2 with ALPN h2 for
// http2), a meshlet over HTTP/2 whatever the protocol; every mutual TLS dial names Consul's SNI of the service.
func TestForeignSidecarProtocol(t *testing.T) {
	pki := newTestPKI(t)
	type seen struct{ proto, alpn, sni string }
	got := make(chan seen, 1)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := mtls.ServerConfig(pki.source(t, "api"), "1.3")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- seen{r.Proto, r.TLS.NegotiatedProtocol, r.TLS.ServerName}
	}), ErrorLog: log.New(io.Discard, "", 0)}
	srv.Protocols = new(http.Protocols)
	srv.Protocols.SetHTTP1(true)
	srv.Protocols.SetHTTP2(true)
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(tls.NewListener(ln, cfg))
	}()
	t.Cleanup(func() {
		srv.Close()
		<-done
	})
	sni := "api.default.dc1.internal." + testTrustDomain
	for _, tt := range []struct {
		name     string
		protocol string
		proxy    string
		want     seen
	}{
		{"foreign, http", ProtocolHTTP, discovery.ProxyForeign, seen{"HTTP/1.1", "http/1.1", sni}},
		{"foreign, http2", ProtocolHTTP2, discovery.ProxyForeign, seen{"HTTP/2.0", "h2", sni}},
		{"meshlet, http", ProtocolHTTP, discovery.ProxyMeshlet, seen{"HTTP/2.0", "h2", sni}},
		{"no marker: a meshlet", ProtocolHTTP, "", seen{"HTTP/2.0", "h2", sni}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			u := testCluster(t, UpstreamConfig{Name: "api", Protocol: tt.protocol}, pki.source(t, "web"))
			meta := map[string]string{"peer": PeerSidecar}
			if tt.proxy != "" {
				meta[discovery.MetaProxy] = tt.proxy
			}
			u.endpoints.update(discovery.Snapshot{Service: "api", Index: 1, Endpoints: []discovery.Endpoint{{ID: "api-1",
				Addr: netip.MustParseAddrPort(ln.Addr().String()), Identity: pki.id("api"), Meta: meta}}})
			if code, err := roundTrip(t, u); err != nil || code != 200 {
				t.Fatalf("round trip: %d %v", code, err)
			}
			if s := <-got; s != tt.want {
				t.Fatalf("the endpoint saw %+v, want %+v", s, tt.want)
			}
		})
	}
}
