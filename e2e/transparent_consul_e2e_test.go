package e2e_test

// Transparent interception with Consul (issue 14): three "pods" (network namespaces of the test's own) on a
// bridge in a fourth namespace, where a real Consul agent runs; every service of the mesh is an implicit upstream
// of web's sidecar, which has no upstream in its config. web's app calls api and db by their Consul virtual IPs
// (names resolved by Consul DNS through redirect-traffic -redirect-dns) and by instance address, over HTTP/1.1,
// h2c, gRPC and an opaque TCP protocol (server-first and client-first), and gets its answers over mutual TLS with
// certificates from Consul's CA; intentions decide; a destination outside the mesh passes through, or is refused
// with mesh_destinations_only.

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"golang.org/x/net/http2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"meshlet.dev/meshlet/discovery/discoverytest"
	"meshlet.dev/meshlet/internal/meshlettest"
	"meshlet.dev/meshlet/redirect/redirecttest"
)

// consulPod is a pod of the test: its namespace and address.
type consulPod struct {
	ns   *redirecttest.Netns
	addr string
}

// listenIn listens on addr inside ns.
func listenIn(t *testing.T, ns *redirecttest.Netns, addr string) net.Listener {
	t.Helper()
	var ln net.Listener
	var err error
	ns.Do(t, func() { ln, err = net.Listen("tcp", addr) })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// dialIn connects from inside ns.
func dialIn(ns *redirecttest.Netns, t *testing.T, network, addr string) (net.Conn, error) {
	var c net.Conn
	var err error
	ns.Do(t, func() { c, err = net.DialTimeout(network, addr, 3*time.Second) })
	return c, err
}

const consulPodConfig = `service:
  name: %[1]s
  address: 127.0.0.1:%[3]d
  protocol: %[4]s
  register: true
inbound:
  listen: %[2]s:20000
  tls:
    mode: mtls
tls:
  source: consul
discovery:
  consul:
    address: %[5]s
admin:
  listen: %[2]s:19000
shutdown:
  drain_delay: 0s
`

const consulWebConfig = `service:
  name: web
outbound:
  listen: 127.0.0.1:15001
  transparent:
    enabled: true
    detect_timeout: 300ms
    mesh_destinations_only: %[2]v
tls:
  source: consul
discovery:
  consul:
    address: %[1]s
admin:
  listen: 127.0.0.1:19000
shutdown:
  drain_delay: 0s
`

func TestTransparentConsulMesh(t *testing.T) {
	redirecttest.NeedRoot(t)
	node := redirecttest.NewNetns(t)
	web := consulPod{redirecttest.NewNetns(t), "198.18.0.1"}
	apiPod := consulPod{redirecttest.NewNetns(t), "198.18.0.2"}
	db := consulPod{redirecttest.NewNetns(t), "198.18.0.4"}
	redirecttest.Bridge(t, node, "198.18.0.3/24", []*redirecttest.Netns{web.ns, apiPod.ns, db.ns},
		[]string{web.addr + "/24", apiPod.addr + "/24", db.addr + "/24"})
	// web's default route leads to the node's namespace, which routes nowhere: virtual IPs (240.0.0.0/4) are
	// routable, as in a real pod, and are redirected before they leave.
	web.ns.IP(t, "route", "add", "default", "via", "198.18.0.3")

	agent := discoverytest.StartConsul(t, discoverytest.Options{Addr: "198.18.0.3",
		Fork: func(start func()) { node.Do(t, start) },
		Dial: func(_ context.Context, network, addr string) (net.Conn, error) { return dialIn(node, t, network, addr) }})
	client := agent.Client()

	dir, bin := meshletCopy(t)
	tp := &transparentPod{dir: dir, bin: bin}
	startPod := func(p consulPod, config string, args ...string) *meshlettest.Proc {
		t.Helper()
		path := filepath.Join(dir, strings.SplitN(config, "\n", 3)[1][8:]+".yaml") // "  name: api"
		if err := os.WriteFile(path, []byte(config), 0o644); err != nil {
			t.Fatal(err)
		}
		tp.redirectIn(t, p.ns, append([]string{"-config", path}, args...)...)
		admin := p.addr + ":19000"
		if p == web {
			admin = "127.0.0.1:19000"
		}
		return tp.startAt(t, p.ns, clientIn(t, p.ns), config, admin)
	}

	// api: one port serving HTTP/1.1, h2c and gRPC; it answers with what it saw, the caller's verified identity
	// included (X-Forwarded-Client-Cert from its sidecar).
	gs := grpc.NewServer()
	healthpb.RegisterHealthServer(gs, health.NewServer())
	t.Cleanup(gs.Stop)
	apiSrv := &http.Server{Protocols: meshlettest.H2CProtocols(), Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc") {
			gs.ServeHTTP(w, r)
			return
		}
		by := ""
		if _, uri, ok := strings.Cut(r.Header.Get("X-Forwarded-Client-Cert"), "URI="); ok {
			by = strings.SplitN(uri, ";", 2)[0]
		}
		fmt.Fprintf(w, "api %s %s by=%s", r.URL.Path, r.Proto, by)
	})}
	go apiSrv.Serve(listenIn(t, apiPod.ns, "127.0.0.1:8080"))
	t.Cleanup(func() { apiSrv.Close() })
	startPod(apiPod, fmt.Sprintf(consulPodConfig, "api", apiPod.addr, 8080, "http2", agent.HTTPAddr))

	// db: an opaque protocol that speaks first ("db ready"), then echoes lines.
	dbLn := listenIn(t, db.ns, "127.0.0.1:7000")
	go func() {
		for {
			c, err := dbLn.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.WriteString(c, "db ready\n")
				io.Copy(c, c)
			}()
		}
	}()
	startPod(db, fmt.Sprintf(consulPodConfig, "db", db.addr, 7000, "tcp", agent.HTTPAddr))

	webMeshlet := startPod(web, fmt.Sprintf(consulWebConfig, agent.HTTPAddr, false), "-redirect-dns", agent.DNSAddr)

	// web's app resolves names with Consul DNS: any resolver address works, redirect-traffic sends port 53 to it.
	resolver := &net.Resolver{PreferGo: true, Dial: func(_ context.Context, network, _ string) (net.Conn, error) {
		return dialIn(web.ns, t, network, "198.18.0.53:53")
	}}
	lookup := func(name string) string {
		t.Helper()
		var addrs []string
		var err error
		meshlettest.Eventually(t, 10*time.Second, "Consul DNS answers "+name, func() bool {
			addrs, err = resolver.LookupHost(context.Background(), name)
			return err == nil && len(addrs) == 1
		})
		return addrs[0]
	}
	apiVIP, dbVIP := lookup("api.virtual.consul"), lookup("db.virtual.consul")
	if !strings.HasPrefix(apiVIP, "240.") || !strings.HasPrefix(dbVIP, "240.") || apiVIP == dbVIP {
		t.Fatalf("virtual IPs: api %s, db %s", apiVIP, dbVIP)
	}
	dial := func(_ context.Context, network, addr string) (net.Conn, error) {
		return dialIn(web.ns, t, network, addr)
	}
	h1 := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: dial}}
	get := func(c *http.Client, url string) (int, string) {
		t.Helper()
		resp, err := c.Get(url)
		if err != nil {
			t.Fatalf("GET %s: %v", url, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	webID := "/svc/web"

	// HTTP/1.1 by virtual IP, found by name in Consul DNS, and by api's instance address.
	for _, url := range []string{"http://" + apiVIP + ":8080/vip", "http://" + apiPod.addr + ":8080/instance"} {
		code, body := get(h1, url)
		path := url[strings.LastIndex(url, "/"):]
		if code != 200 || !strings.HasPrefix(body, "api "+path+" HTTP/2.0 by=spiffe://") || !strings.HasSuffix(body, webID) {
			t.Fatalf("web → %s: %d %q (want api's answer over both sidecars, the caller web)", url, code, body)
		}
	}
	// h2c with prior knowledge.
	h2 := &http.Client{Timeout: 5 * time.Second, Transport: &http2.Transport{AllowHTTP: true,
		DialTLSContext: func(ctx context.Context, network, addr string, _ *tls.Config) (net.Conn, error) {
			return dial(ctx, network, addr)
		}}}
	if code, body := get(h2, "http://"+apiVIP+":8080/h2"); code != 200 || !strings.HasPrefix(body, "api /h2 HTTP/2.0 by=") {
		t.Fatalf("h2c web → api: %d %q", code, body)
	}
	// gRPC, by name: grpc-go's own resolver would ask the system's DNS, so the test resolves it.
	if err := grpcHealthVia(apiVIP+":8080", func(addr string) (net.Conn, error) { return dialIn(web.ns, t, "tcp", addr) }); err != nil {
		t.Fatalf("gRPC web → api: %v", err)
	}

	// Opaque TCP to db by its virtual IP: a client that waits for the server's greeting (detected after the
	// detection timeout) and one that speaks first (detected at once). First, db's sidecar passes its checks:
	// for a moment after it registered Consul has no healthy instance of db, web then has no endpoint for it and
	// closes the connection.
	meshlettest.Eventually(t, 10*time.Second, "db's sidecar passes its checks in Consul", func() bool {
		entries, _, err := client.Health().Connect("db", "", true, nil)
		return err == nil && len(entries) == 1
	})
	talk := func(first string) string {
		t.Helper()
		c, err := dial(context.Background(), "tcp", dbVIP+":7000")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if first != "" {
			io.WriteString(c, first)
		}
		r := bufio.NewReader(c)
		greeting, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("db's greeting: %q %v", greeting, err)
		}
		io.WriteString(c, "ping\n")
		echo := ""
		for range 2 {
			line, err := r.ReadString('\n')
			if err != nil {
				t.Fatalf("db's echo: %q %v", echo+line, err)
			}
			echo += line
			if first == "" {
				break
			}
		}
		return greeting + echo
	}
	if got := talk(""); got != "db ready\nping\n" {
		t.Fatalf("server-first TCP web → db: %q", got)
	}
	if got := talk("\x00hello\n"); got != "db ready\n\x00hello\nping\n" {
		t.Fatalf("client-first TCP web → db: %q", got)
	}

	webMetrics := func() meshlettest.Metrics {
		t.Helper()
		m, err := meshlettest.Scrape(context.Background(), clientIn(t, web.ns), "http://127.0.0.1:19000/metrics")
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	m := webMetrics()
	for result, least := range map[string]float64{"http1": 2, "http2": 2, "timeout": 1, "opaque": 1} {
		if n := m.Sum("meshlet_outbound_protocol_detections_total", map[string]string{"result": result}); n < least {
			t.Errorf("detections %s = %v, want at least %v\n%s", result, n, least, m.Lines("meshlet_outbound_protocol_detections_total"))
		}
	}
	if n := m.Sum("meshlet_outbound_connections_total", map[string]string{"outcome": "mesh"}); n < 6 {
		t.Errorf("mesh connections %v, want at least 6", n)
	}

	// Outside the mesh: Consul's own HTTP API passes through to its address.
	if code, body := get(h1, "http://"+agent.HTTPAddr+"/v1/status/leader"); code != 200 || !strings.Contains(body, "198.18.0.3") {
		t.Fatalf("passthrough to Consul: %d %q", code, body)
	}
	if n := webMetrics().Sum("meshlet_outbound_connections_total", map[string]string{"outcome": "passthrough"}); n < 1 {
		t.Fatalf("passthrough not counted: %v", n)
	}

	// Consul's mesh entry says the same at run time: with TransparentProxy.MeshDestinationsOnly, the outside is
	// refused; once deleted, it passes through again.
	if _, _, err := client.ConfigEntries().Set(&api.MeshConfigEntry{TransparentProxy: api.TransparentProxyMeshConfig{
		MeshDestinationsOnly: true}}, nil); err != nil {
		t.Fatal(err)
	}
	outside := func() bool {
		h1.CloseIdleConnections()
		resp, err := h1.Get("http://" + agent.HTTPAddr + "/v1/status/leader")
		if err == nil {
			resp.Body.Close()
		}
		return err == nil
	}
	meshlettest.Eventually(t, 10*time.Second, "the mesh entry refuses the outside", func() bool { return !outside() })
	if _, err := client.ConfigEntries().Delete(api.MeshConfig, api.MeshConfigMesh, nil); err != nil {
		t.Fatal(err)
	}
	meshlettest.Eventually(t, 10*time.Second, "without the mesh entry, the outside passes through", outside)

	// Intentions decide who may call whom: a deny for web → api takes effect without a restart.
	if _, err := client.Connect().IntentionUpsert(&api.Intention{SourceName: "web", DestinationName: "api",
		Action: api.IntentionActionDeny}, nil); err != nil {
		t.Fatal(err)
	}
	meshlettest.Eventually(t, 10*time.Second, "web → api denied", func() bool {
		code, _ := get(h1, "http://"+apiVIP+":8080/denied")
		return code == http.StatusForbidden
	})

	// mesh_destinations_only: the mesh still answers, the outside is refused.
	webMeshlet.Cmd.Process.Signal(syscall.SIGKILL)
	<-webMeshlet.Exited()
	webCfg := fmt.Sprintf(consulWebConfig, agent.HTTPAddr, true)
	tp.startAt(t, web.ns, clientIn(t, web.ns), webCfg, "127.0.0.1:19000")
	if got := talk(""); got != "db ready\nping\n" {
		t.Fatalf("web → db with mesh_destinations_only: %q", got)
	}
	h1.CloseIdleConnections()
	if resp, err := h1.Get("http://" + agent.HTTPAddr + "/v1/status/leader"); err == nil {
		resp.Body.Close()
		t.Fatalf("mesh_destinations_only let web's app reach Consul's API: %s", resp.Status)
	}
	if n := webMetrics().Sum("meshlet_outbound_connections_total", map[string]string{"outcome": "refused"}); n < 1 {
		t.Fatalf("refusal not counted: %v", n)
	}
}
