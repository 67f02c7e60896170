package e2e_test

import (
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"meshlet.dev/meshlet/discovery/discoverytest"
	"meshlet.dev/meshlet/internal/meshlettest"
	"meshlet.dev/meshlet/proxy"
	"meshlet.dev/meshlet/resilience"
)

// TestConsulConfigEntries: a service-router's catch-all route sets the retries of the upstream at run time
// (NumRetries 0 turns them off, 1 makes two attempts, deleting the router restores meshlet's default of 3), and
// the caller's service-defaults UpstreamConfig sets limits and passive health; explicit meshlet config wins.
func TestConsulConfigEntries(t *testing.T) {
	agent := discoverytest.StartConsul(t, discoverytest.Options{})
	var hits atomic.Int64
	app := meshlettest.StartBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		http.Error(w, "down", http.StatusServiceUnavailable)
	}), false, nil)
	if err := agent.Client().Agent().ServiceRegister(&api.AgentServiceRegistration{ID: "api-1", Name: "api",
		Address: "127.0.0.1", Port: portOf(t, meshlettest.HostOf(app))}); err != nil {
		t.Fatal(err)
	}
	admin, listen := meshlettest.FreeAddr(t), meshlettest.FreeAddr(t)
	f := meshlettest.File{Discovery: meshlettest.Consul(agent.HTTPAddr, "")}
	f.Service.Name, f.Admin.Listen = "web", admin
	f.Upstreams = []proxy.UpstreamConfig{{Name: "api", Listen: listen, Resilience: resilience.Config{
		Breaker: resilience.BreakerConfig{Disabled: true}, Limits: resilience.LimitsConfig{MaxConnections: 9}}}}
	web := meshlettest.StartFile(t, f)
	attempts := func() int64 {
		hits.Store(0)
		if code, _, _ := call("http://" + listen + "/"); code != 503 {
			t.Fatalf("call: %d, want 503", code)
		}
		return hits.Load()
	}
	if n := attempts(); n != 3 {
		t.Fatalf("default: %d attempts, want 3", n)
	}
	entries := agent.Client().ConfigEntries()
	set := func(e api.ConfigEntry) time.Time {
		t.Helper()
		if _, _, err := entries.Set(e, nil); err != nil {
			t.Fatal(err)
		}
		return time.Now()
	}
	set(&api.ServiceConfigEntry{Kind: api.ServiceDefaults, Name: "api", Protocol: "http"})
	for _, tc := range []struct {
		retries uint32
		want    int64
	}{{0, 1}, {1, 2}} {
		start := set(&api.ServiceRouterConfigEntry{Kind: api.ServiceRouter, Name: "api", Routes: []api.ServiceRoute{
			{Match: &api.ServiceRouteMatch{HTTP: &api.ServiceRouteHTTPMatch{PathPrefix: "/"}},
				Destination: &api.ServiceRouteDestination{NumRetries: tc.retries, RequestTimeout: 1500 * time.Millisecond}}}})
		meshlettest.Eventually(t, 5*time.Second, fmt.Sprintf("NumRetries %d applies", tc.retries), func() bool { return attempts() == tc.want })
		t.Logf("service-router NumRetries %d: in effect %v after the write", tc.retries, time.Since(start))
	}
	cfg := compactConfig(t, web)
	if !strings.Contains(cfg, `"timeout":"1.5s"`) {
		t.Errorf("/debug/config lacks the route's timeout: %s", cfg)
	}

	maxReq, pending := 42, 0
	fails := uint32(7)
	start := set(&api.ServiceConfigEntry{Kind: api.ServiceDefaults, Name: "web", UpstreamConfig: &api.UpstreamConfiguration{
		Overrides: []*api.UpstreamConfig{{Name: "api",
			Limits:             &api.UpstreamLimits{MaxConcurrentRequests: &maxReq, MaxPendingRequests: &pending, MaxConnections: &maxReq},
			PassiveHealthCheck: &api.PassiveHealthCheck{MaxFailures: fails, Interval: 3 * time.Second}}}}})
	meshlettest.Eventually(t, 5*time.Second, "service-defaults UpstreamConfig applies", func() bool {
		cfg := compactConfig(t, web)
		return strings.Contains(cfg, `"max_requests":42`) && strings.Contains(cfg, `"max_pending":0`) &&
			strings.Contains(cfg, `"consecutive_failures":7`) && strings.Contains(cfg, `"open_timeout":"3s"`)
	})
	t.Logf("service-defaults UpstreamConfig: in effect %v after the write", time.Since(start))
	cfg = compactConfig(t, web)
	if !strings.Contains(cfg, `"max_connections":9`) || !strings.Contains(cfg, `"disabled":true`) {
		t.Errorf("explicit meshlet settings lost: %s", cfg)
	}

	if _, err := entries.Delete(api.ServiceRouter, "api", nil); err != nil {
		t.Fatal(err)
	}
	meshlettest.Eventually(t, 5*time.Second, "deleting the router restores the default retries", func() bool { return attempts() == 3 })
}

func portOf(t *testing.T, hostport string) int {
	t.Helper()
	var p int
	if _, err := fmt.Sscanf(hostport[strings.LastIndexByte(hostport, ':')+1:], "%d", &p); err != nil {
		t.Fatal(err)
	}
	return p
}

// compactConfig is /debug/config without white space.
func compactConfig(t *testing.T, p *meshlettest.Proc) string {
	t.Helper()
	_, cfg := p.AdminGet(t, "/debug/config")
	return strings.Join(strings.Fields(cfg), "")
}
