package e2e_test

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"meshlet.dev/meshlet/discovery/discoverytest"
	"meshlet.dev/meshlet/internal/meshlettest"
	"meshlet.dev/meshlet/proxy"
	"meshlet.dev/meshlet/resilience"
)

// authzApp is an HTTP app that answers "api <request-uri>" and records the request targets it received.
type authzApp struct {
	addr string
	mu   sync.Mutex
	seen []string
}

func startAuthzApp(t *testing.T) *authzApp {
	t.Helper()
	a := &authzApp{}
	srv := meshlettest.StartBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.mu.Lock()
		a.seen = append(a.seen, r.RequestURI)
		a.mu.Unlock()
		io.Copy(io.Discard, r.Body)
		fmt.Fprintf(w, "api %s", r.RequestURI)
	}), true, nil)
	a.addr = meshlettest.HostOf(srv)
	return a
}

func (a *authzApp) targets() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.seen)
}

// consulLeafTLS is the TLS of a test client that calls an inbound listener directly as service, with a leaf
// certificate from the agent's Connect CA (HTTP/1.1; the server's certificate is not checked).
func consulLeafTLS(t *testing.T, client *api.Client, service string) *tls.Config {
	t.Helper()
	leaf, _, err := client.Agent().ConnectCALeaf(service, nil)
	if err != nil {
		t.Fatalf("leaf certificate for %s: %v", service, err)
	}
	cert, err := tls.X509KeyPair([]byte(leaf.CertPEM), []byte(leaf.PrivateKeyPEM))
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{InsecureSkipVerify: true, Certificates: []tls.Certificate{cert}, NextProtos: []string{"http/1.1"}}
}

// tlsExchange sends one HTTP/1.1 request, "METHOD TARGET" with extra header lines, over a new TLS connection to
// addr with cfg, and returns the status and X-Meshlet-Error of the answer.
func tlsExchange(t *testing.T, addr string, cfg *tls.Config, line string, headers ...string) (int, string) {
	t.Helper()
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		t.Fatalf("TLS to %s: %v", addr, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	var h strings.Builder
	for _, x := range headers {
		h.WriteString(x + "\r\n")
	}
	answers, _, err := meshlettest.Answers(c, line+" HTTP/1.1\r\nHost: api\r\n"+h.String()+"Connection: close\r\n\r\n", 1)
	if err != nil {
		t.Fatalf("%s: reading the answer: %v", line, err)
	}
	return answers[0].StatusCode, answers[0].Header.Get("X-Meshlet-Error")
}

// consulAPISidecar starts the meshlet of api (certificates from Consul's CA, registered) with discovery.consul
// token token ("" for none) in front of app; it returns the meshlet and its inbound address.
func consulAPISidecar(t *testing.T, consulAddr, token, app string) (*meshlettest.Proc, string) {
	t.Helper()
	inbound := meshlettest.FreeAddr(t)
	f := consulTLSFile(t, "api", consulAddr, token)
	f.Service.Address, f.Service.Protocol, f.Service.Register, f.Inbound.Listen = app, "http", true, inbound
	p := meshlettest.StartFile(t, f)
	grpcFailOnRace(t, "api", p)
	return p, inbound
}

// consulTLSFile is the config of service name's meshlet (admin on a free port) with certificates from Consul's CA,
// discovery.consul at consulAddr with token ("" for none), upstreams ups, and shutdown {drain_delay: 0s}.
func consulTLSFile(t testing.TB, name, consulAddr, token string, ups ...proxy.UpstreamConfig) meshlettest.File {
	f := meshlettest.Sidecar(name, meshlettest.FreeAddr(t), ups...)
	f.TLS.Source, f.Discovery = "consul", meshlettest.Consul(consulAddr, token)
	f.Shutdown.DrainTimeout = 0 // drain_delay only
	return f
}

// consulCaller starts the meshlet of service name with upstream api found in Consul, and returns the address its
// app calls api on.
func consulCaller(t *testing.T, consulAddr, token, name string) string {
	t.Helper()
	listen := meshlettest.FreeAddr(t)
	p := meshlettest.StartFile(t, consulTLSFile(t, name, consulAddr, token, proxy.UpstreamConfig{Name: "api", Listen: listen,
		Protocol: "http", Resilience: resilience.Config{Retry: resilience.RetryConfig{MaxAttempts: 1}}}))
	grpcFailOnRace(t, name, p)
	return listen
}

// TestAuthzPathNormalization runs the attacker's paths of issue 11 against Consul L7 intentions enforced by api's
// meshlet: web may call /public only (sent through web's own meshlet, as its app would), batch may call anything
// but /admin and requests of user admin (sent over mutual TLS with batch's certificate). Every bypass is denied
// (403) or refused (400), and nothing denied reaches the app; what the app sees is the normalized path, the query
// as sent. A deny intention for billing of a peered cluster does not touch the local billing.
func TestAuthzPathNormalization(t *testing.T) {
	agent := discoverytest.StartConsul(t, discoverytest.Options{})
	client := agent.Client()
	if _, _, err := client.ConfigEntries().Set(&api.ServiceConfigEntry{Kind: api.ServiceDefaults, Name: "api", Protocol: "http"}, nil); err != nil {
		t.Fatal(err)
	}
	perm := func(a api.IntentionAction, h api.IntentionHTTPPermission) *api.IntentionPermission {
		return &api.IntentionPermission{Action: a, HTTP: &h}
	}
	if _, _, err := client.ConfigEntries().Set(&api.ServiceIntentionsConfigEntry{Kind: api.ServiceIntentions, Name: "api",
		Sources: []*api.SourceIntention{
			{Name: "web", Permissions: []*api.IntentionPermission{perm(api.IntentionActionAllow, api.IntentionHTTPPermission{PathPrefix: "/public"})}},
			{Name: "batch", Permissions: []*api.IntentionPermission{
				perm(api.IntentionActionDeny, api.IntentionHTTPPermission{PathPrefix: "/admin"}),
				perm(api.IntentionActionDeny, api.IntentionHTTPPermission{Header: []api.IntentionHTTPHeaderPermission{{Name: "X-User", Exact: "admin"}}}),
				perm(api.IntentionActionAllow, api.IntentionHTTPPermission{PathPrefix: "/"}),
			}},
			{Name: "billing", Peer: "other-cluster", Action: api.IntentionActionDeny},
		}}, nil); err != nil {
		t.Fatal(err)
	}
	app := startAuthzApp(t)
	apiSidecar, inbound := consulAPISidecar(t, agent.HTTPAddr, "", app.addr)
	web := consulCaller(t, agent.HTTPAddr, "", "web")
	meshlettest.Eventually(t, 10*time.Second, "web reaches api's /public", func() bool { code, _, _ := call("http://" + web + "/public/ready"); return code == 200 })

	var forwarded []string // what the app must have seen, in order
	forwarded = append(forwarded, "/public/ready")
	viaWeb := []struct{ target, want string }{ // want: the status and reason, or "200 <what the app sees>"
		{"/public/page", "200 /public/page"},
		{"/public/./a//b?x=%2F..&y", "200 /public/a/b?x=%2F..&y"},
		{"/public/../admin", "403 denied"},
		{"/public/%2e%2e/admin", "403 denied"},
		{"/public/..%2fadmin", "400 path_escaped_slash"},
		{"/public;/../admin", "403 denied"},
		{"/public/..\\admin", "400 path_backslash"},
		{"/public/..%5cadmin", "400 path_backslash"},
		{"/publ%69c/ok", "200 /public/ok"},
	}
	for _, tc := range viaWeb {
		resp, _ := meshlettest.RawRequest(t, web, "GET "+tc.target+" HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n")
		got := fmt.Sprintf("%d %s", resp.StatusCode, resp.Header.Get("X-Meshlet-Error"))
		if resp.StatusCode == 200 {
			seen := app.targets()
			got = "200 " + seen[len(seen)-1]
			forwarded = append(forwarded, seen[len(seen)-1])
		}
		if got != tc.want {
			t.Errorf("web GET %s: %s, want %s", tc.target, got, tc.want)
		}
	}

	batch := consulLeafTLS(t, client, "batch")
	viaBatch := []struct {
		target  string
		headers []string
		want    string
	}{
		{"/x/ok", nil, "200 "},
		{"/admin", nil, "403 denied"},
		{"//admin", nil, "403 denied"},
		{"/./admin", nil, "403 denied"},
		{"/x/../admin", nil, "403 denied"},
		{"/%61dmin/users", nil, "403 denied"},
		{"/admin;x=1", nil, "403 denied"},
		{"/x/me", []string{"X-User: alice"}, "200 "},
		{"/x/me", []string{"X-User: admin"}, "403 denied"},
		{"/x/me", []string{"X_User: admin"}, "403 denied"},
		{"/x/me", []string{"X-User: alice", "X-User: admin"}, "403 denied"},
	}
	for _, tc := range viaBatch {
		code, reason := tlsExchange(t, inbound, batch, "GET "+tc.target, tc.headers...)
		if got := fmt.Sprintf("%d %s", code, reason); got != tc.want {
			t.Errorf("batch GET %s %v: %s, want %s", tc.target, tc.headers, got, tc.want)
		}
		if code == 200 {
			forwarded = append(forwarded, tc.target)
		}
	}
	if code, reason := tlsExchange(t, inbound, consulLeafTLS(t, client, "billing"), "GET /billing"); code != 200 {
		t.Errorf("the local billing, under a deny intention for the billing of a peer: %d %s, want 200", code, reason)
	}
	forwarded = append(forwarded, "/billing")
	if seen := app.targets(); !slices.Equal(seen, forwarded) {
		t.Errorf("the app saw\n%q\nwant\n%q", seen, forwarded)
	}
	for reason, want := range map[string]float64{"path_escaped_slash": 1, "path_backslash": 2} {
		if v := apiSidecar.MetricSum(t, "meshlet_refused_requests_total", map[string]string{"direction": "inbound", "reason": reason}); v != want {
			t.Errorf("meshlet_refused_requests_total{reason=%s} = %v, want %v", reason, v, want)
		}
	}
}

// serviceToken creates an ACL token with the service identity of service (its own service and sidecar: write;
// every service and node: read), as Consul's docs recommend for a sidecar, and returns its secret.
func serviceToken(t *testing.T, client *api.Client, service string) string {
	t.Helper()
	tok, _, err := client.ACL().TokenCreate(&api.ACLToken{ServiceIdentities: []*api.ACLServiceIdentity{{ServiceName: service}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return tok.SecretID
}

// TestAuthzDefaultDenyWithServiceTokens runs Consul with ACLs on and default_policy deny, each meshlet with the
// service-identity token of its service (which may not read /v1/agent/self). Without intentions, web is denied;
// an allow intention lets web through, and batch, which no intention names, stays denied. api's /ready is 200
// without a warning, and the metric says deny.
func TestAuthzDefaultDenyWithServiceTokens(t *testing.T) {
	agent := discoverytest.StartConsul(t, discoverytest.Options{ACL: true})
	client := agent.Client()
	app := startAuthzApp(t)
	apiSidecar, _ := consulAPISidecar(t, agent.HTTPAddr, serviceToken(t, client, "api"), app.addr)
	web := consulCaller(t, agent.HTTPAddr, serviceToken(t, client, "web"), "web")
	batch := consulCaller(t, agent.HTTPAddr, serviceToken(t, client, "batch"), "batch")

	meshlettest.Eventually(t, 15*time.Second, "web reaches api's sidecar and is denied (no intention, default deny)", func() bool {
		code, _, reason := call("http://" + web + "/no-intention")
		return code == 403 && reason == "denied"
	})
	if _, err := client.Connect().IntentionUpsert(&api.Intention{SourceName: "web", DestinationName: "api",
		Action: api.IntentionActionAllow}, nil); err != nil {
		t.Fatal(err)
	}
	meshlettest.Eventually(t, 10*time.Second, "the allow intention lets web through", func() bool {
		code, _, _ := call("http://" + web + "/allowed")
		return code == 200
	})
	meshlettest.Eventually(t, 10*time.Second, "batch reaches api's sidecar", func() bool { code, _, _ := call("http://" + batch + "/"); return code != 503 })
	for i := range 5 {
		if code, body, reason := call(fmt.Sprintf("http://%s/batch-%d", batch, i)); code != 403 || reason != "denied" {
			t.Fatalf("batch, named by no intention, under default deny: %d %q %q", code, body, reason)
		}
	}
	for _, target := range app.targets() {
		if strings.HasPrefix(target, "/batch") || target == "/no-intention" {
			t.Errorf("a denied call reached the app: %s", target)
		}
	}
	if code, body := apiSidecar.AdminGet(t, "/ready"); code != 200 || strings.Contains(body, "warning") {
		t.Errorf("api /ready: %d %q, want 200 without a warning", code, body)
	}
	if v := apiSidecar.MetricSum(t, "meshlet_authz_default_policy", map[string]string{"policy": "deny"}); v != 1 {
		t.Errorf("meshlet_authz_default_policy{policy=deny} = %v, want 1", v)
	}
}

// TestAuthzDefaultUnknownDenies: api's meshlet reads the intentions with a token that can neither read
// /v1/agent/self nor authorize for api (another service's identity): it cannot learn the default policy, so it
// denies callers no intention names, lets through those an allow intention names, stays ready with a warning in
// /ready's body, logs why and says unknown in meshlet_authz_default_policy.
func TestAuthzDefaultUnknownDenies(t *testing.T) {
	agent := discoverytest.StartConsul(t, discoverytest.Options{ACL: true})
	client := agent.Client()
	if _, err := client.Connect().IntentionUpsert(&api.Intention{SourceName: "web", DestinationName: "api",
		Action: api.IntentionActionAllow}, nil); err != nil {
		t.Fatal(err)
	}
	dir := mtlsCerts(t, "api", "web", "batch")
	app := startAuthzApp(t)
	a := meshlettest.FreeAddrs(t, 2)
	f := mtlsSidecar{name: "api", app: app.addr, inbound: a[0], certDir: dir, cert: "api", admin: a[1]}.file()
	f.Discovery = meshlettest.Consul(agent.HTTPAddr, serviceToken(t, client, "billing"))
	apiSidecar := meshlettest.StartFile(t, f)
	grpcFailOnRace(t, "api", apiSidecar)

	if code, err := mtlsProbe(a[0], "/web", mtlsClientTLS(t, dir, "web", "http/1.1")); err != nil || code != 200 {
		t.Errorf("web, allowed by an intention: %d %v, want 200", code, err)
	}
	if code, err := mtlsProbe(a[0], "/batch", mtlsClientTLS(t, dir, "batch", "http/1.1")); err != nil || code != 403 {
		t.Errorf("batch, no intention, default unknown: %d %v, want 403", code, err)
	}
	if seen := app.targets(); !slices.Equal(seen, []string{"/web"}) {
		t.Errorf("the app saw %q, want only /web", seen)
	}
	code, body := apiSidecar.AdminGet(t, "/ready")
	if code != 200 || !strings.Contains(body, "warning: intentions: callers no intention names are denied") {
		t.Errorf("api /ready: %d %q, want 200 with a warning", code, body)
	}
	if v := apiSidecar.MetricSum(t, "meshlet_authz_default_policy", map[string]string{"policy": "unknown"}); v != 1 {
		t.Errorf("meshlet_authz_default_policy{policy=unknown} = %v, want 1", v)
	}
	if !strings.Contains(apiSidecar.Log(), "default intention policy unknown") {
		t.Errorf("the log does not say why the default is unknown:\n%s", apiSidecar.Log())
	}
}

// TestAuthzPermissivePlaintext: in permissive mode with inbound.tls.allow, a plaintext caller (HTTP/1.1, h2c, TCP)
// is denied and counted, while web over mutual TLS gets through; inbound.tls.allow_plaintext: true lets plaintext
// through again, and `meshlet check` warns about it. A bare name in the allow list is that service in api's own
// namespace: web of namespace team is refused.
func TestAuthzPermissivePlaintext(t *testing.T) {
	dir := mtlsCerts(t, "api", "web")
	app := mtlsStartApp(t, "api")
	a := meshlettest.FreeAddrs(t, 6)
	httpAPI := mtlsStart(t, mtlsSidecar{name: "api", app: app.addr, inbound: a[0], mode: "permissive", allow: []string{"web"},
		certDir: dir, cert: "api", admin: a[1]})
	tcpAPI := mtlsStart(t, mtlsSidecar{name: "api", protocol: "tcp", app: meshlettest.StartTCPBackend(t, tcpApp), inbound: a[2],
		mode: "permissive", allow: []string{"web"}, certDir: dir, cert: "api", admin: a[3]})
	lenient := mtlsSidecar{name: "api", app: app.addr, inbound: a[4], mode: "permissive", allow: []string{"web"},
		allowPlaintext: true, certDir: dir, cert: "api", admin: a[5]}.yaml()
	meshlettest.Start(t, a[5], lenient)

	t.Run("http", func(t *testing.T) {
		if resp, body := meshlettest.RawRequest(t, a[0], "GET /plain HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n"); resp.StatusCode != 403 ||
			resp.Header.Get("X-Meshlet-Error") != "denied" {
			t.Errorf("plaintext HTTP/1.1: %s %q, want 403 denied", resp.Status, body)
		}
		resp, err := meshlettest.H2CClient(nil).Get("http://" + a[0] + "/plain-h2c")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 403 || resp.ProtoMajor != 2 {
			t.Errorf("plaintext h2c: %s %s, want 403 over HTTP/2", resp.Proto, resp.Status)
		}
		if code, err := mtlsProbe(a[0], "/mtls", mtlsClientTLS(t, dir, "web", "http/1.1")); err != nil || code != 200 {
			t.Errorf("web over mutual TLS: %d %v", code, err)
		}
		if n := app.saw("/plain") + app.saw("/plain-h2c"); n != 0 {
			t.Errorf("the app saw %d plaintext requests", n)
		}
		if v := httpAPI.MetricSum(t, "meshlet_authz_denied_total", map[string]string{"source": "(plaintext)"}); v != 2 {
			t.Errorf("meshlet_authz_denied_total{source=(plaintext)} = %v, want 2", v)
		}
	})
	t.Run("tcp", func(t *testing.T) {
		c := meshlettest.DialHeld(t, a[2])
		defer c.Close()
		c.SetDeadline(time.Now().Add(8 * time.Second)) // within the listener's 10s wait for a first byte
		io.WriteString(c, "echo\n")                    // (permissive mode tells plaintext by the first byte)
		if b, err := io.ReadAll(c); len(b) != 0 || err != nil {
			t.Errorf("plaintext TCP: read %q, %v; want the connection closed before any byte", b, err)
		}
		cfg := mtlsClientTLS(t, dir, "web", "")
		cfg.NextProtos = nil // raw TCP: no ALPN
		tc, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", a[2], cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer tc.Close()
		tc.SetDeadline(time.Now().Add(10 * time.Second))
		if line, err := bufio.NewReader(tc).ReadString('\n'); line != "220 banner\n" {
			t.Errorf("web over mutual TLS: %q, %v; want the banner", line, err)
		}
		mtlsWaitMetric(t, tcpAPI, "meshlet_authz_denied_total", map[string]string{"source": "(plaintext)"}, 1)
	})
	t.Run("allow_plaintext", func(t *testing.T) {
		if resp, body := meshlettest.RawRequest(t, a[4], "GET /lenient HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n"); resp.StatusCode != 200 {
			t.Errorf("plaintext with allow_plaintext: %s %q, want 200", resp.Status, body)
		}
		path := meshlettest.WriteConfig(t, lenient)
		out, code := meshlettest.Exec(t, "check", "-config", path)
		if code != 0 || !strings.Contains(out, "warning: inbound.tls.allow_plaintext: true in permissive mode") {
			t.Errorf("meshlet check: exit %d, want 0 with a warning:\n%s", code, out)
		}
	})
	t.Run("bare name is this namespace", func(t *testing.T) {
		team := filepath.Join(t.TempDir(), "team")
		if err := os.MkdirAll(team, 0o700); err != nil {
			t.Fatal(err)
		}
		for _, f := range []string{"ca.crt", "ca.key"} {
			b, err := os.ReadFile(filepath.Join(dir, f))
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(team, f), b, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		if out, code := meshlettest.Exec(t, "certs", "issue", "-dir", team, "-service", "web", "-namespace", "team"); code != 0 {
			t.Fatalf("meshlet certs issue: exit %d\n%s", code, out)
		}
		if code, err := mtlsProbe(a[0], "/team", mtlsClientTLS(t, team, "web", "http/1.1")); err != nil || code != 403 {
			t.Errorf("web of namespace team, allow [web]: %d %v, want 403", code, err)
		}
	})
}
