package e2e_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"meshlet.dev/meshlet/admin"
	"meshlet.dev/meshlet/internal/meshlettest"
)

// openProxyRig is one meshlet process with an inbound listener (to the app) and a name-routed outbound listener
// (one upstream, "api", whose endpoint is the app), plus a "victim" server on loopback that no request may ever
// reach through meshlet.
type openProxyRig struct {
	p                 *meshlettest.Proc
	inbound, outbound string
	victim            string // 127.0.0.1:port
	victimPort        string
	victimConns       atomic.Int64 // connections the victims accepted (127.0.0.1 and, when available, [::1])
	appReqs           atomic.Int64
}

const openProxyToken = "s3cr3t-consul-token-0d6f"

// startOpenProxyRig starts the rig; withToken adds discovery.consul with a token (and an agent that is not there).
func startOpenProxyRig(t *testing.T, withToken bool) *openProxyRig {
	t.Helper()
	r := &openProxyRig{inbound: meshlettest.FreeAddr(t), outbound: meshlettest.FreeAddr(t)}
	app := meshlettest.StartBackend(t, http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.appReqs.Add(1)
		io.WriteString(w, "app")
	}), true, nil)
	victim := meshlettest.StartBackend(t, http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		io.WriteString(w, "victim")
	}), true, &r.victimConns)
	r.victim = meshlettest.HostOf(victim)
	_, r.victimPort, _ = net.SplitHostPort(r.victim)
	// The same port on the IPv6 loopback, where the machine has one: a name like [::1]:port must not reach it.
	if ln, err := net.Listen("tcp", net.JoinHostPort("::1", r.victimPort)); err == nil {
		t.Cleanup(func() { ln.Close() })
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				r.victimConns.Add(1)
				c.Close()
			}
		}()
	}
	cfg := e2eConfig{Name: "web", Address: meshlettest.HostOf(app), InboundListen: r.inbound, OutboundListen: r.outbound,
		Upstreams: []e2eUpstream{{Name: "api", Peer: "app", Endpoints: []string{meshlettest.HostOf(app)}}},
		Admin:     meshlettest.FreeAddr(t)}
	yml := cfg.yaml()
	if withToken {
		// A Consul agent that is not there (so /ready stays failing; /live answers): the token must never show.
		yml += fmt.Sprintf("discovery:\n  consul:\n    address: %s\n    token: %s\n", meshlettest.FreeAddr(t), openProxyToken)
		r.p = meshlettest.Launch(t, yml)
		r.p.Admin = cfg.Admin
		meshlettest.Eventually(t, 15*time.Second, "admin /live answers 200", func() bool {
			resp, err := http.Get("http://" + cfg.Admin + "/live")
			if err != nil {
				return false
			}
			resp.Body.Close()
			return resp.StatusCode == http.StatusOK
		})
		return r
	}
	r.p = meshlettest.Start(t, cfg.Admin, yml)
	return r
}

// assertVictimUntouched fails the test if the victim accepted any connection.
func (r *openProxyRig) assertVictimUntouched(t *testing.T) {
	t.Helper()
	if n := r.victimConns.Load(); n != 0 {
		t.Fatalf("the victim accepted %d connection(s) through meshlet: an open proxy", n)
	}
}

// TestOpenProxyInbound: the inbound listener forwards only to the local app, whatever the request names as its
// destination.
func TestOpenProxyInbound(t *testing.T) {
	r := startOpenProxyRig(t, false)
	t.Run("Host header", func(t *testing.T) {
		for _, host := range []string{r.victim, "[::1]:" + r.victimPort, "victim.mesh", "api"} {
			req, _ := http.NewRequest("GET", "http://"+r.inbound+"/", nil)
			req.Host = host
			status, body := meshlettest.Do(t, meshlettest.H1Client(nil), req)
			if status != http.StatusOK || body != "app" {
				t.Errorf("Host %s: %d %q, want 200 from the app", host, status, body)
			}
		}
		r.assertVictimUntouched(t)
	})
	t.Run("h2c authority", func(t *testing.T) {
		c := meshlettest.H2CClient(nil)
		for _, host := range []string{r.victim, "victim.mesh"} {
			req, _ := http.NewRequest("GET", "http://"+r.inbound+"/", nil)
			req.Host = host
			status, body := meshlettest.Do(t, c, req)
			if status != http.StatusOK || body != "app" {
				t.Errorf(":authority %s: %d %q, want 200 from the app", host, status, body)
			}
		}
		r.assertVictimUntouched(t)
	})
	t.Run("absolute-form URI", func(t *testing.T) {
		before := r.appReqs.Load()
		resp, body := meshlettest.RawRequest(t, r.inbound,
			"GET http://"+r.victim+"/ HTTP/1.1\r\nHost: "+r.victim+"\r\nConnection: close\r\n\r\n")
		if resp.StatusCode != http.StatusOK || body != "app" || r.appReqs.Load() != before+1 {
			t.Errorf("absolute-form request: %d %q, want 200 from the app", resp.StatusCode, body)
		}
		r.assertVictimUntouched(t)
	})
	t.Run("CONNECT", func(t *testing.T) {
		status, tunnel := rawConnect(t, r.inbound, r.victim)
		if status/100 == 2 {
			t.Errorf("CONNECT %s answered %d: a tunnel (through it: %q)", r.victim, status, tunnel)
		}
		t.Logf("inbound CONNECT %s: %d", r.victim, status)
		r.assertVictimUntouched(t)
	})
}

// TestOpenProxyOutbound: the name-routed listener serves configured upstreams only; anything else, including
// names that look like addresses, is 404 (gRPC: UNIMPLEMENTED) and no connection is made anywhere.
func TestOpenProxyOutbound(t *testing.T) {
	r := startOpenProxyRig(t, false)
	// The configured name works, so the refusals below are the routing's doing, not a broken listener.
	req, _ := http.NewRequest("GET", "http://"+r.outbound+"/", nil)
	req.Host = "api"
	if status, body := meshlettest.Do(t, meshlettest.H1Client(nil), req); status != http.StatusOK || body != "app" {
		t.Fatalf("Host api: %d %q, want 200 from the app", status, body)
	}
	appBefore := r.appReqs.Load()
	names := []string{"127.0.0.1:" + r.victimPort, "[::1]:" + r.victimPort, "localhost:" + r.victimPort,
		"victim.mesh", "victim", "api.evil", "evil.api", "api.127.0.0.1", "2130706433:" + r.victimPort}
	for _, name := range names {
		t.Run("HTTP/1.1 Host "+name, func(t *testing.T) {
			req, _ := http.NewRequest("GET", "http://"+r.outbound+"/", nil)
			req.Host = name
			resp, err := meshlettest.H1Client(nil).Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusNotFound || resp.Header.Get("X-Meshlet-Error") != "unknown_upstream" {
				t.Errorf("Host %s: %d %q (X-Meshlet-Error %q), want 404 unknown_upstream", name, resp.StatusCode,
					body, resp.Header.Get("X-Meshlet-Error"))
			}
		})
		t.Run("gRPC authority "+name, func(t *testing.T) {
			req, _ := http.NewRequest("POST", "http://"+r.outbound+"/pkg.Svc/Method", bytes.NewReader([]byte{0, 0, 0, 0, 0}))
			req.Host = name
			req.Header.Set("Content-Type", "application/grpc")
			req.Header.Set("TE", "trailers")
			resp, err := meshlettest.H2CClient(nil).Do(req)
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			code := resp.Header.Get("Grpc-Status")
			if code == "" {
				code = resp.Trailer.Get("Grpc-Status")
			}
			if resp.StatusCode != http.StatusOK || code != "12" {
				t.Errorf(":authority %s: HTTP %d grpc-status %q, want 200 and 12 (UNIMPLEMENTED)", name, resp.StatusCode, code)
			}
		})
	}
	t.Run("absolute-form URI", func(t *testing.T) {
		resp, body := meshlettest.RawRequest(t, r.outbound,
			"GET http://"+r.victim+"/ HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n")
		// net/http takes the host of an absolute-form URI over the Host header (RFC 9112 3.2.2).
		if resp.StatusCode != http.StatusNotFound || body == "victim" {
			t.Errorf("absolute-form request for %s: %d %q, want 404", r.victim, resp.StatusCode, body)
		}
	})
	t.Run("CONNECT", func(t *testing.T) {
		status, tunnel := rawConnect(t, r.outbound, r.victim)
		if status != http.StatusNotFound {
			t.Errorf("CONNECT %s: %d (after it: %q), want 404", r.victim, status, tunnel)
		}
	})
	if n := r.appReqs.Load(); n != appBefore {
		t.Errorf("the app got %d request(s) for names that are no upstream", n-appBefore)
	}
	r.assertVictimUntouched(t)
}

// TestOpenProxyAdmin: /debug/* never shows the Consul token, and the admin listener defaults to loopback.
func TestOpenProxyAdmin(t *testing.T) {
	r := startOpenProxyRig(t, true)
	for _, path := range []string{"/debug/config", "/debug/upstreams", "/"} {
		status, body := r.p.AdminGet(t, path)
		if status != http.StatusOK {
			t.Errorf("GET %s: %d", path, status)
		}
		if strings.Contains(body, openProxyToken) {
			t.Errorf("GET %s shows the Consul token:\n%s", path, body)
		}
	}
	if _, body := r.p.AdminGet(t, "/debug/config"); !strings.Contains(body, "consul") {
		t.Errorf("/debug/config does not show the consul section at all (so the redaction is not tested):\n%s", body)
	}
}

// TestOpenProxyAdminDefault: a config without admin.listen puts the admin listener on 127.0.0.1:15000 only.
func TestOpenProxyAdminDefault(t *testing.T) {
	def := admin.DefaultListen
	if host, _, _ := net.SplitHostPort(def); host != "127.0.0.1" {
		t.Fatalf("admin.DefaultListen is %q, want loopback", def)
	}
	if ln, err := net.Listen("tcp", def); err != nil {
		t.Skipf("%s is busy on this machine: %v", def, err)
	} else {
		ln.Close()
	}
	p := meshlettest.Launch(t, "service: {name: web}\nshutdown: {drain_delay: 0s, drain_timeout: 5s}\n")
	p.Admin = def
	if err := p.WaitReady(context.Background(), 15*time.Second); err != nil {
		t.Fatalf("no admin listener on %s: %v\nlog:\n%s", def, err, p.Log())
	}
	_, port, _ := net.SplitHostPort(def)
	addrs, _ := net.InterfaceAddrs()
	tried := 0
	for _, a := range addrs {
		ipn, ok := a.(*net.IPNet)
		if !ok || ipn.IP.IsLoopback() || ipn.IP.IsLinkLocalUnicast() {
			continue
		}
		tried++
		addr := net.JoinHostPort(ipn.IP.String(), port)
		if c, err := net.DialTimeout("tcp", addr, 2*time.Second); err == nil {
			c.Close()
			t.Errorf("the admin listener answers on %s: it must bind loopback only by default", addr)
		}
	}
	t.Logf("admin on %s; refused on %d non-loopback address(es)", def, tried)
}

// rawConnect writes `CONNECT target` on a new connection to addr and returns the status of the answer and what
// came after it (if meshlet had opened a tunnel, a request written into it would reach target).
func rawConnect(t *testing.T, addr, target string) (int, string) {
	t.Helper()
	c := meshlettest.DialHeld(t, addr)
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", target, target)
	resp, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: "CONNECT"})
	if err != nil {
		t.Fatalf("reading the answer to CONNECT %s: %v", target, err)
	}
	status := resp.StatusCode
	if status/100 != 2 {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
		resp.Body.Close()
		return status, string(b)
	}
	// A 2xx to CONNECT means a tunnel: speak HTTP through it and see who answers.
	fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", target)
	c.SetDeadline(time.Now().Add(3 * time.Second))
	b, _ := io.ReadAll(io.LimitReader(c, 4<<10))
	return status, string(b)
}
