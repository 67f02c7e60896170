package proxy

import (
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"testing"

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
				newCluster(uc, metrics.Outbound, m, log, nil)
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
	var addrs []string
	for i := range 10000 {
		addrs = append(addrs, fmt.Sprintf("198.18.%d.%d:8080", i/250, i%250+1))
	}
	eps, err := discovery.ParseAddrs(addrs)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	var live uint64
	for i := 0; b.Loop(); i++ {
		var before, after runtime.MemStats
		if i == 0 {
			runtime.GC()
			runtime.ReadMemStats(&before)
		}
		s := newEndpointSet(fmt.Sprint("api-", i), uc.LB, uc.Resilience, m, resilience.NewDecisions(decisionsKept), log)
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

// TestEndpointSetLiveHeap keeps BenchmarkEndpoints's live-B/endpoint in check (issue 16: at most 0.5 KiB of RSS
// per endpoint, about twice the live heap): a set of 10,000 static endpoints holds at most 256 bytes of heap per
// endpoint after a GC (about 700 with a gobreaker, a map entry and a 384-byte state per endpoint; 229 now).
func TestEndpointSetLiveHeap(t *testing.T) {
	m := metrics.New(prometheus.NewRegistry(), "test")
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	var cfg resilience.Config
	cfg.SetDefaults()
	var addrs []string
	for i := range 10000 {
		addrs = append(addrs, fmt.Sprintf("198.18.%d.%d:8080", i/250, i%250+1))
	}
	eps, err := discovery.ParseAddrs(addrs)
	if err != nil {
		t.Fatal(err)
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	s := newEndpointSet("api", LBP2C, cfg, m, resilience.NewDecisions(decisionsKept), log)
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
