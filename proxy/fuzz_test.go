package proxy

import (
	"strings"
	"testing"
)

// FuzzRouteLookup checks routing by Host/:authority: it never panics, matches only configured names (case and a
// trailing dot aside, with or without a port) and never routes a name that is no upstream.
func FuzzRouteLookup(f *testing.F) {
	for _, s := range []string{
		"api", "API", "api.", "api:80", "api.mesh", "API.Mesh.:8080", "[api]:1", "web.svc.mesh",
		"127.0.0.1:9001", "[::1]:9001", "::1", "victim.mesh", "api.mesh.evil", "evil/api", "", ":", "[", "]:",
		"api\x00", "api%2e", "http://api/", "api:", "api::", "xn--pi-9ja", "a" + strings.Repeat(".", 300),
	} {
		f.Add(s)
	}
	api, web := &cluster{}, &cluster{}
	rt := newRouteTable(map[string]*upstreamEntry{"api": {cluster: api}, "web": {cluster: web}}, []string{"mesh", "svc.Mesh"})
	names := map[string]*cluster{"api": api, "api.mesh": api, "api.svc.mesh": api, "web": web, "web.mesh": web, "web.svc.mesh": web}
	f.Fuzz(func(t *testing.T, host string) {
		got := rt.lookup(host)
		if got == nil {
			return
		}
		if got != api && got != web {
			t.Fatalf("lookup(%q) returned an upstream not in the table", host)
		}
		// A hit must be a configured name once the port and the trailing dot are gone and case is folded.
		name := host
		if i := strings.LastIndexByte(name, ':'); i >= 0 && !strings.HasPrefix(name, "[") {
			name = name[:i]
		} else if strings.HasPrefix(name, "[") {
			if j := strings.Index(name, "]"); j >= 0 {
				name = name[1:j]
			}
		}
		name = strings.TrimSuffix(strings.ToLower(name), ".")
		if names[name] != got {
			t.Fatalf("lookup(%q) routed to an upstream, but %q names none (or another)", host, name)
		}
	})
}
