package proxy

import (
	"fmt"
	"io"
	"log/slog"
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
// set of 10,000 endpoints, per endpoint in the metric.
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
	for i := 0; b.Loop(); i++ {
		s := newEndpointSet(fmt.Sprint("api-", i), uc.LB, uc.Resilience, m, resilience.NewDecisions(decisionsKept), log)
		s.update(discovery.Snapshot{Service: "api", Endpoints: eps, Index: 1})
	}
}
