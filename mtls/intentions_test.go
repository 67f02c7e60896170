package mtls

import (
	"net/http"
	"testing"

	"github.com/hashicorp/consul/api"
)

func TestIntentionEvaluation(t *testing.T) {
	rules := compile([]*api.Intention{
		{SourceName: "batch", Action: api.IntentionActionDeny},
		{SourceName: "web", Permissions: []*api.IntentionPermission{
			{Action: api.IntentionActionDeny, HTTP: &api.IntentionHTTPPermission{PathPrefix: "/admin"}},
			{Action: api.IntentionActionAllow, HTTP: &api.IntentionHTTPPermission{PathRegex: "^/v[0-9]+/", Methods: []string{"GET"}}},
			{Action: api.IntentionActionAllow, HTTP: &api.IntentionHTTPPermission{PathExact: "/login",
				Header: []api.IntentionHTTPHeaderPermission{{Name: "X-Tenant", Prefix: "acme"}}}},
		}},
		{SourceName: "*", Action: api.IntentionActionAllow},
	}, discardLogger())
	it := &Intentions{service: "api"}
	it.rules.Store(&rules)
	id := func(s string) ID { return ServiceID("example.mesh", "", "", s) }
	req := func(method, path string, h ...string) *http.Request {
		r, _ := http.NewRequest(method, "http://api"+path, nil)
		for i := 0; i+1 < len(h); i += 2 {
			r.Header.Set(h[i], h[i+1])
		}
		return r
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
		got, why := it.Allowed(id(tt.caller), tt.r)
		path := "(tcp)"
		if tt.r != nil {
			path = tt.r.Method + " " + tt.r.URL.Path
		}
		if got != tt.want {
			t.Errorf("%s %s: allowed=%v (%s), want %v", tt.caller, path, got, why, tt.want)
		}
	}
	none := &Intentions{service: "api"}
	empty := []intention{}
	none.rules.Store(&empty)
	none.defaultAllow.Store(false)
	if ok, _ := none.Allowed(id("web"), nil); ok {
		t.Error("default deny allowed a caller")
	}
	none.defaultAllow.Store(true)
	if ok, _ := none.Allowed(id("web"), nil); !ok {
		t.Error("default allow refused a caller")
	}
	if ok, _ := (&Intentions{}).Allowed(id("web"), nil); ok {
		t.Error("intentions not loaded yet must refuse")
	}
}
