package proxy

import "testing"

func TestRouteLookup(t *testing.T) {
	api, tcp := &cluster{name: "api", protocol: ProtocolHTTP}, &cluster{name: "db", protocol: ProtocolTCP}
	rt := newRouteTable(map[string]*upstreamEntry{"api": {cluster: api}, "db": {cluster: tcp}}, []string{"mesh", "svc.cluster.local"})
	for host, want := range map[string]*cluster{
		"api": api, "API": api, "api:80": api, "api.mesh": api, "api.mesh.": api, "api.mesh:8080": api,
		"api.svc.cluster.local": api, "db": nil, "db.mesh": nil, "other": nil, "api.other": nil, "": nil,
		"127.0.0.1:15001": nil, "[::1]:80": nil, "mesh": nil,
	} {
		if got := rt.lookup(host); got != want {
			t.Errorf("lookup(%q) = %v, want %v", host, got, want)
		}
	}
}
