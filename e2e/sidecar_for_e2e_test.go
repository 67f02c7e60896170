package e2e_test

// meshlet run -sidecar-for (issue 15): a meshlet with no YAML of its own takes its service, inbound listener and
// upstreams from a Consul service definition's connect { sidecar_service { ... } }, and follows changes to it;
// a meshlet that registers itself writes its upstreams and mode into its proxy registration.

import (
	"context"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"meshlet.dev/meshlet/discovery/discoverytest"
	"meshlet.dev/meshlet/internal/meshlettest"
	"meshlet.dev/meshlet/proxy"
)

// startSidecarFor starts `meshlet run -sidecar-for id` with no config file, the agent in CONSUL_HTTP_ADDR and the
// admin listener on admin (MESHLET_ADMIN_LISTEN), without waiting for anything.
func startSidecarFor(t *testing.T, consulAddr, id, admin string) *meshlettest.Proc {
	t.Helper()
	cmd := exec.Command(meshlettest.Bin(), "run", "-sidecar-for", id)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "MESHLET_") && !strings.HasPrefix(kv, "CONSUL_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, "CONSUL_HTTP_ADDR="+consulAddr, "MESHLET_ADMIN_LISTEN="+admin)
	p := meshlettest.Command(t, "", cmd)
	p.Admin = admin
	grpcFailOnRace(t, id, p)
	return p
}

// startGRPCSidecar starts a gRPC app serving grpc.health.v1 and its meshlet registered as service name, with
// service.protocol grpc and certificates from Consul's CA.
func startGRPCSidecar(t *testing.T, consulAddr, name string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	healthpb.RegisterHealthServer(gs, health.NewServer())
	go gs.Serve(ln)
	t.Cleanup(gs.Stop)
	f := consulTLSFile(t, name, consulAddr, "")
	f.Service.Address, f.Service.Protocol, f.Service.Register, f.Inbound.Listen = ln.Addr().String(), "grpc", true, meshlettest.FreeAddr(t)
	grpcFailOnRace(t, name, meshlettest.StartFile(t, f))
}

// startHTTPSidecar starts an HTTP app answering body and its meshlet registered as service name.
func startHTTPSidecar(t *testing.T, consulAddr, name, body string) {
	t.Helper()
	app := meshlettest.StartBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte(body))
	}), false, nil)
	consulAPISidecarNamed(t, consulAddr, name, meshlettest.HostOf(app))
}

// consulAPISidecarNamed is consulAPISidecar for a service of another name.
func consulAPISidecarNamed(t *testing.T, consulAddr, name, app string) {
	t.Helper()
	f := consulTLSFile(t, name, consulAddr, "")
	f.Service.Address, f.Service.Protocol, f.Service.Register, f.Inbound.Listen = app, "http", true, meshlettest.FreeAddr(t)
	grpcFailOnRace(t, name, meshlettest.StartFile(t, f))
}

// portOfAddr is the port of host:port.
func portOfAddr(t *testing.T, addr string) int {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	n, _ := strconv.Atoi(p)
	return n
}

// registerWeb registers service web-1 (web, at app) with a sidecar_service on inbound with expose and upstreams ups,
// and an HTTP check of its meshlet's /ready at admin (as the README advises) in place of Consul's default TCP check.
func registerWeb(t *testing.T, client *api.Client, app, inbound, admin string, expose api.ExposeConfig, ups ...api.Upstream) {
	t.Helper()
	reg := &api.AgentServiceRegistration{ID: "web-1", Name: "web", Address: "127.0.0.1", Port: portOfAddr(t, app),
		Connect: &api.AgentServiceConnect{SidecarService: &api.AgentServiceRegistration{Port: portOfAddr(t, inbound),
			Check: &api.AgentServiceCheck{HTTP: "http://" + admin + "/ready", Interval: "1s"},
			Proxy: &api.AgentServiceConnectProxyConfig{Upstreams: ups, Expose: expose}}}}
	if err := client.Agent().ServiceRegister(reg); err != nil {
		t.Fatal(err)
	}
}

// grpcHealth calls grpc.health.v1 Check at addr (plaintext h2c, as an app calls its sidecar).
func grpcHealth(addr string) error {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	if err == nil && resp.Status != healthpb.HealthCheckResponse_SERVING {
		return &net.AddrError{Err: "status " + resp.Status.String(), Addr: addr}
	}
	return err
}

// TestSidecarForRegistration: web's service definition (connect { sidecar_service { proxy { upstreams } } }) names
// api (http), pinger (grpc, in Config protocol) and a prepared query; meshlet runs with only -sidecar-for web-1:
// calls to the upstreams' bind ports reach api and pinger through their own meshlets over mutual TLS, the prepared
// query is refused with a warning, web's own inbound listener (the sidecar's port) serves web's app, and the expose
// path /healthz reaches web's app in plaintext (that path only). Then the
// registration changes (pinger removed, billing added): meshlet follows within seconds without a restart, and a
// connection open to api's bind port stays open and keeps working.
func TestSidecarForRegistration(t *testing.T) {
	agent := discoverytest.StartConsul(t, discoverytest.Options{})
	client := agent.Client()
	startHTTPSidecar(t, agent.HTTPAddr, "api", "from api")
	startGRPCSidecar(t, agent.HTTPAddr, "pinger")
	startHTTPSidecar(t, agent.HTTPAddr, "billing", "from billing")

	var webPaths sync.Map
	webApp := meshlettest.StartBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		webPaths.Store(r.URL.Path, true)
		w.Write([]byte("from web"))
	}), false, nil)
	binds := meshlettest.FreeAddrs(t, 5)
	apiBind, pingerBind, billingBind, inbound, exposed := binds[0], binds[1], binds[2], binds[3], binds[4]
	expose := api.ExposeConfig{Paths: []api.ExposePath{{ListenerPort: portOfAddr(t, exposed), Path: "/healthz",
		LocalPathPort: portOfAddr(t, meshlettest.HostOf(webApp))}}}
	upstream := func(name, bind string, cfg map[string]any) api.Upstream {
		return api.Upstream{DestinationName: name, LocalBindAddress: "127.0.0.1", LocalBindPort: portOfAddr(t, bind), Config: cfg}
	}
	apiUp := upstream("api", apiBind, map[string]any{"protocol": "http", "connect_timeout_ms": 2000})
	admin := meshlettest.FreeAddr(t)
	registerWeb(t, client, meshlettest.HostOf(webApp), inbound, admin, expose, apiUp,
		upstream("pinger", pingerBind, map[string]any{"protocol": "grpc"}),
		api.Upstream{DestinationType: api.UpstreamDestTypePreparedQuery, DestinationName: "nearest-db", LocalBindPort: 19999})

	p := startSidecarFor(t, agent.HTTPAddr, "web-1", admin)
	if err := p.WaitReady(context.Background(), 20*time.Second); err != nil {
		t.Fatalf("meshlet -sidecar-for web-1 not ready: %v", err)
	}
	log := p.Log()
	for _, want := range []string{`"found":"connect-proxy web-1-sidecar-proxy, the sidecar of service web-1"`,
		"destination_type prepared_query is not supported"} {
		if !strings.Contains(log, want) {
			t.Errorf("log lacks %q", want)
		}
	}

	// (The upstreams' sidecars registered a moment ago: their checks may pass a moment after meshlet's first answer.)
	meshlettest.Eventually(t, 10*time.Second, "api reachable at its bind port", func() bool {
		code, body, _ := call("http://" + apiBind + "/")
		return code == 200 && body == "from api"
	})
	var err error
	meshlettest.Eventually(t, 10*time.Second, "pinger (grpc) reachable at its bind port", func() bool {
		err = grpcHealth(pingerBind)
		return err == nil
	})
	var dials atomic.Int64
	c := meshlettest.H1Client(&dials)
	if code, body := meshlettest.GetBody(t, c, "http://"+apiBind+"/"); code != 200 || body != "from api" {
		t.Fatalf("api through its bind port: %d %q", code, body)
	}
	if _, err := net.DialTimeout("tcp", "127.0.0.1:19999", time.Second); err == nil {
		t.Errorf("the prepared query upstream's port 19999 accepts connections")
	}
	// The inbound listener is the sidecar's registered port; callers' meshlets find it in Consul and call it over
	// mutual TLS.
	webCaller := meshlettest.FreeAddr(t)
	f := consulTLSFile(t, "batch2", agent.HTTPAddr, "", proxy.UpstreamConfig{Name: "web", Listen: webCaller, Protocol: "http"})
	meshlettest.StartFile(t, f)
	meshlettest.Eventually(t, 10*time.Second, "web reachable through its -sidecar-for meshlet's inbound listener", func() bool {
		code, body, _ := call("http://" + webCaller + "/")
		return code == 200 && body == "from web"
	})

	// The expose path reaches web's app in plaintext, that path only (as a kubelet probe would).
	if code, body, _ := call("http://127.0.0.1:" + strconv.Itoa(portOfAddr(t, exposed)) + "/healthz"); code != 200 || body != "from web" {
		t.Errorf("expose path /healthz: %d %q", code, body)
	}
	if code, _, _ := call("http://127.0.0.1:" + strconv.Itoa(portOfAddr(t, exposed)) + "/private"); code != 404 {
		t.Errorf("another path on the expose listener: %d, want 404", code)
	}
	if _, ok := webPaths.Load("/private"); ok {
		t.Errorf("a path that is not exposed reached the app")
	}

	// The registration changes: pinger removed, billing added; api stays (its connection too).
	registerWeb(t, client, meshlettest.HostOf(webApp), inbound, admin, expose, apiUp, upstream("billing", billingBind, map[string]any{"protocol": "http"}))
	start := time.Now()
	meshlettest.Eventually(t, 10*time.Second, "billing reachable at its bind port", func() bool {
		code, body, _ := call("http://" + billingBind + "/")
		return code == 200 && body == "from billing"
	})
	meshlettest.Eventually(t, 10*time.Second, "pinger's bind port closed", func() bool {
		conn, err := net.DialTimeout("tcp", pingerBind, time.Second)
		if err == nil {
			conn.Close()
		}
		return err != nil
	})
	t.Logf("registration change applied in %v", time.Since(start).Round(time.Millisecond))
	if code, body := meshlettest.GetBody(t, c, "http://"+apiBind+"/"); code != 200 || body != "from api" {
		t.Fatalf("api after the change: %d %q", code, body)
	}
	if n := dials.Load(); n != 1 {
		t.Errorf("the client dialed api's bind port %d times: its connection did not survive the change", n)
	}
	if !p.Alive() {
		t.Fatal("meshlet exited")
	}
}

// proxyRegistration returns the agent's connect-proxy registration of service name (merged with central config).
func proxyRegistration(t *testing.T, client *api.Client, name string) *api.AgentService {
	t.Helper()
	proxies, err := client.Agent().ServicesWithFilter(`Kind == "connect-proxy" and Proxy.DestinationServiceName == "` + name + `"`)
	if err != nil || len(proxies) != 1 {
		t.Fatalf("connect-proxies of %s: %v (%d)", name, err, len(proxies))
	}
	for id := range proxies {
		svc, _, err := client.Agent().Service(id, &api.QueryOptions{MergeCentralConfig: true})
		if err != nil {
			t.Fatal(err)
		}
		return svc
	}
	return nil
}

// TestSidecarRegistersUpstreams: a meshlet with service.register writes its upstreams (destination, datacenter,
// bound local address and port) into its proxy registration, each destination once, and Mode transparent with
// the outbound listener's port when outbound.transparent is on, as Consul's UI and topology views read them.
func TestSidecarRegistersUpstreams(t *testing.T) {
	agent := discoverytest.StartConsul(t, discoverytest.Options{})
	client := agent.Client()
	app := meshlettest.StartBackend(t, http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}), false, nil)
	binds := meshlettest.FreeAddrs(t, 3)

	t.Run("direct", func(t *testing.T) {
		f := consulTLSFile(t, "shop", agent.HTTPAddr, "",
			proxy.UpstreamConfig{Name: "api", Listen: binds[0]},
			proxy.UpstreamConfig{Name: "api-v2", Service: "api", Tag: "v2", Listen: binds[1]}, // api again: listed once
			proxy.UpstreamConfig{Name: "ledger", Datacenter: "dc1", Listen: "127.0.0.1:0"},    // (an unknown dc would hold registration up)
			proxy.UpstreamConfig{Name: "named"})                                               // routed by name: no bind port to list
		f.Outbound.Listen = meshlettest.FreeAddr(t)
		f.Service.Address, f.Service.Register, f.Inbound.Listen = meshlettest.HostOf(app), true, meshlettest.FreeAddr(t)
		p := meshlettest.Launch(t, f.MustYAML(t))
		p.Admin = f.Admin.Listen
		meshlettest.Eventually(t, 15*time.Second, "shop registered", func() bool {
			return strings.Contains(p.Log(), "registered with consul")
		})
		svc := proxyRegistration(t, client, "shop")
		ups := svc.Proxy.Upstreams
		if len(ups) != 2 {
			t.Fatalf("registered upstreams: %+v, want api and ledger", ups)
		}
		if u := ups[0]; u.DestinationName != "api" || u.DestinationType != api.UpstreamDestTypeService ||
			u.LocalBindAddress != "127.0.0.1" || u.LocalBindPort != portOfAddr(t, binds[0]) || u.Datacenter != "" {
			t.Errorf("upstream api registered as %+v, want its bind address %s", u, binds[0])
		}
		if u := ups[1]; u.DestinationName != "ledger" || u.Datacenter != "dc1" || u.LocalBindPort == 0 {
			t.Errorf("upstream ledger registered as %+v, want dc1 and its bound port", u)
		}
		if svc.Proxy.Mode != api.ProxyModeDefault || svc.Proxy.TransparentProxy != nil {
			t.Errorf("mode %q, transparent proxy %+v: want neither", svc.Proxy.Mode, svc.Proxy.TransparentProxy)
		}
	})

	t.Run("transparent", func(t *testing.T) {
		f := consulTLSFile(t, "cart", agent.HTTPAddr, "", proxy.UpstreamConfig{Name: "api", Listen: binds[2]})
		f.Outbound.Listen = meshlettest.FreeAddr(t)
		f.Outbound.Transparent.Enabled = true
		f.Service.Address, f.Service.Register, f.Inbound.Listen = meshlettest.HostOf(app), true, meshlettest.FreeAddr(t)
		p := meshlettest.Launch(t, f.MustYAML(t))
		p.Admin = f.Admin.Listen
		meshlettest.Eventually(t, 15*time.Second, "cart registered", func() bool {
			return strings.Contains(p.Log(), "registered with consul")
		})
		svc := proxyRegistration(t, client, "cart")
		if svc.Proxy.Mode != api.ProxyModeTransparent || svc.Proxy.TransparentProxy == nil ||
			svc.Proxy.TransparentProxy.OutboundListenerPort != portOfAddr(t, f.Outbound.Listen) {
			t.Errorf("mode %q, transparent proxy %+v: want transparent, outbound port %s", svc.Proxy.Mode, svc.Proxy.TransparentProxy, f.Outbound.Listen)
		}
		if ups := svc.Proxy.Upstreams; len(ups) != 1 || ups[0].DestinationName != "api" || ups[0].LocalBindPort != portOfAddr(t, binds[2]) {
			t.Errorf("registered upstreams: %+v, want api at %s", ups, binds[2])
		}
	})
}

// TestSidecarForBadRegistrations: an unknown ID, a plain service without a sidecar and a registration of another
// kind stop meshlet at start with an error that says what to change.
func TestSidecarForBadRegistrations(t *testing.T) {
	agent := discoverytest.StartConsul(t, discoverytest.Options{})
	reg := func(r *api.AgentServiceRegistration) {
		if err := agent.Client().Agent().ServiceRegister(r); err != nil {
			t.Fatal(err)
		}
	}
	reg(&api.AgentServiceRegistration{ID: "plain-1", Name: "plain", Port: 8080})
	reg(&api.AgentServiceRegistration{ID: "gw-1", Name: "gw", Kind: api.ServiceKindMeshGateway, Port: 8443})
	for _, tc := range []struct{ id, want string }{
		{"nope-1", `has no service or connect-proxy with ID \"nope-1\"`},
		{"plain-1", "service plain-1 has no connect-proxy registered on this agent (add connect { sidecar_service {} } to its definition)"},
		{"gw-1", "gw-1 is a mesh-gateway registration, not a connect-proxy"},
	} {
		t.Run(tc.id, func(t *testing.T) {
			p := startSidecarFor(t, agent.HTTPAddr, tc.id, meshlettest.FreeAddr(t))
			if code := p.Wait(t, 10*time.Second); code != 1 {
				t.Errorf("exit code %d, want 1", code)
			}
			if log := p.Log(); !strings.Contains(log, tc.want) {
				t.Errorf("log lacks %q:\n%s", tc.want, log)
			}
		})
	}
}

// TestSidecarForRegistrationDeleted: when the registration is deleted, meshlet keeps serving its last known config
// and /ready fails saying why; registered again, /ready passes again.
func TestSidecarForRegistrationDeleted(t *testing.T) {
	agent := discoverytest.StartConsul(t, discoverytest.Options{})
	client := agent.Client()
	startHTTPSidecar(t, agent.HTTPAddr, "api", "from api")
	webApp := meshlettest.StartBackend(t, http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}), false, nil)
	binds := meshlettest.FreeAddrs(t, 2)
	apiUp := api.Upstream{DestinationName: "api", LocalBindPort: portOfAddr(t, binds[0]), Config: map[string]any{"protocol": "http"}}
	admin := meshlettest.FreeAddr(t)
	registerWeb(t, client, meshlettest.HostOf(webApp), binds[1], admin, api.ExposeConfig{}, apiUp)
	p := startSidecarFor(t, agent.HTTPAddr, "web-1-sidecar-proxy", admin) // the proxy's own ID
	if err := p.WaitReady(context.Background(), 20*time.Second); err != nil {
		t.Fatalf("not ready: %v", err)
	}
	if !strings.Contains(p.Log(), `"found":"connect-proxy web-1-sidecar-proxy"`) {
		t.Errorf("log does not say it found the connect-proxy by its own ID")
	}
	if err := client.Agent().ServiceDeregister("web-1-sidecar-proxy"); err != nil {
		t.Fatal(err)
	}
	meshlettest.Eventually(t, 10*time.Second, "/ready fails saying the registration was deleted", func() bool {
		code, body, _ := call("http://" + p.Admin + "/ready")
		return code == http.StatusServiceUnavailable && strings.Contains(body, "consul registration of web-1-sidecar-proxy was deleted from the agent")
	})
	meshlettest.Eventually(t, 10*time.Second, "api still reachable at its bind port", func() bool {
		code, body, _ := call("http://" + binds[0] + "/")
		return code == 200 && body == "from api"
	})
	registerWeb(t, client, meshlettest.HostOf(webApp), binds[1], admin, api.ExposeConfig{}, apiUp)
	if err := p.WaitReady(context.Background(), 15*time.Second); err != nil {
		t.Fatalf("not ready again once registered again: %v", err)
	}
}
