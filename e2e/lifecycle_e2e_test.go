package e2e_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"meshlet.dev/meshlet/internal/meshlettest"
)

// TestSIGTERMDrain sends SIGTERM to a meshlet with a request in flight: /ready turns 503 at once, new requests are
// still served during drain_delay, the in-flight request completes with 200 and the process exits 0.
func TestSIGTERMDrain(t *testing.T) {
	for _, which := range []string{"client side (A)", "server side (B)"} {
		t.Run(which, func(t *testing.T) {
			arrived := make(chan struct{}, 1)
			release := make(chan struct{})
			mux := http.NewServeMux()
			mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
				arrived <- struct{}{}
				select {
				case <-release:
					io.WriteString(w, "slow done")
				case <-time.After(15 * time.Second):
					http.Error(w, "never released", 500)
				}
			})
			mux.HandleFunc("/fast", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "fast") })
			srv := meshlettest.StartBackend(t, mux, false, nil)
			drain := func(c *e2eConfig) { c.DrainDelay, c.DrainTimeout = "1s", "5s" }
			m := startMesh(t, topoSidecar, meshlettest.HostOf(srv), "http", meshOpts{a: drain, b: drain})
			target, probe := m.A, m.Listen
			if strings.HasPrefix(which, "server") {
				target, probe = m.B, m.Inbound
			}

			type result struct {
				status int
				body   string
				err    error
			}
			slow := make(chan result, 1)
			go func() {
				resp, err := (&http.Client{Timeout: 20 * time.Second}).Get(m.URL() + "/slow")
				if err != nil {
					slow <- result{err: err}
					return
				}
				defer resp.Body.Close()
				b, err := io.ReadAll(resp.Body)
				slow <- result{resp.StatusCode, string(b), err}
			}()
			select {
			case <-arrived:
			case <-time.After(10 * time.Second):
				t.Fatal("slow request never reached the app")
			}
			signalled := time.Now()
			if err := target.Cmd.Process.Signal(syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			// /ready must fail at once (well within the 1 s drain delay).
			var readyBody string
			meshlettest.Eventually(t, 900*time.Millisecond, "/ready answers 503 after SIGTERM", func() bool {
				var code int
				code, readyBody, _ = call("http://" + target.Admin + "/ready")
				return code == http.StatusServiceUnavailable
			})
			if strings.TrimSpace(readyBody) == "" {
				t.Error("/ready 503 has no reason in its body")
			}
			// Still accepting during drain_delay: a new request on a new connection is served.
			if time.Since(signalled) < 700*time.Millisecond {
				status, body := meshlettest.GetBody(t, &http.Client{Transport: &http.Transport{DisableKeepAlives: true},
					Timeout: 5 * time.Second}, "http://"+probe+"/fast")
				if status != 200 || body != "fast" {
					t.Errorf("request during drain delay: got %d %q, want 200 fast", status, body)
				}
			} else {
				t.Log("too slow to probe the drain delay; skipped that check")
			}
			// Hold the slow request past the drain delay so graceful shutdown has to wait for it.
			time.AfterFunc(time.Until(signalled.Add(1500*time.Millisecond)), func() { close(release) })
			r := <-slow
			if r.err != nil || r.status != 200 || r.body != "slow done" {
				t.Errorf("in-flight request: got %d %q %v, want 200 %q", r.status, r.body, r.err, "slow done")
			}
			if code := target.Wait(t, 10*time.Second); code != 0 {
				t.Errorf("exit code %d after SIGTERM, want 0", code)
			}
			if d := time.Since(signalled); d < time.Second {
				t.Errorf("exited %v after SIGTERM, before the 1s drain delay", d)
			}
			assertNoCrash(t, target.Log())
		})
	}
}

// TestSIGTERMIdle: an idle meshlet with drain_delay 0 exits 0 promptly on SIGTERM and on SIGINT.
func TestSIGTERMIdle(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		t.Run(sig.String(), func(t *testing.T) {
			cfg := e2eConfig{Name: "web", Admin: meshlettest.FreeAddr(t), Upstreams: []e2eUpstream{{Name: "api",
				Listen: meshlettest.FreeAddr(t), Endpoints: []string{"127.0.0.1:1"}}}}
			p := meshlettest.Start(t, cfg.Admin, cfg.yaml())
			p.Cmd.Process.Signal(sig)
			if code := p.Wait(t, 5*time.Second); code != 0 {
				t.Errorf("exit code %d, want 0", code)
			}
		})
	}
}

// upstreamsDoc is the JSON of /debug/upstreams.
type upstreamsDoc struct {
	Upstreams []struct {
		Name      string `json:"name"`
		Protocol  string `json:"protocol"`
		Listen    string `json:"listen"`
		Peer      string `json:"peer"`
		LB        string `json:"lb"`
		Subset    int    `json:"subset_size"`
		Endpoints []struct {
			ID        string `json:"id"`
			Address   string `json:"address"`
			InFlight  int64  `json:"in_flight"`
			Requests  int64  `json:"requests"`
			Failures  int64  `json:"failures"`
			LastError string `json:"last_error"`
			InSubset  bool   `json:"in_subset"`
		} `json:"endpoints"`
	} `json:"upstreams"`
}

func debugUpstreams(t testing.TB, p *meshlettest.Proc) upstreamsDoc {
	t.Helper()
	status, body := p.AdminGet(t, "/debug/upstreams")
	if status != 200 {
		t.Fatalf("/debug/upstreams: %d %s", status, body)
	}
	var doc upstreamsDoc
	dec := json.NewDecoder(strings.NewReader(body))
	if err := dec.Decode(&doc); err != nil {
		t.Fatalf("/debug/upstreams is not the documented JSON: %v\n%s", err, body)
	}
	return doc
}

func postReload(t testing.TB, p *meshlettest.Proc) (int, string) {
	t.Helper()
	resp, err := http.Post("http://"+p.Admin+"/debug/reload", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestReload changes the endpoint list (SIGHUP or POST /debug/reload): new requests go to the new endpoint, and a
// keep-alive client connection opened before the reload keeps working on the same connection.
func TestReload(t *testing.T) {
	for _, tc := range []struct {
		trigger, topo string
	}{{"SIGHUP", topoApp}, {"POST", topoSidecar}} {
		t.Run(tc.trigger+"/"+tc.topo, func(t *testing.T) {
			var streamStarted = make(chan struct{}, 1)
			var streamRelease = make(chan struct{})
			newApp := func(name string) string {
				srv := meshlettest.StartBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					if r.URL.Path == "/stream" {
						io.WriteString(w, name+" part1;")
						http.NewResponseController(w).Flush()
						streamStarted <- struct{}{}
						select {
						case <-streamRelease:
						case <-time.After(15 * time.Second):
						}
						io.WriteString(w, "part2")
						return
					}
					io.WriteString(w, name)
				}), false, nil)
				return meshlettest.HostOf(srv)
			}
			app1, app2 := newApp("one"), newApp("two")
			m := startMesh(t, tc.topo, app1, "http", meshOpts{})
			// The second destination: the second app directly, or a second B sidecar in front of it.
			dest2 := app2
			if tc.topo == topoSidecar {
				in := meshlettest.FreeAddr(t)
				cfg := e2eConfig{Name: "api", Address: app2, InboundListen: in, Admin: meshlettest.FreeAddr(t)}
				meshlettest.Start(t, cfg.Admin, cfg.yaml())
				dest2 = in
			}
			var dials atomic.Int64
			c := meshlettest.H1Client(&dials)
			get := func() (string, bool) {
				t.Helper()
				var reused bool
				trace := &httptrace.ClientTrace{GotConn: func(ci httptrace.GotConnInfo) { reused = ci.Reused }}
				req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), "GET",
					m.URL()+"/", nil)
				status, body := meshlettest.Do(t, c, req)
				if status != 200 {
					t.Fatalf("got %d %q", status, body)
				}
				return body, reused
			}
			if body, _ := get(); body != "one" {
				t.Fatalf("before reload: %q, want one", body)
			}
			// A streaming response in flight across the reload, on a separate connection.
			streamDone := make(chan string, 1)
			go func() {
				resp, err := (&http.Client{Timeout: 20 * time.Second}).Get(m.URL() + "/stream")
				if err != nil {
					streamDone <- err.Error()
					return
				}
				defer resp.Body.Close()
				b, err := io.ReadAll(resp.Body)
				if err != nil {
					streamDone <- fmt.Sprintf("%q: %v", b, err)
					return
				}
				streamDone <- string(b)
			}()
			select {
			case <-streamStarted:
			case <-time.After(10 * time.Second):
				t.Fatal("stream request never reached the app")
			}

			cfg := m.ACfg
			cfg.Upstreams = append([]e2eUpstream(nil), cfg.Upstreams...)
			cfg.Upstreams[0].Endpoints = []string{dest2}
			m.A.RewriteConfig(t, cfg.yaml())
			switch tc.trigger {
			case "SIGHUP":
				m.A.Cmd.Process.Signal(syscall.SIGHUP)
			case "POST":
				if status, body := postReload(t, m.A); status != 200 {
					t.Fatalf("POST /debug/reload: %d %q, want 200", status, body)
				}
			}
			meshlettest.Eventually(t, 5*time.Second, "requests reach the new endpoint after reload", func() bool {
				body, reused := get()
				if !reused {
					t.Fatalf("keep-alive connection was not reused across the reload (dials %d)", dials.Load())
				}
				return body == "two"
			})
			for i := range 5 {
				if body, _ := get(); body != "two" {
					t.Fatalf("request %d after reload reached %q, want two", i, body)
				}
			}
			if d := dials.Load(); d != 1 {
				t.Errorf("client dialled %d connections, want 1 (the same keep-alive connection throughout)", d)
			}
			close(streamRelease)
			if s := <-streamDone; s != "one part1;part2" {
				t.Errorf("streaming response in flight across the reload: %s", s)
			}
			if v := m.A.MetricSum(t, "meshlet_config_reloads_total", map[string]string{"result": "success"}); v != 1 {
				t.Errorf(`meshlet_config_reloads_total{result="success"} = %v, want 1`, v)
			}
			doc := debugUpstreams(t, m.A)
			if len(doc.Upstreams) != 1 || len(doc.Upstreams[0].Endpoints) != 1 ||
				doc.Upstreams[0].Endpoints[0].Address != dest2 {
				t.Errorf("/debug/upstreams after reload: %+v, want the single endpoint %s", doc, dest2)
			}
			if v := m.A.MetricSum(t, "meshlet_upstream_endpoints", map[string]string{"upstream": "api"}); v != 1 {
				t.Errorf("meshlet_upstream_endpoints{upstream=api} = %v, want 1", v)
			}
		})
	}
}

// TestReloadBadFile: a bad file is rejected by POST /debug/reload (400 with the error) and by SIGHUP; the old
// config keeps serving and the failure is counted.
func TestReloadBadFile(t *testing.T) {
	srv := meshlettest.StartBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "still here")
	}), false, nil)
	m := startMesh(t, topoApp, meshlettest.HostOf(srv), "http", meshOpts{})
	c := meshlettest.H1Client(nil)
	failures := map[string]string{"result": "failure"}
	for i, tc := range []struct {
		name, config, trigger, mention string
	}{
		{"invalid yaml via POST", "service: [\n", "POST", ""},
		{"unknown key via POST", m.ACfg.yaml() + "bogus_key: 1\n", "POST", "bogus_key"},
		{"invalid value via POST", strings.Replace(m.ACfg.yaml(), "peer: app", "peer: nobody", 1), "POST",
			"upstreams[0].peer"},
		{"invalid yaml via SIGHUP", "service: [\n", "SIGHUP", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m.A.RewriteConfig(t, tc.config)
			switch tc.trigger {
			case "POST":
				status, body := postReload(t, m.A)
				if status != http.StatusBadRequest {
					t.Errorf("POST /debug/reload: %d %q, want 400", status, body)
				}
				if strings.TrimSpace(body) == "" || !strings.Contains(body, tc.mention) {
					t.Errorf("reload error body %q does not explain the problem (want mention of %q)", body,
						tc.mention)
				}
			case "SIGHUP":
				m.A.Cmd.Process.Signal(syscall.SIGHUP)
			}
			want := float64(i + 1)
			meshlettest.Eventually(t, 5*time.Second, fmt.Sprintf("reload failures == %v", want), func() bool {
				return m.A.MetricSum(t, "meshlet_config_reloads_total", failures) == want
			})
			if status, body := meshlettest.GetBody(t, c, m.URL()+"/"); status != 200 || body != "still here" {
				t.Errorf("after bad reload: got %d %q, want the old config serving", status, body)
			}
			if v := m.A.MetricSum(t, "meshlet_config_reloads_total", map[string]string{"result": "success"}); v != 0 {
				t.Errorf("reload successes = %v, want 0", v)
			}
			select {
			case <-m.A.Exited():
				t.Fatalf("meshlet exited after a bad reload: %v", m.A.WaitErr())
			default:
			}
		})
	}
	// A good file afterwards is accepted.
	m.A.RewriteConfig(t, m.ACfg.yaml())
	if status, body := postReload(t, m.A); status != 200 {
		t.Errorf("reload of the good file: %d %q", status, body)
	}
}

// TestAdminDebug checks /live, /ready, /debug/upstreams (endpoints and counts) and /debug/config.
func TestAdminDebug(t *testing.T) {
	srv := meshlettest.StartBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok")
	}), false, nil)
	refused := meshlettest.FreeAddr(t)
	m := startMesh(t, topoApp, meshlettest.HostOf(srv), "http", meshOpts{a: func(c *e2eConfig) {
		c.Upstreams = append(c.Upstreams, e2eUpstream{Name: "broken", Listen: meshlettest.FreeAddr(t), Protocol: "http2",
			LB: "round_robin", Endpoints: []string{refused}})
	}})
	c := meshlettest.H1Client(nil)
	const n = 7
	for range n {
		if status, _ := meshlettest.GetBody(t, c, m.URL()+"/"); status != 200 {
			t.Fatalf("status %d", status)
		}
	}
	if status, _ := meshlettest.GetBody(t, c, "http://"+m.ACfg.Upstreams[1].Listen+"/"); status != 502 {
		t.Errorf("broken upstream: status %d, want 502", status)
	}

	t.Run("live and ready", func(t *testing.T) {
		for path, want := range map[string]string{"/live": "ok", "/ready": "ready"} {
			status, body := m.A.AdminGet(t, path)
			if status != 200 || strings.TrimSpace(body) != want {
				t.Errorf("%s: %d %q, want 200 %q", path, status, body, want)
			}
		}
	})
	t.Run("upstreams", func(t *testing.T) {
		doc := debugUpstreams(t, m.A)
		if len(doc.Upstreams) != 2 {
			t.Fatalf("got %d upstreams, want 2: %+v", len(doc.Upstreams), doc)
		}
		byName := map[string]int{}
		for i, u := range doc.Upstreams {
			byName[u.Name] = i
		}
		api, broken := doc.Upstreams[byName["api"]], doc.Upstreams[byName["broken"]]
		if api.Name != "api" || api.Protocol != "http" || api.Listen != m.Listen || api.Peer != "app" ||
			api.LB != "p2c" {
			t.Errorf("api upstream: %+v, want protocol http, listen %s, peer app, lb p2c (defaults)", api, m.Listen)
		}
		if len(api.Endpoints) != 1 || api.Endpoints[0].Address != meshlettest.HostOf(srv) || api.Endpoints[0].ID == "" {
			t.Fatalf("api endpoints: %+v", api.Endpoints)
		}
		if e := api.Endpoints[0]; e.Requests != n || e.Failures != 0 || e.InFlight != 0 || e.LastError != "" {
			t.Errorf("api endpoint: %+v, want requests %d, no failures, nothing in flight", e, n)
		}
		if broken.Name != "broken" || broken.Protocol != "http2" || broken.LB != "round_robin" ||
			len(broken.Endpoints) != 1 {
			t.Fatalf("broken upstream: %+v", broken)
		}
		if e := broken.Endpoints[0]; e.Address != refused || e.Failures < 1 || e.LastError == "" {
			t.Errorf("broken endpoint: %+v, want address %s, failures >= 1 and a last_error", e, refused)
		}
	})
	t.Run("config", func(t *testing.T) {
		resp, err := http.Get("http://" + m.A.Admin + "/debug/config")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		var v map[string]any
		if resp.StatusCode != 200 || json.Unmarshal(b, &v) != nil {
			t.Fatalf("/debug/config: %d, not a JSON object: %s", resp.StatusCode, b)
		}
		if ct := resp.Header.Get("Content-Type"); !strings.Contains(ct, "json") {
			t.Errorf("/debug/config Content-Type %q", ct)
		}
		for _, want := range []string{`"web"`, `"broken"`, m.Listen, refused} {
			if !strings.Contains(string(b), want) {
				t.Errorf("/debug/config does not contain %s: %s", want, b)
			}
		}
	})
	t.Run("metrics", func(t *testing.T) {
		for _, tc := range []struct {
			name   string
			labels map[string]string
			want   float64
		}{
			{"meshlet_requests_total", map[string]string{"direction": "outbound", "upstream": "api",
				"code_class": "2xx", "grpc_code": ""}, n},
			{"meshlet_requests_total", map[string]string{"direction": "outbound", "upstream": "broken",
				"code_class": "5xx"}, 1},
			{"meshlet_request_duration_seconds_count", map[string]string{"direction": "outbound",
				"upstream": "api", "code_class": "2xx"}, n},
			{"meshlet_upstream_endpoints", map[string]string{"upstream": "api"}, 1},
			{"meshlet_requests_in_flight", map[string]string{"direction": "outbound", "upstream": "api"}, 0},
			{"meshlet_connections_total", map[string]string{"direction": "outbound", "listener": "api"}, 1},
			{"meshlet_build_info", nil, 1},
		} {
			if got := m.A.MetricSum(t, tc.name, tc.labels); got != tc.want {
				t.Errorf("%s%v = %v, want %v", tc.name, tc.labels, got, tc.want)
			}
		}
		if v := m.A.MetricSum(t, "meshlet_sent_bytes_total", map[string]string{"upstream": "api"}) +
			m.A.MetricSum(t, "meshlet_received_bytes_total", map[string]string{"upstream": "api"}); v <= 0 {
			t.Errorf("byte counters for api are %v, want > 0", v)
		}
		_, body := m.A.AdminGet(t, "/metrics")
		for _, fam := range []string{"go_goroutines", "process_cpu_seconds_total"} {
			if !strings.Contains(body, fam) {
				t.Errorf("/metrics lacks %s", fam)
			}
		}
	})
}

// TestReloadListeners adds an upstream with its own listener by reload, then removes it again.
func TestReloadListeners(t *testing.T) {
	one := meshlettest.StartBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "one")
	}), false, nil)
	two := meshlettest.StartBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "two")
	}), false, nil)
	m := startMesh(t, topoApp, meshlettest.HostOf(one), "http", meshOpts{})
	newListen := meshlettest.FreeAddr(t)
	cfg := m.ACfg
	cfg.Upstreams = append(append([]e2eUpstream(nil), cfg.Upstreams...), e2eUpstream{Name: "second",
		Listen: newListen, Endpoints: []string{meshlettest.HostOf(two)}})
	m.A.RewriteConfig(t, cfg.yaml())
	if status, body := postReload(t, m.A); status != 200 {
		t.Fatalf("reload adding an upstream: %d %q", status, body)
	}
	c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 5 * time.Second}
	meshlettest.Eventually(t, 5*time.Second, "the new listener serves the new upstream", func() bool {
		resp, err := c.Get("http://" + newListen + "/")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode == 200 && string(b) == "two"
	})
	if status, body := meshlettest.GetBody(t, c, m.URL()+"/"); status != 200 || body != "one" {
		t.Errorf("old upstream after adding one: %d %q", status, body)
	}
	m.A.RewriteConfig(t, m.ACfg.yaml())
	if status, body := postReload(t, m.A); status != 200 {
		t.Fatalf("reload removing an upstream: %d %q", status, body)
	}
	meshlettest.Eventually(t, 5*time.Second, "the removed upstream's listener is closed", func() bool {
		resp, err := c.Get("http://" + newListen + "/")
		if err != nil {
			return true
		}
		resp.Body.Close()
		return false
	})
	if status, body := meshlettest.GetBody(t, c, m.URL()+"/"); status != 200 || body != "one" {
		t.Errorf("old upstream after removing the other: %d %q", status, body)
	}
	doc := debugUpstreams(t, m.A)
	if len(doc.Upstreams) != 1 || doc.Upstreams[0].Name != "api" {
		t.Errorf("/debug/upstreams after removal: %+v", doc)
	}
}

// TestSIGTERMDrainTimeout: work that never finishes (a hanging request, an upgraded tunnel, a TCP connection) does
// not keep meshlet alive past shutdown.drain_timeout.
func TestSIGTERMDrainTimeout(t *testing.T) {
	hang := meshlettest.StartBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "" {
			upgradeEcho(t).ServeHTTP(w, r)
			return
		}
		w.WriteHeader(200)
		io.WriteString(w, "partial")
		http.NewResponseController(w).Flush()
		select {
		case <-r.Context().Done():
		case <-time.After(20 * time.Second):
		}
	}), false, nil)
	tcpApp := meshlettest.StartTCPBackend(t, func(c *net.TCPConn) { io.Copy(c, c) })
	for _, tc := range []struct {
		name     string
		protocol string
		app      string
		open     func(t *testing.T, listen string) io.Closer
	}{
		{"hanging request", "http", meshlettest.HostOf(hang), func(t *testing.T, listen string) io.Closer {
			resp, err := http.Get("http://" + listen + "/hang")
			if err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 7)
			if _, err := io.ReadFull(resp.Body, buf); err != nil {
				t.Fatal(err)
			}
			return resp.Body
		}},
		{"upgraded tunnel", "http", meshlettest.HostOf(hang), func(t *testing.T, listen string) io.Closer {
			c, err := net.Dial("tcp", listen)
			if err != nil {
				t.Fatal(err)
			}
			io.WriteString(c, "GET /ws HTTP/1.1\r\nHost: api\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
			br := bufio.NewReader(c)
			resp, err := http.ReadResponse(br, nil)
			if err != nil || resp.StatusCode != 101 {
				t.Fatalf("upgrade: %v %v", resp, err)
			}
			if _, err := br.ReadString('\n'); err != nil {
				t.Fatal(err)
			}
			return c
		}},
		{"tcp connection", "tcp", tcpApp, func(t *testing.T, listen string) io.Closer {
			c, err := net.Dial("tcp", listen)
			if err != nil {
				t.Fatal(err)
			}
			io.WriteString(c, "x")
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
				t.Fatal(err)
			}
			return c
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := startMesh(t, topoApp, tc.app, tc.protocol, meshOpts{a: func(c *e2eConfig) {
				c.DrainDelay, c.DrainTimeout = "0s", "1s"
			}})
			conn := tc.open(t, m.Listen)
			defer conn.Close()
			start := time.Now()
			m.A.Cmd.Process.Signal(syscall.SIGTERM)
			m.A.Wait(t, 6*time.Second)
			if d := time.Since(start); d > 4*time.Second {
				t.Errorf("exited %v after SIGTERM with drain_timeout 1s", d)
			}
			assertNoCrash(t, m.A.Log())
		})
	}
}

// TestReloadMoveListener changes the listen address of an upstream by reload.
func TestReloadMoveListener(t *testing.T) {
	srv := meshlettest.StartBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok")
	}), false, nil)
	m := startMesh(t, topoApp, meshlettest.HostOf(srv), "http", meshOpts{})
	moved := meshlettest.FreeAddr(t)
	cfg := m.ACfg
	cfg.Upstreams = append([]e2eUpstream(nil), cfg.Upstreams...)
	cfg.Upstreams[0].Listen = moved
	m.A.RewriteConfig(t, cfg.yaml())
	if status, body := postReload(t, m.A); status != 200 {
		t.Fatalf("reload: %d %q", status, body)
	}
	c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 5 * time.Second}
	meshlettest.Eventually(t, 5*time.Second, "the moved listener serves", func() bool {
		resp, err := c.Get("http://" + moved + "/")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	meshlettest.Eventually(t, 5*time.Second, "the old listener is closed", func() bool {
		resp, err := c.Get(m.URL() + "/")
		if err != nil {
			return true
		}
		resp.Body.Close()
		return false
	})
	doc := debugUpstreams(t, m.A)
	if len(doc.Upstreams) != 1 || doc.Upstreams[0].Listen != moved {
		t.Errorf("/debug/upstreams after moving the listener: %+v", doc)
	}
}

// TestReloadAdminWarnings: a reload that leaves the admin section as it was warns about nothing; one that changes
// admin.enable_quit says that it changes only on restart, and the running value stays.
func TestReloadAdminWarnings(t *testing.T) {
	admin := meshlettest.FreeAddr(t)
	cfg := func(quit bool) string {
		f := meshlettest.Sidecar("web", admin)
		f.Admin.EnableQuit = new(quit)
		return f.MustYAML(t)
	}
	m := meshlettest.Start(t, admin, cfg(false))
	reloads := func() float64 {
		return m.MetricSum(t, "meshlet_config_reloads_total", map[string]string{"result": "success"})
	}
	m.Cmd.Process.Signal(syscall.SIGHUP)
	meshlettest.Eventually(t, 10*time.Second, "first reload", func() bool { return reloads() == 1 })
	if strings.Contains(m.Log(), "changes only on restart") {
		t.Errorf("a reload of the same file warned:\n%s", m.Log())
	}
	m.RewriteConfig(t, cfg(true))
	m.Cmd.Process.Signal(syscall.SIGHUP)
	meshlettest.Eventually(t, 10*time.Second, "second reload", func() bool { return reloads() == 2 })
	if !strings.Contains(m.Log(), "admin.enable_quit changes only on restart") {
		t.Errorf("no warning for a changed enable_quit:\n%s", m.Log())
	}
	req, _ := http.NewRequest("POST", "http://"+admin+"/quitquitquit", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("POST /quitquitquit after the reload: %d, want 404 (enable_quit stays false until restart)", resp.StatusCode)
	}
}
