package proxy

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"meshlet.dev/meshlet/discovery"
	"meshlet.dev/meshlet/metrics"
)

// startProxy runs a Proxy for cfg (listen addresses may use port 0) and shuts it down when the test ends.
func startProxy(t testing.TB, cfg Config) (*Proxy, *metrics.Metrics) {
	return startProxyWith(t, cfg, nil)
}

// startH2CBackend serves h on loopback with HTTP/1.1 and prior-knowledge h2c until the test ends; it returns the
// server's host:port.
func startH2CBackend(t testing.TB, h http.HandlerFunc) string {
	t.Helper()
	backend := httptest.NewUnstartedServer(h)
	backend.Config.Protocols = new(http.Protocols)
	backend.Config.Protocols.SetHTTP1(true)
	backend.Config.Protocols.SetUnencryptedHTTP2(true)
	backend.Start()
	t.Cleanup(backend.Close)
	return strings.TrimPrefix(backend.URL, "http://")
}

// startProxyWith is startProxy with a discovery source for upstreams that list no endpoints.
func startProxyWith(t testing.TB, cfg Config, src discovery.Source) (*Proxy, *metrics.Metrics) {
	t.Helper()
	m := metrics.New(prometheus.NewRegistry(), "test")
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	return startProxyOpts(t, cfg, Options{Logger: log, Metrics: m, Discovery: src}), m
}

// runProxy starts p (made by New) and shuts it down when the test ends.
func runProxy(t testing.TB, p *Proxy) {
	t.Helper()
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := p.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
	})
}

// startProxyOpts runs a Proxy for cfg with opts, waits until it is ready, and shuts it down when the test ends.
func startProxyOpts(t testing.TB, cfg Config, opts Options) *Proxy {
	t.Helper()
	p, err := New(cfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	runProxy(t, p)
	deadline := time.Now().Add(5 * time.Second)
	for p.Ready() != nil {
		if time.Now().After(deadline) {
			t.Fatalf("proxy not ready: %v", p.Ready())
		}
		time.Sleep(time.Millisecond)
	}
	return p
}

// echoServer answers with the request body and the sha256 of it in a header.
func echoServer(t testing.TB) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := sha256.New()
		b, _ := io.ReadAll(io.TeeReader(r.Body, h))
		w.Header().Set("X-Sha256", hex.EncodeToString(h.Sum(nil)))
		w.Header().Set("X-Host", r.Host)
		w.Write(b)
	}))
	t.Cleanup(srv.Close)
	return srv
}

func TestProxyForwardsHTTP(t *testing.T) {
	backend := echoServer(t)
	cfg := Config{Service: ServiceConfig{Name: "web"}, Upstreams: []UpstreamConfig{{
		Name: "api", Listen: "127.0.0.1:0", Endpoints: []string{strings.TrimPrefix(backend.URL, "http://")}}}}
	p, m := startProxy(t, cfg)
	url := "http://" + p.Addrs()["upstream/api"] + "/echo"
	body := make([]byte, 1<<20)
	rand.Read(body)
	for i := range 20 {
		req, _ := http.NewRequest("POST", url, bytes.NewReader(body))
		req.Host = "api.example"
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !bytes.Equal(got, body) {
			t.Fatalf("request %d: status %d, %d bytes back (want %d, equal): %.200s", i, resp.StatusCode, len(got), len(body), got)
		}
		if h := resp.Header.Get("X-Host"); h != "api.example" {
			t.Fatalf("Host at the app = %q, want the one the client sent", h)
		}
	}
	if n := testutil.ToFloat64(m.Requests.WithLabelValues("outbound", "api", "2xx", "", "")); n != 20 {
		t.Fatalf("meshlet_requests_total = %v, want 20", n)
	}
	if n := testutil.ToFloat64(m.ReceivedBytes.WithLabelValues("outbound", "api")); n != float64(20*len(body)) {
		t.Fatalf("received bytes = %v, want %d", n, 20*len(body))
	}
	if n := testutil.ToFloat64(m.SentBytes.WithLabelValues("outbound", "api")); n != float64(20*len(body)) {
		t.Fatalf("sent bytes = %v, want %d", n, 20*len(body))
	}
}

func TestProxyOwnErrors(t *testing.T) {
	hang := make(chan struct{})
	t.Cleanup(func() { close(hang) })
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-hang:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(slow.Close)
	closed := httptest.NewServer(http.NotFoundHandler())
	closedAddr := strings.TrimPrefix(closed.URL, "http://")
	closed.Close()
	cfg := Config{Service: ServiceConfig{Name: "web"}, Outbound: OutboundConfig{Listen: "127.0.0.1:0"},
		Upstreams: []UpstreamConfig{
			{Name: "empty"},
			{Name: "refused", Endpoints: []string{closedAddr}},
			{Name: "slow", Endpoints: []string{strings.TrimPrefix(slow.URL, "http://")}, Timeout: 100 * time.Millisecond},
		}}
	p, m := startProxy(t, cfg)
	base := "http://" + p.Addrs()["outbound"]
	tests := []struct {
		host       string
		grpc       bool
		status     int
		grpcStatus string
		reason     string
	}{
		{"empty", false, 503, "", "no_endpoint"},
		{"empty.mesh", true, 200, "14", "no_endpoint"},
		{"refused", false, 502, "", "connect"},
		{"refused", true, 200, "14", "connect"},
		{"slow", false, 504, "", "timeout"},
		{"slow", true, 200, "4", "timeout"},
		{"nosuch", false, 404, "", "unknown_upstream"},
		{"nosuch", true, 200, "12", "unknown_upstream"},
	}
	for _, tt := range tests {
		req, _ := http.NewRequest("GET", base+"/x", nil)
		req.Host = tt.host
		if tt.grpc {
			req.Header.Set("Content-Type", "application/grpc")
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tt.status || resp.Header.Get("Grpc-Status") != tt.grpcStatus ||
			resp.Header.Get("X-Meshlet-Error") != tt.reason {
			t.Errorf("%s grpc=%v: status %d grpc-status %q reason %q (%s); want %d %q %q", tt.host, tt.grpc,
				resp.StatusCode, resp.Header.Get("Grpc-Status"), resp.Header.Get("X-Meshlet-Error"), b,
				tt.status, tt.grpcStatus, tt.reason)
		}
		if tt.grpc && len(b) != 0 {
			t.Errorf("%s: gRPC error response has a body (%q); it must be trailers-only", tt.host, b)
		}
	}
	for up, reason := range map[string]string{"empty": "no_endpoint", "refused": "connect", "slow": "timeout"} {
		if n := testutil.ToFloat64(m.UpstreamErrors.WithLabelValues("outbound", up, reason)); n != 2 {
			t.Errorf("meshlet_upstream_errors_total{upstream=%q,reason=%q} = %v, want 2", up, reason, n)
		}
	}
	if n := testutil.ToFloat64(m.Requests.WithLabelValues("outbound", "slow", "2xx", "DeadlineExceeded", "")); n != 1 {
		t.Errorf("gRPC timeout not counted as DeadlineExceeded: %v", n)
	}
}

func TestProxyReload(t *testing.T) {
	a, b := echoServer(t), echoServer(t)
	addr := func(s *httptest.Server) string { return strings.TrimPrefix(s.URL, "http://") }
	cfg := Config{Service: ServiceConfig{Name: "web"}, Outbound: OutboundConfig{Listen: "127.0.0.1:0"},
		Upstreams: []UpstreamConfig{{Name: "api", Listen: "127.0.0.1:0", Endpoints: []string{addr(a)}}}}
	p, _ := startProxy(t, cfg)
	apiURL := "http://" + p.Addrs()["upstream/api"]
	client := &http.Client{Transport: &http.Transport{MaxConnsPerHost: 1}}
	get := func(url, host string) int {
		req, _ := http.NewRequest("GET", url, nil)
		req.Host = host
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	if s := get(apiURL, "api"); s != 200 {
		t.Fatalf("before reload: %d", s)
	}
	// Swap the endpoint to b, add an upstream, and keep the same client connection.
	next := cfg
	next.Upstreams = []UpstreamConfig{{Name: "api", Listen: cfg.Upstreams[0].Listen, Endpoints: []string{addr(b)}},
		{Name: "billing", Endpoints: []string{addr(a)}}}
	next.Upstreams[0].Listen = p.Addrs()["upstream/api"]
	p.mu.Lock()
	p.cfg.Upstreams[0].Listen = next.Upstreams[0].Listen // the running listener's real address
	p.mu.Unlock()
	if _, err := p.Reload(next); err != nil {
		t.Fatal(err)
	}
	before := p.Upstreams()
	// The new endpoint list reaches the cluster through its watch, a moment after Reload returns.
	eventuallyTrue(t, func() bool {
		eps := upstreamInfo(t, p, "api").Endpoints
		return len(eps) == 1 && eps[0].Address == addr(b)
	}, "api's endpoint becomes b")
	if s := get(apiURL, "api"); s != 200 {
		t.Fatalf("after reload: %d", s)
	}
	if s := get("http://"+p.Addrs()["outbound"], "billing"); s != 200 {
		t.Fatalf("added upstream: %d", s)
	}
	// The endpoint counts a request when its response body has been copied, which may be just after the client
	// read it all.
	var api UpstreamInfo
	for range 200 {
		for _, u := range p.Upstreams() {
			if u.Name == "api" {
				api = u
			}
		}
		if len(api.Endpoints) == 1 && api.Endpoints[0].Requests == 1 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if len(api.Endpoints) != 1 || api.Endpoints[0].Address != addr(b) || api.Endpoints[0].Requests != 1 {
		t.Fatalf("api after reload: %+v (before: %+v)", api, before)
	}
	// A bad config changes nothing.
	bad := next
	bad.Upstreams = append(bad.Upstreams, UpstreamConfig{Name: "Bad Name"})
	if _, err := p.Reload(bad); err == nil || !strings.Contains(err.Error(), "upstreams[2].name") {
		t.Fatalf("bad reload: %v", err)
	}
	if s := get("http://"+p.Addrs()["outbound"], "billing"); s != 200 {
		t.Fatalf("after bad reload: %d", s)
	}
	// Removing an upstream stops its routes.
	if _, err := p.Reload(Config{Service: cfg.Service, Outbound: cfg.Outbound, Upstreams: next.Upstreams[:1]}); err != nil {
		t.Fatal(err)
	}
	if s := get("http://"+p.Addrs()["outbound"], "billing"); s != 404 {
		t.Fatalf("removed upstream answered %d, want 404", s)
	}
}

// TestProxyDiscoverySource: an upstream without endpoints follows the discovery source under its service name,
// one with endpoints keeps them, and a reload moves an upstream from one to the other.
func TestProxyDiscoverySource(t *testing.T) {
	a, b := echoServer(t), echoServer(t)
	addr := func(s *httptest.Server) string { return strings.TrimPrefix(s.URL, "http://") }
	src := discovery.NewStatic()
	cfg := Config{Service: ServiceConfig{Name: "web"}, Outbound: OutboundConfig{Listen: "127.0.0.1:0"},
		Upstreams: []UpstreamConfig{{Name: "api", Service: "api-svc"}, {Name: "fixed", Endpoints: []string{addr(b)}}}}
	p, _ := startProxyWith(t, cfg, src)
	call := func(host string) (int, string) {
		req, _ := http.NewRequest("GET", "http://"+p.Addrs()["outbound"]+"/", nil)
		req.Host = host
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		io.Copy(io.Discard, resp.Body)
		return resp.StatusCode, resp.Header.Get("X-Meshlet-Error")
	}
	if s, reason := call("api"); s != 503 || reason != "no_endpoint" {
		t.Fatalf("before discovery has endpoints: %d %q", s, reason)
	}
	eps, _ := discovery.ParseAddrs([]string{addr(a)})
	src.Set("api-svc", eps)
	deadline := time.Now().Add(5 * time.Second)
	for {
		if s, _ := call("api"); s == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("discovered endpoint never used")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if s, _ := call("fixed"); s != 200 {
		t.Fatalf("static upstream: %d", s)
	}
	// Reload: api gets a static list; fixed loses its list and is discovered under "fixed".
	next := cfg
	next.Upstreams = []UpstreamConfig{{Name: "api", Endpoints: []string{}}, {Name: "fixed"}}
	if _, err := p.Reload(next); err != nil {
		t.Fatal(err)
	}
	for host, want := range map[string]int{"api": 503, "fixed": 503} {
		deadline := time.Now().Add(5 * time.Second)
		for {
			s, _ := call(host)
			if s == want {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s after reload: %d, want %d", host, s, want)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
}

// TestProxyDiscoveredSidecar: an endpoint that discovery marks as a sidecar gets HTTP/2 even on an upstream whose
// peer setting is app (HTTP/1.1 for protocol http).
func TestProxyDiscoveredSidecar(t *testing.T) {
	var proto atomic.Int32
	backendAddr := startH2CBackend(t, func(w http.ResponseWriter, r *http.Request) {
		proto.Store(int32(r.ProtoMajor))
	})
	src := discovery.NewStatic()
	cfg := Config{Service: ServiceConfig{Name: "web"}, Upstreams: []UpstreamConfig{{Name: "api", Listen: "127.0.0.1:0"}}}
	p, _ := startProxyWith(t, cfg, src)
	for _, tc := range []struct {
		meta map[string]string
		want int32
	}{{nil, 1}, {map[string]string{"peer": "sidecar"}, 2}} {
		ap := netip.MustParseAddrPort(backendAddr)
		src.Set("api", []discovery.Endpoint{{ID: fmt.Sprint(tc.want), Addr: ap, Meta: tc.meta}})
		deadline := time.Now().Add(5 * time.Second)
		for {
			resp, err := http.Get("http://" + p.Addrs()["upstream/api"] + "/")
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode == 200 && proto.Load() == tc.want {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("meta %v: backend saw HTTP/%d, want HTTP/%d", tc.meta, proto.Load(), tc.want)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
}

// TestProxyProtocolSwitch: a reload that changes an upstream's protocol between http and http2 switches its
// transport in place, on the same listener.
func TestProxyProtocolSwitch(t *testing.T) {
	var proto atomic.Int32
	backendAddr := startH2CBackend(t, func(w http.ResponseWriter, r *http.Request) {
		proto.Store(int32(r.ProtoMajor))
	})
	ep := backendAddr
	cfg := Config{Service: ServiceConfig{Name: "web"}, Upstreams: []UpstreamConfig{{Name: "api", Listen: "127.0.0.1:0", Endpoints: []string{ep}}}}
	p, _ := startProxy(t, cfg)
	addr := p.Addrs()["upstream/api"]
	for _, tc := range []struct {
		protocol string
		want     int32
	}{{ProtocolHTTP, 1}, {ProtocolHTTP2, 2}, {ProtocolHTTP, 1}} {
		next := Config{Service: cfg.Service, Upstreams: []UpstreamConfig{{Name: "api", Listen: addr, Protocol: tc.protocol, Endpoints: []string{ep}}}}
		p.mu.Lock()
		p.cfg.Upstreams[0].Listen = addr
		p.mu.Unlock()
		if _, err := p.Reload(next); err != nil {
			t.Fatal(err)
		}
		resp, err := http.Get("http://" + addr + "/")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 || proto.Load() != tc.want {
			t.Fatalf("protocol %s: status %d, backend saw HTTP/%d, want HTTP/%d", tc.protocol, resp.StatusCode, proto.Load(), tc.want)
		}
		if p.Addrs()["upstream/api"] != addr {
			t.Fatal("the listener was replaced")
		}
	}
}
