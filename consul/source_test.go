package consul_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/prometheus/client_golang/prometheus"

	"meshlet.dev/meshlet/consul"
	"meshlet.dev/meshlet/discovery"
	"meshlet.dev/meshlet/discovery/discoverytest"
	"meshlet.dev/meshlet/metrics"
)

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func newSource(t *testing.T, cfg consul.Config) *consul.Source {
	t.Helper()
	c, err := consul.NewSource(cfg, consul.SourceOptions{Logger: quietLog(), Metrics: metrics.New(prometheus.NewRegistry(), "test").Discovery})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// next waits for a snapshot that satisfies cond and returns it with the time it took.
func next(t *testing.T, ch <-chan discovery.Snapshot, timeout time.Duration, what string, cond func(discovery.Snapshot) bool) (discovery.Snapshot, time.Duration) {
	t.Helper()
	start := time.Now()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	var last discovery.Snapshot
	for {
		select {
		case s, ok := <-ch:
			if !ok {
				t.Fatalf("%s: channel closed", what)
			}
			last = s
			if cond(s) {
				return s, time.Since(start)
			}
		case <-deadline.C:
			t.Fatalf("%s: not within %v; last snapshot %+v", what, timeout, last)
		}
	}
}

func addrs(s discovery.Snapshot) string {
	var out []string
	for _, ep := range s.Endpoints {
		out = append(out, ep.Addr.String())
	}
	return strings.Join(out, ",")
}

func registerInstance(t *testing.T, c *api.Client, id, name string, port int) {
	t.Helper()
	err := c.Agent().ServiceRegister(&api.AgentServiceRegistration{ID: id, Name: name, Address: "127.0.0.1", Port: port,
		Check: &api.AgentServiceCheck{CheckID: "check-" + id, TTL: "1h", Status: api.HealthPassing}})
	if err != nil {
		t.Fatal(err)
	}
}

func registerSidecar(t *testing.T, c *api.Client, id, name string, port int) {
	t.Helper()
	err := c.Agent().ServiceRegister(&api.AgentServiceRegistration{Kind: api.ServiceKindConnectProxy, ID: id + "-sidecar-proxy",
		Name: name + "-sidecar-proxy", Address: "127.0.0.1", Port: port,
		Proxy: &api.AgentServiceConnectProxyConfig{DestinationServiceName: name, DestinationServiceID: id}})
	if err != nil {
		t.Fatal(err)
	}
}

func TestConsulWatchFollowsInstances(t *testing.T) {
	agent := discoverytest.StartConsul(t, discoverytest.Options{})
	client := agent.Client()
	registerInstance(t, client, "api-1", "api", 9101)
	registerInstance(t, client, "api-2", "api", 9102)
	src := newSource(t, consul.Config{Address: agent.HTTPAddr})
	ch, err := src.Watch(t.Context(), "api")
	if err != nil {
		t.Fatal(err)
	}
	next(t, ch, 5*time.Second, "two instances", func(s discovery.Snapshot) bool {
		return addrs(s) == "127.0.0.1:9101,127.0.0.1:9102" && !s.Stale && !s.LastContact.IsZero()
	})

	steps := []struct {
		name   string
		change func()
		want   string
	}{
		{"deregistered", func() { client.Agent().ServiceDeregister("api-2") }, "127.0.0.1:9101"},
		{"registered", func() { registerInstance(t, client, "api-3", "api", 9103) }, "127.0.0.1:9101,127.0.0.1:9103"},
		{"failing its check", func() { client.Agent().UpdateTTL("check-api-1", "down", api.HealthCritical) }, "127.0.0.1:9103"},
		{"passing again", func() { client.Agent().UpdateTTL("check-api-1", "up", api.HealthPassing) }, "127.0.0.1:9101,127.0.0.1:9103"},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			st.change()
			_, took := next(t, ch, time.Second, st.name, func(s discovery.Snapshot) bool { return addrs(s) == st.want })
			t.Logf("%s reached the watcher in %v", st.name, took)
		})
	}

	t.Run("sidecars preferred, with identity", func(t *testing.T) {
		registerSidecar(t, client, "api-1", "api", 21001)
		s, _ := next(t, ch, time.Second, "sidecar", func(s discovery.Snapshot) bool { return addrs(s) == "127.0.0.1:21001" })
		ep := s.Endpoints[0]
		if !strings.HasPrefix(ep.Identity, "spiffe://") || !strings.HasSuffix(ep.Identity, "/ns/default/dc/dc1/svc/api") {
			t.Errorf("identity %q, want spiffe://<trust-domain>/ns/default/dc/dc1/svc/api", ep.Identity)
		}
		if ep.Meta["peer"] != "sidecar" || ep.Meta[discovery.MetaProxy] != discovery.ProxyForeign {
			t.Errorf("meta %v, want peer=sidecar and proxy=foreign (no meshlet marker)", ep.Meta)
		}
		// The same proxy registered again with meshlet's marker: a new snapshot says it is a meshlet.
		if err := client.Agent().ServiceRegister(&api.AgentServiceRegistration{Kind: api.ServiceKindConnectProxy,
			ID: "api-1-sidecar-proxy", Name: "api-sidecar-proxy", Address: "127.0.0.1", Port: 21001,
			Meta:  map[string]string{consul.MetaMeshlet: "true"},
			Proxy: &api.AgentServiceConnectProxyConfig{DestinationServiceName: "api", DestinationServiceID: "api-1"}}); err != nil {
			t.Fatal(err)
		}
		next(t, ch, time.Second, "the marker read", func(s discovery.Snapshot) bool {
			return addrs(s) == "127.0.0.1:21001" && s.Endpoints[0].Meta[discovery.MetaProxy] == discovery.ProxyMeshlet
		})
		client.Agent().ServiceDeregister("api-1-sidecar-proxy")
		next(t, ch, time.Second, "fallback to plain instances", func(s discovery.Snapshot) bool {
			return addrs(s) == "127.0.0.1:9101,127.0.0.1:9103"
		})
	})
}

func TestConsulModes(t *testing.T) {
	agent := discoverytest.StartConsul(t, discoverytest.Options{})
	client := agent.Client()
	registerInstance(t, client, "api-1", "api", 9101)
	registerSidecar(t, client, "api-1", "api", 21001)
	for _, tc := range []struct{ mode, want string }{
		{consul.ModeAuto, "127.0.0.1:21001"},
		{consul.ModeConnect, "127.0.0.1:21001"},
		{consul.ModeService, "127.0.0.1:9101"},
	} {
		t.Run(tc.mode, func(t *testing.T) {
			src := newSource(t, consul.Config{Address: agent.HTTPAddr, Mode: tc.mode})
			ch, _ := src.Watch(t.Context(), "api")
			next(t, ch, 5*time.Second, tc.mode, func(s discovery.Snapshot) bool { return addrs(s) == tc.want })
		})
	}
	t.Run("an instance with a meshlet sidecar is never called directly", func(t *testing.T) {
		err := client.Agent().ServiceRegister(&api.AgentServiceRegistration{ID: "billing-1", Name: "billing",
			Address: "127.0.0.1", Port: 9201, Meta: map[string]string{consul.MetaSidecar: "billing-1-sidecar-proxy"}})
		if err != nil {
			t.Fatal(err)
		}
		auto := newSource(t, consul.Config{Address: agent.HTTPAddr})
		ch, _ := auto.Watch(t.Context(), "billing")
		next(t, ch, 5*time.Second, "auto: none until the sidecar registers", func(s discovery.Snapshot) bool { return len(s.Endpoints) == 0 })
		plain := newSource(t, consul.Config{Address: agent.HTTPAddr, Mode: consul.ModeService})
		pch, _ := plain.Watch(t.Context(), "billing")
		next(t, pch, 5*time.Second, "service mode: the instance", func(s discovery.Snapshot) bool { return addrs(s) == "127.0.0.1:9201" })
		registerSidecar(t, client, "billing-1", "billing", 21201)
		next(t, ch, time.Second, "auto: the sidecar", func(s discovery.Snapshot) bool { return addrs(s) == "127.0.0.1:21201" })
	})
	t.Run("connect only, none registered", func(t *testing.T) {
		src := newSource(t, consul.Config{Address: agent.HTTPAddr, Mode: consul.ModeConnect})
		ch, _ := src.Watch(t.Context(), "web")
		next(t, ch, 5*time.Second, "empty", func(s discovery.Snapshot) bool { return len(s.Endpoints) == 0 })
	})
}

func TestConsulEmptyServiceIsASnapshot(t *testing.T) {
	agent := discoverytest.StartConsul(t, discoverytest.Options{})
	src := newSource(t, consul.Config{Address: agent.HTTPAddr})
	ch, _ := src.Watch(t.Context(), "nothing")
	_, took := next(t, ch, 2*time.Second, "empty snapshot", func(s discovery.Snapshot) bool { return len(s.Endpoints) == 0 })
	t.Logf("empty first answer in %v", took)
	if err := src.Err(); err != nil {
		t.Errorf("Err() = %v, want nil", err)
	}
}

func TestConsulSharedWatch(t *testing.T) {
	agent := discoverytest.StartConsul(t, discoverytest.Options{})
	client := agent.Client()
	registerInstance(t, client, "api-1", "api", 9101)
	reg := prometheus.NewRegistry()
	src, err := consul.NewSource(consul.Config{Address: agent.HTTPAddr}, consul.SourceOptions{Logger: quietLog(), Metrics: metrics.New(reg, "test").Discovery})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	ctx1, cancel1 := context.WithCancel(t.Context())
	ch1, _ := src.Watch(ctx1, "api")
	ch2, _ := src.Watch(t.Context(), "api")
	for _, ch := range []<-chan discovery.Snapshot{ch1, ch2} {
		next(t, ch, 5*time.Second, "first", func(s discovery.Snapshot) bool { return addrs(s) == "127.0.0.1:9101" })
	}
	if n := counter(t, reg, "meshlet_discovery_updates_total"); n != 1 {
		t.Errorf("updates = %v, want 1 (one watch for both watchers)", n)
	}
	cancel1()
	for range ch1 { // closed when its context ends
	}
	registerInstance(t, client, "api-2", "api", 9102)
	next(t, ch2, time.Second, "second watcher still served", func(s discovery.Snapshot) bool { return len(s.Endpoints) == 2 })
}

func counter(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	return sum
}

func TestConsulAwayKeepsStaleEndpoints(t *testing.T) {
	agent := discoverytest.StartConsul(t, discoverytest.Options{})
	registerInstance(t, agent.Client(), "api-1", "api", 9101)
	src := newSource(t, consul.Config{Address: agent.HTTPAddr})
	ch, _ := src.Watch(t.Context(), "api")
	first, _ := next(t, ch, 5*time.Second, "first", func(s discovery.Snapshot) bool { return len(s.Endpoints) == 1 })

	agent.Stop()
	stale, took := next(t, ch, 5*time.Second, "stale", func(s discovery.Snapshot) bool { return s.Stale })
	t.Logf("marked stale %v after the agent stopped", took)
	if addrs(stale) != "127.0.0.1:9101" || !stale.LastContact.Equal(first.LastContact) && stale.LastContact.Before(first.LastContact) {
		t.Errorf("stale snapshot %+v: want the last endpoints and the last contact time", stale)
	}
	if err := src.Err(); !errors.Is(err, consul.ErrUnreachable) {
		t.Errorf("Err() = %v, want ErrConsulUnreachable", err)
	}

	agent.Start() // a dev agent comes back empty: the instance registers again, as its sidecar would
	registerInstance(t, agent.Client(), "api-1", "api", 9101)
	registerInstance(t, agent.Client(), "api-2", "api", 9102)
	_, took = next(t, ch, 10*time.Second, "resumed", func(s discovery.Snapshot) bool { return !s.Stale && len(s.Endpoints) == 2 })
	t.Logf("resumed %v after the agent came back", took)
	if err := src.Err(); err != nil {
		t.Errorf("Err() = %v after resuming, want nil", err)
	}
}

func TestConsulBadAddressAndToken(t *testing.T) {
	agent := discoverytest.StartConsul(t, discoverytest.Options{ACL: true})
	for _, tc := range []struct {
		name string
		cfg  consul.Config
		want error
	}{
		{"unreachable", consul.Config{Address: "127.0.0.1:1"}, consul.ErrUnreachable},
		{"unknown token", consul.Config{Address: agent.HTTPAddr, Token: "00000000-0000-0000-0000-000000000001"}, consul.ErrDenied},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := newSource(t, tc.cfg)
			ch, _ := src.Watch(t.Context(), "api")
			deadline := time.Now().Add(5 * time.Second)
			var err error
			for err = src.Err(); err == nil && time.Now().Before(deadline); err = src.Err() {
				time.Sleep(20 * time.Millisecond)
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("Err() = %v, want %v", err, tc.want)
			}
			if strings.Contains(err.Error(), "0000-000000000001") {
				t.Errorf("the error shows the token: %v", err)
			}
			select {
			case s := <-ch:
				t.Errorf("got a snapshot %+v without a successful query", s)
			default:
			}
		})
	}
	t.Run("token without service:read", func(t *testing.T) {
		acl := agent.Client().ACL()
		pol, _, err := acl.PolicyCreate(&api.ACLPolicy{Name: "nodes-only", Rules: `node_prefix "" { policy = "read" }`}, nil)
		if err != nil {
			t.Fatal(err)
		}
		tok, _, err := acl.TokenCreate(&api.ACLToken{Policies: []*api.ACLTokenPolicyLink{{ID: pol.ID}}}, nil)
		if err != nil {
			t.Fatal(err)
		}
		registerInstance(t, agent.Client(), "api-1", "api", 9101)
		src := newSource(t, consul.Config{Address: agent.HTTPAddr, Token: tok.SecretID})
		src.Watch(t.Context(), "api")
		waitFor(t, 5*time.Second, "denied", func() bool { return errors.Is(src.Err(), consul.ErrDenied) })
		if !strings.Contains(src.Err().Error(), "may not read service api") {
			t.Errorf("Err() = %v", src.Err())
		}
	})
	t.Run("management token", func(t *testing.T) {
		src := newSource(t, consul.Config{Address: agent.HTTPAddr, Token: discoverytest.ManagementToken})
		ch, _ := src.Watch(t.Context(), "api")
		next(t, ch, 5*time.Second, "answer", func(s discovery.Snapshot) bool { return true })
	})
}

func TestConsulRegistrar(t *testing.T) {
	agent := discoverytest.StartConsul(t, discoverytest.Options{})
	src := newSource(t, consul.Config{Address: agent.HTTPAddr})
	r := consul.NewRegistrar(src, consul.Registration{Service: "api", App: "127.0.0.1:8080",
		Inbound: "127.0.0.1:21001", Admin: "127.0.0.1:1", Tags: []string{"v1"}, Meta: map[string]string{"team": "a"},
		ResyncInterval: 200 * time.Millisecond})
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	defer func() { cancel(); <-done }()

	client := agent.Client()
	has := func(id string) bool {
		s, _, err := client.Agent().Service(id, nil)
		return err == nil && s != nil
	}
	waitFor(t, 5*time.Second, "registered", func() bool { return has(r.ServiceID()) && has(r.ProxyID()) })
	prx, _, _ := client.Agent().Service(r.ProxyID(), nil)
	if prx.Kind != api.ServiceKindConnectProxy || prx.Proxy.DestinationServiceName != "api" || prx.Port != 21001 ||
		prx.Meta["team"] != "a" || len(prx.Tags) != 1 {
		t.Errorf("sidecar registration %+v", prx)
	}
	if !strings.HasPrefix(r.ServiceID(), "api-") || !strings.HasSuffix(r.ServiceID(), "-21001") {
		t.Errorf("service ID %q, want api-<host>-21001", r.ServiceID())
	}

	agent.Stop()
	agent.Start()
	client = agent.Client()
	waitFor(t, 5*time.Second, "registered again after the agent lost it", func() bool { return has(r.ServiceID()) && has(r.ProxyID()) })

	if err := r.Deregister(t.Context()); err != nil {
		t.Fatal(err)
	}
	if has(r.ServiceID()) || has(r.ProxyID()) {
		t.Error("still registered after Deregister")
	}
	// Run must not bring it back (a bounded watch over several resync intervals).
	deadline := time.Now().Add(600 * time.Millisecond)
	for time.Now().Before(deadline) {
		if has(r.ProxyID()) {
			t.Fatal("registered again after Deregister")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestConsulNamespaceAndPartitionSent: discovery.consul.namespace and partition go with every query of the source
// (?ns=, ?partition=). The open-source agent the tests run refuses both, which shows they were sent; the error
// says why. Without them, the same watch works. Names that are not Consul names are refused by Validate.
func TestConsulNamespaceAndPartitionSent(t *testing.T) {
	agent := discoverytest.StartConsul(t, discoverytest.Options{})
	registerInstance(t, agent.Client(), "api-1", "api", 9101)
	for _, tc := range []struct {
		name string
		cfg  consul.Config
		want string
	}{
		{"namespace", consul.Config{Address: agent.HTTPAddr, Namespace: "team-a"}, "Namespaces are a Consul Enterprise feature"},
		{"partition", consul.Config{Address: agent.HTTPAddr, Partition: "eu"}, "Partitions are a Consul Enterprise feature"},
		{"neither", consul.Config{Address: agent.HTTPAddr}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.cfg.SetDefaults()
			if err := tc.cfg.Validate("discovery.consul"); err != nil {
				t.Fatal(err)
			}
			src := newSource(t, tc.cfg)
			ch, err := src.Watch(t.Context(), "api")
			if err != nil {
				t.Fatal(err)
			}
			if tc.want == "" {
				next(t, ch, 5*time.Second, "the instance", func(s discovery.Snapshot) bool { return addrs(s) == "127.0.0.1:9101" })
				return
			}
			deadline := time.Now().Add(5 * time.Second)
			for err = src.Err(); err == nil && time.Now().Before(deadline); err = src.Err() {
				time.Sleep(20 * time.Millisecond)
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Err() = %v, want the agent's %q", err, tc.want)
			}
		})
	}
	for _, bad := range []consul.Config{{Namespace: "team/a"}, {Partition: "-eu"}, {Namespace: strings.Repeat("n", 65)}} {
		bad.SetDefaults()
		if err := bad.Validate("discovery.consul"); err == nil || !strings.Contains(err.Error(), "is not a Consul") {
			t.Errorf("%+v: %v", bad, err)
		}
	}
}
