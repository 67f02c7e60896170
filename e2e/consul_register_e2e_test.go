package e2e_test

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"meshlet.dev/meshlet/discovery/discoverytest"
	"meshlet.dev/meshlet/internal/meshlettest"
)

// TestConsulRegistrationDeniedNotReady: a sidecar with service.register whose token may read but not write its
// service is not ready, and /ready says that Consul denied the registration; once the policy allows it, the
// sidecar registers and becomes ready.
func TestConsulRegistrationDeniedNotReady(t *testing.T) {
	agent := discoverytest.StartConsul(t, discoverytest.Options{ACL: true})
	acl := agent.Client().ACL()
	const readOnly = `service_prefix "" { policy = "read" }
node_prefix "" { policy = "read" }`
	pol, _, err := acl.PolicyCreate(&api.ACLPolicy{Name: "api-sidecar", Rules: readOnly}, nil)
	if err != nil {
		t.Fatal(err)
	}
	tok, _, err := acl.TokenCreate(&api.ACLToken{Policies: []*api.ACLTokenPolicyLink{{ID: pol.ID}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	admin := meshlettest.FreeAddr(t)
	f := registeredFile("api", "127.0.0.1:18999", meshlettest.FreeAddr(t), admin, agent.HTTPAddr)
	f.Discovery.Consul.Token = tok.SecretID
	p := meshlettest.Launch(t, f.MustYAML(t))
	p.Admin = admin
	var body string
	meshlettest.Eventually(t, 10*time.Second, "/ready says the registration was denied", func() bool {
		var code int
		code, body, _ = call("http://" + admin + "/ready")
		return code == http.StatusServiceUnavailable && strings.Contains(body, "consul registration of api-") &&
			strings.Contains(body, "consul denied the request")
	})
	t.Logf("/ready: %s", strings.TrimSpace(body))
	if strings.Contains(body, tok.SecretID) {
		t.Errorf("/ready shows the token")
	}
	if v := p.MetricSum(t, "meshlet_discovery_registered", nil); v != 0 {
		t.Errorf("meshlet_discovery_registered = %v, want 0", v)
	}

	pol.Rules = readOnly + "\nservice_prefix \"api\" { policy = \"write\" }"
	if _, _, err := acl.PolicyUpdate(pol, nil); err != nil {
		t.Fatal(err)
	}
	if err := p.WaitReady(context.Background(), 15*time.Second); err != nil { // registration retries back off up to 5 s
		t.Fatalf("not ready once the policy allows the registration: %v", err)
	}
	if v := p.MetricSum(t, "meshlet_discovery_registered", nil); v != 1 {
		t.Errorf("meshlet_discovery_registered = %v, want 1", v)
	}
}
