package consul_test

import (
	"context"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"meshlet.dev/meshlet/consul"
	"meshlet.dev/meshlet/discovery/discoverytest"
)

// TestEntriesProtocol: an upstream's protocol is its service-defaults' (tcp included), else the mesh's default
// from proxy-defaults/global, else unset; changes are followed.
func TestEntriesProtocol(t *testing.T) {
	agent := discoverytest.StartConsul(t, discoverytest.Options{})
	entries := agent.Client().ConfigEntries()
	e := consul.NewConfigEntries(newSource(t, consul.Config{Address: agent.HTTPAddr}))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { e.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	protocol := func(svc, want string) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			got := e.Settings("web", svc).Protocol
			if got == want && e.Ready() == nil {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("protocol of %s = %q, want %q (ready: %v)", svc, got, want, e.Ready())
			}
			select {
			case <-e.Changed():
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
	protocol("api", "")
	if _, _, err := entries.Set(&api.ProxyConfigEntry{Kind: api.ProxyDefaults, Name: api.ProxyConfigGlobal,
		Config: map[string]any{"protocol": "http"}}, nil); err != nil {
		t.Fatal(err)
	}
	protocol("api", "http")
	for _, p := range []string{"grpc", "tcp"} {
		if _, _, err := entries.Set(&api.ServiceConfigEntry{Kind: api.ServiceDefaults, Name: "api", Protocol: p}, nil); err != nil {
			t.Fatal(err)
		}
		protocol("api", p)
	}
	protocol("db", "http")
	if _, err := entries.Delete(api.ProxyDefaults, api.ProxyConfigGlobal, nil); err != nil {
		t.Fatal(err)
	}
	protocol("db", "")
}

// TestEntriesMeshTLS: the inbound TLS minimum follows the mesh config entry's TLS.Incoming.TLSMinVersion ("1.2"
// for TLSv1_2, "1.3" for TLSv1_3, "" for TLS_AUTO or no entry), also for a sidecar whose token has only its
// service identity (Consul lets every token read the mesh entry).
func TestEntriesMeshTLS(t *testing.T) {
	agent := discoverytest.StartConsul(t, discoverytest.Options{ACL: true})
	entries := agent.Client().ConfigEntries()
	watch := func(token string) *consul.ConfigEntries {
		e := consul.NewConfigEntries(newSource(t, consul.Config{Address: agent.HTTPAddr, Token: token}))
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { e.Run(ctx); close(done) }()
		t.Cleanup(func() { cancel(); <-done })
		return e
	}
	e := watch(discoverytest.ManagementToken)
	wait := func(e *consul.ConfigEntries, want string) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for e.InboundTLS().Min != want || e.Ready() != nil {
			if time.Now().After(deadline) {
				t.Fatalf("inbound TLS minimum %q, want %q (ready: %v)", e.InboundTLS().Min, want, e.Ready())
			}
			select {
			case <-e.Changed():
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
	wait(e, "")
	for _, tt := range []struct{ consul, want string }{{"TLSv1_2", "1.2"}, {"TLSv1_3", "1.3"}, {"TLS_AUTO", ""}, {"TLSv1_2", "1.2"}} {
		if _, _, err := entries.Set(&api.MeshConfigEntry{TLS: &api.MeshTLSConfig{
			Incoming: &api.MeshDirectionalTLSConfig{TLSMinVersion: tt.consul}}}, nil); err != nil {
			t.Fatal(err)
		}
		wait(e, tt.want)
	}
	tok, _, err := agent.Client().ACL().TokenCreate(&api.ACLToken{
		ServiceIdentities: []*api.ACLServiceIdentity{{ServiceName: "api"}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	withServiceToken := watch(tok.SecretID)
	wait(withServiceToken, "1.2")
	if _, err := entries.Delete(api.MeshConfig, api.MeshConfigMesh, nil); err != nil {
		t.Fatal(err)
	}
	wait(e, "")
	wait(withServiceToken, "")
}
