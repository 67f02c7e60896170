package consul_test

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"meshlet.dev/meshlet/appcheck"
	"meshlet.dev/meshlet/consul"
	"meshlet.dev/meshlet/discovery/discoverytest"
)

// TestConsulGRPCAppCheck: a gRPC app check (service.check.grpc, host:port/service) is registered as a Consul GRPC
// check that the agent runs: passing while the app's health service answers SERVING for the service, critical when
// it answers NOT_SERVING.
func TestConsulGRPCAppCheck(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	hs := health.NewServer()
	healthpb.RegisterHealthServer(srv, hs)
	go srv.Serve(ln)
	defer srv.Stop()
	hs.SetServingStatus("shop.Cart", healthpb.HealthCheckResponse_SERVING)

	agent := discoverytest.StartConsul(t, discoverytest.Options{})
	src := newSource(t, consul.Config{Address: agent.HTTPAddr})
	r := consul.NewRegistrar(src, consul.Registration{Service: "cart", App: ln.Addr().String(),
		Inbound: "127.0.0.1:21002", Admin: "127.0.0.1:1",
		AppCheck: &appcheck.Check{GRPC: ln.Addr().String() + "/shop.Cart", Interval: time.Second}})
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	defer func() { cancel(); <-done }()

	appCheck := func() *api.AgentCheck {
		checks, err := agent.Client().Agent().ChecksWithFilter(`ServiceID == "` + r.ServiceID() + `"`)
		if err != nil || len(checks) != 1 {
			return nil
		}
		for _, c := range checks {
			return c
		}
		return nil
	}
	waitFor(t, 10*time.Second, "the app's GRPC check passing", func() bool {
		c := appCheck()
		return c != nil && c.Type == "grpc" && c.Status == api.HealthPassing
	})
	hs.SetServingStatus("shop.Cart", healthpb.HealthCheckResponse_NOT_SERVING)
	waitFor(t, 10*time.Second, "the app's GRPC check critical once the service is NOT_SERVING", func() bool {
		c := appCheck()
		return c != nil && c.Status == api.HealthCritical
	})
	if c := appCheck(); c.Name != "app" {
		t.Errorf("check name %q, want app", c.Name)
	}
}
