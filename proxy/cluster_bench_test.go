package proxy

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"meshlet.dev/meshlet/discovery"
	"meshlet.dev/meshlet/metrics"
	"meshlet.dev/meshlet/resilience"
)

// BenchmarkNewCluster measures what one configured upstream costs before its first request (issue 16: at most
// 4 KiB per idle upstream): B/op is the memory a cluster holds from its creation.
func BenchmarkNewCluster(b *testing.B) {
	m := metrics.New(prometheus.NewRegistry(), "bench")
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	cfg := Config{Service: ServiceConfig{Name: "web"}, Outbound: OutboundConfig{Listen: "127.0.0.1:0"},
		Upstreams: []UpstreamConfig{{Name: "api"}}}
	cfg.SetDefaults()
	uc := cfg.Upstreams[0]
	for _, implicit := range []bool{false, true} {
		b.Run(fmt.Sprint("implicit=", implicit), func(b *testing.B) {
			uc.Implicit = implicit
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				uc.Name = fmt.Sprint("api-", implicit, i)
				newCluster(&uc, metrics.Outbound, m, log, nil) // (the clusters are dropped: one uc for all)
			}
		})
	}
}

// BenchmarkEndpoints measures what an endpoint costs in a set (issue 16: at most 0.5 KiB per endpoint): B/op of a
// set of 10,000 endpoints (everything allocated, what lives on and what the update drops), and live-B/endpoint,
// the heap a set of them holds after a GC.
func BenchmarkEndpoints(b *testing.B) {
	m := metrics.New(prometheus.NewRegistry(), "bench")
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	cfg := Config{Service: ServiceConfig{Name: "web"}, Outbound: OutboundConfig{Listen: "127.0.0.1:0"},
		Upstreams: []UpstreamConfig{{Name: "api"}}}
	cfg.SetDefaults()
	uc := cfg.Upstreams[0]
	eps := manyEndpoints(b, 10000)
	b.ReportAllocs()
	var live uint64
	for i := 0; b.Loop(); i++ {
		var before, after runtime.MemStats
		if i == 0 {
			runtime.GC()
			runtime.ReadMemStats(&before)
		}
		s := newEndpointSet(fmt.Sprint("api-", i), uc.LB, 0, uc.Resilience, m, resilience.NewDecisions(decisionsKept), log)
		s.update(discovery.Snapshot{Service: "api", Endpoints: eps, Index: 1})
		if i == 0 {
			runtime.GC()
			runtime.ReadMemStats(&after)
			live = after.HeapAlloc - before.HeapAlloc
			runtime.KeepAlive(s)
		}
	}
	b.ReportMetric(float64(live)/float64(len(eps)), "live-B/endpoint")
}

// manyEndpoints returns n static endpoints (addresses of the range reserved for tests, never dialled), as the
// config file gives them.
func manyEndpoints(tb testing.TB, n int) []discovery.Endpoint {
	tb.Helper()
	addrs := make([]string, n)
	for i := range addrs {
		addrs[i] = fmt.Sprintf("198.18.%d.%d:8080", i/250, i%250+1)
	}
	eps, err := discovery.ParseAddrs(addrs)
	if err != nil {
		tb.Fatal(err)
	}
	return eps
}

// TestEndpointSetLiveHeap keeps BenchmarkEndpoints's live-B/endpoint in check (issue 16: at most 0.5 KiB of RSS
// per endpoint, about twice the live heap): a set of 10,000 static endpoints holds at most 256 bytes of heap per
// endpoint after a GC (about 700 with a gobreaker, a map entry and a 384-byte state per endpoint; about 180 with
// breakers made at an endpoint's first attempt).
func TestEndpointSetLiveHeap(t *testing.T) {
	m := metrics.New(prometheus.NewRegistry(), "test")
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	var cfg resilience.Config
	cfg.SetDefaults()
	eps := manyEndpoints(t, 10000)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	s := newEndpointSet("api", LBP2C, 0, cfg, m, resilience.NewDecisions(decisionsKept), log)
	s.update(discovery.Snapshot{Service: "api", Endpoints: eps, Index: 1})
	runtime.GC()
	runtime.ReadMemStats(&after)
	runtime.KeepAlive(s)
	runtime.KeepAlive(eps) // the snapshot's endpoints are the source's, not the set's
	if per := float64(int64(after.HeapAlloc)-int64(before.HeapAlloc)) / float64(len(eps)); per > 256 {
		t.Fatalf("a set of %d endpoints holds %.0f B of heap per endpoint, want at most 256", len(eps), per)
	} else {
		t.Logf("%.0f B of heap per endpoint (%d → %d)", per, before.HeapAlloc, after.HeapAlloc)
	}
}

// TestBreakerMadeAtFirstAttempt: an endpoint's gobreaker is made at its first attempt (an endpoint never called
// holds none, and shows and counts as closed); it then trips as configured, and an endpoint leaving the set takes
// its count with it.
func TestBreakerMadeAtFirstAttempt(t *testing.T) {
	s, m := testSet(t, LBRoundRobin, 0, func(c *resilience.Config) { c.Breaker.ConsecutiveFailures = 2 },
		"198.18.0.1:80", "198.18.0.2:80", "198.18.0.3:80")
	gauge := func(state string) float64 { return m.BreakerEndpoints.WithLabelValues("api", state).Value() }
	for _, st := range s.states {
		if st.breaker.Load() != nil {
			t.Fatalf("endpoint %s has a breaker before any attempt", st.ep.ID)
		}
	}
	var ui UpstreamInfo
	s.info(&ui)
	for _, ei := range ui.Endpoints {
		if ei.Breaker != resilience.StateClosed {
			t.Fatalf("endpoint %s shows breaker %q before any attempt, want closed", ei.ID, ei.Breaker)
		}
	}
	if got := gauge(resilience.StateClosed); got != 3 {
		t.Fatalf("meshlet_breaker_endpoints{closed} = %v, want 3", got)
	}
	st, done, err := s.choose(nil)
	if err != nil {
		t.Fatal(err)
	}
	done(nil)
	if st.breaker.Load() == nil {
		t.Fatal("no breaker after the endpoint's first attempt")
	}
	// Two failures in a row open it (ConsecutiveFailures 2), counted by the gauges.
	for range 2 {
		b := s.breakerOf(st)
		d, err := b.Allow()
		if err != nil {
			t.Fatal(err)
		}
		d(errors.New("boom"))
	}
	if st.breaker.Load().State() != resilience.StateOpen || gauge(resilience.StateOpen) != 1 || gauge(resilience.StateClosed) != 2 {
		t.Fatalf("after 2 failures: state %s, gauges open %v closed %v; want open, 1, 2",
			st.breaker.Load().State(), gauge(resilience.StateOpen), gauge(resilience.StateClosed))
	}
	// The endpoints leave: every count goes with them, and a breaker is never made for one that left.
	s.update(discovery.Snapshot{Service: "api", Index: 2})
	if gauge(resilience.StateOpen) != 0 || gauge(resilience.StateClosed) != 0 {
		t.Fatalf("after the endpoints left: gauges open %v closed %v, want 0, 0", gauge(resilience.StateOpen), gauge(resilience.StateClosed))
	}
	if b := s.breakerOf(st); b != nil || st.breaker.Load() != nil {
		t.Fatal("a breaker was made for an endpoint that left the set")
	}
}

// TestIdleUpstreamLiveHeap: 1,000 idle upstreams by name, one static endpoint each, hold at most 1.75 KiB of heap
// each after a GC (issue 16: at most 4 KiB of RSS per idle upstream, about twice the live heap; about 1.55 KiB
// today, 2.5 when each cluster held a copy of its settings, a reverse proxy, an observer and a route key per
// domain), before and after a reload that changes every upstream's settings: the clusters then hold the new
// config's, the previous one is not kept.
func TestIdleUpstreamLiveHeap(t *testing.T) {
	const n = 1000
	cfg := Config{Service: ServiceConfig{Name: "web"}, Outbound: OutboundConfig{Listen: "127.0.0.1:0"}}
	for i := range n {
		cfg.Upstreams = append(cfg.Upstreams, UpstreamConfig{Name: fmt.Sprintf("up%04d", i),
			Endpoints: []string{fmt.Sprintf("127.0.0.1:%d", 20000+i)}})
	}
	next := cfg // (made before measuring: the caller's configs are not the proxy's)
	next.Upstreams = slices.Clone(cfg.Upstreams)
	for i := range next.Upstreams {
		next.Upstreams[i].Timeout = 7 * time.Second
	}
	heap := func() int64 {
		var ms runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&ms)
		return int64(ms.HeapAlloc)
	}
	before := heap()
	p, _ := startProxy(t, cfg)
	check := func(when string) {
		t.Helper()
		per := float64(heap()-before) / n
		if per > 1792 {
			t.Fatalf("%s: %.0f B of heap per idle upstream, want at most 1792", when, per)
		}
		t.Logf("%s: %.0f B of heap per idle upstream", when, per)
	}
	check("started")
	if _, err := p.Reload(next); err != nil {
		t.Fatal(err)
	}
	if got := p.clusterOf("up0001").cfg.Load().Timeout; got != 7*time.Second {
		t.Fatalf("after the reload, up0001's timeout is %s", got)
	}
	check("reloaded")
	runtime.KeepAlive(cfg)
	runtime.KeepAlive(next)
}
