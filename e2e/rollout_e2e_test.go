package e2e_test

// Rolling restarts without failed calls (issue 12): a real Consul dev agent, real meshlet processes that register
// their app, real app servers, and a caller sidecar that finds them in Consul, under steady load of GETs and
// non-idempotent POSTs. The sequence is the one Kubernetes runs for a rolling update of native-sidecar pods: the new
// instance starts and passes its checks; the old pod starts terminating: the kubelet runs the app container's
// preStop hook (GET /drain on the sidecar's admin port) and waits for it; then the app gets SIGTERM and stops;
// then the native sidecar gets SIGTERM.

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"meshlet.dev/meshlet/appcheck"
	"meshlet.dev/meshlet/discovery/discoverytest"
	"meshlet.dev/meshlet/internal/meshlettest"
)

// rolloutDrainDelay is the instances' shutdown.drain_delay: how long /drain (the preStop hook) holds the app's
// SIGTERM back while callers drop the instance.
const rolloutDrainDelay = 2 * time.Second

// postLedger counts, per POST id, how many times an app ran it (across every instance).
type postLedger struct {
	mu  sync.Mutex
	ran map[string]int
}

func (l *postLedger) record(id string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.ran[id]++
}

// rolloutInstance is one pod of service api: its app and its registering meshlet.
type rolloutInstance struct {
	id      string
	app     *httptest.Server
	inbound string
	appPort int          // the service registration's port
	inPort  int          // the sidecar registration's port
	calls   atomic.Int64 // requests the app answered
	m       *meshlettest.Proc
}

// startRolloutInstance starts an app (GET answers its id, POST records its body's id in ledger, /healthz is the
// readiness endpoint) and a meshlet that registers it with the app's HTTP check (as the injector derives it from a
// readinessProbe) when appCheck, the drain delay rolloutDrainDelay.
func startRolloutInstance(t *testing.T, consulAddr, id string, ledger *postLedger, appCheck bool) *rolloutInstance {
	t.Helper()
	in := &rolloutInstance{id: id, inbound: meshlettest.FreeAddr(t)}
	in.app = meshlettest.StartBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" {
			return
		}
		if r.Method == http.MethodPost {
			b, err := io.ReadAll(r.Body)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			ledger.record(string(b))
		}
		in.calls.Add(1)
		fmt.Fprintf(w, "api %s", id)
	}), false, nil)
	in.appPort, in.inPort = portOf(t, meshlettest.HostOf(in.app)), portOf(t, in.inbound)
	admin := meshlettest.FreeAddr(t)
	f := registeredFile("api", meshlettest.HostOf(in.app), in.inbound, admin, consulAddr)
	if appCheck {
		f.Service.Check = &appcheck.Check{HTTP: "http://" + meshlettest.HostOf(in.app) + "/healthz", Interval: time.Second, Ready: true}
	}
	f.Shutdown.DrainDelay, f.Shutdown.DrainTimeout = meshlettest.Duration(rolloutDrainDelay), 5*time.Second
	in.m = meshlettest.StartFile(t, f)
	return in
}

// inConsul reports whether the agent still lists the instance (its service or its sidecar), whatever its health.
func (in *rolloutInstance) inConsul(t *testing.T, c *api.Client) bool {
	t.Helper()
	there, err := in.present(c)
	if err != nil {
		t.Fatal(err)
	}
	return there
}

// present is inConsul for a goroutine that must not fail the test.
func (in *rolloutInstance) present(c *api.Client) (bool, error) {
	for _, name := range []string{"api", "api-sidecar-proxy"} {
		entries, _, err := c.Health().Service(name, "", false, nil)
		if err != nil {
			return false, fmt.Errorf("consul health %s: %w", name, err)
		}
		for _, e := range entries {
			if (name == "api" && e.Service.Port == in.appPort) || (name != "api" && e.Service.Port == in.inPort) {
				return true, nil
			}
		}
	}
	return false, nil
}

// passingInConsul reports whether the instance's sidecar is passing (its checks and its app's) in Consul.
func (in *rolloutInstance) passingInConsul(t *testing.T, c *api.Client) bool {
	t.Helper()
	entries, _, err := c.Health().Service("api-sidecar-proxy", "", true, nil)
	if err != nil {
		t.Fatalf("consul health: %v", err)
	}
	for _, e := range entries {
		if e.Service.Port == in.inPort {
			return true
		}
	}
	return false
}

// load is steady traffic through the caller: workers each send a request every period, GETs and POSTs in turn,
// each POST with a unique id, until stop or maxCalls.
type load struct {
	url      string
	client   *http.Client
	calls    atomic.Int64
	failed   atomic.Int64
	posts    atomic.Int64
	mu       sync.Mutex
	postsOK  []string // POST ids answered 200
	failures []string // the first few failures
	stop     chan struct{}
	stopOnce sync.Once
	wg       sync.WaitGroup
}

func startLoad(url string, workers int, period time.Duration, maxCalls int, postsOnly bool) *load {
	l := &load{url: url, stop: make(chan struct{}),
		client: &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: workers}}}
	for w := range workers {
		l.wg.Go(func() {
			tick := time.NewTicker(period)
			defer tick.Stop()
			for i := 0; ; i++ {
				select {
				case <-l.stop:
					return
				case <-tick.C:
				}
				if int(l.calls.Add(1)) > maxCalls {
					return
				}
				if postsOnly {
					l.one(w, 2*i+1)
				} else {
					l.one(w, i)
				}
			}
		})
	}
	return l
}

// one sends call i of worker w: a POST on odd i, a GET otherwise.
func (l *load) one(w, i int) {
	var req *http.Request
	id := ""
	if i%2 == 1 {
		id = fmt.Sprintf("w%d-%d", w, i)
		l.posts.Add(1)
		req, _ = http.NewRequest(http.MethodPost, l.url, strings.NewReader(id))
	} else {
		req, _ = http.NewRequest(http.MethodGet, l.url, nil)
	}
	resp, err := l.client.Do(req)
	what := ""
	if err != nil {
		what = err.Error()
	} else {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || !strings.HasPrefix(string(b), "api ") {
			what = fmt.Sprintf("%d %s %q", resp.StatusCode, resp.Header.Get("X-Meshlet-Error"), b)
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if what != "" {
		l.failed.Add(1)
		if len(l.failures) < 5 {
			l.failures = append(l.failures, req.Method+": "+what)
		}
		return
	}
	if id != "" {
		l.postsOK = append(l.postsOK, id)
	}
}

// end stops the load and waits for the workers; it may be called again.
func (l *load) end() {
	l.stopOnce.Do(func() { close(l.stop) })
	l.wg.Wait()
	l.client.CloseIdleConnections()
}

// TestRolloutWithoutFailedCalls: three rolling restarts in a row under steady load (4 workers, a call every 100 ms
// each: 40 calls/s, half of them POSTs). Each: the new instance starts and passes in Consul; the old one is drained
// as its preStop hook would (GET /drain answers after the drain delay), its app stops (graceful shutdown, as on
// SIGTERM), its sidecar gets SIGTERM. No call fails, every POST answered 200 ran on exactly one app exactly once,
// and no POST ran that was not answered 200; the old instance left Consul (and the caller's routing) before its app
// stopped; the caller retried nothing (the drain, not retries, kept the calls whole).
func TestRolloutWithoutFailedCalls(t *testing.T) {
	agent := discoverytest.StartConsul(t, discoverytest.Options{})
	client := agent.Client()
	ledger := &postLedger{ran: map[string]int{}}
	old := startRolloutInstance(t, agent.HTTPAddr, "v0", ledger, true)
	web, listen := startCaller(t, agent.HTTPAddr, "api")
	meshlettest.Eventually(t, 10*time.Second, "web finds api v0", func() bool { return len(upstreamState(t, web, "api").Endpoints) == 1 })

	l := startLoad("http://"+listen["api"]+"/", 4, 100*time.Millisecond, 4000, false)
	defer l.end()
	const rollouts = 3
	for k := 1; k <= rollouts; k++ {
		meshlettest.Eventually(t, 5*time.Second, "the old instance serves", func() bool { return old.calls.Load() > 10 })
		next := startRolloutInstance(t, agent.HTTPAddr, fmt.Sprintf("v%d", k), ledger, true)
		meshlettest.Eventually(t, 10*time.Second, "the new instance passes in Consul", func() bool { return next.passingInConsul(t, client) })
		meshlettest.Eventually(t, 5*time.Second, "web routes to both", func() bool { return len(upstreamState(t, web, "api").Endpoints) == 2 })
		meshlettest.Eventually(t, 5*time.Second, "the new instance takes calls", func() bool { return next.calls.Load() > 5 })

		// The old pod terminates: the kubelet runs the app's preStop hook and waits for it.
		start := time.Now()
		var left atomic.Int64   // when the old instance left Consul, since start; 0 while it has not
		var served atomic.Value // a direct call to the old sidecar once it left Consul: status and body
		watchDone := make(chan struct{})
		go func() {
			defer close(watchDone)
			for time.Since(start) < 10*time.Second {
				if there, err := old.present(client); err == nil && !there {
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
			left.Store(int64(time.Since(start)))
			code, body, _ := call("http://" + old.inbound + "/") // a caller that still holds the old endpoint
			served.Store(fmt.Sprintf("%d %s", code, body))
		}()
		code, body := old.m.AdminGet(t, "/drain")
		took := time.Since(start)
		if code != http.StatusOK || !strings.Contains(body, "drained") {
			t.Fatalf("rollout %d: GET /drain: %d %q", k, code, body)
		}
		if took < rolloutDrainDelay {
			t.Errorf("rollout %d: /drain answered after %v, before the drain delay %v: the app would get SIGTERM too early", k, took, rolloutDrainDelay)
		}
		if code, body := old.m.AdminGet(t, "/ready"); code != http.StatusServiceUnavailable || !strings.Contains(body, "draining") {
			t.Errorf("rollout %d: old /ready after /drain: %d %q, want 503 draining", k, code, body)
		}
		<-watchDone
		if got, want := served.Load(), "200 api "+old.id; got != want {
			t.Errorf("rollout %d: a call to the old sidecar during the drain delay: %q, want %q", k, got, want)
		}
		again := time.Now()
		if code, body := old.m.AdminGet(t, "/drain"); code != http.StatusOK || !strings.Contains(body, "drained") || time.Since(again) > time.Second {
			t.Errorf("rollout %d: a second GET /drain: %d %q after %v, want drained at once", k, code, body, time.Since(again))
		}
		if old.inConsul(t, client) {
			t.Fatalf("rollout %d: the old instance is still in Consul when its app is about to stop", k)
		}
		for _, ep := range upstreamState(t, web, "api").Endpoints {
			if ep.Address == old.inbound {
				t.Fatalf("rollout %d: web still routes to the old instance when its app is about to stop", k)
			}
		}
		// The app gets SIGTERM: it stops accepting and finishes what it has.
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if err := old.app.Config.Shutdown(ctx); err != nil {
			t.Errorf("rollout %d: old app shutdown: %v", k, err)
		}
		cancel()
		appStopped := time.Since(start)
		// The native sidecar gets SIGTERM after the app exited: the drain delay has passed already.
		sigterm := time.Now()
		old.m.Cmd.Process.Signal(syscall.SIGTERM)
		if code := old.m.Wait(t, 10*time.Second); code != 0 {
			t.Errorf("rollout %d: old meshlet exit code %d", k, code)
		}
		t.Logf("rollout %d: old instance left Consul %v after /drain, /drain answered after %v, app stopped at %v, sidecar exited %v after SIGTERM (the -race binary waits 1s at exit)",
			k, time.Duration(left.Load()).Round(time.Millisecond), took.Round(time.Millisecond), appStopped.Round(time.Millisecond),
			time.Since(sigterm).Round(time.Millisecond))
		if d := time.Duration(left.Load()); d >= appStopped {
			t.Errorf("rollout %d: left Consul %v after /drain, not before the app stopped (%v)", k, d, appStopped)
		}
		old = next
	}
	before := l.calls.Load()
	meshlettest.Eventually(t, 5*time.Second, "traffic flows on the last instance", func() bool { return l.calls.Load() > before+20 })
	l.end()

	calls, failed := min(l.calls.Load(), 4000), l.failed.Load()
	t.Logf("%d rollouts: %d calls (%d POSTs), %d failed", rollouts, calls, l.posts.Load(), failed)
	if failed != 0 {
		t.Errorf("%d of %d calls failed, want none; first: %q", failed, calls, l.failures)
	}
	if calls < 200 {
		t.Errorf("only %d calls: the load did not run through the rollouts", calls)
	}
	ledger.mu.Lock()
	defer ledger.mu.Unlock()
	for _, id := range l.postsOK {
		if n := ledger.ran[id]; n != 1 {
			t.Errorf("POST %s answered 200 but ran %d times on the apps, want exactly once", id, n)
		}
	}
	if len(ledger.ran) != len(l.postsOK) {
		t.Errorf("the apps ran %d POSTs, %d were answered 200", len(ledger.ran), len(l.postsOK))
	}
	if n := web.MetricSum(t, "meshlet_retries_total", nil); n != 0 {
		t.Errorf("the caller retried %v times, want none (the drain alone must keep the calls whole)", n)
	}
}

// TestRolloutWithoutDrainFailsCalls is the negative control: an injected pod as it was before issue 12, with no
// app check in Consul and no preStop hook, so that the native sidecar gets SIGTERM (and deregisters) only after the
// app has exited. Two such instances under steady POSTs; the old app stops: the old instance is still in Consul
// and in the caller's routing, and the POSTs that reach it fail (503 from its sidecar, "local app unreachable"; a
// POST is not retried, as it may have reached the app) until its sidecar is stopped. Deterministic: nothing removes
// the old instance before its sidecar's SIGTERM, and the caller keeps picking it.
func TestRolloutWithoutDrainFailsCalls(t *testing.T) {
	agent := discoverytest.StartConsul(t, discoverytest.Options{})
	client := agent.Client()
	ledger := &postLedger{ran: map[string]int{}}
	old := startRolloutInstance(t, agent.HTTPAddr, "v0", ledger, false)
	next := startRolloutInstance(t, agent.HTTPAddr, "v1", ledger, false)
	web, listen := startCaller(t, agent.HTTPAddr, "api")
	meshlettest.Eventually(t, 10*time.Second, "both pass in Consul", func() bool {
		return old.passingInConsul(t, client) && next.passingInConsul(t, client)
	})
	meshlettest.Eventually(t, 5*time.Second, "web routes to both", func() bool { return len(upstreamState(t, web, "api").Endpoints) == 2 })

	l := startLoad("http://"+listen["api"]+"/", 4, 100*time.Millisecond, 1000, true)
	defer l.end()
	meshlettest.Eventually(t, 5*time.Second, "both instances take POSTs", func() bool { return old.calls.Load() > 5 && next.calls.Load() > 5 })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := old.app.Config.Shutdown(ctx); err != nil {
		t.Fatalf("old app shutdown: %v", err)
	}
	stopped := time.Now()
	meshlettest.Eventually(t, 5*time.Second, "POSTs fail while the old instance stays routable without its app", func() bool {
		return l.failed.Load() > 0
	})
	if !old.inConsul(t, client) {
		t.Error("the old instance left Consul before its sidecar's SIGTERM: the control does not model the old behaviour")
	}
	firstFailure := time.Since(stopped)
	old.m.Cmd.Process.Signal(syscall.SIGTERM) // the native sidecar, after the app exited
	meshlettest.Eventually(t, 5*time.Second, "the caller drops the old instance once its sidecar deregisters", func() bool {
		return len(upstreamState(t, web, "api").Endpoints) == 1
	})
	window := time.Since(stopped)
	failedThen := l.failed.Load()
	before := l.calls.Load()
	meshlettest.Eventually(t, 5*time.Second, "POSTs flow on the new instance", func() bool { return l.calls.Load() > before+20 })
	l.end()
	t.Logf("without /drain: %d of %d POSTs failed (the first %v after the old app stopped, the old instance routable for %v); first: %q",
		l.failed.Load(), min(l.calls.Load(), 1000), firstFailure.Round(time.Millisecond), window.Round(time.Millisecond), l.failures)
	if n := l.failed.Load() - failedThen; n != 0 {
		t.Errorf("%d POSTs failed after the caller dropped the old instance, want none", n)
	}
}
