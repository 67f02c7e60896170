package consul

import (
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"meshlet.dev/meshlet/discovery/discoverytest"
	"meshlet.dev/meshlet/mtls"
)

func callerID(s string) mtls.ID { return mtls.ServiceID("example.mesh", "", "", s) }

// runIntentions runs an evaluator for api with client until the test ends and waits until it is ready.
func runIntentions(t *testing.T, client *api.Client) *Intentions {
	t.Helper()
	it := NewIntentions(client, "api", slog.New(slog.DiscardHandler))
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { it.Run(ctx) })
	t.Cleanup(func() { cancel(); wg.Wait() })
	select {
	case <-it.Loaded():
	case <-time.After(15 * time.Second):
		t.Fatalf("intentions not ready after 15s: %v", it.Err())
	}
	return it
}

// tokenClient returns a client of agent whose token has the service identity of service, made with the
// management token.
func tokenClient(t *testing.T, agent *discoverytest.Agent, service string) *api.Client {
	t.Helper()
	tok, _, err := agent.Client().ACL().TokenCreate(&api.ACLToken{
		ServiceIdentities: []*api.ACLServiceIdentity{{ServiceName: service}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	c, err := api.NewClient(&api.Config{Address: agent.HTTPAddr, Token: tok.SecretID})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestIntentionsDefaultPolicyFromConsul learns the default policy from a real agent: with ACLs off it is allow;
// with ACLs on and default_policy deny it is deny, for the management token (/v1/agent/self) and for a
// service-identity token, which may not read /v1/agent/self (/v1/agent/connect/authorize then says). A token of
// another service can read neither: the default stays unknown, and callers no intention names are denied while
// those an intention allows are let through.
func TestIntentionsDefaultPolicyFromConsul(t *testing.T) {
	open := discoverytest.StartConsul(t, discoverytest.Options{})
	acl := discoverytest.StartConsul(t, discoverytest.Options{ACL: true})
	if _, err := acl.Client().Connect().IntentionUpsert(&api.Intention{SourceName: "web", DestinationName: "api",
		Action: api.IntentionActionAllow}, nil); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		client *api.Client
		want   mtls.DefaultPolicy
		via    string // the endpoint that said
	}{
		{"ACLs off", open.Client(), mtls.DefaultAllow, "/v1/agent/self"},
		{"ACLs on, management token", acl.Client(), mtls.DefaultDeny, "/v1/agent/self"},
		{"ACLs on, service-identity token", tokenClient(t, acl, "api"), mtls.DefaultDeny, "/v1/agent/connect/authorize"},
		{"ACLs on, another service's token", tokenClient(t, acl, "billing"), mtls.DefaultUnknown, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			it := runIntentions(t, tt.client)
			got, err := it.DefaultPolicy()
			if got != tt.want {
				t.Fatalf("DefaultPolicy() = %q (%v), want %q", got, err, tt.want)
			}
			if via := *it.via.Load(); via != tt.via {
				t.Errorf("learned from %q, want %q", via, tt.via)
			}
			if got == mtls.DefaultUnknown && err == nil {
				t.Error("unknown default without a reason")
			}
			if ok, why := it.Allowed(callerID("batch"), nil); ok != (tt.want == mtls.DefaultAllow) {
				t.Errorf("batch (no intention): allowed=%v (%s), want %v", ok, why, tt.want == mtls.DefaultAllow)
			}
		})
	}
	it := runIntentions(t, tokenClient(t, acl, "api"))
	if ok, why := it.Allowed(callerID("web"), nil); !ok {
		t.Errorf("web, allowed by an intention, under a service-identity token: denied (%s)", why)
	}
}
