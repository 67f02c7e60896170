package mtls

import (
	"net/http"
	"strings"
	"testing"

	"github.com/hashicorp/consul/api"
)

// evaluator returns an Intentions that evaluates in, with the default policy def.
func evaluator(in []*api.Intention, def DefaultPolicy) *Intentions {
	rules := compile(in, discardLogger())
	it := &Intentions{service: "api"}
	it.rules.Store(&rules)
	it.def.Store(&defaultState{policy: def})
	return it
}

func callerID(s string) ID { return ServiceID("example.mesh", "", "", s) }

// intentionRequest is a request as the proxy hands it over: target is the request target (path and query) as
// sent, its path already normalized; h are header name, value pairs, added in order (names kept as written).
func intentionRequest(t *testing.T, method, target string, h ...string) *http.Request {
	t.Helper()
	r, err := http.NewRequest(method, "http://api"+target, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(h); i += 2 {
		r.Header[h[i]] = append(r.Header[h[i]], h[i+1])
	}
	return r
}

func TestIntentionEvaluation(t *testing.T) {
	it := evaluator([]*api.Intention{
		{SourceName: "batch", Action: api.IntentionActionDeny},
		{SourceName: "web", Permissions: []*api.IntentionPermission{
			{Action: api.IntentionActionDeny, HTTP: &api.IntentionHTTPPermission{PathPrefix: "/admin"}},
			{Action: api.IntentionActionAllow, HTTP: &api.IntentionHTTPPermission{PathRegex: "^/v[0-9]+/", Methods: []string{"GET"}}},
			{Action: api.IntentionActionAllow, HTTP: &api.IntentionHTTPPermission{PathExact: "/login",
				Header: []api.IntentionHTTPHeaderPermission{{Name: "X-Tenant", Prefix: "acme"}}}},
		}},
		{SourceName: "*", Action: api.IntentionActionAllow},
	}, DefaultAllow)
	req := func(method, path string, h ...string) *http.Request {
		return intentionRequest(t, method, path, h...)
	}
	tests := []struct {
		caller string
		r      *http.Request
		want   bool
	}{
		{"batch", req("GET", "/v1/x"), false},
		{"batch", nil, false},
		{"web", req("GET", "/v1/items"), true},
		{"web", req("POST", "/v1/items"), false}, // no permission matches: denied
		{"web", req("GET", "/admin/v1/"), false},
		{"web", req("POST", "/login", "X-Tenant", "acme-corp"), true},
		{"web", req("POST", "/login", "X-Tenant", "other"), false},
		{"web", nil, false},                        // L7 intention on a TCP connection
		{"billing", req("GET", "/anything"), true}, // the wildcard
	}
	for _, tt := range tests {
		got, why := it.Allowed(callerID(tt.caller), tt.r)
		path := "(tcp)"
		if tt.r != nil {
			path = tt.r.Method + " " + tt.r.URL.Path
		}
		if got != tt.want {
			t.Errorf("%s %s: allowed=%v (%s), want %v", tt.caller, path, got, why, tt.want)
		}
	}
	none := evaluator(nil, DefaultDeny)
	if ok, _ := none.Allowed(callerID("web"), nil); ok {
		t.Error("default deny allowed a caller")
	}
	none.def.Store(&defaultState{policy: DefaultAllow})
	if ok, _ := none.Allowed(callerID("web"), nil); !ok {
		t.Error("default allow refused a caller")
	}
	if ok, _ := (&Intentions{}).Allowed(callerID("web"), nil); ok {
		t.Error("intentions not loaded yet must refuse")
	}
}

// TestIntentionDefaultUnknown: while meshlet has not learned Consul's default policy (NewIntentions starts so),
// a caller no intention names is denied, and the reason says why.
func TestIntentionDefaultUnknown(t *testing.T) {
	it := NewIntentions("api", discardLogger())
	rules := compile([]*api.Intention{{SourceName: "web", Action: api.IntentionActionAllow}}, discardLogger())
	it.rules.Store(&rules)
	if p, err := it.DefaultPolicy(); p != DefaultUnknown || err == nil {
		t.Fatalf("DefaultPolicy() = %q, %v before anything was read; want unknown with a reason", p, err)
	}
	if ok, why := it.Allowed(callerID("billing"), nil); ok || !strings.Contains(why, "default policy is unknown") {
		t.Errorf("a caller no intention names, default unknown: allowed=%v (%s), want denied", ok, why)
	}
	if ok, why := it.Allowed(callerID("web"), nil); !ok {
		t.Errorf("web, named by an allow intention: denied (%s)", why)
	}
}

// TestIntentionSourceIdentity: an intention names its source by service, namespace, partition and peer; each must
// be the caller's. A peer's service is never a local caller, and a source meshlet cannot check denies.
func TestIntentionSourceIdentity(t *testing.T) {
	allow := api.IntentionActionAllow
	deny := api.IntentionActionDeny
	withNS := func(ns, svc string) ID { id := callerID(svc); id.Namespace = ns; return id }
	withAP := func(ap, svc string) ID { id := callerID(svc); id.Partition = ap; return id }
	withNSAP := func(ap, ns, svc string) ID { id := withAP(ap, svc); id.Namespace = ns; return id }
	tests := []struct {
		name      string
		intention api.Intention
		caller    ID
		want      bool // with a default deny: true only if the intention matched and allowed
	}{
		{"same name, default namespace", api.Intention{SourceName: "web", Action: allow}, callerID("web"), true},
		{"explicit default namespace and partition", api.Intention{SourceName: "web", SourceNS: "default",
			SourcePartition: "default", Action: allow}, callerID("web"), true},
		{"caller in another namespace", api.Intention{SourceName: "web", Action: allow}, withNS("team", "web"), false},
		{"intention for another namespace", api.Intention{SourceName: "web", SourceNS: "team", Action: allow}, callerID("web"), false},
		{"namespace matches", api.Intention{SourceName: "web", SourceNS: "team", Action: allow}, withNS("team", "web"), true},
		{"wildcard namespace", api.Intention{SourceName: "web", SourceNS: "*", Action: allow}, withNS("team", "web"), true},
		{"wildcard name stays in its namespace", api.Intention{SourceName: "*", Action: allow}, withNS("team", "web"), false},
		{"caller in another partition", api.Intention{SourceName: "web", Action: allow}, withAP("eu", "web"), false},
		{"partition matches", api.Intention{SourceName: "web", SourcePartition: "eu", Action: allow}, withAP("eu", "web"), true},
		{"default/default/web, caller team-a/web", api.Intention{SourceName: "web", SourceNS: "default",
			SourcePartition: "default", Action: allow}, withNS("team-a", "web"), false},
		{"partition and namespace match", api.Intention{SourceName: "web", SourceNS: "team-a", SourcePartition: "eu",
			Action: allow}, withNSAP("eu", "team-a", "web"), true},
		{"namespace matches, partition does not", api.Intention{SourceName: "web", SourceNS: "team-a", SourcePartition: "eu",
			Action: allow}, withNS("team-a", "web"), false},
		{"partition matches, namespace does not", api.Intention{SourceName: "web", SourceNS: "team-a", SourcePartition: "eu",
			Action: allow}, withAP("eu", "web"), false},
		{"parsed caller with /ap/ and /ns/", api.Intention{SourceName: "web", SourceNS: "ops", SourcePartition: "team-a",
			Action: allow}, mustParseID(t, "spiffe://example.mesh/ap/team-a/ns/ops/dc/dc1/svc/web"), true},
		{"peer intention, local caller", api.Intention{SourceName: "web", SourcePeer: "other-cluster", Action: allow}, callerID("web"), false},
		{"wildcard of a peer, local caller", api.Intention{SourceName: "*", SourcePeer: "other-cluster", Action: allow}, callerID("web"), false},
		{"sameness group allow", api.Intention{SourceName: "web", SourceSamenessGroup: "g", Action: allow}, callerID("web"), false},
		{"foreign source type", api.Intention{SourceName: "web", SourceType: "external", Action: allow}, callerID("web"), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			it := evaluator([]*api.Intention{&tt.intention}, DefaultDeny)
			if got, why := it.Allowed(tt.caller, nil); got != tt.want {
				t.Errorf("%s: allowed=%v (%s), want %v", tt.caller, got, why, tt.want)
			}
		})
	}
	// A deny for a peer's web must not deny the local web (default allow), and a sameness-group deny denies.
	it := evaluator([]*api.Intention{{SourceName: "web", SourcePeer: "other-cluster", Action: deny}}, DefaultAllow)
	if ok, why := it.Allowed(callerID("web"), nil); !ok {
		t.Errorf("a deny for the peer's web denied the local web: %s", why)
	}
	it = evaluator([]*api.Intention{{SourceName: "web", SourceSamenessGroup: "g", Action: deny}}, DefaultAllow)
	if ok, _ := it.Allowed(callerID("web"), nil); ok {
		t.Error("a sameness-group deny let web through")
	}
}

// TestIntentionL7Readings: where a request can be read two ways, an allow matches only the strict reading and a
// deny matches any (paths with escapes or ;parameters, methods in lower case, headers spelled with _ for -
// (CVE-2024-10006), headers sent twice).
func TestIntentionL7Readings(t *testing.T) {
	allow, deny := api.IntentionActionAllow, api.IntentionActionDeny
	perm := func(a api.IntentionAction, h api.IntentionHTTPPermission) *api.IntentionPermission {
		return &api.IntentionPermission{Action: a, HTTP: &h}
	}
	hdr := func(hm api.IntentionHTTPHeaderPermission) []api.IntentionHTTPHeaderPermission {
		return []api.IntentionHTTPHeaderPermission{hm}
	}
	tests := []struct {
		name  string
		perms []*api.IntentionPermission // then an allow of everything else
		r     *http.Request
		want  bool
	}{
		{"deny on a path, escaped reserved byte", []*api.IntentionPermission{perm(deny, api.IntentionHTTPPermission{PathExact: "/a:b"})},
			intentionRequest(t, "GET", "/a%3Ab"), false},
		{"deny on a path, ;parameters", []*api.IntentionPermission{perm(deny, api.IntentionHTTPPermission{PathExact: "/admin"})},
			intentionRequest(t, "GET", "/admin;jsessionid=1"), false},
		{"deny on a prefix, ;parameters inside", []*api.IntentionPermission{perm(deny, api.IntentionHTTPPermission{PathPrefix: "/admin/"})},
			intentionRequest(t, "GET", "/admin;x/users"), false},
		{"deny does not over-match", []*api.IntentionPermission{perm(deny, api.IntentionHTTPPermission{PathPrefix: "/admin"})},
			intentionRequest(t, "GET", "/public;/admin"), true},
		{"allow reads the path as sent", []*api.IntentionPermission{perm(allow, api.IntentionHTTPPermission{PathExact: "/a%20b"}),
			perm(deny, api.IntentionHTTPPermission{PathPrefix: "/"})}, intentionRequest(t, "GET", "/a%20b"), true},
		{"allow needs the method's case", []*api.IntentionPermission{perm(allow, api.IntentionHTTPPermission{Methods: []string{"GET"}}),
			perm(deny, api.IntentionHTTPPermission{PathPrefix: "/"})}, intentionRequest(t, "get", "/x"), false},
		{"deny takes the method in any case", []*api.IntentionPermission{perm(deny, api.IntentionHTTPPermission{Methods: []string{"DELETE"}})},
			intentionRequest(t, "delete", "/x"), false},
		{"deny on a header, sent with an underscore", []*api.IntentionPermission{perm(deny, api.IntentionHTTPPermission{
			Header: hdr(api.IntentionHTTPHeaderPermission{Name: "X-User", Exact: "admin"})})},
			intentionRequest(t, "GET", "/x", "X_user", "admin"), false},
		{"deny on a header, underscore and dash", []*api.IntentionPermission{perm(deny, api.IntentionHTTPPermission{
			Header: hdr(api.IntentionHTTPHeaderPermission{Name: "X-User", Exact: "admin"})})},
			intentionRequest(t, "GET", "/x", "X-User", "alice", "X_user", "admin"), false},
		{"allow on a header, a look-alike sent too", []*api.IntentionPermission{perm(allow, api.IntentionHTTPPermission{
			Header: hdr(api.IntentionHTTPHeaderPermission{Name: "X-Tenant", Exact: "acme"})}),
			perm(deny, api.IntentionHTTPPermission{PathPrefix: "/"})},
			intentionRequest(t, "GET", "/x", "X-Tenant", "acme", "X_tenant", "evil"), false},
		{"allow on a header, the name in another case", []*api.IntentionPermission{perm(allow, api.IntentionHTTPPermission{
			Header: hdr(api.IntentionHTTPHeaderPermission{Name: "x-tenant", Exact: "acme"})}),
			perm(deny, api.IntentionHTTPPermission{PathPrefix: "/"})},
			intentionRequest(t, "GET", "/x", "X-Tenant", "acme"), true},
		{"allow on a header sent twice: values joined with a comma", []*api.IntentionPermission{perm(allow, api.IntentionHTTPPermission{
			Header: hdr(api.IntentionHTTPHeaderPermission{Name: "X-Tenant", Exact: "acme,beta"})}),
			perm(deny, api.IntentionHTTPPermission{PathPrefix: "/"})},
			intentionRequest(t, "GET", "/x", "X-Tenant", "acme", "X-Tenant", "beta"), true},
		{"allow on one value, the header sent twice", []*api.IntentionPermission{perm(allow, api.IntentionHTTPPermission{
			Header: hdr(api.IntentionHTTPHeaderPermission{Name: "X-Tenant", Exact: "acme"})}),
			perm(deny, api.IntentionHTTPPermission{PathPrefix: "/"})},
			intentionRequest(t, "GET", "/x", "X-Tenant", "acme", "X-Tenant", "evil"), false},
		{"deny on one value, the header sent twice", []*api.IntentionPermission{perm(deny, api.IntentionHTTPPermission{
			Header: hdr(api.IntentionHTTPHeaderPermission{Name: "X-User", Exact: "admin"})})},
			intentionRequest(t, "GET", "/x", "X-User", "alice", "X-User", "admin"), false},
		{"deny on an absent header (invert), a look-alike sent", []*api.IntentionPermission{perm(deny, api.IntentionHTTPPermission{
			Header: hdr(api.IntentionHTTPHeaderPermission{Name: "X-Auth", Present: true, Invert: true})})},
			intentionRequest(t, "GET", "/x", "X_auth", "1"), false},
		{"deny contains, ignore case", []*api.IntentionPermission{perm(deny, api.IntentionHTTPPermission{
			Header: hdr(api.IntentionHTTPHeaderPermission{Name: "X-Role", Contains: "ADMIN", IgnoreCase: true})})},
			intentionRequest(t, "GET", "/x", "X-Role", "super-admin"), false},
		{"header Host is the authority", []*api.IntentionPermission{perm(deny, api.IntentionHTTPPermission{
			Header: hdr(api.IntentionHTTPHeaderPermission{Name: "Host", Exact: "api"})})},
			intentionRequest(t, "GET", "/x"), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			perms := append(tt.perms, perm(allow, api.IntentionHTTPPermission{}))
			it := evaluator([]*api.Intention{{SourceName: "web", Permissions: perms}}, DefaultDeny)
			if got, why := it.Allowed(callerID("web"), tt.r); got != tt.want {
				t.Errorf("%s %s %v: allowed=%v (%s), want %v", tt.r.Method, tt.r.URL.EscapedPath(), tt.r.Header, got, why, tt.want)
			}
		})
	}
}

func mustParseID(t *testing.T, s string) ID {
	t.Helper()
	id, err := ParseID(s)
	if err != nil {
		t.Fatal(err)
	}
	return id
}
