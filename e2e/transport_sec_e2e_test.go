package e2e_test

// End-to-end tests of the transport's security and bounds (issue 11): discovery never hands a mutual TLS
// upstream plain instances, pooled connections keep the identity they were verified for across a reload, response
// headers are bounded, and idle TCP connections are closed.

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"meshlet.dev/meshlet/discovery/discoverytest"
	"meshlet.dev/meshlet/internal/meshlettest"
	"meshlet.dev/meshlet/proxy"
	"meshlet.dev/meshlet/proxy/proxytest"
	"meshlet.dev/meshlet/resilience"
)

// TestAutoModeNeverCallsPlainInstances: with a tls section, discovery mode auto never offers an upstream the
// plain instances of its service (they speak no TLS and enforce no intentions): while the service's sidecar fails
// its check, or when the service has no sidecar at all, a call gets 503 no_endpoint and the plain instance sees
// nothing. With tls.mode disabled on the upstream, the plain instances are used only when the service has no
// sidecar registered at all.
func TestAutoModeNeverCallsPlainInstances(t *testing.T) {
	agent := discoverytest.StartConsul(t, discoverytest.Options{})
	client := agent.Client()
	var mu sync.Mutex
	seen := map[string]int{}
	plain := meshlettest.StartBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen[r.URL.Path]++
		mu.Unlock()
		io.WriteString(w, "plain instance")
	}), false, nil)
	cases := []struct {
		name, service string
		tlsMode       string // upstream tls.mode; "" the default (mtls with a tls section)
		sidecar       bool   // the service has a sidecar registered, failing its check
		want          int
	}{
		{"mtls, sidecar failing", "svc-a", "", true, http.StatusServiceUnavailable},
		{"mtls, no sidecar at all", "svc-b", "", false, http.StatusServiceUnavailable},
		{"tls disabled, sidecar failing", "svc-c", "disabled", true, http.StatusServiceUnavailable},
		{"tls disabled, no sidecar at all", "svc-d", "disabled", false, http.StatusOK},
	}
	addrs := meshlettest.FreeAddrs(t, len(cases))
	var ups []proxy.UpstreamConfig
	for i, tc := range cases {
		port, _ := strconv.Atoi(strings.TrimPrefix(meshlettest.HostOf(plain), "127.0.0.1:"))
		err := client.Agent().ServiceRegister(&api.AgentServiceRegistration{ID: tc.service + "-1", Name: tc.service,
			Address: "127.0.0.1", Port: port, Check: &api.AgentServiceCheck{TTL: "1h", Status: api.HealthPassing}})
		if err != nil {
			t.Fatal(err)
		}
		if tc.sidecar {
			err := client.Agent().ServiceRegister(&api.AgentServiceRegistration{Kind: api.ServiceKindConnectProxy,
				ID: tc.service + "-1-sidecar-proxy", Name: tc.service + "-sidecar-proxy", Address: "127.0.0.1", Port: 1,
				Proxy: &api.AgentServiceConnectProxyConfig{DestinationServiceName: tc.service, DestinationServiceID: tc.service + "-1"},
				Check: &api.AgentServiceCheck{TTL: "1h", Status: api.HealthCritical}})
			if err != nil {
				t.Fatal(err)
			}
		}
		ups = append(ups, proxy.UpstreamConfig{Name: tc.service, Listen: addrs[i], Protocol: "http", TLS: proxy.UpstreamTLSConfig{Mode: tc.tlsMode}})
	}
	web := meshlettest.StartFile(t, consulTLSFile(t, "web", agent.HTTPAddr, "", ups...))
	grpcFailOnRace(t, "web", web)
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			path := "/" + tc.service
			code, body, reason := call("http://" + addrs[i] + path)
			if code != tc.want {
				t.Fatalf("%d %q, want %d", code, body, tc.want)
			}
			mu.Lock()
			n := seen[path]
			mu.Unlock()
			if tc.want != http.StatusOK {
				if reason != "no_endpoint" {
					t.Errorf("X-Meshlet-Error %q, want no_endpoint", reason)
				}
				if n != 0 {
					t.Fatalf("the plain instance got %d requests, want none", n)
				}
			} else if n != 1 {
				t.Fatalf("the plain instance got %d requests, want 1", n)
			}
		})
	}
}

// TestPooledConnectionAcrossReload: a reload that changes what an upstream's endpoint must be (the service its
// identity must name, or mutual TLS where there was plaintext) never lets a connection pooled under the old
// settings serve the new ones: the next request dials anew and is verified as the new settings require.
func TestPooledConnectionAcrossReload(t *testing.T) {
	dir := mtlsCerts(t, "api", "web")
	app := mtlsStartApp(t, "api")
	for _, tc := range []struct {
		name          string
		before, after mtlsUpstream // listen and endpoint are filled in
		wantAfter     int
		// check looks at the metrics of the caller (web) and the endpoint (api) after the second request.
		check func(t *testing.T, web, api *meshlettest.Proc)
	}{
		// The first call is verified as api; after the reload the endpoint must be billing: the pooled
		// connection (api's) must not serve it, and a new handshake refuses api.
		{"expected identity changes", mtlsUpstream{name: "api", peer: "sidecar"},
			mtlsUpstream{name: "api", service: "billing", peer: "sidecar"}, http.StatusBadGateway,
			func(t *testing.T, web, _ *meshlettest.Proc) {
				if n := web.MetricSum(t, "meshlet_tls_handshake_failures_total", mtlsFailures("outbound", "bad_identity")); n < 1 {
					t.Errorf("web's outbound bad_identity handshake failures: %v, want new handshakes", n)
				}
			}},
		// The first call is plaintext (tls.mode disabled, permissive inbound); after the reload it must be mutual
		// TLS: a new connection, not the pooled plaintext one.
		{"plaintext becomes mutual TLS", mtlsUpstream{name: "api", peer: "sidecar", tlsMode: "disabled"},
			mtlsUpstream{name: "api", peer: "sidecar", tlsMode: "mtls"}, http.StatusOK,
			func(t *testing.T, _, api *meshlettest.Proc) {
				if n := api.MetricSum(t, "meshlet_connections_total", map[string]string{"direction": "inbound"}); n != 2 {
					t.Errorf("api's inbound connections: %v, want 2 (a new one for mutual TLS)", n)
				}
				if n := api.MetricSum(t, "meshlet_tls_plaintext_connections_total", nil); n != 1 {
					t.Errorf("api's plaintext connections: %v, want 1 (the first call only)", n)
				}
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := meshlettest.FreeAddrs(t, 4)
			inbound, listen := a[0], a[1]
			api := mtlsStart(t, mtlsSidecar{name: "api", app: app.addr, inbound: inbound, mode: "permissive",
				certDir: dir, cert: "api", admin: a[2]})
			web := mtlsSidecar{name: "web", certDir: dir, cert: "web", admin: a[3]}
			tc.before.listen, tc.before.endpoint = listen, inbound
			tc.after.listen, tc.after.endpoint = listen, inbound
			web.upstreams = []mtlsUpstream{tc.before}
			p := mtlsStart(t, web)
			if code, body, _ := call("http://" + listen + "/one"); code != http.StatusOK {
				t.Fatalf("before the reload: %d %q", code, body)
			}
			web.upstreams = []mtlsUpstream{tc.after}
			p.RewriteConfig(t, web.yaml())
			p.Cmd.Process.Signal(syscall.SIGHUP)
			meshlettest.Eventually(t, 5*time.Second, "the reload is applied", func() bool {
				return p.MetricSum(t, "meshlet_config_reloads_total", map[string]string{"result": "success"}) == 1
			})
			if code, body, _ := call("http://" + listen + "/two"); code != tc.wantAfter {
				t.Fatalf("after the reload: %d %q, want %d", code, body, tc.wantAfter)
			}
			tc.check(t, p, api)
		})
	}
}

// TestResponseHeaderBombs: endpoints that answer with 4 MiB of response headers (HTTP/1.1 and h2c upstreams, and
// the local app behind the inbound listener) get 502 response_headers_too_large, and 24 such calls at once leave
// the meshlet process's peak RSS (VmHWM) within 64 MiB of what it was before them.
func TestResponseHeaderBombs(t *testing.T) {
	const size, calls = 4 << 20, 24
	h1, h2c, app := proxytest.NewHeaderBomb(t, size, false), proxytest.NewHeaderBomb(t, size, true),
		proxytest.NewHeaderBomb(t, size, false)
	a := meshlettest.FreeAddrs(t, 4)
	once := resilience.Config{Retry: resilience.RetryConfig{MaxAttempts: 1}}
	f := meshlettest.Sidecar("web", a[3],
		proxy.UpstreamConfig{Name: "h1", Listen: a[1], Protocol: "http", Endpoints: []string{h1.Addr()}, Resilience: once},
		proxy.UpstreamConfig{Name: "h2c", Listen: a[2], Protocol: "http2", Endpoints: []string{h2c.Addr()}, Resilience: once})
	f.Service.Address, f.Inbound.Listen = app.Addr(), a[0]
	f.Shutdown.DrainTimeout = 0 // drain_delay only
	p := meshlettest.StartFile(t, f)
	grpcFailOnRace(t, "web", p)
	before := vmHWM(t, p)
	for _, tc := range []struct {
		name, listen, direction, upstream string
		bomb                              *proxytest.HeaderBomb
	}{
		{"http1 upstream", a[1], "outbound", "h1", h1},
		{"h2c upstream", a[2], "outbound", "h2c", h2c},
		{"inbound app", a[0], "inbound", "web", app},
	} {
		t.Run(tc.name, func(t *testing.T) {
			client := &http.Client{Transport: &http.Transport{MaxConnsPerHost: calls}, Timeout: 60 * time.Second}
			var wg sync.WaitGroup
			errs := make(chan string, calls)
			for range calls {
				wg.Go(func() {
					code, reason, err := bombCall(client, "http://"+tc.listen+"/")
					if err != nil || code != http.StatusBadGateway || reason != "response_headers_too_large" {
						errs <- fmt.Sprintf("%d %q %v", code, reason, err)
					}
				})
			}
			wg.Wait()
			close(errs)
			for e := range errs {
				t.Errorf("call: %s, want 502 response_headers_too_large", e)
			}
			// Over HTTP/2 the calls share a connection, which the first oversized block ends: the bomb may see
			// fewer of them, and the others fail with it.
			if n := tc.bomb.Requests.Load(); n < 1 || n > calls {
				t.Errorf("the bomb got %d requests, want 1 to %d", n, calls)
			}
			want := map[string]string{"direction": tc.direction, "upstream": tc.upstream, "reason": "response_headers_too_large"}
			if n := p.MetricSum(t, "meshlet_upstream_errors_total", want); n != calls {
				t.Errorf("meshlet_upstream_errors_total%v = %v, want %d", want, n, calls)
			}
			peak := vmHWM(t, p)
			t.Logf("peak RSS %d MiB (before the bombs: %d MiB)", peak>>20, before>>20)
			if peak-before > 64<<20 {
				t.Fatalf("peak RSS grew by %d MiB with %d calls, want at most 64 MiB", (peak-before)>>20, calls)
			}
		})
	}
}

// bombCall does a GET and returns the status and X-Meshlet-Error.
func bombCall(c *http.Client, url string) (int, string, error) {
	resp, err := c.Get(url)
	if err != nil {
		return 0, "", err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, resp.Header.Get("X-Meshlet-Error"), nil
}

// vmHWM returns the peak resident set size of p, in bytes (/proc/<pid>/status VmHWM).
func vmHWM(t testing.TB, p *meshlettest.Proc) int64 {
	t.Helper()
	kb, err := meshlettest.ProcField(p.Cmd.Process.Pid, "status", "VmHWM:")
	if errors.Is(err, fs.ErrNotExist) {
		t.Skipf("no /proc: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	return kb << 10
}

// TestTCPIdleTimeoutE2E: outbound and inbound TCP listeners close a connection with no byte either way for
// limits.tcp_idle_timeout, and the closed connection's max_connections slot takes a new connection.
func TestTCPIdleTimeoutE2E(t *testing.T) {
	const idle = 500 * time.Millisecond
	echo := meshlettest.StartTCPBackend(t, func(c *net.TCPConn) { io.Copy(c, c) })
	a := meshlettest.FreeAddrs(t, 3)
	inbound, listen, admin := a[0], a[1], a[2]
	f := meshlettest.Sidecar("raw", admin, proxy.UpstreamConfig{Name: "echo", Listen: listen, Protocol: "tcp", Endpoints: []string{echo}})
	f.Service.Address, f.Service.Protocol, f.Inbound.Listen = echo, "tcp", inbound
	f.Inbound.Limits = proxy.ListenerLimits{TCPIdleTimeout: idle, MaxConnections: 1}
	f.Outbound.Limits = f.Inbound.Limits
	f.Shutdown.DrainTimeout = 0 // drain_delay only
	meshlettest.StartFile(t, f)
	for _, tc := range []struct{ name, addr string }{{"outbound", listen}, {"inbound", inbound}} {
		t.Run(tc.name, func(t *testing.T) {
			c := meshlettest.DialHeld(t, tc.addr)
			c.SetDeadline(time.Now().Add(10 * time.Second))
			if _, err := io.WriteString(c, "hello"); err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(c, make([]byte, 5)); err != nil {
				t.Fatalf("echo: %v", err)
			}
			last := time.Now()
			if _, err := c.Read(make([]byte, 1)); err == nil || os.IsTimeout(err) {
				t.Fatalf("the idle connection was not closed: %v", err)
			}
			if took := time.Since(last); took < idle-100*time.Millisecond || took > idle+5*time.Second {
				t.Fatalf("closed %v after the last byte, want about %v", took, idle)
			}
			// max_connections is 1: the slot is free again.
			meshlettest.Eventually(t, 5*time.Second, "a new connection gets through", func() bool {
				c, err := net.DialTimeout("tcp", tc.addr, time.Second)
				if err != nil {
					return false
				}
				defer c.Close()
				c.SetDeadline(time.Now().Add(time.Second))
				io.WriteString(c, "ping")
				got := make([]byte, 4)
				_, err = io.ReadFull(c, got)
				return err == nil && string(got) == "ping"
			})
		})
	}
}
