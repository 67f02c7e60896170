package proxy

import (
	"context"
	"io"
	"log/slog"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"meshlet.dev/meshlet/discovery"
	"meshlet.dev/meshlet/metrics"
	"meshlet.dev/meshlet/resilience"
)

func testContext(t *testing.T) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	return ctx, cancel
}

// testSet returns an endpoint set named api with policy lb, subset_size subset and the resilience settings edit
// makes of the defaults (nil: the defaults), holding the endpoints at addrs, and the metrics it reports to.
func testSet(t testing.TB, lb string, subset int, edit func(*resilience.Config), addrs ...string) (*endpointSet, *metrics.Metrics) {
	t.Helper()
	var cfg resilience.Config
	cfg.SetDefaults()
	if edit != nil {
		edit(&cfg)
	}
	eps, err := discovery.ParseAddrs(addrs)
	if err != nil {
		t.Fatal(err)
	}
	m := metrics.New(prometheus.NewRegistry(), "test")
	s := newEndpointSet("api", lb, subset, cfg, m, resilience.NewDecisions(decisionsKept),
		slog.New(slog.NewTextHandler(io.Discard, nil)))
	s.update(discovery.Snapshot{Service: "api", Endpoints: eps, Index: 1})
	return s, m
}
