package admin

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"meshlet.dev/meshlet/metrics"
)

// guardRig is an admin server whose handler is called directly, so that a test can choose the client's and the
// listener's addresses (a pod IP, another pod).
type guardRig struct {
	s        *Server
	reg      *prometheus.Registry
	reloads  int
	quits    int
	drains   int
	podIP    string
	handlers http.Handler
	level    slog.LevelVar
}

func newGuardRig(t *testing.T, cfg Config) *guardRig {
	t.Helper()
	g := &guardRig{reg: prometheus.NewRegistry(), podIP: "10.1.2.3"}
	cfg.Listen = "0.0.0.0:15000"
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	g.s = New(cfg, Options{
		Logger:    slog.New(slog.NewTextHandler(io.Discard, nil)),
		Metrics:   http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "metrics") }),
		Ready:     func() error { return nil },
		Upstreams: func() any { return []string{"api"} },
		Config:    func() any { return map[string]string{"k": "v"} },
		Reload:    func() ([]string, error) { g.reloads++; return nil, nil },
		Quit:      func() { g.quits++ },
		Drain:     func(context.Context) string { g.drains++; return "draining" },
		LogLevel:  &g.level,
		Refused:   metrics.New(g.reg, "test").AdminRefused,
	})
	g.handlers = g.s.srv.Handler
	return g
}

// request is one admin request as it arrives on the pod IP's listener.
type request struct {
	method, path string
	remote       string            // client address; default the pod IP itself (a container of the pod)
	host         string            // Host header; default podIP:15000
	header       map[string]string // extra headers
}

func (g *guardRig) do(rq request) *httptest.ResponseRecorder {
	if rq.remote == "" {
		rq.remote = g.podIP + ":40000"
	}
	if rq.host == "" {
		rq.host = g.podIP + ":15000"
	}
	req := httptest.NewRequest(rq.method, rq.path, nil)
	req.Host, req.RemoteAddr = rq.host, rq.remote
	for k, v := range rq.header {
		req.Header.Set(k, v)
	}
	req = req.WithContext(context.WithValue(req.Context(), http.LocalAddrContextKey,
		&net.TCPAddr{IP: net.ParseIP(g.podIP), Port: 15000}))
	rec := httptest.NewRecorder()
	g.handlers.ServeHTTP(rec, req)
	return rec
}

// TestAdminGuard: mutating endpoints answer local clients only, addressed to an allowed Host, not from a browser
// and not with a body type a web page can send cross-origin; /debug views check the Host; probes and scrapes
// answer anyone, whatever the Host.
func TestAdminGuard(t *testing.T) {
	const otherPod = "10.9.9.9:51000"
	tests := []struct {
		name   string
		rq     request
		status int
		body   string // a part of the answer
		reason string // the refusal counted; "" when served
	}{
		// What Kubernetes and the documented commands do.
		{"kubelet probes /live on the pod IP", request{method: "GET", path: "/live", remote: otherPod}, 200, "ok", ""},
		{"kubelet probes /ready on the pod IP", request{method: "GET", path: "/ready", remote: "10.1.2.1:33000",
			header: map[string]string{"User-Agent": "kube-probe/1.31"}}, 200, "ready", ""},
		{"Prometheus scrapes by a DNS name", request{method: "GET", path: "/metrics", remote: otherPod,
			host: "web-0.web.shop.svc.cluster.local:15000"}, 200, "metrics", ""},
		{"Consul agent checks /ready by any name", request{method: "GET", path: "/ready", remote: otherPod, host: "node-1:15000"}, 200, "ready", ""},
		{"curl -X POST 127.0.0.1 quitquitquit", request{method: "POST", path: "/quitquitquit", remote: "127.0.0.1:5000",
			host: "127.0.0.1:15000", header: map[string]string{"User-Agent": "curl/8.5.0"}}, 200, "shutting down", ""},
		{"curl -X POST localhost reload", request{method: "POST", path: "/debug/reload", remote: "127.0.0.1:5000",
			host: "localhost:15000"}, 200, `"reloaded": true`, ""},
		{"app of the pod calls the pod IP", request{method: "POST", path: "/quitquitquit"}, 200, "shutting down", ""},
		{"JSON body is fine", request{method: "POST", path: "/debug/reload", header: map[string]string{"Content-Type": "application/json"}}, 200, "reloaded", ""},
		{"debug config by IP from another pod", request{method: "GET", path: "/debug/config", remote: otherPod}, 200, `"k"`, ""},
		{"debug upstreams by [::1]", request{method: "GET", path: "/debug/upstreams", remote: "[::1]:5000", host: "[::1]:15000"}, 200, "api", ""},
		{"debug by kubectl port-forward", request{method: "GET", path: "/debug/config", remote: "127.0.0.1:5000", host: "localhost:8080"}, 200, `"k"`, ""},
		{"allowed host", request{method: "GET", path: "/debug/config", host: "Debug.Example.:15000"}, 200, `"k"`, ""},
		{"log level from the pod", request{method: "GET", path: "/debug/log-level"}, 200, "info", ""},
		{"curl sets the log level", request{method: "POST", path: "/debug/log-level?level=debug", remote: "127.0.0.1:5000",
			host: "127.0.0.1:15000", header: map[string]string{"User-Agent": "curl/8.5.0"}}, 200, "debug", ""},
		{"unknown log level", request{method: "POST", path: "/debug/log-level?level=verbose"}, 400, "want ?level=debug, info, warn or error", ""},
		{"pprof index from the pod", request{method: "GET", path: "/debug/pprof/"}, 200, "goroutine", ""},
		{"pprof heap by kubectl port-forward", request{method: "GET", path: "/debug/pprof/heap?debug=1", remote: "127.0.0.1:5000", host: "localhost:8080"}, 200, "heap profile", ""},

		// The kubelet runs the app's preStop httpGet from the node: /drain answers it (only what SIGTERM does).
		{"kubelet preStop GET /drain from the node", request{method: "GET", path: "/drain", remote: "10.1.2.1:33000",
			header: map[string]string{"User-Agent": "kube-lifecycle/1.31", HeaderDrainToken: testDrainToken}}, 200, "draining", ""},
		{"drain from another pod without the token", request{method: "GET", path: "/drain", remote: otherPod}, 403,
			"must send admin.drain_token", RefusedDrainToken},
		{"drain from another pod with a wrong token", request{method: "POST", path: "/drain", remote: otherPod,
			header: map[string]string{HeaderDrainToken: testDrainToken[:31] + "x"}}, 403, "must send admin.drain_token", RefusedDrainToken},
		{"drain from another pod with a prefix of the token", request{method: "POST", path: "/drain", remote: otherPod,
			header: map[string]string{HeaderDrainToken: testDrainToken[:16]}}, 403, "must send admin.drain_token", RefusedDrainToken},
		{"drain from loopback needs no token", request{method: "GET", path: "/drain", remote: "127.0.0.1:5000", host: "127.0.0.1:15000"}, 200, "draining", ""},
		{"POST /drain from the pod", request{method: "POST", path: "/drain"}, 200, "draining", ""},
		{"drain by a rebound name", request{method: "GET", path: "/drain", remote: "127.0.0.1:5000", host: "evil.example"}, 403, "DNS rebinding", RefusedHost},
		{"drain by a page", request{method: "GET", path: "/drain", remote: "127.0.0.1:5000", host: "127.0.0.1:15000",
			header: map[string]string{"Sec-Fetch-Site": "cross-site"}}, 403, "browser", RefusedBrowser},
		{"drain by a form", request{method: "POST", path: "/drain", remote: "10.1.2.1:33000",
			header: map[string]string{"Content-Type": "text/plain", HeaderDrainToken: testDrainToken}}, 415, "cross-origin", RefusedContentType},

		// Another pod or host.
		{"reload from another pod", request{method: "POST", path: "/debug/reload", remote: otherPod}, 403, "local clients only", RefusedNotLocal},
		{"quit from another pod", request{method: "POST", path: "/quitquitquit", remote: otherPod}, 403, "local clients only", RefusedNotLocal},
		{"unparseable remote", request{method: "POST", path: "/debug/reload", remote: "garbage"}, 403, "local clients only", RefusedNotLocal},
		{"log level read from another pod", request{method: "GET", path: "/debug/log-level", remote: otherPod}, 403, "local clients only", RefusedNotLocal},
		{"log level set from another pod", request{method: "POST", path: "/debug/log-level?level=debug", remote: otherPod}, 403, "local clients only", RefusedNotLocal},
		{"pprof from another pod", request{method: "GET", path: "/debug/pprof/goroutine", remote: otherPod}, 403, "local clients only", RefusedNotLocal},
		{"cpu profile from another pod", request{method: "GET", path: "/debug/pprof/profile?seconds=1", remote: otherPod}, 403, "local clients only", RefusedNotLocal},
		{"pprof by a rebound name", request{method: "GET", path: "/debug/pprof/", remote: "127.0.0.1:5000", host: "evil.example"}, 403, "DNS rebinding", RefusedHost},
		{"log level by a page", request{method: "POST", path: "/debug/log-level?level=debug", remote: "127.0.0.1:5000", host: "127.0.0.1:15000",
			header: map[string]string{"Origin": "https://evil.example"}}, 403, "browser", RefusedBrowser},

		// DNS rebinding: a page's own name pointed at meshlet.
		{"rebound name reads config", request{method: "GET", path: "/debug/config", remote: "127.0.0.1:5000", host: "evil.example:15000"}, 403, "DNS rebinding", RefusedHost},
		{"rebound name reads upstreams", request{method: "GET", path: "/debug/upstreams", remote: "127.0.0.1:5000", host: "evil.example"}, 403, "DNS rebinding", RefusedHost},
		{"rebound name reloads", request{method: "POST", path: "/debug/reload", remote: "127.0.0.1:5000", host: "evil.example:15000"}, 403, "DNS rebinding", RefusedHost},
		{"rebound name quits", request{method: "POST", path: "/quitquitquit", remote: "127.0.0.1:5000", host: "localhost.evil.example"}, 403, "DNS rebinding", RefusedHost},
		{"empty Host", request{method: "GET", path: "/debug/config", host: " "}, 403, "DNS rebinding", RefusedHost},

		// A web page on another origin posting to the developer's meshlet.
		{"form post with Origin", request{method: "POST", path: "/quitquitquit", remote: "127.0.0.1:5000", host: "127.0.0.1:15000",
			header: map[string]string{"Origin": "https://evil.example", "Content-Type": "application/x-www-form-urlencoded"}}, 403, "Origin", RefusedBrowser},
		{"no-cors fetch", request{method: "POST", path: "/debug/reload", remote: "127.0.0.1:5000", host: "127.0.0.1:15000",
			header: map[string]string{"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors"}}, 403, "Sec-Fetch-", RefusedBrowser},
		{"null origin", request{method: "POST", path: "/debug/reload", remote: "127.0.0.1:5000", host: "127.0.0.1:15000",
			header: map[string]string{"Origin": "null"}}, 403, "browser", RefusedBrowser},
		{"same-site page", request{method: "POST", path: "/quitquitquit", remote: "127.0.0.1:5000", host: "127.0.0.1:15000",
			header: map[string]string{"Sec-Fetch-Site": "same-origin"}}, 403, "browser", RefusedBrowser},
		{"old browser form, no Origin", request{method: "POST", path: "/quitquitquit", remote: "127.0.0.1:5000", host: "127.0.0.1:15000",
			header: map[string]string{"Content-Type": "application/x-www-form-urlencoded"}}, 415, "cross-origin", RefusedContentType},
		{"multipart form", request{method: "POST", path: "/debug/reload", header: map[string]string{"Content-Type": "multipart/form-data; boundary=x"}}, 415, "cross-origin", RefusedContentType},
		{"text/plain", request{method: "POST", path: "/debug/reload", header: map[string]string{"Content-Type": "Text/Plain; charset=utf-8"}}, 415, "cross-origin", RefusedContentType},
		{"unparseable type", request{method: "POST", path: "/debug/reload", header: map[string]string{"Content-Type": "text/plain;;"}}, 415, "cross-origin", RefusedContentType},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := newGuardRig(t, Config{AllowedHosts: []string{"debug.example"}, Pprof: true, DrainToken: testDrainToken})
			rec := g.do(tt.rq)
			if rec.Code != tt.status || !strings.Contains(rec.Body.String(), tt.body) {
				t.Errorf("%s %s = %d %q, want %d containing %q", tt.rq.method, tt.rq.path, rec.Code, rec.Body.String(), tt.status, tt.body)
			}
			if tt.reason != "" && g.reloads+g.quits+g.drains != 0 {
				t.Errorf("refused, yet reload ran %d, quit %d and drain %d times", g.reloads, g.quits, g.drains)
			}
			if want := tt.rq.path == "/drain" && tt.reason == ""; (g.drains == 1) != want {
				t.Errorf("drain ran %d times", g.drains)
			}
			for _, r := range []string{RefusedNotLocal, RefusedHost, RefusedBrowser, RefusedContentType, RefusedDrainToken} {
				want := 0.0
				if r == tt.reason {
					want = 1
				}
				if got := testutil.ToFloat64(g.s.refused.WithLabelValues(r)); got != want {
					t.Errorf("meshlet_admin_requests_refused_total{reason=%q} = %v, want %v", r, got, want)
				}
			}
		})
	}
}

const testDrainToken = "0123456789abcdef0123456789abcdef"

// TestDrainWithoutToken: without admin.drain_token, /drain answers local clients only, whatever a remote caller
// sends; a token too short to resist guessing is a config error.
func TestDrainWithoutToken(t *testing.T) {
	g := newGuardRig(t, Config{})
	for _, tok := range []string{"", testDrainToken} {
		rec := g.do(request{method: "GET", path: "/drain", remote: "10.1.2.1:33000", header: map[string]string{HeaderDrainToken: tok}})
		if rec.Code != 403 || !strings.Contains(rec.Body.String(), "local clients only, as admin.drain_token is not set") {
			t.Errorf("remote drain with %q and no token configured: %d %q", tok, rec.Code, rec.Body.String())
		}
	}
	if g.drains != 0 {
		t.Fatalf("drained %d times", g.drains)
	}
	if rec := g.do(request{method: "GET", path: "/drain"}); rec.Code != 200 || g.drains != 1 {
		t.Fatalf("drain from the pod itself: %d, %d drains", rec.Code, g.drains)
	}
	for _, bad := range []string{"short", "0123456789abcdef 0123"} {
		c := Config{Listen: "127.0.0.1:15000", DrainToken: bad}
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "admin.drain_token: must be at least 16 characters") {
			t.Errorf("drain_token %q: %v", bad, err)
		}
	}
}

// TestAdminGuardRegistered: the refusals are exported on the registry given.
func TestAdminGuardRegistered(t *testing.T) {
	g := newGuardRig(t, Config{})
	g.do(request{method: "POST", path: "/debug/reload", remote: "10.9.9.9:1"})
	n, err := testutil.GatherAndCount(g.reg, "meshlet_admin_requests_refused_total")
	if err != nil || n != 5 {
		t.Fatalf("meshlet_admin_requests_refused_total: %d series, %v; want 5 (one per reason)", n, err)
	}
	if v := testutil.ToFloat64(g.s.refused.WithLabelValues(RefusedNotLocal)); v != 1 {
		t.Errorf("not_local = %v, want 1", v)
	}
}

// TestAdminGuardOverTCP: a real listener on loopback: what curl sends is served, what a browser sends is refused.
func TestAdminGuardOverTCP(t *testing.T) {
	reloads := 0
	base := start(t, Options{Reload: func() ([]string, error) { reloads++; return nil, nil }})
	if code, body := do(t, "POST", base+"/debug/reload"); code != 200 || reloads != 1 {
		t.Fatalf("curl-like POST: %d %q, %d reloads", code, body, reloads)
	}
	req, _ := http.NewRequest("POST", base+"/debug/reload", strings.NewReader("a=b"))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", "http://attacker.example")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 403 || reloads != 1 {
		t.Errorf("browser POST: %d, %d reloads", resp.StatusCode, reloads)
	}
}

func TestAdminConfigAllowedHosts(t *testing.T) {
	for _, tt := range []struct {
		hosts []string
		err   string
	}{
		{[]string{"meshlet.example", "web-0.web.shop.svc.cluster.local", "node_1"}, ""},
		{[]string{"evil.example:80"}, "admin.allowed_hosts[0]"},
		{[]string{"ok", "http://x"}, "admin.allowed_hosts[1]"},
		{[]string{""}, "admin.allowed_hosts[0]"},
		{[]string{"*.example"}, "must be a host name"},
	} {
		c := Config{AllowedHosts: tt.hosts}
		c.SetDefaults()
		err := c.Validate()
		if (tt.err == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tt.err)) {
			t.Errorf("%q: %v, want %q", tt.hosts, err, tt.err)
		}
	}
}

// TestAdminPprofOff: without admin.pprof the profiles are not served; the log level is, and a refused or rejected
// POST leaves it as it was.
func TestAdminPprofOff(t *testing.T) {
	g := newGuardRig(t, Config{})
	if rec := g.do(request{method: "GET", path: "/debug/pprof/"}); rec.Code != http.StatusNotFound {
		t.Fatalf("/debug/pprof/ without admin.pprof: %d", rec.Code)
	}
	for _, rq := range []request{{method: "POST", path: "/debug/log-level?level=debug", remote: "10.9.9.9:51000"},
		{method: "POST", path: "/debug/log-level?level=loud"}} {
		g.do(rq)
		if g.level.Level() != slog.LevelInfo {
			t.Fatalf("%s %s changed the level to %v", rq.method, rq.path, g.level.Level())
		}
	}
	if rec := g.do(request{method: "POST", path: "/debug/log-level?level=warn"}); rec.Code != 200 || g.level.Level() != slog.LevelWarn {
		t.Fatalf("POST ?level=warn: %d, level %v", rec.Code, g.level.Level())
	}
}

// TestAdminPprof: with admin.pprof, go tool pprof's paths answer a local client: the index, a named profile (text
// with ?debug=1, gzipped protobuf without), a CPU profile of ?seconds=; out-of-range seconds and unknown profiles are
// refused.
func TestAdminPprof(t *testing.T) {
	g := newGuardRig(t, Config{Pprof: true})
	for _, tc := range []struct {
		path   string
		status int
		check  func(body []byte) bool
	}{
		{"/debug/pprof/", 200, func(b []byte) bool { return strings.Contains(string(b), "heap (") }},
		{"/debug/pprof/goroutine?debug=1", 200, func(b []byte) bool { return strings.Contains(string(b), "goroutine profile:") }},
		{"/debug/pprof/heap", 200, func(b []byte) bool { return len(b) > 2 && b[0] == 0x1f && b[1] == 0x8b }},
		{"/debug/pprof/profile?seconds=1", 200, func(b []byte) bool { return len(b) > 2 && b[0] == 0x1f && b[1] == 0x8b }},
		{"/debug/pprof/profile?seconds=0", 400, nil},
		{"/debug/pprof/trace?seconds=1000", 400, nil},
		{"/debug/pprof/nosuch", 404, nil},
	} {
		rec := g.do(request{method: "GET", path: tc.path})
		if rec.Code != tc.status || (tc.check != nil && !tc.check(rec.Body.Bytes())) {
			t.Errorf("GET %s: %d, %d bytes: want %d", tc.path, rec.Code, rec.Body.Len(), tc.status)
		}
	}
	// ?gc=1 collects before the heap profile (make scale's "after a forced GC" relies on it).
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	if rec := g.do(request{method: "GET", path: "/debug/pprof/heap?gc=1"}); rec.Code != 200 {
		t.Fatalf("GET /debug/pprof/heap?gc=1: %d", rec.Code)
	}
	runtime.ReadMemStats(&after)
	if after.NumForcedGC <= before.NumForcedGC {
		t.Errorf("GET /debug/pprof/heap?gc=1 forced no collection (NumForcedGC %d → %d)", before.NumForcedGC, after.NumForcedGC)
	}
}
