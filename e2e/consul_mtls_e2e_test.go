package e2e_test

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"meshlet.dev/meshlet/discovery/discoverytest"
	"meshlet.dev/meshlet/internal/meshlettest"
	"meshlet.dev/meshlet/proxy"
)

// TestConsulCAMutualTLS: two sidecars take their certificates from Consul's Connect CA (tls.source: consul) and
// talk over mutual TLS; a plaintext caller is refused; a CA root rotation forced through Consul's CA
// configuration API while a bounded stream of requests flows fails no request, and both sidecars move to
// certificates of the new root.
func TestConsulCAMutualTLS(t *testing.T) {
	agent := discoverytest.StartConsul(t, discoverytest.Options{})
	app := meshlettest.StartBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "api") }), false, nil)
	apiSidecar, apiInbound := consulAPISidecar(t, agent.HTTPAddr, "", meshlettest.HostOf(app))
	webListen := meshlettest.FreeAddr(t)
	web := meshlettest.StartFile(t, consulTLSFile(t, "web", agent.HTTPAddr, "", proxy.UpstreamConfig{Name: "api", Listen: webListen, Protocol: "http"}))
	grpcFailOnRace(t, "web", web)
	url := "http://" + webListen + "/"
	meshlettest.Eventually(t, 10*time.Second, "web calls api over mTLS", func() bool { code, body, _ := call(url); return code == 200 && body == "api" })

	// The hop is TLS: plaintext to api's inbound is refused and counted.
	if c, err := net.Dial("tcp", apiInbound); err == nil {
		io.WriteString(c, "GET / HTTP/1.1\r\nHost: api\r\n\r\n")
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		b, _ := io.ReadAll(c)
		c.Close()
		if len(b) != 0 {
			t.Fatalf("plaintext to an mTLS inbound got an answer: %q", b)
		}
	}
	meshlettest.Eventually(t, 5*time.Second, "the plaintext attempt is counted", func() bool {
		return apiSidecar.MetricSum(t, "meshlet_tls_handshake_failures_total", map[string]string{"reason": "plaintext"}) == 1
	})

	client := agent.Client()
	roots, _, err := client.Agent().ConnectCARoots(nil)
	if err != nil {
		t.Fatal(err)
	}
	oldRoot := roots.ActiveRootID
	rotationsBefore := map[*meshlettest.Proc]float64{}
	for _, p := range []*meshlettest.Proc{apiSidecar, web} {
		rotationsBefore[p] = p.MetricSum(t, "meshlet_tls_rotations_total", map[string]string{"result": "success"})
	}

	// A bounded stream of requests through the rotation: 4 workers until the rotation has reached both sidecars
	// and a little after, 20 s at most.
	var ok, failed atomic.Int64
	var lastErr atomic.Value
	stop := make(chan struct{})
	var wg sync.WaitGroup
	hc := &http.Client{Timeout: 5 * time.Second}
	deadline := time.Now().Add(20 * time.Second)
	for range 4 {
		wg.Go(func() {
			for time.Now().Before(deadline) {
				select {
				case <-stop:
					return
				default:
				}
				resp, err := hc.Get(url)
				if err != nil {
					failed.Add(1)
					lastErr.Store(err.Error())
					continue
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 || string(b) != "api" {
					failed.Add(1)
					lastErr.Store(fmt.Sprintf("%d %q", resp.StatusCode, b))
					continue
				}
				ok.Add(1)
			}
		})
	}
	// Changing the key type makes the built-in CA generate a new root: a rotation.
	if _, err := client.Connect().CASetConfig(&api.CAConfig{Provider: "consul",
		Config: map[string]any{"PrivateKeyType": "ec", "PrivateKeyBits": 384}}, nil); err != nil {
		close(stop)
		wg.Wait()
		t.Fatalf("rotating the CA: %v", err)
	}
	meshlettest.Eventually(t, 15*time.Second, "the new root is active", func() bool {
		r, _, err := client.Agent().ConnectCARoots(nil)
		return err == nil && r.ActiveRootID != oldRoot
	})
	meshlettest.Eventually(t, 15*time.Second, "both sidecars use certificates of the new root", func() bool {
		for _, p := range []*meshlettest.Proc{apiSidecar, web} {
			if p.MetricSum(t, "meshlet_tls_rotations_total", map[string]string{"result": "success"}) <= rotationsBefore[p] {
				return false
			}
		}
		return true
	})
	// New connections (new handshakes) after the rotation work too.
	fresh := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 5 * time.Second}
	for i := range 20 {
		resp, err := fresh.Get(url)
		if err != nil {
			t.Fatalf("request %d after the rotation: %v", i, err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("request %d after the rotation: %d", i, resp.StatusCode)
		}
	}
	close(stop)
	wg.Wait()
	if failed.Load() != 0 || ok.Load() == 0 {
		t.Fatalf("during the rotation: %d ok, %d failed (last: %v)", ok.Load(), failed.Load(), lastErr.Load())
	}
	t.Logf("rotation: %d requests, none failed", ok.Load())
}

// TestConsulIntentions: Consul's intentions authorize callers: a deny intention refuses web with 403 and nothing
// reaches the app; switching it to allow takes effect without a restart; an L7 intention allows one path prefix
// and refuses the rest.
func TestConsulIntentions(t *testing.T) {
	agent := discoverytest.StartConsul(t, discoverytest.Options{})
	var appCalls atomic.Int64
	app := meshlettest.StartBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		appCalls.Add(1)
		io.WriteString(w, "api")
	}), false, nil)
	apiSidecar, _ := consulAPISidecar(t, agent.HTTPAddr, "", meshlettest.HostOf(app))
	base := "http://" + consulCaller(t, agent.HTTPAddr, "", "web")
	meshlettest.Eventually(t, 10*time.Second, "no intention: default allow", func() bool { code, _, _ := call(base + "/"); return code == 200 })

	client := agent.Client()
	set := func(action api.IntentionAction) {
		t.Helper()
		if _, err := client.Connect().IntentionUpsert(&api.Intention{SourceName: "web", DestinationName: "api", Action: action}, nil); err != nil {
			t.Fatal(err)
		}
	}
	set(api.IntentionActionDeny)
	meshlettest.Eventually(t, 5*time.Second, "deny takes effect", func() bool { code, _, _ := call(base + "/"); return code == 403 })
	before := appCalls.Load()
	for range 5 {
		if code, body, reason := call(base + "/x"); code != 403 || reason != "denied" {
			t.Fatalf("denied call: %d %q %q", code, body, reason)
		}
	}
	if appCalls.Load() != before {
		t.Fatal("a denied call reached the app")
	}
	if n := apiSidecar.MetricSum(t, "meshlet_authz_denied_total", map[string]string{"source": "web"}); n < 5 {
		t.Fatalf("meshlet_authz_denied_total{source=web} = %v", n)
	}
	set(api.IntentionActionAllow)
	meshlettest.Eventually(t, 5*time.Second, "allow takes effect without a restart", func() bool { code, _, _ := call(base + "/"); return code == 200 })

	// L7: only /public/ is allowed (the destination must speak HTTP for L7 intentions).
	if _, _, err := client.ConfigEntries().Set(&api.ServiceConfigEntry{Kind: api.ServiceDefaults, Name: "api", Protocol: "http"}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := client.Connect().IntentionDeleteExact("web", "api", nil); err != nil {
		t.Fatal(err)
	}
	if _, _, err := client.ConfigEntries().Set(&api.ServiceIntentionsConfigEntry{Kind: api.ServiceIntentions, Name: "api",
		Sources: []*api.SourceIntention{{Name: "web", Permissions: []*api.IntentionPermission{{
			Action: api.IntentionActionAllow, HTTP: &api.IntentionHTTPPermission{PathPrefix: "/public/"}}}}}}, nil); err != nil {
		t.Fatal(err)
	}
	meshlettest.Eventually(t, 5*time.Second, "the L7 intention refuses other paths", func() bool { code, _, _ := call(base + "/private"); return code == 403 })
	if code, _, _ := call(base + "/public/page"); code != 200 {
		t.Fatalf("/public/page under the L7 intention: %d", code)
	}
}
