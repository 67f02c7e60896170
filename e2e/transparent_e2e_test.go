package e2e_test

// Transparent interception (issue 14), on a real kernel: a "pod" and a "peer" network namespace of the test's own,
// joined by a veth pair; meshlet runs in the pod as its own UID with `meshlet redirect-traffic` applied, and the
// test is the pod's app (root, UID 0), calling destinations by their usual addresses.

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"meshlet.dev/meshlet/internal/meshlettest"
	"meshlet.dev/meshlet/redirect/redirecttest"
)

// meshletUID is the UID meshlet runs as in the pod; redirect-traffic leaves its connections alone.
const meshletUID = 5995

type transparentPod struct {
	pod, peer *redirecttest.Netns
	dir       string // world-readable: the binary and configs meshlet (not root) reads
	bin       string
	client    *http.Client // the pod's app: dials from inside the pod
}

func newTransparentPod(t *testing.T) *transparentPod {
	redirecttest.NeedRoot(t)
	tp := &transparentPod{pod: redirecttest.NewNetns(t), peer: redirecttest.NewNetns(t)}
	redirecttest.Link(t, tp.pod, tp.peer, "198.18.0.1/24", "198.18.0.2/24", "2001:db8::1/64", "2001:db8::2/64")
	tp.dir, tp.bin = meshletCopy(t)
	tp.client = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(_ context.Context, network, addr string) (net.Conn, error) { return tp.dial(t, network, addr) },
	}}
	return tp
}

// meshletCopy copies the meshlet binary into a world-readable folder of the test's, for meshlet running as
// meshletUID, and returns both.
func meshletCopy(t *testing.T) (dir, bin string) {
	dir, err := os.MkdirTemp("", "meshlet-transparent-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	bin = filepath.Join(dir, "meshlet")
	b, err := os.ReadFile(meshlettest.Bin())
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, b, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir, bin
}

// dial connects from inside the pod.
func (tp *transparentPod) dial(t *testing.T, network, addr string) (net.Conn, error) {
	var c net.Conn
	var err error
	tp.pod.Do(t, func() { c, err = net.DialTimeout(network, addr, 3*time.Second) })
	return c, err
}

// serve runs an HTTP server in the peer at addr that answers "<name> <path>".
func (tp *transparentPod) serveHTTP(t *testing.T, addr, name string) {
	var ln net.Listener
	var err error
	tp.peer.Do(t, func() { ln, err = net.Listen("tcp", addr) })
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		fmt.Fprintf(w, "%s %s", name, r.URL.Path)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
}

// serveLine runs a TCP server in the peer at addr that writes name and a newline to each connection.
func (tp *transparentPod) serveLine(t *testing.T, addr, name string) {
	var ln net.Listener
	var err error
	tp.peer.Do(t, func() { ln, err = net.Listen("tcp", addr) })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			fmt.Fprintln(c, name)
			c.Close()
		}
	}()
}

// readLine connects from the pod to addr and returns the first line it reads ("" and the error when none).
func (tp *transparentPod) readLine(t *testing.T, addr string) (string, error) {
	c, err := tp.dial(t, "tcp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(line), err
}

// start runs meshlet in the pod as meshletUID on config, and waits until its /ready answers 200.
func (tp *transparentPod) start(t *testing.T, config string) *meshlettest.Proc {
	return tp.startIn(t, tp.pod, tp.client, config)
}

// startIn runs meshlet inside ns as meshletUID on config (its admin on 127.0.0.1:19000 there), and waits until
// its /ready answers 200 to client, whose connections start inside ns.
func (tp *transparentPod) startIn(t *testing.T, ns *redirecttest.Netns, client *http.Client, config string) *meshlettest.Proc {
	return tp.startAt(t, ns, client, config, "127.0.0.1:19000")
}

// startAt is startIn with meshlet's admin listener at admin.
func (tp *transparentPod) startAt(t *testing.T, ns *redirecttest.Netns, client *http.Client, config, admin string) *meshlettest.Proc {
	path := filepath.Join(tp.dir, fmt.Sprintf("meshlet-%d.yaml", time.Now().UnixNano()))
	if err := os.WriteFile(path, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(tp.bin, "run", "-config", path)
	// No Pdeathsig: it would fire when the thread that forked meshlet (locked in the namespace, then ended)
	// exits. The harness kills meshlet when the test ends.
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: meshletUID, Gid: meshletUID}}
	var p *meshlettest.Proc
	ns.Do(t, func() { p = meshlettest.Command(t, path, cmd) }) // forked on a thread inside ns
	deadline := time.Now().Add(meshlettest.ReadyTimeout)
	for {
		resp, err := client.Get("http://" + admin + "/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return p
			}
		}
		if time.Now().After(deadline) || !p.Alive() {
			t.Fatalf("meshlet in %s not ready: %v (exit: %v)\n%s", ns.Name, err, p.WaitErr(), p.Log())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// clientIn is an HTTP client whose connections start inside ns.
func clientIn(t *testing.T, ns *redirecttest.Netns) *http.Client {
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true,
		DialContext: func(_ context.Context, network, addr string) (net.Conn, error) {
			var c net.Conn
			var err error
			ns.Do(t, func() { c, err = net.DialTimeout(network, addr, 3*time.Second) })
			return c, err
		}}}
}

// redirectIn runs meshlet redirect-traffic with args inside ns.
func (tp *transparentPod) redirectIn(t *testing.T, ns *redirecttest.Netns, args ...string) {
	args = append([]string{"netns", "exec", ns.Name, tp.bin, "redirect-traffic", "-proxy-uid", fmt.Sprint(meshletUID)}, args...)
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("redirect-traffic in %s: %v\n%s", ns.Name, err, out)
	}
}

// outcomes reads meshlet_outbound_connections_total by outcome from the pod's meshlet.
func (tp *transparentPod) outcomes(t *testing.T) map[string]float64 {
	m, err := meshlettest.Scrape(context.Background(), tp.client, "http://127.0.0.1:19000/metrics")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, o := range []string{"mesh", "passthrough", "refused", "direct"} {
		out[o] = m.Sum("meshlet_outbound_connections_total", map[string]string{"outcome": o})
	}
	return out
}

const transparentConfig = `service:
  name: web
outbound:
  listen: 127.0.0.1:15001
  transparent:
    enabled: true
    mesh_destinations_only: %v
upstreams:
  - name: api
    addresses: ["198.18.0.100:80", "2001:db8:100::1"]
    endpoints: ["198.18.0.2:8080"]
  - name: db
    protocol: tcp
    addresses: ["198.18.0.101"]
    endpoints: ["198.18.0.2:7000"]
admin:
  listen: 127.0.0.1:19000
shutdown:
  drain_delay: 0s
`

// TestTransparentOutbound: the pod's app calls upstreams at their addresses (HTTP/1.1 and opaque TCP) and gets
// answers through meshlet; a destination outside the mesh passes through, or is refused with
// mesh_destinations_only; a call to the listener itself is routed by name; each outcome is counted; once meshlet is killed, the pod's calls fail instead of bypassing it.
func TestTransparentOutbound(t *testing.T) {
	tp := newTransparentPod(t)
	tp.serveHTTP(t, "198.18.0.2:8080", "api")
	tp.serveLine(t, "198.18.0.2:7000", "db")
	tp.serveLine(t, "198.18.0.2:9000", "outside")
	if out, err := exec.Command("ip", "netns", "exec", tp.pod.Name, tp.bin, "redirect-traffic",
		"-proxy-uid", fmt.Sprint(meshletUID), "-proxy-outbound-port", "15001").CombinedOutput(); err != nil {
		t.Fatalf("redirect-traffic: %v\n%s", err, out)
	}
	// The pod's routes: the upstreams' addresses are reachable (through the veth) like any destination.
	tp.pod.IP(t, "route", "add", "198.18.0.96/28", "dev", tp.pod.Name+"v")
	tp.pod.IP(t, "-6", "route", "add", "2001:db8:100::/64", "dev", tp.pod.Name+"v")

	p := tp.start(t, fmt.Sprintf(transparentConfig, false))
	get := func(url, host string) (int, string, error) {
		req, _ := http.NewRequest("GET", url, nil)
		if host != "" {
			req.Host = host
		}
		resp, err := tp.client.Do(req)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), nil
	}
	for _, tc := range []struct{ url, host, want string }{
		{"http://198.18.0.100/hello", "", "api /hello"},                      // HTTP by the upstream's address
		{"http://[2001:db8:100::1]:8443/v6", "", "api /v6"},                  // IPv6, any port of the address
		{"http://127.0.0.1:15001/direct", "api", "api /direct"},              // not redirected: routed by name
		{"http://198.18.0.100/host-ignored", "billing", "api /host-ignored"}, // the address decides, not the Host
	} {
		code, body, err := get(tc.url, tc.host)
		if err != nil || code != 200 || body != tc.want {
			t.Fatalf("GET %s (Host %q): %d %q %v; want 200 %q\n%s", tc.url, tc.host, code, body, err, tc.want, p.Log())
		}
	}
	// h2c with prior knowledge, by the upstream's address.
	h2c := &http.Transport{Protocols: new(http.Protocols),
		DialContext: func(_ context.Context, network, addr string) (net.Conn, error) { return tp.dial(t, network, addr) }}
	h2c.Protocols.SetUnencryptedHTTP2(true)
	resp, err := (&http.Client{Timeout: 5 * time.Second, Transport: h2c}).Get("http://198.18.0.100/h2c")
	if err != nil {
		t.Fatalf("h2c by address: %v", err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.ProtoMajor != 2 || string(b) != "api /h2c" {
		t.Fatalf("h2c by address: %s %q", resp.Proto, b)
	}
	if line, err := tp.readLine(t, "198.18.0.101:5432"); line != "db" {
		t.Fatalf("TCP upstream by address: %q %v", line, err)
	}
	if line, err := tp.readLine(t, "198.18.0.2:9000"); line != "outside" {
		t.Fatalf("passthrough: %q %v", line, err)
	}
	// Connections, not requests: the client kept its connection to 198.18.0.100:80 for the fourth request.
	want := map[string]float64{"mesh": 4, "passthrough": 1, "refused": 0, "direct": 1}
	if got := tp.outcomes(t); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("meshlet_outbound_connections_total: %v, want %v", got, want)
	}

	// Killed, meshlet takes the pod's outbound traffic down with it: nothing bypasses the sidecar.
	p.Cmd.Process.Signal(syscall.SIGKILL)
	<-p.Exited()
	if _, _, err := get("http://198.18.0.100/after-kill", ""); err == nil {
		t.Fatal("a call to an upstream succeeded with meshlet killed")
	}
	if line, err := tp.readLine(t, "198.18.0.2:9000"); err == nil {
		t.Fatalf("a call outside the mesh got %q with meshlet killed; want it refused", line)
	}

	// mesh_destinations_only: outside the mesh is refused, the mesh still works.
	tp.start(t, fmt.Sprintf(transparentConfig, true))
	if line, err := tp.readLine(t, "198.18.0.2:9000"); err == nil {
		t.Fatalf("mesh_destinations_only: outside the mesh answered %q", line)
	}
	if code, body, err := get("http://198.18.0.100/still", ""); err != nil || body != "api /still" {
		t.Fatalf("mesh_destinations_only: upstream call: %d %q %v", code, body, err)
	}
	if got := tp.outcomes(t); got["refused"] != 1 || got["passthrough"] != 0 || got["mesh"] != 1 {
		t.Fatalf("mesh_destinations_only outcomes: %v", got)
	}
}

// serveAppHTTP runs an HTTP server inside the pod at addr that answers "<name> <path>": the pod's own app.
func (tp *transparentPod) serveAppHTTP(t *testing.T, addr, name string) {
	var ln net.Listener
	var err error
	tp.pod.Do(t, func() { ln, err = net.Listen("tcp", addr) })
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s %s", name, r.URL.Path)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
}

// TestTransparentInbound: with inbound redirection in the pod, a caller outside it reaches the app at whatever
// port it dials, through meshlet: the app's port and the inbound listener's go to service.address, another of
// service.ports to the app at that port, and a port that is none of them is refused (counted).
func TestTransparentInbound(t *testing.T) {
	tp := newTransparentPod(t)
	tp.serveAppHTTP(t, "127.0.0.1:8080", "app")
	tp.serveAppHTTP(t, "127.0.0.1:9090", "metrics")
	if out, err := exec.Command("ip", "netns", "exec", tp.pod.Name, tp.bin, "redirect-traffic",
		"-proxy-uid", fmt.Sprint(meshletUID), "-proxy-inbound-port", "20000").CombinedOutput(); err != nil {
		t.Fatalf("redirect-traffic: %v\n%s", err, out)
	}
	tp.start(t, `service:
  name: api
  address: 127.0.0.1:8080
  ports: [9090]
inbound:
  listen: 0.0.0.0:20000
admin:
  listen: 127.0.0.1:19000
shutdown:
  drain_delay: 0s
`)
	peer := clientIn(t, tp.peer) // the peer's client: its connections start inside the peer namespace
	for _, tc := range []struct{ url, want string }{
		{"http://198.18.0.1:8080/a", "app /a"},        // the app's port, redirected to meshlet
		{"http://198.18.0.1:20000/b", "app /b"},       // the inbound listener itself
		{"http://198.18.0.1:9090/c", "metrics /c"},    // another of service.ports
		{"http://[2001:db8::1]:9090/d", "metrics /d"}, // IPv6
	} {
		resp, err := peer.Get(tc.url)
		if err != nil {
			t.Fatalf("GET %s: %v", tc.url, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(b) != tc.want {
			t.Fatalf("GET %s: %d %q, want %q", tc.url, resp.StatusCode, b, tc.want)
		}
	}
	if resp, err := peer.Get("http://198.18.0.1:7777/x"); err == nil {
		resp.Body.Close()
		t.Fatalf("a port that is no app port answered %d; want the connection refused", resp.StatusCode)
	}
	m, err := meshlettest.Scrape(context.Background(), tp.client, "http://127.0.0.1:19000/metrics")
	if err != nil {
		t.Fatal(err)
	}
	if n := m.Sum("meshlet_connections_refused_total", map[string]string{"direction": "inbound"}); n != 1 {
		t.Fatalf("meshlet_connections_refused_total{direction=inbound} = %v, want 1", n)
	}
	if n := m.Sum("meshlet_requests_total", map[string]string{"direction": "inbound"}); n != 4 {
		t.Fatalf("inbound requests %v, want 4", n)
	}
}

// TestTransparentMesh: both namespaces are pods with meshlet and redirect-traffic: web's app calls api's app at its
// usual address (198.18.0.2:8080) in plain HTTP, and its gRPC port (9090, another of api's service.ports), and gets
// api's answers over mutual TLS between the sidecars,
// api's sidecar authorizing web's identity; a caller api does not allow gets 403; a plaintext caller that
// bypasses web's sidecar (an excluded UID) is refused by api's, whose app is reachable only through it.
func TestTransparentMesh(t *testing.T) {
	tp := newTransparentPod(t)
	web, api := tp.pod, tp.peer
	certs := mtlsCerts(t, "web", "api", "billing")
	for _, f := range []string{"ca.crt", "web.crt", "web.key", "api.crt", "api.key", "billing.crt", "billing.key"} {
		b, err := os.ReadFile(filepath.Join(certs, f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(tp.dir, f), b, 0o600); err != nil {
			t.Fatal(err)
		}
		os.Chown(filepath.Join(tp.dir, f), meshletUID, meshletUID) // meshlet reads its key as its own UID
	}
	var ln net.Listener
	var err error
	api.Do(t, func() { ln, err = net.Listen("tcp", "127.0.0.1:8080") })
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "api %s", r.URL.Path)
	}), Protocols: meshlettest.H2CProtocols()}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	var gln net.Listener // api's gRPC port, another of its service.ports
	api.Do(t, func() { gln, err = net.Listen("tcp", "127.0.0.1:9090") })
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	healthpb.RegisterHealthServer(gs, health.NewServer())
	go gs.Serve(gln)
	t.Cleanup(gs.Stop)

	tp.redirectIn(t, api, "-proxy-inbound-port", "20000")
	tp.startIn(t, api, clientIn(t, api), fmt.Sprintf(`service:
  name: api
  address: 127.0.0.1:8080
  protocol: http2
  ports: [9090]
inbound:
  listen: 0.0.0.0:20000
  tls:
    mode: mtls
    allow: [web]
tls:
  cert_file: %[1]s/api.crt
  key_file: %[1]s/api.key
  ca_file: %[1]s/ca.crt
admin:
  listen: 127.0.0.1:19000
shutdown:
  drain_delay: 0s
`, tp.dir))
	tp.redirectIn(t, web, "-proxy-outbound-port", "15001", "-exclude-uid", "1000")
	webConfig := func(cert string) string {
		return fmt.Sprintf(`service:
  name: %[2]s
outbound:
  listen: 127.0.0.1:15001
  transparent:
    enabled: true
upstreams:
  - name: api
    addresses: ["198.18.0.2:8080"]
    peer: sidecar
    endpoints: ["198.18.0.2:20000"]
  - name: api-grpc
    service: api
    protocol: grpc
    addresses: ["198.18.0.2:9090"]
    peer: sidecar
    endpoints: ["198.18.0.2:9090"] # api's app port: its pod's rules redirect it to api's sidecar, which keeps the port
tls:
  cert_file: %[1]s/%[2]s.crt
  key_file: %[1]s/%[2]s.key
  ca_file: %[1]s/ca.crt
admin:
  listen: 127.0.0.1:19000
shutdown:
  drain_delay: 0s
`, tp.dir, cert)
	}
	webMeshlet := tp.start(t, webConfig("web"))
	get := func(c *http.Client, url string) (int, string, error) {
		resp, err := c.Get(url)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), nil
	}
	if code, body, err := get(tp.client, "http://198.18.0.2:8080/hello"); err != nil || code != 200 || body != "api /hello" {
		t.Fatalf("web → api through both sidecars: %d %q %v", code, body, err)
	}
	// gRPC to api's other port, by its usual address: through both sidecars, to the app at that port.
	if err := grpcHealthVia("198.18.0.2:9090", func(addr string) (net.Conn, error) { return tp.dial(t, "tcp", addr) }); err != nil {
		t.Fatalf("gRPC web → api:9090 through both sidecars: %v", err)
	}
	m, err := meshlettest.Scrape(context.Background(), clientIn(t, api), "http://127.0.0.1:19000/metrics")
	if err != nil {
		t.Fatal(err)
	}
	if n := m.Sum("meshlet_requests_total", map[string]string{"direction": "inbound", "code_class": "2xx"}); n != 2 {
		t.Fatalf("api's sidecar served %v inbound requests, want 2:\n%s", n, m.Lines("meshlet_requests_total"))
	}

	// A caller that bypasses web's sidecar (UID 1000 is excluded) reaches api's pod in plaintext: refused there.
	wait := exec.Command(tp.bin, "wait", "-admin", "198.18.0.2:8080", "-timeout", "2s") // GET /ready, plaintext
	wait.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 1000, Gid: 1000}}
	var out []byte
	web.Do(t, func() { out, err = wait.CombinedOutput() }) // forked inside web's pod
	if err == nil {
		t.Fatalf("a plaintext caller bypassing web's sidecar got api's app:\n%s", out)
	}

	// A caller api does not allow: web's sidecar with billing's identity.
	webMeshlet.Cmd.Process.Signal(syscall.SIGKILL)
	<-webMeshlet.Exited()
	tp.start(t, webConfig("billing"))
	if code, _, err := get(tp.client, "http://198.18.0.2:8080/denied"); err != nil || code != http.StatusForbidden {
		t.Fatalf("a caller api does not allow: %d %v, want 403", code, err)
	}
}

// grpcHealthVia runs a gRPC health check against addr over connections dial makes (inside a test's namespace),
// and returns why it did not answer SERVING.
func grpcHealthVia(addr string, dial func(addr string) (net.Conn, error)) error {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(_ context.Context, a string) (net.Conn, error) { return dial(a) }))
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	if err == nil && resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		err = fmt.Errorf("status %v", resp.GetStatus())
	}
	return err
}
