package proxy

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"meshlet.dev/meshlet/metrics"
)

// TestStaticUpstreamsNoGoroutine: an upstream whose endpoints the config lists has them from Start and from each
// reload, without a watch: no goroutine per upstream (issue 16: an idle upstream costs memory, and a goroutine's
// stack is most of it).
func TestStaticUpstreamsNoGoroutine(t *testing.T) {
	const n = 100
	cfgWith := func(k int, port int) Config {
		cfg := Config{Service: ServiceConfig{Name: "web"}, Outbound: OutboundConfig{Listen: "127.0.0.1:0"}}
		for i := range k {
			cfg.Upstreams = append(cfg.Upstreams, UpstreamConfig{Name: fmt.Sprintf("up%d", i),
				Endpoints: []string{fmt.Sprintf("127.0.0.1:%d", port+i)}})
		}
		return cfg
	}
	startProxy(t, cfgWith(1, 20000))
	before := runtime.NumGoroutine()
	p, _ := startProxy(t, cfgWith(n, 20000))
	if grown := runtime.NumGoroutine() - before; grown >= n {
		t.Fatalf("%d more goroutines with %d more upstreams of static endpoints, want fewer than one each", grown, n)
	}
	if _, err := p.Reload(cfgWith(n, 30000)); err != nil {
		t.Fatal(err)
	}
	// Applied by Reload itself: nothing to wait for.
	if eps := upstreamInfo(t, p, "up7").Endpoints; len(eps) != 1 || eps[0].Address != "127.0.0.1:30007" {
		t.Fatalf("up7 right after the reload: %+v, want 127.0.0.1:30007", eps)
	}
}

// seriesOf returns the names of the metric families that have a series labelled upstream=name.
func seriesOf(t *testing.T, p *Proxy, name string) []string {
	t.Helper()
	fams, err := p.m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, f := range fams {
	series:
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "upstream" && l.GetValue() == name {
					out = append(out, f.GetName())
					break series
				}
			}
		}
	}
	return out
}

// gaugeOf returns the value of the gauge family's series labelled upstream=name.
func gaugeOf(t *testing.T, p *Proxy, family, name string) float64 {
	t.Helper()
	fams, err := p.m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() != family {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "upstream" && l.GetValue() == name {
					return m.GetGauge().GetValue()
				}
			}
		}
	}
	t.Fatalf("no %s{upstream=%q}", family, name)
	return 0
}

// startAPIAndIdle starts a proxy with two upstreams by name, api and idle, on one echo backend.
func startAPIAndIdle(t *testing.T) *Proxy {
	t.Helper()
	ep := strings.TrimPrefix(echoServer(t).URL, "http://")
	cfg := Config{Service: ServiceConfig{Name: "web"}, Outbound: OutboundConfig{Listen: "127.0.0.1:0"},
		Upstreams: []UpstreamConfig{{Name: "api", Endpoints: []string{ep}}, {Name: "idle", Endpoints: []string{ep}}}}
	p, _ := startProxy(t, cfg)
	return p
}

// TestIdleUpstreamSeries: a configured upstream has the series that alerts and dashboards read before any traffic
// (its endpoint count, its retry budget), and its per-request series (requests in flight, errors by reason, bytes,
// requests and durations) only from its first request, all at once.
func TestIdleUpstreamSeries(t *testing.T) {
	p := startAPIAndIdle(t)
	perRequest := []string{"meshlet_requests_in_flight", "meshlet_upstream_errors_total", "meshlet_received_bytes_total",
		"meshlet_sent_bytes_total", "meshlet_requests_total", "meshlet_request_duration_seconds"}
	for _, name := range []string{"api", "idle"} {
		got := seriesOf(t, p, name)
		for _, want := range []string{"meshlet_upstream_endpoints", "meshlet_retry_budget_remaining"} {
			if !slices.Contains(got, want) {
				t.Errorf("%s before its first request: no %s (has %v)", name, want, got)
			}
		}
		for _, f := range perRequest {
			if slices.Contains(got, f) {
				t.Errorf("%s before its first request: has %s", name, f)
			}
		}
	}
	callByName(t, p, "api")
	eventuallyTrue(t, func() bool {
		got := seriesOf(t, p, "api")
		return !slices.ContainsFunc(perRequest, func(f string) bool { return !slices.Contains(got, f) })
	}, "api has every per-request series after its first request")
	for _, f := range perRequest {
		if slices.Contains(seriesOf(t, p, "idle"), f) {
			t.Errorf("idle, after another upstream's request: has %s", f)
		}
	}
}

// TestIdleUpstreamLazy: a configured upstream builds its transports, its retry transport (policy, budget) and its
// limiter at its first request, with the settings it has then (a reload before it changes what they are built with); until then
// /debug/upstreams and meshlet_retry_budget_remaining show a fresh budget.
func TestIdleUpstreamLazy(t *testing.T) {
	p := startAPIAndIdle(t)
	built := func(name string) (transports, retry, limiter bool) {
		c := p.clusterOf(name)
		return c.transport.p.Load() != nil, c.retry.Load() != nil, c.res.Load() != nil
	}
	for _, name := range []string{"api", "idle"} {
		if tr, rt, lim := built(name); tr || rt || lim {
			t.Fatalf("%s before its first request: transports built %v, retry transport %v, limiter %v", name, tr, rt, lim)
		}
	}
	fresh := upstreamInfo(t, p, "idle").RetryBudget
	if metric := gaugeOf(t, p, "meshlet_retry_budget_remaining", "idle"); fresh <= 0 || fresh != metric {
		t.Fatalf("idle's retry budget before its first request: %v in /debug/upstreams, %v in metrics; want a fresh budget's",
			fresh, metric)
	}
	next := p.runningConfig()
	next.Upstreams[1].MaxResponseHeaderBytes = 4096
	if _, err := p.Reload(next); err != nil {
		t.Fatal(err)
	}
	if tr, _, _ := built("idle"); tr {
		t.Fatal("a reload built the idle upstream's transports")
	}
	for _, host := range []string{"api", "idle"} {
		callByName(t, p, host)
		if tr, rt, lim := built(host); !tr || !rt || !lim {
			t.Fatalf("%s after its first request: transports built %v, retry transport %v, limiter %v", host, tr, rt, lim)
		}
	}
	if got := p.clusterOf("idle").transport.Load().maxHeader; got != 4096 {
		t.Fatalf("idle's transports bound response headers to %d bytes, want the reloaded 4096", got)
	}
	if got := upstreamInfo(t, p, "idle").RetryBudget; got < fresh {
		t.Fatalf("idle's retry budget after one request without retries: %v, want at least %v", got, fresh)
	}
}

// TestClusterLogLikeWith: a cluster's log lines are those of its logger's With("upstream", …, "direction", …),
// byte for byte, whatever the record's attributes and however the logger is extended.
func TestClusterLogLikeWith(t *testing.T) {
	var want, got bytes.Buffer
	opts := &slog.HandlerOptions{Level: slog.LevelDebug, ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
		if a.Key == slog.TimeKey && len(groups) == 0 {
			return slog.Attr{}
		}
		return a
	}}
	base := func(w io.Writer) *slog.Logger {
		return slog.New(slog.NewJSONHandler(w, opts)).With("component", "proxy")
	}
	with := base(&want).With("upstream", "api", "direction", "outbound")
	lazy := slog.New((*clusterHandler)(&cluster{logTo: base(&got).Handler(), name: "api", direction: "outbound"}))
	for _, l := range []*slog.Logger{with, lazy} {
		l.Info("endpoints updated", "endpoints", 3, "index", uint64(7), "stale", false)
		l.Debug("failed", slog.Group("g", "a", 1), "error", "boom")
		l.With("target", "t1").Warn("with", "n", 1)
		l.WithGroup("grp").Error("grouped", "k", "v")
		slog.NewLogLogger(l.Handler(), slog.LevelDebug).Print("from the reverse proxy")
	}
	if got.String() != want.String() {
		t.Fatalf("cluster log:\n%s\nwant (With):\n%s", got.String(), want.String())
	}
}

// TestRemovedUpstreamSeries: a reload that removes an upstream removes its gauges (meshlet_upstream_endpoints,
// meshlet_retry_budget_remaining, meshlet_breaker_endpoints), and the retry budget's no longer holds the removed cluster; a replaced
// upstream's gauges read the new cluster.
func TestRemovedUpstreamSeries(t *testing.T) {
	cfg := Config{Service: ServiceConfig{Name: "web"}, Outbound: OutboundConfig{Listen: "127.0.0.1:0"},
		Upstreams: []UpstreamConfig{{Name: "api", Endpoints: []string{"127.0.0.1:1"}},
			{Name: "gone", Endpoints: []string{"127.0.0.1:2"}}, {Name: "moved", Endpoints: []string{"127.0.0.1:3"}}}}
	p, _ := startProxy(t, cfg)
	next := p.runningConfig()
	next.Upstreams = []UpstreamConfig{next.Upstreams[0], next.Upstreams[2]}
	next.Upstreams[1].Listen = freeLoopback(t) // replaced: a listener of its own
	next.Upstreams[1].Resilience.Retry.Budget.MinPerSecond = 3
	if _, err := p.Reload(next); err != nil {
		t.Fatal(err)
	}
	if got := seriesOf(t, p, "gone"); len(got) != 0 {
		t.Fatalf("the removed upstream still has %v", got)
	}
	if got, want := gaugeOf(t, p, "meshlet_retry_budget_remaining", "moved"), 3*10.0; got != want {
		t.Fatalf("the replaced upstream's retry budget: %v, want the new cluster's %v", got, want)
	}
	if gaugeOf(t, p, "meshlet_upstream_endpoints", "moved") != 1 {
		t.Fatal("the replaced upstream lost its endpoints' series")
	}
}

// TestIdleUpstreamDropped: an upstream that is not called for a whole sweep drops its transports and its retry
// transport (its pools' connections are closed); one that is called keeps them; its next request builds them
// again. Its limiter and its metric series stay.
func TestIdleUpstreamDropped(t *testing.T) {
	var open atomic.Int64 // the backend's connections not closed yet
	backend := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	backend.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		switch s {
		case http.StateNew:
			open.Add(1)
		case http.StateClosed, http.StateHijacked:
			open.Add(-1)
		}
	}
	backend.Start()
	t.Cleanup(backend.Close)
	cfg := Config{Service: ServiceConfig{Name: "web"}, Outbound: OutboundConfig{Listen: "127.0.0.1:0"},
		Upstreams: []UpstreamConfig{{Name: "api", Endpoints: []string{strings.TrimPrefix(backend.URL, "http://")}}}}
	m := metrics.New(prometheus.NewRegistry(), "test")
	p, err := New(cfg, Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Metrics: m})
	if err != nil {
		t.Fatal(err)
	}
	p.idleSweep = 100 * time.Millisecond
	runProxy(t, p)
	call := func() {
		t.Helper()
		callByName(t, p, "api")
	}
	c := p.clusterOf("api")
	call()
	tr, rt, lim := c.transport.p.Load(), c.retry.Load(), c.res.Load()
	if tr == nil || rt == nil || lim == nil {
		t.Fatal("not built by the first request")
	}
	for end := time.Now().Add(4 * p.idleSweep); time.Now().Before(end); time.Sleep(5 * time.Millisecond) {
		call()
	}
	if c.transport.p.Load() != tr || c.retry.Load() != rt {
		t.Fatal("dropped while called")
	}
	if open.Load() == 0 {
		t.Fatal("no pooled connection to the backend")
	}
	eventuallyTrue(t, func() bool { return c.transport.p.Load() == nil && c.retry.Load() == nil },
		"the transports and the retry transport are dropped once the upstream is idle")
	eventuallyTrue(t, func() bool { return open.Load() == 0 }, "the dropped pool's connections are closed")
	call()
	if c.transport.p.Load() == nil || c.retry.Load() == nil {
		t.Fatal("not built again by the next request")
	}
	if c.res.Load() != lim {
		t.Fatal("the limiter was replaced")
	}
	if got := seriesOf(t, p, "api"); !slices.Contains(got, "meshlet_requests_total") {
		t.Fatalf("api's series after the drop: %v", got)
	}
}

// callByName makes one GET to upstream name through p's name-routed outbound listener and wants a 200.
func callByName(t *testing.T, p *Proxy, name string) {
	t.Helper()
	req, _ := http.NewRequest("GET", "http://"+p.Addrs()["outbound"]+"/", nil)
	req.Host = name
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("%s: %d", name, resp.StatusCode)
	}
}
