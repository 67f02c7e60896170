package e2e_test

// The admin listener against a real meshlet process (issue 11, items 17 and 18): what Kubernetes and the README's
// commands send keeps working; what a web page can send (cross-origin simple requests, DNS rebinding) is refused
// with a status and a reason and counted; /debug/* and the log show no credentials.

import (
	"context"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	"meshlet.dev/meshlet/appcheck"
	"meshlet.dev/meshlet/internal/meshlettest"
	"meshlet.dev/meshlet/proxy"
)

// adminDo sends one request to the admin listener at addr, with Host and extra headers, and returns status and body.
func adminDo(t *testing.T, addr, method, path, host string, header map[string]string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, "http://"+addr+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if host != "" {
		req.Host = host
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	return meshlettest.Do(t, &http.Client{Timeout: 10 * time.Second}, req)
}

// TestAdminSecurityE2E: probes, scrapes, meshlet wait, curl -X POST reload and quitquitquit (as documented) work;
// a browser's POST, a form body and a rebound Host are refused, change nothing and are counted.
func TestAdminSecurityE2E(t *testing.T) {
	admin := meshlettest.FreeAddr(t)
	_, port, _ := strings.Cut(admin, ":")
	f := meshlettest.Sidecar("web", admin, proxy.UpstreamConfig{Name: "api", Listen: meshlettest.FreeAddr(t), Endpoints: []string{"127.0.0.1:9"}})
	p := meshlettest.StartFile(t, f)
	reloads := func() float64 {
		return p.MetricSum(t, "meshlet_config_reloads_total", map[string]string{"result": "success"})
	}
	refused := func(reason string) float64 {
		return p.MetricSum(t, "meshlet_admin_requests_refused_total", map[string]string{"reason": reason})
	}
	kube := map[string]string{"User-Agent": "kube-probe/1.31", "Accept": "*/*"}
	t.Run("kubernetes and the documented callers", func(t *testing.T) {
		for _, tc := range []struct {
			name, method, path, host string
			header                   map[string]string
			want                     int
		}{
			{"kubelet /live on the pod IP", "GET", "/live", "10.1.2.3:" + port, kube, 200},
			{"kubelet /ready on the pod IP", "GET", "/ready", "10.1.2.3:" + port, kube, 200},
			{"consul agent /ready by name", "GET", "/ready", "node-1:" + port, nil, 200},
			{"prometheus /metrics by IP", "GET", "/metrics", "10.1.2.3:" + port, nil, 200},
			{"prometheus /metrics by a DNS name", "GET", "/metrics", "web-0.web.shop.svc.cluster.local:" + port, nil, 200},
			{"/debug/config on loopback", "GET", "/debug/config", "", nil, 200},
			{"/debug/upstreams via port-forward", "GET", "/debug/upstreams", "localhost:8080", nil, 200},
		} {
			if code, body := adminDo(t, admin, tc.method, tc.path, tc.host, tc.header); code != tc.want {
				t.Errorf("%s: %s %s (Host %q) = %d %q, want %d", tc.name, tc.method, tc.path, tc.host, code, body, tc.want)
			}
		}
		out, code := meshlettest.Exec(t, "wait", "-admin", admin, "-timeout", "10s", "-interval", "20ms")
		if code != 0 {
			t.Errorf("meshlet wait: exit %d: %s", code, out)
		}
		if code, body := postReload(t, p); code != 200 || !strings.Contains(body, `"reloaded": true`) {
			t.Errorf("POST /debug/reload as the lifecycle tests send it: %d %q", code, body)
		}
		if _, err := exec.LookPath("curl"); err == nil {
			if out, err := exec.Command("curl", "-fsS", "-m", "10", "-X", "POST", "http://"+admin+"/debug/reload").CombinedOutput(); err != nil {
				t.Errorf("curl -X POST /debug/reload (README): %v: %s", err, out)
			}
		}
	})
	t.Run("what a web page can send is refused", func(t *testing.T) {
		before := reloads()
		for _, tc := range []struct {
			name, method, path, host string
			header                   map[string]string
			want                     int
			reason, says             string
		}{
			{"form posted cross-site", "POST", "/debug/reload", "", map[string]string{"Origin": "https://evil.example",
				"Content-Type": "application/x-www-form-urlencoded", "Sec-Fetch-Site": "cross-site"}, 403, "browser", "Origin"},
			{"no-cors fetch", "POST", "/quitquitquit", "", map[string]string{"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors"}, 403, "browser", "Sec-Fetch-"},
			{"form without Origin (old browser)", "POST", "/quitquitquit", "", map[string]string{"Content-Type": "text/plain"}, 415, "content_type", "cross-origin"},
			{"DNS rebinding reload", "POST", "/debug/reload", "rebind.evil.example:" + port, nil, 403, "host", "DNS rebinding"},
			{"DNS rebinding quit", "POST", "/quitquitquit", "rebind.evil.example:" + port, nil, 403, "host", "DNS rebinding"},
			{"DNS rebinding config", "GET", "/debug/config", "rebind.evil.example:" + port, nil, 403, "host", "DNS rebinding"},
			{"DNS rebinding upstreams", "GET", "/debug/upstreams", "rebind.evil.example", nil, 403, "host", "DNS rebinding"},
		} {
			was := refused(tc.reason)
			code, body := adminDo(t, admin, tc.method, tc.path, tc.host, tc.header)
			if code != tc.want || !strings.Contains(body, tc.says) {
				t.Errorf("%s: %s %s = %d %q, want %d saying %q", tc.name, tc.method, tc.path, code, body, tc.want, tc.says)
			}
			if now := refused(tc.reason); now != was+1 {
				t.Errorf("%s: meshlet_admin_requests_refused_total{reason=%q} went from %v to %v", tc.name, tc.reason, was, now)
			}
		}
		if got := reloads(); got != before {
			t.Errorf("refused requests reloaded the config (%v reloads, was %v)", got, before)
		}
		if code, _ := adminDo(t, admin, "GET", "/live", "", nil); code != 200 {
			t.Fatalf("meshlet stopped after refused quits: /live %d", code)
		}
		if !strings.Contains(p.Log(), `"msg":"admin request refused"`) {
			t.Errorf("no log line for the refusals:\n%s", p.Log())
		}
	})
	t.Run("admin.allowed_hosts changes only on restart", func(t *testing.T) {
		f.Admin.AllowedHosts = []string{"debug.example"}
		p.RewriteConfig(t, f.MustYAML(t))
		if code, body := postReload(t, p); code != 200 || !strings.Contains(body, "admin.allowed_hosts changes only on restart") {
			t.Errorf("reload: %d %q", code, body)
		}
		if code, _ := adminDo(t, admin, "GET", "/debug/config", "debug.example:"+port, nil); code != 403 {
			t.Errorf("a name added by a reload is accepted: %d", code)
		}
	})
	t.Run("curl -X POST quitquitquit as in the README", func(t *testing.T) {
		if _, err := exec.LookPath("curl"); err != nil {
			t.Skip("no curl on this machine")
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if out, err := exec.CommandContext(ctx, "curl", "-fsS", "-m", "10", "-X", "POST", "http://"+admin+"/quitquitquit").CombinedOutput(); err != nil {
			t.Fatalf("curl: %v: %s", err, out)
		}
		if code := p.Wait(t, 15*time.Second); code != 0 {
			t.Errorf("meshlet exited %d after /quitquitquit, want 0", code)
		}
	})
}

// TestAdminShowsNoCredentialsE2E: a config with credentials in the app check's URL, in service.meta and the
// Consul token: /debug/config, /debug/upstreams, /ready and the log show none of them. Credentials in the Consul
// address are refused at start, and the error does not repeat them.
func TestAdminShowsNoCredentialsE2E(t *testing.T) {
	admin := meshlettest.FreeAddr(t)
	app := meshlettest.FreeAddr(t) // nothing listens: the app check fails and says so in /ready and the log
	consul := meshlettest.FreeAddr(t)
	f := meshlettest.Sidecar("web", admin)
	f.Service.Address, f.Service.Register = app, true
	f.Service.Meta = map[string]string{"version": "1", "db_password": "meta-s3cr3t", "apiToken": "meta2-s3cr3t"}
	f.Service.Check = &appcheck.Check{HTTP: "http://probe:check-s3cr3t@" + app + "/health?token=query-s3cr3t", Ready: true}
	f.Inbound.Listen = meshlettest.FreeAddr(t)
	f.Discovery = meshlettest.Consul("http://"+consul, "token-s3cr3t")
	p := meshlettest.Launch(t, f.MustYAML(t))
	p.Admin = admin
	bad := meshlettest.WriteConfig(t, "service: {name: web}\ndiscovery:\n  consul: {address: \"https://u:addr-s3cr3t@"+consul+"\"}\n")
	if out, code := meshlettest.Exec(t, "check", "-config", bad); code == 0 || strings.Contains(out, "s3cr3t") ||
		!strings.Contains(out, "discovery.consul.address: must not hold credentials") {
		t.Errorf("meshlet check with credentials in the Consul address: exit %d\n%s", code, out)
	}
	meshlettest.Eventually(t, 15*time.Second, "the app check fails and logs it", func() bool {
		return strings.Contains(p.Log(), "app check failing")
	})
	views := map[string]string{}
	for _, path := range []string{"/debug/config", "/debug/upstreams", "/ready"} {
		_, views[path] = p.AdminGet(t, path)
	}
	views["the log"] = p.Log()
	for where, s := range views {
		if strings.Contains(s, "s3cr3t") {
			t.Errorf("%s shows a credential:\n%s", where, s)
		}
	}
	if cfg := views["/debug/config"]; !strings.Contains(cfg, `"db_password": "\u003credacted\u003e"`) ||
		!strings.Contains(cfg, "http://\\u003credacted\\u003e@"+app+"/health") || !strings.Contains(cfg, `"version": "1"`) {
		t.Errorf("/debug/config does not show where it redacted:\n%s", cfg)
	}
}
