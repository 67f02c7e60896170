package e2e_test

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"meshlet.dev/meshlet/discovery/discoverytest"
	"meshlet.dev/meshlet/internal/meshlettest"
	"meshlet.dev/meshlet/proxy"
)

// TestConsulUpstreamTagAndDatacenter: two upstreams of one service, narrowed by tag (and the agent's datacenter
// named explicitly), each reach only the instances with their tag; tag on an upstream with endpoints is an error.
func TestConsulUpstreamTagAndDatacenter(t *testing.T) {
	agent := discoverytest.StartConsul(t, discoverytest.Options{})
	for _, v := range []string{"v1", "v2"} {
		app := meshlettest.StartBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "api "+v) }), false, nil)
		admin := meshlettest.FreeAddr(t)
		f := registeredFile("api", meshlettest.HostOf(app), meshlettest.FreeAddr(t), admin, agent.HTTPAddr)
		f.Service.Tags = []string{v}
		meshlettest.StartFile(t, f)
	}
	admin, l1, l2 := meshlettest.FreeAddr(t), meshlettest.FreeAddr(t), meshlettest.FreeAddr(t)
	f := meshlettest.File{Discovery: meshlettest.Consul(agent.HTTPAddr, "")}
	f.Service.Name, f.Admin.Listen = "web", admin
	f.Upstreams = []proxy.UpstreamConfig{{Name: "api-v1", Service: "api", Tag: "v1", Listen: l1},
		{Name: "api-v2", Service: "api", Tag: "v2", Datacenter: "dc1", Listen: l2}}
	web := meshlettest.StartFile(t, f)
	for up, want := range map[string]string{l1: "api v1", l2: "api v2"} {
		meshlettest.Eventually(t, 5*time.Second, want+" found", func() bool {
			code, body, _ := call("http://" + up + "/")
			return code == 200 && body == want
		})
		for range 20 { // every call, not just one, reaches the tagged instance
			if code, body, _ := call("http://" + up + "/"); code != 200 || body != want {
				t.Fatalf("%s: %d %q, want %q", up, code, body, want)
			}
		}
	}
	if got := len(upstreamState(t, web, "api-v2").Endpoints); got != 1 {
		t.Errorf("api-v2 has %d endpoints, want 1", got)
	}

	out, code := meshlettest.Exec(t, "check", "-config", meshlettest.WriteTemp(t, "meshlet.yaml", `service: {name: web}
upstreams:
  - {name: api, listen: 127.0.0.1:0, endpoints: [127.0.0.1:1], tag: v1, datacenter: dc2}
`))
	if code != 1 || !strings.Contains(out, "upstreams[0].tag: only for discovered upstreams") ||
		!strings.Contains(out, "upstreams[0].datacenter: only for discovered upstreams") {
		t.Errorf("meshlet check: exit %d:\n%s", code, out)
	}
}
