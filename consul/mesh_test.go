package consul_test

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"meshlet.dev/meshlet/consul"
	"meshlet.dev/meshlet/discovery/discoverytest"
)

// TestMeshServices: against a real agent, the mesh's services are those with a sidecar registered, each with
// the virtual IP Consul assigned (the address its DNS gives <service>.virtual.consul), a virtual tagged address
// when one is registered (consul-k8s: the ClusterIP) and its instances' addresses at the service's port; a
// plain service without sidecar is not in it; registrations and deregistrations are followed.
func TestMeshServices(t *testing.T) {
	agent := discoverytest.StartConsul(t, discoverytest.Options{})
	client := agent.Client()
	reg := func(name, id, addr string, port int, virtual string) {
		t.Helper()
		sidecar := &api.AgentServiceRegistration{Port: 21000 + port%100, Address: addr}
		if virtual != "" {
			sidecar.TaggedAddresses = map[string]api.ServiceAddress{consul.TaggedVirtual: {Address: virtual, Port: port}}
		}
		err := client.Agent().ServiceRegister(&api.AgentServiceRegistration{ID: id, Name: name, Address: addr, Port: port,
			Connect: &api.AgentServiceConnect{SidecarService: sidecar}})
		if err != nil {
			t.Fatal(err)
		}
	}
	reg("api", "api-1", "198.18.1.5", 8080, "")
	reg("api", "api-2", "198.18.1.6", 8080, "")
	reg("db", "db-1", "198.18.1.7", 5432, "198.18.200.7")
	reg("local", "local-1", "127.0.0.1", 9000, "") // a loopback instance: only its virtual IP
	if err := client.Agent().ServiceRegister(&api.AgentServiceRegistration{ID: "plain-1", Name: "plain",
		Address: "198.18.1.9", Port: 80}); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	m := consul.NewMesh(newSource(t, consul.Config{Address: agent.HTTPAddr}))
	if m.Ready() == nil {
		t.Fatal("ready before any answer")
	}
	done := make(chan struct{})
	go func() { m.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	vip := func(name string) string { // what Consul's DNS would answer for <name>.virtual.consul
		t.Helper()
		entries, _, err := client.Catalog().Service(name+"-sidecar-proxy", "", nil)
		if err != nil || len(entries) == 0 {
			t.Fatalf("%s's sidecar: %v %v", name, entries, err)
		}
		a := entries[0].ServiceTaggedAddresses[consul.TaggedConsulVirtual].Address
		if _, err := netip.ParseAddr(a); err != nil {
			t.Fatalf("%s has no virtual IP: %q", name, a)
		}
		return a
	}
	want := func() []consul.MeshService {
		return []consul.MeshService{
			{Name: "api", Addresses: sorted(vip("api"), "198.18.1.5:8080", "198.18.1.6:8080")},
			{Name: "db", Addresses: sorted(vip("db"), "198.18.200.7", "198.18.1.7:5432")},
			{Name: "local", Addresses: []string{vip("local")}},
		}
	}
	waitMesh(t, m, want())
	if err := m.Ready(); err != nil {
		t.Fatal(err)
	}

	// An instance leaves, a service joins: followed.
	if err := client.Agent().ServiceDeregister("api-2-sidecar-proxy"); err != nil {
		t.Fatal(err)
	}
	reg("billing", "billing-1", "198.18.1.8", 7000, "")
	waitMesh(t, m, []consul.MeshService{
		{Name: "api", Addresses: sorted(vip("api"), "198.18.1.5:8080")},
		{Name: "billing", Addresses: sorted(vip("billing"), "198.18.1.8:7000")},
		{Name: "db", Addresses: sorted(vip("db"), "198.18.200.7", "198.18.1.7:5432")},
		{Name: "local", Addresses: []string{vip("local")}},
	})
}

func sorted(s ...string) []string { slices.Sort(s); return s }

func waitMesh(t *testing.T, m *consul.Mesh, want []consul.MeshService) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		got := m.Services()
		if fmt.Sprint(got) == fmt.Sprint(want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("mesh services:\n got %v\nwant %v", got, want)
		}
		select {
		case <-m.Changed():
		case <-time.After(200 * time.Millisecond):
		}
	}
}
