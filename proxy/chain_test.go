package proxy

import (
	"math"
	"net/http"
	"net/http/httptest"
	"testing"

	"meshlet.dev/meshlet/discovery"
)

// TestRouteMatch: every kind of match of Consul's service-router, as Envoy reads it.
func TestRouteMatch(t *testing.T) {
	req := func(method, target string, h ...string) *http.Request {
		r := httptest.NewRequest(method, target, nil)
		for i := 0; i+1 < len(h); i += 2 {
			r.Header.Add(h[i], h[i+1])
		}
		return r
	}
	for _, tc := range []struct {
		name string
		m    discovery.RouteMatch
		r    *http.Request
		want bool
	}{
		{"exact", discovery.RouteMatch{PathExact: "/a"}, req("GET", "/a"), true},
		{"exact, query ignored", discovery.RouteMatch{PathExact: "/a"}, req("GET", "/a?x=1"), true},
		{"exact, longer path", discovery.RouteMatch{PathExact: "/a"}, req("GET", "/a/b"), false},
		{"exact is case-sensitive", discovery.RouteMatch{PathExact: "/a"}, req("GET", "/A"), false},
		{"exact, case-insensitive", discovery.RouteMatch{PathExact: "/a", CaseInsensitive: true}, req("GET", "/A"), true},
		{"prefix", discovery.RouteMatch{PathPrefix: "/admin"}, req("GET", "/admin/users"), true},
		{"prefix is a string prefix, as Envoy's", discovery.RouteMatch{PathPrefix: "/admin"}, req("GET", "/administrator"), true},
		{"prefix, other path", discovery.RouteMatch{PathPrefix: "/admin"}, req("GET", "/api"), false},
		{"prefix matches the path as sent (escaped)", discovery.RouteMatch{PathPrefix: "/admin"}, req("GET", "/%61dmin"), false},
		{"regex is a full match", discovery.RouteMatch{PathRegex: "/v[0-9]+"}, req("GET", "/v12"), true},
		{"regex, not the whole path", discovery.RouteMatch{PathRegex: "/v[0-9]+"}, req("GET", "/v12/x"), false},
		{"header present", discovery.RouteMatch{Headers: []discovery.HeaderMatch{{Name: "x-debug", Present: true}}}, req("GET", "/", "X-Debug", ""), true},
		{"header absent", discovery.RouteMatch{Headers: []discovery.HeaderMatch{{Name: "x-debug", Present: true}}}, req("GET", "/"), false},
		{"header exact", discovery.RouteMatch{Headers: []discovery.HeaderMatch{{Name: "x-v", Exact: "2"}}}, req("GET", "/", "X-V", "2"), true},
		{"header exact, other", discovery.RouteMatch{Headers: []discovery.HeaderMatch{{Name: "x-v", Exact: "2"}}}, req("GET", "/", "X-V", "20"), false},
		{"header values joined", discovery.RouteMatch{Headers: []discovery.HeaderMatch{{Name: "x-v", Exact: "1,2"}}}, req("GET", "/", "X-V", "1", "X-V", "2"), true},
		{"header prefix", discovery.RouteMatch{Headers: []discovery.HeaderMatch{{Name: "x-user", Prefix: "adm"}}}, req("GET", "/", "X-User", "admin"), true},
		{"header suffix", discovery.RouteMatch{Headers: []discovery.HeaderMatch{{Name: "x-user", Suffix: "min"}}}, req("GET", "/", "X-User", "admin"), true},
		{"header regex", discovery.RouteMatch{Headers: []discovery.HeaderMatch{{Name: "x-user", Regex: "a.*n"}}}, req("GET", "/", "X-User", "admin"), true},
		{"header regex is a full match", discovery.RouteMatch{Headers: []discovery.HeaderMatch{{Name: "x-user", Regex: "adm"}}}, req("GET", "/", "X-User", "admin"), false},
		{"header inverted", discovery.RouteMatch{Headers: []discovery.HeaderMatch{{Name: "x-v", Exact: "2", Invert: true}}}, req("GET", "/", "X-V", "3"), true},
		{"header inverted, absent", discovery.RouteMatch{Headers: []discovery.HeaderMatch{{Name: "x-v", Exact: "2", Invert: true}}}, req("GET", "/"), true},
		{"header inverted, equal", discovery.RouteMatch{Headers: []discovery.HeaderMatch{{Name: "x-v", Exact: "2", Invert: true}}}, req("GET", "/", "X-V", "2"), false},
		{"host header", discovery.RouteMatch{Headers: []discovery.HeaderMatch{{Name: "host", Exact: "api.example"}}}, req("GET", "http://api.example/"), true},
		{"query present", discovery.RouteMatch{Query: []discovery.QueryMatch{{Name: "debug", Present: true}}}, req("GET", "/?debug"), true},
		{"query exact", discovery.RouteMatch{Query: []discovery.QueryMatch{{Name: "v", Exact: "2"}}}, req("GET", "/?v=2&v=3"), true},
		{"query exact, first value only", discovery.RouteMatch{Query: []discovery.QueryMatch{{Name: "v", Exact: "3"}}}, req("GET", "/?v=2&v=3"), false},
		{"query regex", discovery.RouteMatch{Query: []discovery.QueryMatch{{Name: "v", Regex: "[0-9]"}}}, req("GET", "/?v=7"), true},
		{"query absent", discovery.RouteMatch{Query: []discovery.QueryMatch{{Name: "v", Exact: "2"}}}, req("GET", "/"), false},
		{"query two parsers read differently", discovery.RouteMatch{Query: []discovery.QueryMatch{{Name: "v", Present: true}}}, req("GET", "/?v=1;w=2"), false},
		{"methods", discovery.RouteMatch{Methods: []string{"POST", "PUT"}}, req("PUT", "/"), true},
		{"methods, other", discovery.RouteMatch{Methods: []string{"POST", "PUT"}}, req("GET", "/"), false},
		{"all parts must match", discovery.RouteMatch{PathPrefix: "/a", Methods: []string{"GET"},
			Headers: []discovery.HeaderMatch{{Name: "x", Present: true}}}, req("GET", "/a"), false},
	} {
		m, err := compileMatch(&tc.m)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if got := m.matches(tc.r); got != tc.want {
			t.Errorf("%s: matches(%s %s) = %v, want %v", tc.name, tc.r.Method, tc.r.URL, got, tc.want)
		}
	}
	if _, err := compileMatch(&discovery.RouteMatch{PathRegex: "(["}); err == nil {
		t.Error("a bad regex compiled")
	}
}

// TestRewritePath: PrefixRewrite replaces the matched prefix, as Envoy's prefix_rewrite.
func TestRewritePath(t *testing.T) {
	for _, tc := range []struct{ prefix, rewrite, in, want string }{
		{"/admin", "/", "/admin/users", "/users"},
		{"/admin", "/", "/admin", "/"},
		{"/admin/", "/v2/", "/admin/x", "/v2/x"},
		{"/", "/v2/", "/x", "/v2/x"},
		{"/old", "/new", "/old/x", "/new/x"},
		{"/a", "/b", "/c", "/c"},
	} {
		rt := &planRoute{prefix: tc.prefix, rewrite: tc.rewrite}
		if got := rt.rewritePath(tc.in); got != tc.want {
			t.Errorf("rewrite %s→%s of %s = %s, want %s", tc.prefix, tc.rewrite, tc.in, got, tc.want)
		}
	}
}

// TestSplitWeights: 10,000 picks of a 90/10 split land within ±1.5 points of the weights.
func TestSplitWeights(t *testing.T) {
	a, b := &planSplit{}, &planSplit{}
	pl := &plan{routes: []*planRoute{{splits: []*planSplit{a, b}, cum: []float64{90, 100}}}}
	r := httptest.NewRequest("GET", "/", nil)
	n := map[*planSplit]int{}
	for range 10000 {
		_, s := pl.pick(r)
		n[s]++
	}
	if share := float64(n[b]) / 100; math.Abs(share-10) > 1.5 {
		t.Fatalf("the 10%% split got %.2f%% of 10,000 requests", share)
	}
}
