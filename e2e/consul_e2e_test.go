package e2e_test

// End-to-end tests of Consul discovery and registration: a real Consul dev agent (discoverytest) and real meshlet
// processes. `make consul` builds the agent; without it these tests skip (fail with CI=true).

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"meshlet.dev/meshlet/appcheck"
	"meshlet.dev/meshlet/discovery/discoverytest"
	"meshlet.dev/meshlet/internal/meshlettest"
	"meshlet.dev/meshlet/proxy"
)

// consulApp is one instance of a service with its own meshlet that registers itself.
type consulApp struct {
	name, inbound string
	app           string
	m             *meshlettest.Proc
}

// startRegisteredApp starts an HTTP app answering "<name> <id>" and a meshlet for it with the config
// (register: true), changed by tweak (may be nil).
func startRegisteredApp(t *testing.T, consulAddr, name, id string, tweak func(*meshlettest.File)) *consulApp {
	t.Helper()
	app := meshlettest.StartBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Instance", id)
		fmt.Fprintf(w, "%s %s", name, id)
	}), false, nil)
	a := &consulApp{name: name, inbound: meshlettest.FreeAddr(t), app: meshlettest.HostOf(app)}
	admin := meshlettest.FreeAddr(t)
	f := registeredFile(name, a.app, a.inbound, admin, consulAddr)
	if tweak != nil {
		tweak(&f)
	}
	a.m = meshlettest.StartFile(t, f)
	return a
}

// registeredFile is the config of a meshlet that registers service name (HTTP, its app at app) in the Consul agent
// at consulAddr, with its inbound listener on inbound and its admin listener on admin.
func registeredFile(name, app, inbound, admin, consulAddr string) meshlettest.File {
	f := meshlettest.File{Discovery: meshlettest.Consul(consulAddr, "")}
	f.Service = proxy.ServiceConfig{Name: name, Address: app, Protocol: "http", Register: true}
	f.Inbound.Listen, f.Admin.Listen = inbound, admin
	return f
}

// startCaller starts the "web" meshlet: upstream api found in Consul by name. It returns the meshlet and
// the address the app calls for api.
func startCaller(t *testing.T, consulAddr string, upstreams ...string) (*meshlettest.Proc, map[string]string) {
	t.Helper()
	f := meshlettest.Sidecar("web", meshlettest.FreeAddr(t))
	f.Service.Address, f.Service.Protocol, f.Inbound.Listen = "127.0.0.1:8081", "http", meshlettest.FreeAddr(t)
	f.Discovery, f.Shutdown.DrainTimeout = meshlettest.Consul(consulAddr, ""), 0 // drain_delay only
	listens := map[string]string{}
	for _, u := range upstreams {
		listens[u] = meshlettest.FreeAddr(t)
		f.Upstreams = append(f.Upstreams, proxy.UpstreamConfig{Name: u, Listen: listens[u], Protocol: "http"}) // no endpoints: found in Consul
	}
	return meshlettest.StartFile(t, f), listens
}

// debugUpstream is the part of /debug/upstreams these tests read.
type debugUpstream struct {
	Name        string     `json:"name"`
	Stale       bool       `json:"stale"`
	LastContact *time.Time `json:"last_contact"`
	Endpoints   []struct {
		Address  string            `json:"address"`
		Identity string            `json:"identity"`
		Meta     map[string]string `json:"meta"`
	} `json:"endpoints"`
}

func upstreamState(t testing.TB, p *meshlettest.Proc, name string) debugUpstream {
	t.Helper()
	_, body := p.AdminGet(t, "/debug/upstreams")
	var ups []debugUpstream
	var wrapped struct {
		Upstreams []debugUpstream `json:"upstreams"`
	}
	if err := json.Unmarshal([]byte(body), &wrapped); err == nil {
		ups = wrapped.Upstreams
	} else if err := json.Unmarshal([]byte(body), &ups); err != nil {
		t.Fatalf("/debug/upstreams: %v: %s", err, body)
	}
	for _, u := range ups {
		if u.Name == name {
			return u
		}
	}
	t.Fatalf("/debug/upstreams has no %s: %s", name, body)
	return debugUpstream{}
}

// call GETs url and returns the status, the body and X-Meshlet-Error; status 0 and the error for a failed request.
func call(url string) (int, string, string) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, err.Error(), ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Header.Get("X-Meshlet-Error")
}

// TestConsulTwoSidecarsByName runs the two configs of the issue: api registers itself, web finds it by name and
// calls it through both sidecars.
func TestConsulTwoSidecarsByName(t *testing.T) {
	agent := discoverytest.StartConsul(t, discoverytest.Options{})
	api := startRegisteredApp(t, agent.HTTPAddr, "api", "a1", nil)
	web, listen := startCaller(t, agent.HTTPAddr, "api")
	url := "http://" + listen["api"] + "/hello"
	meshlettest.Eventually(t, 5*time.Second, "web finds api's sidecar", func() bool { return len(upstreamState(t, web, "api").Endpoints) == 1 })
	if code, body, _ := call(url); code != 200 || body != "api a1" {
		t.Fatalf("web → api: %d %q", code, body)
	}
	u := upstreamState(t, web, "api")
	if len(u.Endpoints) != 1 || u.Endpoints[0].Address != api.inbound {
		t.Fatalf("web's endpoints for api: %+v, want api's sidecar %s", u.Endpoints, api.inbound)
	}
	if id := u.Endpoints[0].Identity; !strings.HasPrefix(id, "spiffe://") || !strings.HasSuffix(id, "/ns/default/dc/dc1/svc/api") {
		t.Errorf("identity %q", id)
	}
	if u.Stale || u.LastContact == nil {
		t.Errorf("stale=%v last_contact=%v, want fresh", u.Stale, u.LastContact)
	}
	if n := api.m.MetricSum(t, "meshlet_requests_total", map[string]string{"direction": "inbound"}); n < 1 {
		t.Errorf("api's sidecar saw %v inbound requests, want the call to pass through it", n)
	}
	if v := api.m.MetricSum(t, "meshlet_discovery_registered", nil); v != 1 {
		t.Errorf("meshlet_discovery_registered = %v, want 1", v)
	}
	if v := web.MetricSum(t, "meshlet_discovery_endpoints", map[string]string{"service": "api"}); v != 1 {
		t.Errorf("meshlet_discovery_endpoints{service=api} = %v, want 1", v)
	}
}

// TestConsulDeregistrationReachesRouting: an instance that shuts down deregisters before its drain ends; the
// caller stops picking it within a second and no request to the instances that stay fails.
func TestConsulDeregistrationReachesRouting(t *testing.T) {
	agent := discoverytest.StartConsul(t, discoverytest.Options{})
	startRegisteredApp(t, agent.HTTPAddr, "api", "a1", nil)
	leaving := startRegisteredApp(t, agent.HTTPAddr, "api", "a2", func(f *meshlettest.File) {
		f.Shutdown.DrainDelay = meshlettest.Duration(3 * time.Second)
	})
	web, listen := startCaller(t, agent.HTTPAddr, "api")
	url := "http://" + listen["api"] + "/"
	meshlettest.Eventually(t, 5*time.Second, "web sees both instances", func() bool { return len(upstreamState(t, web, "api").Endpoints) == 2 })

	var ok, failed atomic.Int64
	var lastFailure atomic.Value
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() {
			for i := 0; i < 20000; i++ { // bounded; stopped long before
				select {
				case <-stop:
					return
				default:
				}
				if code, body, _ := call(url); code == 200 {
					ok.Add(1)
				} else {
					failed.Add(1)
					lastFailure.Store(fmt.Sprintf("%d %s", code, body))
				}
			}
		})
	}
	meshlettest.Eventually(t, 5*time.Second, "traffic flows", func() bool { return ok.Load() > 20 })

	start := time.Now()
	leaving.m.Cmd.Process.Signal(syscall.SIGTERM)
	meshlettest.Eventually(t, time.Second, "web drops the leaving instance within a second", func() bool {
		return len(upstreamState(t, web, "api").Endpoints) == 1
	})
	took := time.Since(start)
	t.Logf("deregistration reached web's routing %v after SIGTERM", took)
	before := ok.Load()
	meshlettest.Eventually(t, 5*time.Second, "traffic keeps flowing to the instance that stays", func() bool { return ok.Load() > before+50 })
	close(stop)
	wg.Wait()
	if n := failed.Load(); n != 0 {
		t.Errorf("%d requests failed (last: %v), want none", n, lastFailure.Load())
	}
	if code := leaving.m.Wait(t, 10*time.Second); code != 0 {
		t.Errorf("leaving meshlet exit code %d", code)
	}
}

// TestConsulAwayKeepsTraffic: Consul stops mid-traffic; the caller keeps the last endpoints, marks them stale,
// stays ready; Consul comes back (empty, as a dev agent does), the instance registers again and the watch
// resumes.
func TestConsulAwayKeepsTraffic(t *testing.T) {
	agent := discoverytest.StartConsul(t, discoverytest.Options{})
	startRegisteredApp(t, agent.HTTPAddr, "api", "a1", func(f *meshlettest.File) {
		f.Discovery.Consul.ResyncInterval = 300 * time.Millisecond
	})
	web, listen := startCaller(t, agent.HTTPAddr, "api")
	url := "http://" + listen["api"] + "/"
	meshlettest.Eventually(t, 5*time.Second, "web reaches api", func() bool { code, _, _ := call(url); return code == 200 })

	agent.Stop()
	meshlettest.Eventually(t, 5*time.Second, "web marks api stale", func() bool { return upstreamState(t, web, "api").Stale })
	for i := range 20 {
		if code, body, _ := call(url); code != 200 {
			t.Fatalf("call %d with Consul away: %d %s", i, code, body)
		}
	}
	if code, body := web.AdminGet(t, "/ready"); code != 200 {
		t.Errorf("/ready with stale endpoints: %d %s, want 200 (serving the last known endpoints)", code, body)
	}
	if v := web.MetricSum(t, "meshlet_discovery_stale", map[string]string{"service": "api"}); v != 1 {
		t.Errorf("meshlet_discovery_stale = %v, want 1", v)
	}
	if v := web.MetricSum(t, "meshlet_discovery_watch_errors_total", map[string]string{"service": "api"}); v < 1 {
		t.Errorf("meshlet_discovery_watch_errors_total{service=api} = %v, want > 0", v)
	}

	agent.Start()
	start := time.Now()
	meshlettest.Eventually(t, 15*time.Second, "watch resumes with api registered again", func() bool {
		u := upstreamState(t, web, "api")
		return !u.Stale && len(u.Endpoints) == 1
	})
	t.Logf("resumed %v after Consul came back", time.Since(start))
	if code, body, _ := call(url); code != 200 {
		t.Errorf("after resuming: %d %s", code, body)
	}
}

// TestConsulNoInstanceAnswers503 : an upstream whose service has no instance is ready at once and answers 503.
func TestConsulNoInstanceAnswers503(t *testing.T) {
	agent := discoverytest.StartConsul(t, discoverytest.Options{})
	start := time.Now()
	_, listen := startCaller(t, agent.HTTPAddr, "nothing")
	t.Logf("ready %v after start", time.Since(start))
	code, body, kind := call("http://" + listen["nothing"] + "/")
	if code != 503 || kind != "no_endpoint" {
		t.Errorf("got %d %q (%s), want 503 no_endpoint", code, body, kind)
	}
}

// TestConsulBadAddressAndToken: readiness says why, the log has a clear line, the token shows nowhere.
func TestConsulBadAddressAndToken(t *testing.T) {
	agent := discoverytest.StartConsul(t, discoverytest.Options{ACL: true})
	const badToken = "5f8e5a4e-0000-4000-8000-00000000b4d0"
	for _, tc := range []struct {
		name      string
		consul    meshlettest.Discovery
		want, log string
	}{
		{"bad address", meshlettest.Consul("127.0.0.1:1", ""), "consul agent unreachable", "consul query failed"},
		{"bad token", meshlettest.Consul(agent.HTTPAddr, badToken), "consul denied the request", "ACL not found"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			admin := meshlettest.FreeAddr(t)
			f := meshlettest.File{Discovery: tc.consul}
			f.Service.Name, f.Admin.Listen = "web", admin
			f.Upstreams = []proxy.UpstreamConfig{{Name: "api", Listen: meshlettest.FreeAddr(t)}}
			p := meshlettest.Launch(t, f.MustYAML(t))
			p.Admin = admin
			var body string
			meshlettest.Eventually(t, 5*time.Second, "/ready says why", func() bool {
				var code int
				code, body, _ = call("http://" + admin + "/ready")
				return code == 503 && strings.Contains(body, tc.want)
			})
			t.Logf("/ready: %s", strings.TrimSpace(body))
			meshlettest.Eventually(t, 5*time.Second, "log line", func() bool { return strings.Contains(p.Log(), tc.log) })
			_, cfg := p.AdminGet(t, "/debug/config")
			for where, s := range map[string]string{"/debug/config": cfg, "/ready": body, "the log": p.Log()} {
				if strings.Contains(s, badToken) {
					t.Errorf("%s shows the token", where)
				}
			}
			if tc.name == "bad token" && !strings.Contains(cfg, "redacted") {
				t.Errorf("/debug/config does not say the token is redacted: %s", cfg)
			}
		})
	}
}

// startCheckedApp is startRegisteredApp with the app's own HTTP health check (service.check) answering from healthy.
func startCheckedApp(t *testing.T, consulAddr, id string, healthy *atomic.Bool) *consulApp {
	t.Helper()
	app := meshlettest.StartBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/health" && !healthy.Load() {
			http.Error(w, "sick", http.StatusInternalServerError)
			return
		}
		fmt.Fprintf(w, "api %s", id)
	}), false, nil)
	a := &consulApp{name: "api", inbound: meshlettest.FreeAddr(t), app: meshlettest.HostOf(app)}
	admin := meshlettest.FreeAddr(t)
	f := registeredFile("api", a.app, a.inbound, admin, consulAddr)
	f.Service.Check = &appcheck.Check{HTTP: "http://" + a.app + "/health", Interval: time.Second}
	a.m = meshlettest.StartFile(t, f)
	return a
}

// TestConsulFailingCheckLeavesRouting: an app whose own health check fails leaves the callers' routing (the
// sidecar's alias check follows the app's check) within the check interval, and comes back when it passes.
func TestConsulFailingCheckLeavesRouting(t *testing.T) {
	agent := discoverytest.StartConsul(t, discoverytest.Options{})
	var ok1, ok2 atomic.Bool
	ok1.Store(true)
	ok2.Store(true)
	startCheckedApp(t, agent.HTTPAddr, "a1", &ok1)
	sick := startCheckedApp(t, agent.HTTPAddr, "a2", &ok2)
	web, _ := startCaller(t, agent.HTTPAddr, "api")
	meshlettest.Eventually(t, 5*time.Second, "both instances pass their checks", func() bool { return len(upstreamState(t, web, "api").Endpoints) == 2 })

	ok2.Store(false)
	start := time.Now()
	meshlettest.Eventually(t, 3*time.Second, "the failing instance leaves routing", func() bool {
		u := upstreamState(t, web, "api")
		return len(u.Endpoints) == 1 && u.Endpoints[0].Address != sick.inbound
	})
	t.Logf("a failing app check reached web's routing %v after the app started failing (check interval 1s)", time.Since(start))
	ok2.Store(true)
	meshlettest.Eventually(t, 3*time.Second, "it comes back", func() bool { return len(upstreamState(t, web, "api").Endpoints) == 2 })
}

// TestConsulACLFromEnvironmentAndTokenFile: an agent with ACLs on, its address from CONSUL_HTTP_ADDR and the
// token from a token_file (api) or CONSUL_HTTP_TOKEN (web); registration and discovery work, and the token shows
// in neither /debug/config nor the logs.
func TestConsulACLFromEnvironmentAndTokenFile(t *testing.T) {
	agent := discoverytest.StartConsul(t, discoverytest.Options{ACL: true})
	t.Setenv("CONSUL_HTTP_ADDR", agent.HTTPAddr) // inherited by the meshlet processes
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte(discoverytest.ManagementToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	api := startRegisteredApp(t, "", "api", "a1", func(f *meshlettest.File) { f.Discovery.Consul.TokenFile = tokenFile })
	t.Setenv("CONSUL_HTTP_TOKEN", discoverytest.ManagementToken)
	web, listen := startCaller(t, "", "api")
	meshlettest.Eventually(t, 5*time.Second, "web finds api's sidecar", func() bool { return len(upstreamState(t, web, "api").Endpoints) == 1 })
	if code, body, _ := call("http://" + listen["api"] + "/"); code != 200 || body != "api a1" {
		t.Fatalf("web → api: %d %q", code, body)
	}
	for _, p := range []*meshlettest.Proc{api.m, web} {
		_, cfg := p.AdminGet(t, "/debug/config")
		if strings.Contains(cfg, discoverytest.ManagementToken) || strings.Contains(p.Log(), discoverytest.ManagementToken) {
			t.Errorf("the token shows in /debug/config or the log of %s", p.CfgPath)
		}
	}
}
