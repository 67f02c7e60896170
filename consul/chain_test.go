package consul

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/hashicorp/consul/api"
)

// chainJSON is a compiled chain as /v1/discovery-chain sends it, with the start node and nodes given.
func chainJSON(start, nodes, targets string) string {
	return fmt.Sprintf(`{"ServiceName":"api","Namespace":"default","Partition":"default","Datacenter":"dc1","Protocol":"http",
		"StartNode":%q,"Nodes":{%s},"Targets":{%s}}`, start, nodes, targets)
}

const (
	targetAPI    = `"api.default.default.dc1":{"ID":"api.default.default.dc1","Service":"api","Datacenter":"dc1","ConnectTimeout":"5s","Subset":{}}`
	targetV2     = `"v2.api.default.default.dc1":{"ID":"v2.api.default.default.dc1","Service":"api","ServiceSubset":"v2","Datacenter":"dc1","Subset":{"Filter":"Service.Meta.version == v2"}}`
	resolverAPI  = `"resolver:api.default.default.dc1":{"Type":"resolver","Name":"api.default.default.dc1","Resolver":{"Default":true,"ConnectTimeout":"5s","Target":"api.default.default.dc1"}}`
	resolverV2   = `"resolver:v2.api.default.default.dc1":{"Type":"resolver","Name":"v2.api.default.default.dc1","Resolver":{"ConnectTimeout":"3s","RequestTimeout":7000000000,"Target":"v2.api.default.default.dc1","Failover":{"Targets":["api.default.default.dc1"]}}}`
	splitterHalf = `"splitter:api":{"Type":"splitter","Name":"api","Splits":[{"Weight":50,"NextNode":"resolver:api.default.default.dc1"},{"Weight":50,"NextNode":"splitter:inner","Definition":{"Weight":50,"RequestHeaders":{"Set":{"x-outer":"1"}}}}]}`
	splitterIn   = `"splitter:inner":{"Type":"splitter","Name":"inner","Splits":[{"Weight":20,"NextNode":"resolver:v2.api.default.default.dc1","Definition":{"Weight":20,"RequestHeaders":{"Set":{"x-inner":"1"}}}},{"Weight":80,"NextNode":"resolver:api.default.default.dc1"}]}`
)

func compileJSON(t *testing.T, s string) (c *rawChain, out string) {
	t.Helper()
	var rc rawChain
	if err := json.Unmarshal([]byte(s), &rc); err != nil {
		t.Fatal(err)
	}
	ch := rc.compile("")
	b, _ := json.Marshal(ch)
	return &rc, string(b)
}

// TestCompileChain: Consul's compiled chain flattened: the default chain, nested splitters with their weights
// multiplied and header changes merged, a resolver's timeouts and failover.
func TestCompileChain(t *testing.T) {
	var rc rawChain
	if err := json.Unmarshal([]byte(chainJSON("resolver:api.default.default.dc1", resolverAPI, targetAPI)), &rc); err != nil {
		t.Fatal(err)
	}
	if ch := rc.compile(""); !ch.Default || len(ch.Unsupported) != 0 || len(ch.Routes) != 1 {
		t.Fatalf("default chain: %+v", ch)
	}
	if err := json.Unmarshal([]byte(chainJSON("splitter:api", strings.Join([]string{splitterHalf, splitterIn, resolverAPI, resolverV2}, ","),
		targetAPI+","+targetV2)), &rc); err != nil {
		t.Fatal(err)
	}
	ch := rc.compile("")
	if ch.Default || len(ch.Unsupported) != 0 || len(ch.Routes) != 1 {
		t.Fatalf("split chain: %+v", ch)
	}
	s := ch.Routes[0].Splits
	if len(s) != 3 || s[0].Weight != 50 || s[1].Weight != 10 || s[2].Weight != 40 {
		t.Fatalf("weights: %+v", s)
	}
	if s[1].RequestHeaders.Set["x-outer"] != "1" || s[1].RequestHeaders.Set["x-inner"] != "1" || s[2].RequestHeaders.Set["x-outer"] != "1" ||
		s[2].RequestHeaders.Set["x-inner"] != "" || len(s[0].RequestHeaders.Set) != 0 {
		t.Fatalf("header changes: %+v", s)
	}
	r := s[1].Resolver
	if len(r.Targets) != 2 || r.Targets[0].Filter != "Service.Meta.version == v2" || r.Targets[1].Service != "api" ||
		r.ConnectTimeout.String() != "3s" || r.RequestTimeout.String() != "7s" {
		t.Fatalf("resolver: %+v", r)
	}
}

// TestCompileChainRefuses: what meshlet cannot honour is named, never dropped.
func TestCompileChainRefuses(t *testing.T) {
	for _, tc := range []struct{ name, chain, want string }{
		{"mesh gateway", chainJSON("resolver:api.default.default.dc1", resolverAPI,
			`"api.default.default.dc1":{"ID":"api.default.default.dc1","Service":"api","MeshGateway":{"Mode":"remote"}}`), `mesh gateway mode \"remote\"`},
		{"peer", chainJSON("resolver:api.default.default.dc1", resolverAPI,
			`"api.default.default.dc1":{"ID":"api.default.default.dc1","Service":"api","Peer":"other"}`), `cluster peer \"other\"`},
		{"external", chainJSON("resolver:api.default.default.dc1", resolverAPI,
			`"api.default.default.dc1":{"ID":"api.default.default.dc1","Service":"api","External":true}`), "terminating gateway"},
		{"generated cookie", chainJSON("resolver:api.default.default.dc1", strings.Replace(resolverAPI, `"Resolver"`,
			`"LoadBalancer":{"Policy":"ring_hash","HashPolicies":[{"Field":"cookie","FieldValue":"s","CookieConfig":{"TTL":"10s"}}]},"Resolver"`, 1), targetAPI),
			"a hash cookie meshlet would have to generate"},
		{"choice count", chainJSON("resolver:api.default.default.dc1", strings.Replace(resolverAPI, `"Resolver"`,
			`"LoadBalancer":{"Policy":"least_request","LeastRequestConfig":{"ChoiceCount":4}},"Resolver"`, 1), targetAPI),
			"least_request choice count 4"},
		{"retry condition", chainJSON("router:api", `"router:api":{"Type":"router","Routes":[{"Definition":{"Destination":{"RetryOn":["retriable-4xx"]}},"NextNode":"resolver:api.default.default.dc1"}]},`+resolverAPI, targetAPI),
			`retry condition \"retriable-4xx\"`},
		{"envoy variable", chainJSON("router:api", `"router:api":{"Type":"router","Routes":[{"Definition":{"Destination":{"RequestHeaders":{"Set":{"x-ip":"%DOWNSTREAM_REMOTE_ADDRESS%"}}}},"NextNode":"resolver:api.default.default.dc1"}]},`+resolverAPI, targetAPI),
			"Envoy variable"},
		{"namespace", strings.Replace(chainJSON("resolver:api.default.default.dc1", resolverAPI, targetAPI), `"Namespace":"default"`, `"Namespace":"team-a"`, 1),
			"Consul Enterprise"},
	} {
		_, out := compileJSON(t, tc.chain)
		if !strings.Contains(out, tc.want) {
			t.Errorf("%s: %s, want a reason with %s", tc.name, out, tc.want)
		}
	}
}

// TestIgnoredFields: the fields of the entries meshlet reads field by field that it does not apply are named.
func TestIgnoredFields(t *testing.T) {
	got := ignoredFields(&api.ServiceConfigEntry{Kind: api.ServiceDefaults, Name: "api", Protocol: "http",
		MaxInboundConnections: 10, Mode: api.ProxyModeTransparent})
	if len(got) != 2 || !strings.HasPrefix(got[0], "MaxInboundConnections") || !strings.HasPrefix(got[1], "Mode") {
		t.Errorf("service-defaults: %q", got)
	}
	if got := ignoredFields(&api.ProxyConfigEntry{Kind: api.ProxyDefaults, Config: map[string]any{"protocol": "http"}}); len(got) != 0 {
		t.Errorf("proxy-defaults with its protocol only: %q", got)
	}
	if got := ignoredFields(&api.ProxyConfigEntry{Kind: api.ProxyDefaults, Config: map[string]any{"protocol": "http", "envoy_prometheus_bind_addr": "x"}}); len(got) != 1 {
		t.Errorf("proxy-defaults with an Envoy key: %q", got)
	}
	if got := ignoredFields(&api.MeshConfigEntry{TLS: &api.MeshTLSConfig{}, TransparentProxy: api.TransparentProxyMeshConfig{MeshDestinationsOnly: true}}); len(got) != 0 {
		t.Errorf("mesh with what meshlet applies: %q", got)
	}
}
