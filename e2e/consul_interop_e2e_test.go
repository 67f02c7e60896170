package e2e_test

import (
	"bytes"
	"crypto/rand"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"meshlet.dev/meshlet/discovery/discoverytest"
	"meshlet.dev/meshlet/internal/meshlettest"
	"meshlet.dev/meshlet/proxy"
	"meshlet.dev/meshlet/resilience"
)

// Interop with Consul's built-in proxy (`consul connect proxy`, from the same Consul binary as the agent): it
// takes its certificates from the agent's Connect CA, as the meshlets here do (tls.source: consul), offers ALPN
// no ALPN (the connect package it is built on offers h2 by default, which Connect-native apps use) and relays its
// app's bytes unchanged over mutual TLS, and asks the agent to authorize each inbound caller.

// builtinProxy runs `consul connect proxy args...` against agent until the test ends; its output is logged when
// the test fails.
func builtinProxy(t *testing.T, agent *discoverytest.Agent, args ...string) {
	t.Helper()
	bin, err := discoverytest.Binary()
	if err != nil {
		t.Fatalf("consul: %v", err) // the agent started: the binary is there
	}
	cmd := exec.Command(bin, append([]string{"connect", "proxy", "-http-addr", agent.HTTPAddr, "-log-level", "debug"}, args...)...)
	out := &meshlettest.SyncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting consul connect proxy: %v", err)
	}
	done := make(chan struct{})
	go func() {
		cmd.Wait()
		close(done)
	}()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("consul connect proxy %s:\n%s", strings.Join(args, " "), out.String())
		}
	})
}

// freshGet sends GET url on a new connection (so each request is a new connection through a built-in proxy) and
// returns the status, body and X-Meshlet-Error; status 0 with the error as body when there is no answer.
func freshGet(url string) (int, string, string) {
	c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return 0, err.Error(), ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Header.Get("X-Meshlet-Error")
}

// TestConsulBuiltinProxyCallsMeshlet: web's sidecar is Consul's built-in proxy (`-service web -upstream api:PORT`);
// api's is meshlet, registered with the agent and with certificates from the same Connect CA. The built-in proxy
// finds meshlet's registration, verifies its identity and sends the app's HTTP/1.1 as it is: meshlet serves it,
// and Consul's intentions decide: allowed, the request reaches api's app; with a deny intention web → api it is
// refused (403) and the app sees nothing. A Connect-native caller that offers ALPN h2 and sends HTTP/1.1 (what
// Consul's connect package does by default) is served and decided the same way.
func TestConsulBuiltinProxyCallsMeshlet(t *testing.T) {
	agent := discoverytest.StartConsul(t, discoverytest.Options{})
	app := startAuthzApp(t)
	apiSidecar, apiInbound := consulAPISidecar(t, agent.HTTPAddr, "", app.addr)
	upstream := meshlettest.FreeAddr(t)
	_, port, _ := net.SplitHostPort(upstream)
	builtinProxy(t, agent, "-service", "web", "-upstream", "api:"+port)

	url := "http://" + upstream
	meshlettest.Eventually(t, 20*time.Second, "the built-in proxy reaches api through meshlet", func() bool {
		code, body, _ := freshGet(url + "/hello?x=1")
		return code == 200 && body == "api /hello?x=1"
	})
	for i := range 5 {
		target := fmt.Sprintf("/call/%d", i)
		if code, body, reason := freshGet(url + target); code != 200 || body != "api "+target {
			t.Fatalf("GET %s through the built-in proxy: %d %q %q", target, code, body, reason)
		}
	}
	if n := apiSidecar.MetricSum(t, "meshlet_tls_handshake_failures_total", nil); n != 0 {
		t.Fatalf("meshlet refused %v handshakes of the built-in proxy", n)
	}
	// A Connect-native caller on Consul's connect package offers ALPN h2 and names no server, whatever it then
	// sends: HTTP/1.1 after h2 is served as HTTP/1.1.
	native := consulLeafTLS(t, agent.Client(), "web")
	native.NextProtos = []string{"h2"}
	if code, reason := tlsExchange(t, apiInbound, native, "GET /native"); code != 200 {
		t.Fatalf("HTTP/1.1 after ALPN h2: %d %q", code, reason)
	}
	if got := app.targets(); got[len(got)-1] != "/native" {
		t.Fatalf("the app saw %v", got)
	}

	client := agent.Client()
	if _, err := client.Connect().IntentionUpsert(&api.Intention{SourceName: "web", DestinationName: "api",
		Action: api.IntentionActionDeny}, nil); err != nil {
		t.Fatal(err)
	}
	meshlettest.Eventually(t, 10*time.Second, "the deny intention refuses the built-in proxy's caller", func() bool {
		code, _, reason := freshGet(url + "/denied")
		return code == 403 && reason == "denied"
	})
	seen := len(app.targets())
	for range 3 {
		if code, body, reason := freshGet(url + "/denied"); code != 403 || reason != "denied" {
			t.Fatalf("denied call: %d %q %q", code, body, reason)
		}
	}
	if got := app.targets(); len(got) != seen {
		t.Fatalf("a denied call reached the app: %v", got[seen:])
	}
	if code, reason := tlsExchange(t, apiInbound, native, "GET /native-denied"); code != 403 || reason != "denied" {
		t.Fatalf("a Connect-native web after the deny intention: %d %q", code, reason)
	}
	if n := apiSidecar.MetricSum(t, "meshlet_authz_denied_total", map[string]string{"source": "web"}); n < 3 {
		t.Fatalf("meshlet_authz_denied_total{source=web} = %v", n)
	}
}

// registerBuiltinSidecar registers service name (instance name-1, its app at appAddr) with a connect-proxy at
// proxyAddr for Consul's built-in proxy, and starts the proxy with -sidecar-for. The proxy registration has no
// checks (healthy at once) and no meshlet marker: meshlet's callers see a foreign sidecar.
func registerBuiltinSidecar(t *testing.T, agent *discoverytest.Agent, name, appAddr, proxyAddr string) {
	t.Helper()
	client := agent.Client()
	appHost, appPort := splitHostPort(t, appAddr)
	pHost, pPort := splitHostPort(t, proxyAddr)
	if err := client.Agent().ServiceRegister(&api.AgentServiceRegistration{ID: name + "-1", Name: name,
		Address: appHost, Port: appPort}); err != nil {
		t.Fatal(err)
	}
	if err := client.Agent().ServiceRegister(&api.AgentServiceRegistration{Kind: api.ServiceKindConnectProxy,
		ID: name + "-1-sidecar-proxy", Name: name + "-sidecar-proxy", Address: pHost, Port: pPort,
		Proxy: &api.AgentServiceConnectProxyConfig{DestinationServiceName: name, DestinationServiceID: name + "-1",
			LocalServiceAddress: appHost, LocalServicePort: appPort}}); err != nil {
		t.Fatal(err)
	}
	builtinProxy(t, agent, "-sidecar-for", name+"-1")
}

// countingReader adds what it reads to n.
type countingReader struct {
	r io.Reader
	n *atomic.Int64
}

func (c countingReader) Read(p []byte) (int, error) {
	k, err := c.r.Read(p)
	c.n.Add(int64(k))
	return k, err
}

func splitHostPort(t *testing.T, addr string) (string, int) {
	t.Helper()
	h, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.Atoi(p)
	if err != nil {
		t.Fatal(err)
	}
	return h, n
}

// TestMeshletCallsBuiltinProxy: web's sidecar is meshlet; echo (an HTTP app) and blob (a TCP app) are fronted by
// Consul's built-in proxy (-sidecar-for), which relays bytes to its app unchanged. meshlet tells the foreign
// sidecars from its own by the registration's marker, and speaks to them in the service's protocol over mutual
// TLS with certificates of the same Consul CA: the HTTP app gets HTTP/1.1 requests as the client sent them (method,
// path, header, body), the TCP app the client's bytes, and the client the app's answer and bytes unchanged. A deny
// intention web → blob, enforced by the built-in proxy, refuses meshlet's new connections; the app sees none.
func TestMeshletCallsBuiltinProxy(t *testing.T) {
	agent := discoverytest.StartConsul(t, discoverytest.Options{})
	client := agent.Client()
	for name, protocol := range map[string]string{"echo": "http", "blob": "tcp"} {
		if _, _, err := client.ConfigEntries().Set(&api.ServiceConfigEntry{Kind: api.ServiceDefaults, Name: name, Protocol: protocol}, nil); err != nil {
			t.Fatal(err)
		}
	}
	httpApp := meshlettest.StartBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%s %s %s %s x-test=%s body=%s", r.Proto, r.Method, r.RequestURI, r.Host, r.Header.Get("X-Test"), b)
	}), false, nil)
	registerBuiltinSidecar(t, agent, "echo", meshlettest.HostOf(httpApp), meshlettest.FreeAddr(t))

	tcpApp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tcpApp.Close() })
	var tcpBytes atomic.Int64 // what the TCP app has received
	go func() {
		for {
			c, err := tcpApp.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(c, countingReader{c, &tcpBytes}) // every byte back, unchanged
			}()
		}
	}()
	registerBuiltinSidecar(t, agent, "blob", tcpApp.Addr().String(), meshlettest.FreeAddr(t))

	echoListen, blobListen := meshlettest.FreeAddr(t), meshlettest.FreeAddr(t)
	one := resilience.Config{Retry: resilience.RetryConfig{MaxAttempts: 1}}
	web := meshlettest.StartFile(t, consulTLSFile(t, "web", agent.HTTPAddr, "",
		proxy.UpstreamConfig{Name: "echo", Listen: echoListen, Protocol: "http", Resilience: one},
		proxy.UpstreamConfig{Name: "blob", Listen: blobListen, Protocol: "tcp", Resilience: one}))
	grpcFailOnRace(t, "web", web)

	post := func() (int, string, string) {
		req, _ := http.NewRequest(http.MethodPost, "http://"+echoListen+"/orders/7?verbose=1", strings.NewReader("hello, echo"))
		req.Host = "echo.internal"
		req.Header.Set("X-Test", "interop")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0, err.Error(), ""
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), resp.Header.Get("X-Meshlet-Error")
	}
	want := "HTTP/1.1 POST /orders/7?verbose=1 echo.internal x-test=interop body=hello, echo"
	meshlettest.Eventually(t, 20*time.Second, "meshlet reaches the HTTP app through the built-in proxy", func() bool {
		code, body, _ := post()
		return code == 200 && body == want
	})
	for i := range 5 {
		if code, body, reason := post(); code != 200 || body != want {
			t.Fatalf("call %d: %d %q %q", i, code, body, reason)
		}
	}

	// TCP: 256 KiB of random bytes there and back, unchanged.
	payload := make([]byte, 256<<10)
	rand.Read(payload)
	tcpRoundTrip := func() error {
		c, err := net.DialTimeout("tcp", blobListen, 5*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		werr := make(chan error, 1)
		go func() {
			_, err := c.Write(payload)
			werr <- err
		}()
		got := make([]byte, len(payload))
		if _, err := io.ReadFull(c, got); err != nil {
			return fmt.Errorf("reading the echo: %w", err)
		}
		if err := <-werr; err != nil {
			return err
		}
		if !bytes.Equal(got, payload) {
			return fmt.Errorf("the bytes came back changed")
		}
		return nil
	}
	meshlettest.Eventually(t, 20*time.Second, "meshlet reaches the TCP app through the built-in proxy", func() bool {
		return tcpRoundTrip() == nil
	})
	for i := range 3 {
		if err := tcpRoundTrip(); err != nil {
			t.Fatalf("TCP round trip %d: %v", i, err)
		}
	}

	// The built-in proxy enforces intentions on meshlet's certificate (web), per connection (Consul's L4 rule:
	// a connection it accepted before goes on): a new TCP connection to blob is refused, and no byte of it
	// reaches the app (the built-in proxy connects to its app before it has checked the caller, and closes that
	// connection then); echo, with no intention against it, is still served.
	if _, err := client.Connect().IntentionUpsert(&api.Intention{SourceName: "web", DestinationName: "blob",
		Action: api.IntentionActionDeny}, nil); err != nil {
		t.Fatal(err)
	}
	meshlettest.Eventually(t, 10*time.Second, "the built-in proxy refuses web's connections to blob", func() bool {
		return tcpRoundTrip() != nil
	})
	before := tcpBytes.Load()
	for range 3 {
		if err := tcpRoundTrip(); err == nil {
			t.Fatal("a connection the built-in proxy denies carried the bytes")
		}
	}
	if n := tcpBytes.Load() - before; n != 0 {
		t.Fatalf("%d bytes of connections the built-in proxy denied reached the app", n)
	}
	if code, body, reason := post(); code != 200 || body != want {
		t.Fatalf("echo, with no intention against it: %d %q %q", code, body, reason)
	}
}

// TestConsulMeshTLSMinimum: meshlet's inbound takes its TLS minimum from Consul's mesh config entry
// (TLS.Incoming.TLSMinVersion), as Consul's Envoy sidecars do: a TLS 1.2 client (Envoy 1.2x's default upstream
// TLS) is refused under meshlet's default of 1.3, served once the mesh entry says TLSv1_2, and refused again when
// it says TLSv1_3; TLS 1.3 clients are served throughout.
func TestConsulMeshTLSMinimum(t *testing.T) {
	agent := discoverytest.StartConsul(t, discoverytest.Options{})
	client := agent.Client()
	app := startAuthzApp(t)
	_, apiInbound := consulAPISidecar(t, agent.HTTPAddr, "", app.addr)
	tls12 := consulLeafTLS(t, client, "web")
	tls12.MaxVersion = tls.VersionTLS12
	tls13 := consulLeafTLS(t, client, "web")
	handshake := func(cfg *tls.Config) error {
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", apiInbound, cfg)
		if err == nil {
			c.Close()
		}
		return err
	}
	meshlettest.Eventually(t, 10*time.Second, "api's meshlet serves TLS 1.3", func() bool { return handshake(tls13) == nil })
	if err := handshake(tls12); err == nil {
		t.Fatal("a TLS 1.2 client was accepted with meshlet's default minimum and no mesh entry")
	}
	setMesh := func(v string) {
		t.Helper()
		if _, _, err := client.ConfigEntries().Set(&api.MeshConfigEntry{TLS: &api.MeshTLSConfig{
			Incoming: &api.MeshDirectionalTLSConfig{TLSMinVersion: v}}}, nil); err != nil {
			t.Fatal(err)
		}
	}
	setMesh("TLSv1_2")
	meshlettest.Eventually(t, 10*time.Second, "the mesh entry lets TLS 1.2 in", func() bool { return handshake(tls12) == nil })
	if code, reason := tlsExchange(t, apiInbound, tls12, "GET /tls12"); code != 200 {
		t.Fatalf("a request over TLS 1.2: %d %q", code, reason)
	}
	if got := app.targets(); got[len(got)-1] != "/tls12" {
		t.Fatalf("the app saw %v", got)
	}
	setMesh("TLSv1_3")
	meshlettest.Eventually(t, 10*time.Second, "the mesh entry's TLSv1_3 refuses TLS 1.2", func() bool { return handshake(tls12) != nil })
	if err := handshake(tls13); err != nil {
		t.Fatalf("TLS 1.3 under the mesh entry's TLSv1_3: %v", err)
	}
}
