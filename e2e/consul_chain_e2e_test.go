package e2e_test

// The discovery chain (issue 15): Consul's service-router, service-splitter and service-resolver drive the
// caller's meshlet as they drive Envoy, against a real agent: routes by path, header, query and method (with a
// prefix rewrite and header changes), a weighted split, subsets by filter, failover when every endpoint of the
// primary is unhealthy and back, a chain meshlet cannot honour reported and not applied, consistent hashing
// (ring_hash: a user stays on one instance; a joining instance takes about 1/N of the users), and a redirect set
// under traffic taking effect within a second with no failed request.

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"meshlet.dev/meshlet/discovery/discoverytest"
	"meshlet.dev/meshlet/internal/meshlettest"
)

// startChainApp starts an app of service name (instance id, service.meta version) behind a registering meshlet;
// it answers "<name> <id> <path> canary=<X-Canary>".
func startChainApp(t *testing.T, consulAddr, name, id, version string) *consulApp {
	t.Helper()
	app := meshlettest.StartBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Instance", id)
		fmt.Fprintf(w, "%s %s %s canary=%s", name, id, r.URL.RequestURI(), r.Header.Get("X-Canary"))
	}), false, nil)
	a := &consulApp{name: name, inbound: meshlettest.FreeAddr(t), app: meshlettest.HostOf(app)}
	f := registeredFile(name, a.app, a.inbound, meshlettest.FreeAddr(t), consulAddr)
	if version != "" {
		f.Service.Meta = map[string]string{"version": version}
	}
	a.m = meshlettest.StartFile(t, f)
	return a
}

func TestConsulDiscoveryChain(t *testing.T) {
	agent := discoverytest.StartConsul(t, discoverytest.Options{})
	client := agent.Client()
	entries := client.ConfigEntries()
	set := func(e api.ConfigEntry) {
		t.Helper()
		if ok, _, err := entries.Set(e, nil); err != nil || !ok {
			t.Fatalf("config entry %s/%s: %v", e.GetKind(), e.GetName(), err)
		}
	}
	for _, s := range []string{"api", "canary", "backup"} {
		set(&api.ServiceConfigEntry{Kind: api.ServiceDefaults, Name: s, Protocol: "http"})
	}
	v1 := startChainApp(t, agent.HTTPAddr, "api", "v1", "v1")
	startChainApp(t, agent.HTTPAddr, "api", "v2", "v2")
	startChainApp(t, agent.HTTPAddr, "canary", "c1", "")
	startChainApp(t, agent.HTTPAddr, "backup", "b1", "")
	web, listens := startCaller(t, agent.HTTPAddr, "api")
	base := "http://" + listens["api"]
	get := func(path string, h ...string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest("GET", base+path, nil)
		for i := 0; i+1 < len(h); i += 2 {
			req.Header.Set(h[i], h[i+1])
		}
		if len(h)%2 == 1 {
			req.Method = h[len(h)-1]
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	// who answers n calls of path, by the first two words ("api v1"); a failed call counts as "error <status>".
	who := func(n int, path string) map[string]int {
		t.Helper()
		out := map[string]int{}
		for range n {
			code, body := get(path)
			if f := strings.Fields(body); code == 200 && len(f) >= 2 {
				out[f[0]+" "+f[1]]++
			} else {
				out[fmt.Sprintf("error %d", code)]++
			}
		}
		return out
	}
	meshlettest.Eventually(t, 10*time.Second, "both api instances answer", func() bool {
		w := who(20, "/")
		return w["api v1"] > 0 && w["api v2"] > 0
	})

	// Subsets by filter; the default subset takes every call.
	set(&api.ServiceResolverConfigEntry{Kind: api.ServiceResolver, Name: "api", DefaultSubset: "v1",
		Subsets: map[string]api.ServiceResolverSubset{"v1": {Filter: "Service.Meta.version == v1"}, "v2": {Filter: "Service.Meta.version == v2"}}})
	meshlettest.Eventually(t, 5*time.Second, "the default subset v1 takes every call", func() bool { return who(20, "/")["api v1"] == 20 })

	// A weighted split, with a header on one branch: 90/10 over 2,000 calls.
	set(&api.ServiceSplitterConfigEntry{Kind: api.ServiceSplitter, Name: "api", Splits: []api.ServiceSplit{
		{Weight: 90, ServiceSubset: "v1"},
		{Weight: 10, ServiceSubset: "v2", RequestHeaders: &api.HTTPHeaderModifiers{Set: map[string]string{"X-Canary": "yes"}}}}})
	meshlettest.Eventually(t, 5*time.Second, "the split applies", func() bool { return who(50, "/")["api v2"] > 0 })
	n := 2000
	counts := map[string]int{}
	for range n {
		_, body := get("/split")
		switch {
		case strings.HasPrefix(body, "api v1 /split canary="+" ") || body == "api v1 /split canary=":
			counts["v1"]++
		case body == "api v2 /split canary=yes":
			counts["v2"]++
		default:
			t.Fatalf("unexpected answer %q", body)
		}
	}
	if share := 100 * float64(counts["v2"]) / float64(n); math.Abs(share-10) > 3 {
		t.Fatalf("the 10%% branch took %.1f%% of %d calls (%v)", share, n, counts)
	}

	// Routes, in order: path prefix and header → canary with a prefix rewrite; a query parameter → v2; a method
	// → backup; the rest → the split.
	set(&api.ServiceRouterConfigEntry{Kind: api.ServiceRouter, Name: "api", Routes: []api.ServiceRoute{
		{Match: &api.ServiceRouteMatch{HTTP: &api.ServiceRouteHTTPMatch{PathPrefix: "/admin",
			Header: []api.ServiceRouteHTTPMatchHeader{{Name: "x-debug", Exact: "1"}}}},
			Destination: &api.ServiceRouteDestination{Service: "canary", PrefixRewrite: "/internal",
				RequestHeaders: &api.HTTPHeaderModifiers{Set: map[string]string{"X-Canary": "routed"}}}},
		{Match: &api.ServiceRouteMatch{HTTP: &api.ServiceRouteHTTPMatch{QueryParam: []api.ServiceRouteHTTPMatchQueryParam{{Name: "v", Exact: "2"}}}},
			Destination: &api.ServiceRouteDestination{ServiceSubset: "v2"}},
		{Match: &api.ServiceRouteMatch{HTTP: &api.ServiceRouteHTTPMatch{Methods: []string{"DELETE"}}},
			Destination: &api.ServiceRouteDestination{Service: "backup"}},
	}})
	meshlettest.Eventually(t, 5*time.Second, "the router applies", func() bool {
		_, body := get("/admin/users", "X-Debug", "1")
		return body == "canary c1 /internal/users canary=routed"
	})
	// /debug/upstreams says what each route applies and where each setting comes from.
	if _, dbg := web.AdminGet(t, "/debug/upstreams?format=json"); !strings.Contains(dbg, `"settings"`) ||
		!strings.Contains(dbg, "attempts (upstream)") || !strings.Contains(dbg, "lb p2c (upstream)") {
		t.Errorf("/debug/upstreams lacks the chain's settings and their sources:\n%s", dbg)
	}
	for _, tc := range []struct {
		path string
		h    []string
		want string
	}{
		{"/admin/users", []string{"X-Debug", "2"}, "api v"}, // the header does not match: the split
		{"/x?v=2", nil, "api v2 /x?v=2 canary="},
		{"/x?v=3", nil, "api v"},
		{"/d", []string{"DELETE"}, "backup b1 /d canary="},
	} {
		if code, body := get(tc.path, tc.h...); code != 200 || !strings.HasPrefix(body, tc.want) {
			t.Errorf("%s %v: %d %q, want %q…", tc.path, tc.h, code, body, tc.want)
		}
	}
	if n := web.MetricSum(t, "meshlet_route_requests_total", map[string]string{"upstream": "api", "route": "0"}); n < 2 {
		t.Errorf("route 0 counted %v requests", n)
	}

	// Failover: when every endpoint of v1 is unhealthy, its calls go to backup, and come back when it recovers.
	entries.Delete(api.ServiceRouter, "api", nil)
	entries.Delete(api.ServiceSplitter, "api", nil)
	set(&api.ServiceResolverConfigEntry{Kind: api.ServiceResolver, Name: "api", DefaultSubset: "v1",
		Subsets:  map[string]api.ServiceResolverSubset{"v1": {Filter: "Service.Meta.version == v1"}, "v2": {Filter: "Service.Meta.version == v2"}},
		Failover: map[string]api.ServiceResolverFailover{"*": {Service: "backup"}}})
	meshlettest.Eventually(t, 5*time.Second, "back to v1 only", func() bool { return who(20, "/")["api v1"] == 20 })
	proxyID := v1ProxyID(t, client, v1)
	if err := client.Agent().EnableServiceMaintenance(proxyID, "test"); err != nil {
		t.Fatal(err)
	}
	meshlettest.Eventually(t, 5*time.Second, "failover to backup", func() bool { return who(20, "/")["backup b1"] == 20 })
	if err := client.Agent().DisableServiceMaintenance(proxyID); err != nil {
		t.Fatal(err)
	}
	meshlettest.Eventually(t, 5*time.Second, "back to v1 when it recovers", func() bool { return who(20, "/")["api v1"] == 20 })

	// A chain meshlet cannot honour (a hash cookie it would have to generate) is refused whole and reported; the
	// last one stays.
	set(&api.ServiceResolverConfigEntry{Kind: api.ServiceResolver, Name: "api", DefaultSubset: "v2",
		Subsets: map[string]api.ServiceResolverSubset{"v1": {Filter: "Service.Meta.version == v1"}, "v2": {Filter: "Service.Meta.version == v2"}},
		LoadBalancer: &api.LoadBalancer{Policy: "maglev", HashPolicies: []api.HashPolicy{{Field: "cookie", FieldValue: "s",
			CookieConfig: &api.CookieConfig{TTL: 10 * time.Second}}}}})
	meshlettest.Eventually(t, 5*time.Second, "the refusal is counted", func() bool {
		return web.MetricSum(t, "meshlet_discovery_chain_refused", map[string]string{"upstream": "api"}) == 1
	})
	if w := who(20, "/"); w["api v1"] != 20 {
		t.Fatalf("a refused chain was applied in part: %v", w)
	}
	_, body := web.AdminGet(t, "/debug/upstreams?format=json")
	if !strings.Contains(body, `"applied": false`) || !strings.Contains(body, `"resolver v2.api.default.default.dc1: a hash cookie meshlet would have to generate`) {
		t.Errorf("/debug/upstreams does not say why the chain is refused:\n%s", body)
	}

	// Consistent hashing: a user's calls stay on one instance while the set is stable; when a third instance
	// joins, about a third of the users move, each to the new one.
	set(&api.ServiceResolverConfigEntry{Kind: api.ServiceResolver, Name: "api",
		LoadBalancer: &api.LoadBalancer{Policy: "ring_hash", HashPolicies: []api.HashPolicy{{Field: "header", FieldValue: "x-user"}}}})
	home := func() map[string]string {
		t.Helper()
		out := map[string]string{}
		for u := range 60 {
			user := fmt.Sprint("user-", u)
			for range 3 {
				_, body := get("/", "X-User", user)
				f := strings.Fields(body)
				if len(f) < 2 || out[user] != "" && out[user] != f[1] {
					t.Fatalf("%s answered by %q after %q", user, body, out[user])
				}
				out[user] = f[1]
			}
		}
		return out
	}
	meshlettest.Eventually(t, 5*time.Second, "ring_hash applies", func() bool {
		return web.MetricSum(t, "meshlet_discovery_chain_refused", map[string]string{"upstream": "api"}) == 0 &&
			strings.Contains(func() string { _, b := web.AdminGet(t, "/debug/upstreams?format=json"); return b }(), "ring_hash")
	})
	before := home()
	startChainApp(t, agent.HTTPAddr, "api", "v3", "v3")
	meshlettest.Eventually(t, 30*time.Second, "Consul has three healthy api sidecars", func() bool {
		entries, _, err := client.Health().Connect("api", "", true, nil)
		return err == nil && len(entries) == 3
	})
	meshlettest.Eventually(t, 10*time.Second, "the third instance takes users", func() bool {
		n := 0
		for u := range 60 {
			if _, body := get("/", "X-User", fmt.Sprint("user-", u)); strings.HasPrefix(body, "api v3") {
				n++
			}
		}
		return n > 0
	})
	after := home()
	moved := 0
	for u, was := range before {
		if after[u] != was {
			moved++
			if after[u] != "v3" {
				t.Errorf("%s moved from %s to %s, not to the new instance", u, was, after[u])
			}
		}
	}
	if moved < 6 || moved > 36 {
		t.Errorf("%d of 60 users moved when a third instance joined, want about 20", moved)
	}
	t.Logf("ring_hash: %d of 60 users moved when a third instance joined, each to it", moved)

	// A redirect, set while calls flow: it takes effect within a second, and no call fails.
	set(&api.ServiceResolverConfigEntry{Kind: api.ServiceResolver, Name: "api", DefaultSubset: "v1",
		Subsets: map[string]api.ServiceResolverSubset{"v1": {Filter: "Service.Meta.version == v1"}}})
	meshlettest.Eventually(t, 5*time.Second, "the refusal ends", func() bool {
		return web.MetricSum(t, "meshlet_discovery_chain_refused", map[string]string{"upstream": "api"}) == 0
	})
	var failed, calls atomic.Int64
	var seenCanary atomic.Int64 // unix nanos of the first answer from the redirect's target
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for i := 0; i < 2000; i++ {
				select {
				case <-stop:
					return
				default:
				}
				code, body := get("/flow")
				calls.Add(1)
				if code != 200 {
					failed.Add(1)
					t.Errorf("a call failed during the change: %d %q", code, body)
				}
				if strings.HasPrefix(body, "canary") {
					seenCanary.CompareAndSwap(0, time.Now().UnixNano())
				}
			}
		})
	}
	time.Sleep(300 * time.Millisecond)
	changed := time.Now()
	set(&api.ServiceResolverConfigEntry{Kind: api.ServiceResolver, Name: "api", Redirect: &api.ServiceResolverRedirect{Service: "canary"}})
	meshlettest.Eventually(t, 5*time.Second, "the redirect applies", func() bool { return seenCanary.Load() != 0 })
	took := time.Duration(seenCanary.Load() - changed.UnixNano())
	time.Sleep(300 * time.Millisecond)
	close(stop)
	wg.Wait()
	if failed.Load() != 0 {
		t.Fatalf("%d of %d calls failed while the chain changed", failed.Load(), calls.Load())
	}
	if took > time.Second {
		t.Errorf("the redirect took %v to apply, want under a second", took)
	}
	t.Logf("redirect applied %v after the config entry was written; %d calls, none failed", took.Round(time.Millisecond), calls.Load())
	if w := who(20, "/"); w["canary c1"] != 20 {
		t.Fatalf("after the redirect: %v", w)
	}
}

// v1ProxyID is the ID of the sidecar proxy registration of app a (its meshlet registers "<service id>-sidecar-proxy").
func v1ProxyID(t *testing.T, c *api.Client, a *consulApp) string {
	t.Helper()
	svcs, err := c.Agent().Services()
	if err != nil {
		t.Fatal(err)
	}
	for id, s := range svcs {
		if s.Kind == api.ServiceKindConnectProxy && s.Proxy != nil && s.Meta != nil && s.Port == portOf(t, a.inbound) {
			return id
		}
	}
	b, _ := json.Marshal(svcs)
	t.Fatalf("no sidecar registration with port %s: %s", a.inbound, b)
	return ""
}
