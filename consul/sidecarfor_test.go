package consul_test

import (
	"context"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"meshlet.dev/meshlet/consul"
	"meshlet.dev/meshlet/discovery/discoverytest"
)

// TestParseSidecar: what meshlet takes from a connect-proxy registration, and what it leaves out with a warning.
func TestParseSidecar(t *testing.T) {
	proxyOf := func(p api.AgentServiceConnectProxyConfig) *api.AgentService {
		p.DestinationServiceName, p.DestinationServiceID = "web", "web-1"
		return &api.AgentService{Kind: api.ServiceKindConnectProxy, ID: "web-1-sidecar-proxy", Service: "web-sidecar-proxy", Port: 21000, Proxy: &p}
	}
	for _, tc := range []struct {
		name     string
		svc      *api.AgentService
		want     consul.SidecarConfig // ProxyID, Service and ServiceID filled in by the test
		warnings []string             // substrings, one per warning
		err      string
	}{
		{name: "defaults", svc: proxyOf(api.AgentServiceConnectProxyConfig{LocalServicePort: 8080}),
			want: consul.SidecarConfig{App: "127.0.0.1:8080", Inbound: "0.0.0.0:21000"}},
		{name: "addresses and bind config", svc: func() *api.AgentService {
			s := proxyOf(api.AgentServiceConnectProxyConfig{LocalServiceAddress: "10.0.0.5", LocalServicePort: 8080,
				Config: map[string]any{"bind_address": "10.0.0.5", "bind_port": float64(20000)}})
			s.Address = "10.0.0.9"
			return s
		}(), want: consul.SidecarConfig{App: "10.0.0.5:8080", Inbound: "10.0.0.5:20000"}},
		{name: "registration address", svc: func() *api.AgentService {
			s := proxyOf(api.AgentServiceConnectProxyConfig{LocalServicePort: 8080})
			s.Address = "10.0.0.9"
			return s
		}(), want: consul.SidecarConfig{App: "127.0.0.1:8080", Inbound: "10.0.0.9:21000"}},
		{name: "upstreams", svc: proxyOf(api.AgentServiceConnectProxyConfig{LocalServicePort: 8080, Upstreams: []api.Upstream{
			{DestinationName: "api", LocalBindPort: 9001, Config: map[string]any{"protocol": "grpc", "connect_timeout_ms": float64(1500)}},
			{DestinationType: api.UpstreamDestTypeService, DestinationName: "db", Datacenter: "dc2", LocalBindAddress: "127.0.0.2", LocalBindPort: 9002},
			{DestinationType: api.UpstreamDestTypePreparedQuery, DestinationName: "nearest", LocalBindPort: 9003},
			{DestinationName: "peered", DestinationPeer: "other", LocalBindPort: 9004},
			{DestinationName: "sock", LocalBindSocketPath: "/tmp/s.sock"},
			{DestinationName: "noport"},
		}}), want: consul.SidecarConfig{App: "127.0.0.1:8080", Inbound: "0.0.0.0:21000", Upstreams: []consul.SidecarUpstream{
			{Name: "api", Listen: "127.0.0.1:9001", Protocol: "grpc", ConnectTimeout: 1500 * time.Millisecond},
			{Name: "db", Datacenter: "dc2", Listen: "127.0.0.2:9002"},
		}}, warnings: []string{"upstreams[2] (nearest): destination_type prepared_query is not supported",
			"upstreams[3] (peered): destination_peer", "upstreams[4] (sock): local_bind_socket_path", "upstreams[5] (noport): no local_bind_port"}},
		{name: "transparent", svc: proxyOf(api.AgentServiceConnectProxyConfig{LocalServicePort: 8080, Mode: api.ProxyModeTransparent,
			Upstreams: []api.Upstream{{DestinationName: "api"}, {DestinationName: "db", LocalBindPort: 9002}}}),
			want: consul.SidecarConfig{App: "127.0.0.1:8080", Inbound: "0.0.0.0:21000", Transparent: true,
				OutboundPort: consul.DefaultOutboundListenerPort, Upstreams: []consul.SidecarUpstream{{Name: "db", Listen: "127.0.0.1:9002"}}},
			warnings: []string{"upstreams[0] (api): no local_bind_port: no listener of its own (transparent mode reaches it"}},
		{name: "transparent port", svc: proxyOf(api.AgentServiceConnectProxyConfig{LocalServicePort: 8080, Mode: api.ProxyModeTransparent,
			TransparentProxy: &api.TransparentProxyConfig{OutboundListenerPort: 16001}}),
			want: consul.SidecarConfig{App: "127.0.0.1:8080", Inbound: "0.0.0.0:21000", Transparent: true, OutboundPort: 16001}},
		{name: "expose", svc: proxyOf(api.AgentServiceConnectProxyConfig{LocalServicePort: 8080, Expose: api.ExposeConfig{Checks: true, Paths: []api.ExposePath{
			{ListenerPort: 21500, Path: "/healthz", LocalPathPort: 8081},
			{ListenerPort: 21501, Path: "/grpc.health.v1.Health/Check", LocalPathPort: 8082, Protocol: "http2"},
			{ListenerPort: 21502, Path: "/x", LocalPathPort: 8083, Protocol: "tcp"},
		}}}), want: consul.SidecarConfig{App: "127.0.0.1:8080", Inbound: "0.0.0.0:21000", Expose: []consul.ExposePath{
			{ListenerPort: 21500, Path: "/healthz", LocalPathPort: 8081, Protocol: "http"},
			{ListenerPort: 21501, Path: "/grpc.health.v1.Health/Check", LocalPathPort: 8082, Protocol: "http2"},
		}}, warnings: []string{"expose.checks is not supported", `expose.paths[2]: protocol "tcp"`}},
		{name: "no local port", svc: proxyOf(api.AgentServiceConnectProxyConfig{}),
			warnings: []string{"no local_service_port: no inbound listener"}},
		{name: "plain service", svc: &api.AgentService{ID: "web-1", Service: "web"}, err: "web-1 is a plain service registration, not a connect-proxy"},
		{name: "gateway", svc: &api.AgentService{ID: "gw", Kind: api.ServiceKindMeshGateway}, err: "gw is a mesh-gateway registration, not a connect-proxy"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := consul.ParseSidecar(tc.svc)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) || !errors.Is(err, consul.ErrRegistration) {
					t.Fatalf("error %v, want ErrRegistration with %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(got.Warnings) != len(tc.warnings) {
				t.Errorf("warnings %q, want %d", got.Warnings, len(tc.warnings))
			}
			for i, w := range tc.warnings {
				if i < len(got.Warnings) && !strings.Contains(got.Warnings[i], w) {
					t.Errorf("warning %d %q lacks %q", i, got.Warnings[i], w)
				}
			}
			got.Warnings = nil
			tc.want.ProxyID, tc.want.Service, tc.want.ServiceID = "web-1-sidecar-proxy", "web", "web-1"
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got  %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

// TestSidecarForFollows: Resolve finds the sidecar of a service ID (and the proxy by its own ID), the upstream's
// protocol merged from service-defaults (merge-central-config); Run follows a change of the registration, and Ready
// fails once it is deleted.
func TestSidecarForFollows(t *testing.T) {
	agent := discoverytest.StartConsul(t, discoverytest.Options{})
	client := agent.Client()
	if _, _, err := client.ConfigEntries().Set(&api.ServiceConfigEntry{Kind: api.ServiceDefaults, Name: "api", Protocol: "http2"}, nil); err != nil {
		t.Fatal(err)
	}
	register := func(ups ...api.Upstream) {
		t.Helper()
		err := client.Agent().ServiceRegister(&api.AgentServiceRegistration{ID: "web-1", Name: "web", Port: 8080,
			Connect: &api.AgentServiceConnect{SidecarService: &api.AgentServiceRegistration{Port: 21000,
				Proxy: &api.AgentServiceConnectProxyConfig{Upstreams: ups}}}})
		if err != nil {
			t.Fatal(err)
		}
	}
	register(api.Upstream{DestinationName: "api", LocalBindPort: 9001})
	src := newSource(t, consul.Config{Address: agent.HTTPAddr})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	if _, found, err := consul.NewSidecarFor(src, "web-1-sidecar-proxy").Resolve(ctx); err != nil || found != "connect-proxy web-1-sidecar-proxy" {
		t.Fatalf("Resolve of the proxy's ID: %q, %v", found, err)
	}
	sf := consul.NewSidecarFor(src, "web-1")
	cfg, found, err := sf.Resolve(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if found != "connect-proxy web-1-sidecar-proxy, the sidecar of service web-1" {
		t.Errorf("found %q", found)
	}
	want := []consul.SidecarUpstream{{Name: "api", Listen: "127.0.0.1:9001", Protocol: "http2"}}
	if cfg.Service != "web" || cfg.App != "127.0.0.1:8080" || !reflect.DeepEqual(cfg.Upstreams, want) {
		t.Fatalf("resolved %+v, want service web at 127.0.0.1:8080 and upstreams %+v", cfg, want)
	}

	done := make(chan struct{})
	go func() { sf.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	register(api.Upstream{DestinationName: "api", LocalBindPort: 9001}, api.Upstream{DestinationName: "db", LocalBindPort: 9002})
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("%s: not within 10s (config %+v, ready %v)", what, sf.Config(), sf.Ready())
			}
			select {
			case <-sf.Changed():
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
	waitFor("db added", func() bool { return len(sf.Config().Upstreams) == 2 && sf.Config().Upstreams[1].Name == "db" })
	if err := client.Agent().ServiceDeregister("web-1-sidecar-proxy"); err != nil {
		t.Fatal(err)
	}
	waitFor("Ready fails once the registration is deleted", func() bool {
		err := sf.Ready()
		return err != nil && strings.Contains(err.Error(), "was deleted from the agent")
	})
	if n := len(sf.Config().Upstreams); n != 2 {
		t.Errorf("config after the deletion has %d upstreams, want the last known 2", n)
	}
	register(api.Upstream{DestinationName: "db", LocalBindPort: 9002})
	waitFor("registered again", func() bool { return sf.Ready() == nil && len(sf.Config().Upstreams) == 1 })
}

// TestRegistrarUpstreamsAndMode: the Registrar writes its upstreams and transparent mode into the proxy
// registration; a registration read back by SidecarFor gives them again.
func TestRegistrarUpstreamsAndMode(t *testing.T) {
	agent := discoverytest.StartConsul(t, discoverytest.Options{})
	src := newSource(t, consul.Config{Address: agent.HTTPAddr})
	r := consul.NewRegistrar(src, consul.Registration{Service: "shop", App: "127.0.0.1:8080", Inbound: "127.0.0.1:21002",
		Admin: "127.0.0.1:1", Transparent: true, OutboundPort: 15001, Upstreams: []consul.RegisteredUpstream{
			{Service: "api", Listen: "127.0.0.1:9001"}, {Service: "ledger", Datacenter: "dc1", Listen: "0.0.0.0:9002"}}})
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	defer func() { cancel(); <-done }()
	waitFor(t, 5*time.Second, "registered", func() bool { return r.Ready() == nil })

	cfg, _, err := consul.NewSidecarFor(src, r.ServiceID()).Resolve(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	want := []consul.SidecarUpstream{{Name: "api", Listen: "127.0.0.1:9001"}, {Name: "ledger", Datacenter: "dc1", Listen: "0.0.0.0:9002"}}
	if !reflect.DeepEqual(cfg.Upstreams, want) || !cfg.Transparent || cfg.OutboundPort != 15001 || cfg.Inbound != "127.0.0.1:21002" {
		t.Errorf("registration read back: %+v\nwant upstreams %+v, transparent on 15001, inbound 127.0.0.1:21002", cfg, want)
	}
}
