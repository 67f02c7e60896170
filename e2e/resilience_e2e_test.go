package e2e_test

// End-to-end tests of resilience (issue 4): retries, the retry budget, circuit breakers with ejection, deadlines,
// cancellation and limits, against a real meshlet process and real servers that misbehave on purpose:
//
//	client → meshlet (service "web", upstreams with peer: app) → one or more test servers
//
// Every server counts the requests it received, so the tests count attempts where they land, not where meshlet
// says it sent them.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"

	"meshlet.dev/meshlet/internal/meshlettest"
	"meshlet.dev/meshlet/proxy"
	"meshlet.dev/meshlet/resilience"
)

// resUpstream is one upstream of a resilience test config, with its resilience settings.
type resUpstream struct {
	name, protocol, lb string
	endpoints          []string
	res                resilience.Config
	subset             int // subset_size
}

// resMesh is a started meshlet with per-upstream listeners.
type resMesh struct {
	p      *meshlettest.Proc
	listen map[string]string // upstream name → listener address
}

func (m *resMesh) url(name string) string { return "http://" + m.listen[name] }

// resStartMeshlet starts meshlet (service "web") with ups, each on a listener of its own, peer app.
func resStartMeshlet(t testing.TB, ups ...resUpstream) *resMesh {
	t.Helper()
	addrs := meshlettest.FreeAddrs(t, len(ups)+1)
	m := &resMesh{listen: map[string]string{}}
	var f meshlettest.File
	f.Service.Name = "web"
	for i, u := range ups {
		m.listen[u.name] = addrs[i+1]
		f.Upstreams = append(f.Upstreams, proxy.UpstreamConfig{Name: u.name, Listen: addrs[i+1], Peer: "app",
			Endpoints: append([]string{}, u.endpoints...), Protocol: u.protocol, LB: u.lb, Resilience: u.res, SubsetSize: u.subset})
	}
	f.Admin.Listen = addrs[0]
	f.Log.Level = "info"
	f.Shutdown = meshlettest.Shutdown{DrainDelay: meshlettest.Duration(0), DrainTimeout: 5 * time.Second}
	m.p = meshlettest.Start(t, addrs[0], f.MustYAML(t))
	grpcFailOnRace(t, "web", m.p)
	return m
}

// resServer is an HTTP/1.1 (and h2c) test server that counts the requests it receives.
type resServer struct {
	addr string
	n    atomic.Int64
}

// resStartServer starts a server whose handler h gets the 0-based number of each request it received.
func resStartServer(t testing.TB, h func(n int64, w http.ResponseWriter, r *http.Request)) *resServer {
	t.Helper()
	s := &resServer{}
	srv := meshlettest.StartBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h(s.n.Add(1)-1, w, r)
	}), true, nil)
	s.addr = meshlettest.HostOf(srv)
	return s
}

// resOK answers 200 "ok".
func resOK(_ int64, w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok") }

// res503 answers 503.
func res503(_ int64, w http.ResponseWriter, _ *http.Request) {
	http.Error(w, "unavailable", http.StatusServiceUnavailable)
}

// resReset breaks the connection of w with a TCP reset.
func resReset(t testing.TB, w http.ResponseWriter) {
	c, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		t.Errorf("hijack: %v", err)
		return
	}
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	c.Close()
}

// resDeadAddr returns a loopback address where nothing listens: connections are refused.
func resDeadAddr(t testing.TB) string { return meshlettest.FreeAddr(t) }

// resClient is an HTTP/1.1 client with room for conns idle connections.
func resClient(conns int) *http.Client {
	return &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: conns,
		DisableCompression: true}}
}

// resLoad sends n GETs to url from workers goroutines and returns the count of each status (0 for errors).
func resLoad(c *http.Client, url string, n, workers int) map[int]int {
	var mu sync.Mutex
	got := map[int]int{}
	var next atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for next.Add(1) <= int64(n) {
				code := 0
				if resp, err := c.Get(url); err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					code = resp.StatusCode
				}
				mu.Lock()
				got[code]++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return got
}

// resDo sends a request with body and returns the response with its body read and closed.
func resDo(c *http.Client, method, url, body string) (*http.Response, error) {
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		return nil, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp, nil
}

// resDebug is the part of /debug/upstreams these tests read.
type resDebug struct {
	Upstreams []resDebugUpstream `json:"upstreams"`
}

type resDebugUpstream struct {
	Name      string `json:"name"`
	Direction string `json:"direction"`
	Endpoints []struct {
		ID       string `json:"id"`
		Address  string `json:"address"`
		InFlight int64  `json:"in_flight"`
		Requests uint64 `json:"requests"`
		Failures uint64 `json:"failures"`
		Breaker  string `json:"breaker"`
		Ejected  bool   `json:"ejected"`
	} `json:"endpoints"`
	RetryBudget *float64      `json:"retry_budget_remaining"`
	LimitInUse  *int          `json:"limit_in_use"`
	Decisions   []resDecision `json:"decisions"`
}

// resDecision is one resilience decision in /debug/upstreams.
type resDecision struct {
	Kind     string `json:"kind"`
	Endpoint string `json:"endpoint"`
	Reason   string `json:"reason"`
}

// resUpstreamInfo returns the outbound upstream name from /debug/upstreams.
func resUpstreamInfo(t testing.TB, p *meshlettest.Proc, name string) resDebugUpstream {
	t.Helper()
	code, body := p.AdminGet(t, "/debug/upstreams")
	if code != http.StatusOK {
		t.Fatalf("/debug/upstreams: %d %s", code, body)
	}
	var d resDebug
	if err := json.Unmarshal([]byte(body), &d); err != nil {
		t.Fatalf("/debug/upstreams: %v: %s", err, body)
	}
	for _, u := range d.Upstreams {
		if u.Name == name && u.Direction == "outbound" {
			return u
		}
	}
	t.Fatalf("/debug/upstreams has no outbound %s: %s", name, body)
	return resDebugUpstream{}
}

// hasDecision reports whether u shows a decision of kind for endpoint (any endpoint if "") whose reason
// contains reason.
func (u resDebugUpstream) hasDecision(kind, endpoint, reason string) bool {
	return slices.ContainsFunc(u.Decisions, func(d resDecision) bool {
		return d.Kind == kind && (endpoint == "" || d.Endpoint == endpoint) && strings.Contains(d.Reason, reason)
	})
}

// resBudgetBound is the most attempts the default budget (20% of requests plus 10/s over a 10 s window) allows
// for n requests sent over elapsed: every window the run touched adds its reserve.
func resBudgetBound(n int, elapsed time.Duration) int {
	windows := int(elapsed/(10*time.Second)) + 1
	return n + int(math.Ceil(0.2*float64(n))) + 100*windows
}

// TestResilienceFlakyEndpoint: one endpoint of three answers 503 to 30% of its requests; retries hide it from
// clients, within the retry budget.
func TestResilienceFlakyEndpoint(t *testing.T) {
	flaky := resStartServer(t, func(n int64, w http.ResponseWriter, r *http.Request) {
		if n%10 < 3 {
			res503(n, w, r)
			return
		}
		resOK(n, w, r)
	})
	good1, good2 := resStartServer(t, resOK), resStartServer(t, resOK)
	m := resStartMeshlet(t, resUpstream{name: "api", endpoints: []string{flaky.addr, good1.addr, good2.addr}})

	if got := m.p.MetricSum(t, "meshlet_retry_budget_remaining", map[string]string{"upstream": "api"}); got < 100 {
		t.Errorf("meshlet_retry_budget_remaining before any traffic = %v, want >= 100 (10/s over 10s)", got)
	}
	const n = 2000
	start := time.Now()
	got := resLoad(resClient(8), m.url("api"), n, 8)
	elapsed := time.Since(start)

	if ok := got[http.StatusOK]; float64(ok) < 0.999*n {
		t.Errorf("%d of %d requests succeeded (%v), want >= 99.9%%", ok, n, got)
	}
	attempts := int(flaky.n.Load() + good1.n.Load() + good2.n.Load())
	failed := int((flaky.n.Load() + 7) / 10 * 3) // n%10 < 3 of flaky's requests, roughly
	retries := int(m.p.MetricSum(t, "meshlet_retries_total", map[string]string{"upstream": "api"}))
	t.Logf("%d requests in %v: %v; attempts %d (flaky %d, others %d, %d); retries %d", n, elapsed.Round(time.Millisecond),
		got, attempts, flaky.n.Load(), good1.n.Load(), good2.n.Load(), retries)
	if bound := resBudgetBound(n, elapsed); attempts > bound {
		t.Errorf("servers received %d attempts for %d requests, more than the budget allows (%d)", attempts, n, bound)
	}
	if attempts != n+retries {
		t.Errorf("servers received %d attempts, want %d requests + %d retries (meshlet_retries_total)", attempts, n, retries)
	}
	if flaky.n.Load() < n/10 {
		t.Errorf("the flaky endpoint got only %d requests: it was not part of the load balancing", flaky.n.Load())
	}
	if gw := int(m.p.MetricSum(t, "meshlet_retries_total", map[string]string{"upstream": "api", "reason": "gateway-error"})); gw < failed/2 {
		t.Errorf("meshlet_retries_total{reason=gateway-error} = %d, want about the %d 503s of the flaky endpoint", gw, failed)
	}
	if !resUpstreamInfo(t, m.p, "api").hasDecision("retried", "", "gateway-error") {
		t.Error("decisions show no retry for gateway-error")
	}
}

// TestResilienceDeadEndpoint: an endpoint that answers 503 to everything, or refuses connections, has its breaker
// opened and is ejected; traffic goes to the others; after open_timeout it is probed, and once it has recovered
// its breaker closes and it gets traffic again.
// TestResilienceSubset: with subset_size 2 of 6 endpoints, every call goes to the same 2 (those /debug/upstreams
// marks); when both fail, calls still succeed, on the other endpoints: retries leave the subset once its members
// are tried, and their open breakers send attempts outside it at once.
func TestResilienceSubset(t *testing.T) {
	var failing [6]atomic.Bool
	var servers []*resServer
	var eps []string
	for i := range failing {
		s := resStartServer(t, func(n int64, w http.ResponseWriter, r *http.Request) {
			if failing[i].Load() {
				res503(n, w, r)
				return
			}
			resOK(n, w, r)
		})
		servers, eps = append(servers, s), append(eps, s.addr)
	}
	m := resStartMeshlet(t, resUpstream{name: "api", endpoints: eps, subset: 2})
	c := resClient(4)
	for i := range 120 {
		if code, body := meshlettest.GetBody(t, c, m.url("api")); code != http.StatusOK {
			t.Fatalf("call %d: %d %q, want 200", i, code, body)
		}
	}
	var called []int
	for i, s := range servers {
		if s.n.Load() > 0 {
			called = append(called, i)
		}
	}
	doc := debugUpstreams(t, m.p)
	if len(doc.Upstreams) != 1 || doc.Upstreams[0].Subset != 2 {
		t.Fatalf("/debug/upstreams: want upstream api with subset_size 2, got %+v", doc.Upstreams)
	}
	marked := map[string]bool{}
	for _, e := range doc.Upstreams[0].Endpoints {
		if e.InSubset {
			marked[e.Address] = true
		}
	}
	if len(called) != 2 || len(marked) != 2 || !marked[eps[called[0]]] || !marked[eps[called[1]]] {
		t.Fatalf("120 calls reached endpoints %v, /debug/upstreams marks %v in the subset; want the same 2", called, marked)
	}

	for _, i := range called {
		failing[i].Store(true)
	}
	before := map[int]int64{}
	for i, s := range servers {
		before[i] = s.n.Load()
	}
	for i := range 60 {
		if code, body := meshlettest.GetBody(t, c, m.url("api")); code != http.StatusOK {
			t.Fatalf("call %d with both subset members failing: %d %q, want 200 from another endpoint", i, code, body)
		}
	}
	outside := int64(0)
	for i, s := range servers {
		if i != called[0] && i != called[1] {
			outside += s.n.Load() - before[i]
		}
	}
	if outside < 60 {
		t.Fatalf("with both subset members failing, endpoints outside the subset answered %d of 60 calls", outside)
	}
}

func TestResilienceDeadEndpoint(t *testing.T) {
	for _, mode := range []string{"503", "refused"} {
		t.Run(mode, func(t *testing.T) { resDeadEndpoint(t, mode) })
	}
}

// resStartServerAt is resStartServer on a given address.
func resStartServerAt(t testing.TB, s *resServer, h func(n int64, w http.ResponseWriter, r *http.Request)) {
	t.Helper()
	l, err := net.Listen("tcp", s.addr)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h(s.n.Add(1)-1, w, r)
	}))
	srv.Listener.Close()
	srv.Listener = l
	srv.Start()
	t.Cleanup(srv.Close)
}

func resDeadEndpoint(t *testing.T, mode string) {
	var dead *resServer
	var recoverDead func()
	switch mode {
	case "503":
		var broken atomic.Bool
		broken.Store(true)
		dead = resStartServer(t, func(n int64, w http.ResponseWriter, r *http.Request) {
			if broken.Load() {
				res503(n, w, r)
				return
			}
			resOK(n, w, r)
		})
		recoverDead = func() { broken.Store(false) }
	case "refused":
		dead = &resServer{addr: resDeadAddr(t)}
		recoverDead = func() { resStartServerAt(t, dead, resOK) }
	}
	good1, good2 := resStartServer(t, resOK), resStartServer(t, resOK)
	const openTimeout = 2 * time.Second
	m := resStartMeshlet(t, resUpstream{name: "api", endpoints: []string{dead.addr, good1.addr, good2.addr},
		res: resilience.Config{Breaker: resilience.BreakerConfig{ConsecutiveFailures: 5, OpenTimeout: openTimeout}}})
	c := resClient(1)
	api := map[string]string{"upstream": "api"}
	open := map[string]string{"upstream": "api", "state": "open"}
	closed := map[string]string{"upstream": "api", "state": "closed"}

	if got := m.p.MetricSum(t, "meshlet_breaker_endpoints", closed); got != 3 {
		t.Fatalf("meshlet_breaker_endpoints{state=closed} = %v at start, want 3", got)
	}
	// Phase 1: traffic until the breaker of the dead endpoint opens; clients never see its 503s.
	var openedAt time.Time
	for i := 0; ; i++ {
		if code, body := meshlettest.GetBody(t, c, m.url("api")); code != http.StatusOK {
			t.Fatalf("request %d: %d %q, want 200 (a retry on another endpoint)", i, code, body)
		}
		if m.p.MetricSum(t, "meshlet_breaker_endpoints", open) == 1 {
			openedAt = time.Now()
			break
		}
		if i == 300 {
			t.Fatalf("breaker of the dead endpoint not open after %d requests (dead endpoint got %d)", i, dead.n.Load())
		}
	}
	// Phase 2: while open, it is ejected and gets nothing.
	u := resUpstreamInfo(t, m.p, "api")
	for _, ep := range u.Endpoints {
		wantState, wantEjected := "closed", false
		if ep.Address == dead.addr {
			wantState, wantEjected = "open", true
		}
		if ep.Breaker != wantState || ep.Ejected != wantEjected {
			t.Errorf("endpoint %s: breaker %q ejected %v, want %q %v", ep.Address, ep.Breaker, ep.Ejected, wantState, wantEjected)
		}
	}
	if !u.hasDecision("opened", dead.addr, "") || !u.hasDecision("ejected", dead.addr, "") {
		t.Errorf("decisions do not show the dead endpoint opened and ejected: %+v", u.Decisions)
	}
	if got := m.p.MetricSum(t, "meshlet_outlier_ejected_endpoints", api); got != 1 {
		t.Errorf("meshlet_outlier_ejected_endpoints = %v, want 1", got)
	}
	if got := m.p.MetricSum(t, "meshlet_outlier_ejections_total", api); got != 1 {
		t.Errorf("meshlet_outlier_ejections_total = %v, want 1", got)
	}
	if got := m.p.MetricSum(t, "meshlet_breaker_transitions_total",
		map[string]string{"upstream": "api", "from": "closed", "to": "open"}); got != 1 {
		t.Errorf("meshlet_breaker_transitions_total{closed→open} = %v, want 1", got)
	}
	deadBefore, goodBefore := dead.n.Load(), good1.n.Load()+good2.n.Load()
	retriesBefore := m.p.MetricSum(t, "meshlet_retries_total", api)
	got := resLoad(c, m.url("api"), 40, 1)
	if time.Since(openedAt) < openTimeout {
		if d := dead.n.Load() - deadBefore; d != 0 {
			t.Errorf("the dead endpoint got %d requests while its breaker was open", d)
		}
		if g := good1.n.Load() + good2.n.Load() - goodBefore; g != 40 {
			t.Errorf("the healthy endpoints got %d requests of 40 while the dead one was ejected", g)
		}
		if r := m.p.MetricSum(t, "meshlet_retries_total", api) - retriesBefore; r != 0 {
			t.Errorf("%v retries while the dead endpoint was ejected, want none", r)
		}
	} else {
		t.Logf("40 requests took longer than open_timeout; not checking the open period")
	}
	if got[http.StatusOK] != 40 {
		t.Errorf("while ejected: %v, want 40 × 200", got)
	}

	// Phase 3: the endpoint recovers. Only traffic (and /metrics, which does not touch breakers) may bring it
	// back: nothing here reads /debug/upstreams, whose view of the breaker would move it along by itself.
	recoverDead()
	deadBefore = dead.n.Load()
	deadline := time.Now().Add(openTimeout + 3*time.Second)
	for {
		if code, body := meshlettest.GetBody(t, c, m.url("api")); code != http.StatusOK {
			t.Fatalf("while recovering: %d %q", code, body)
		}
		if m.p.MetricSum(t, "meshlet_breaker_endpoints", closed) == 3 && dead.n.Load() > deadBefore+3 {
			break
		}
		if time.Now().After(deadline) {
			msg := fmt.Sprintf("%v after the endpoint recovered (open_timeout %v), with traffic all along: breakers "+
				"closed %v, half_open %v, open %v; the recovered endpoint got %d requests",
				time.Since(openedAt).Round(time.Millisecond), openTimeout,
				m.p.MetricSum(t, "meshlet_breaker_endpoints", closed),
				m.p.MetricSum(t, "meshlet_breaker_endpoints", map[string]string{"upstream": "api", "state": "half_open"}),
				m.p.MetricSum(t, "meshlet_breaker_endpoints", open), dead.n.Load()-deadBefore)
			// Diagnosis: does asking the breaker its state (as /debug/upstreams does) move it along?
			resUpstreamInfo(t, m.p, "api")
			resLoad(c, m.url("api"), 20, 1)
			t.Fatalf("%s. After one read of /debug/upstreams and 20 more requests: closed %v, open %v, the "+
				"endpoint got %d more requests", msg, m.p.MetricSum(t, "meshlet_breaker_endpoints", closed),
				m.p.MetricSum(t, "meshlet_breaker_endpoints", open), dead.n.Load()-deadBefore)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if since := time.Since(openedAt); since < openTimeout {
		t.Errorf("breaker closed %v after opening, before open_timeout %v", since, openTimeout)
	}
	u = resUpstreamInfo(t, m.p, "api")
	for _, ep := range u.Endpoints {
		if ep.Breaker != "closed" || ep.Ejected {
			t.Errorf("endpoint %s after recovery: breaker %q ejected %v, want closed, not ejected", ep.Address, ep.Breaker, ep.Ejected)
		}
	}
	if !u.hasDecision("half_opened", dead.addr, "") || !u.hasDecision("closed", dead.addr, "") {
		t.Errorf("decisions do not show the endpoint half-opened and closed: %+v", u.Decisions)
	}
	for _, tr := range [][2]string{{"open", "half_open"}, {"half_open", "closed"}} {
		if got := m.p.MetricSum(t, "meshlet_breaker_transitions_total",
			map[string]string{"upstream": "api", "from": tr[0], "to": tr[1]}); got != 1 {
			t.Errorf("meshlet_breaker_transitions_total{%s→%s} = %v, want 1", tr[0], tr[1], got)
		}
	}
	if got := m.p.MetricSum(t, "meshlet_outlier_ejected_endpoints", api); got != 0 {
		t.Errorf("meshlet_outlier_ejected_endpoints = %v after recovery, want 0", got)
	}
}

// TestResilienceAllFailing: when every endpoint answers 503, retries stop at the budget: the servers receive at
// most the requests plus 20% plus the reserve, and the rest are suppressed.
func TestResilienceAllFailing(t *testing.T) {
	s := []*resServer{resStartServer(t, res503), resStartServer(t, res503), resStartServer(t, res503)}
	m := resStartMeshlet(t, resUpstream{name: "api", endpoints: []string{s[0].addr, s[1].addr, s[2].addr}})
	const n = 400
	start := time.Now()
	got := resLoad(resClient(8), m.url("api"), n, 8)
	elapsed := time.Since(start)
	if got[http.StatusServiceUnavailable] != n {
		t.Errorf("responses %v, want %d × 503", got, n)
	}
	attempts := int(s[0].n.Load() + s[1].n.Load() + s[2].n.Load())
	api := map[string]string{"upstream": "api"}
	retries := int(m.p.MetricSum(t, "meshlet_retries_total", api))
	budget := m.p.MetricSum(t, "meshlet_retries_suppressed_total", map[string]string{"upstream": "api", "why": "budget"})
	t.Logf("%d requests in %v: %d attempts, %d retries, %v suppressed by the budget, budget left %v", n,
		elapsed.Round(time.Millisecond), attempts, retries, budget,
		m.p.MetricSum(t, "meshlet_retry_budget_remaining", api))
	if bound := resBudgetBound(n, elapsed); attempts > bound {
		t.Errorf("retry storm: servers received %d attempts for %d requests, the budget allows %d (without it: %d)",
			attempts, n, bound, 3*n)
	}
	if attempts != n+retries {
		t.Errorf("servers received %d attempts, want %d requests + %d retries", attempts, n, retries)
	}
	if retries == 0 {
		t.Error("no retries at all: the budget's reserve should have allowed some")
	}
	if budget == 0 {
		t.Error("meshlet_retries_suppressed_total{why=budget} = 0, want > 0")
	}
	if rem := m.p.MetricSum(t, "meshlet_retry_budget_remaining", api); rem > 1 && elapsed < 9*time.Second {
		t.Errorf("meshlet_retry_budget_remaining = %v right after the budget was spent, want < 1", rem)
	}
	u := resUpstreamInfo(t, m.p, "api")
	if u.RetryBudget == nil {
		t.Error("/debug/upstreams has no retry_budget_remaining")
	}
	if !u.hasDecision("suppressed", "", "budget") {
		t.Errorf("decisions show no retry suppressed by the budget: %+v", u.Decisions)
	}
}

// TestResilienceUnsafeRetries: a POST the app may have seen is not retried; a POST that never left meshlet is; a
// response that has started to stream is never retried.
func TestResilienceUnsafeRetries(t *testing.T) {
	var bodies sync.Map // body (after the method if not POST) → times received
	app := func(n int64, w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(r.Body)
		if err != nil {
			t.Errorf("server reading the request body: %v", err)
		}
		key := string(b)
		if r.Method != http.MethodPost {
			key = r.Method + " " + key
		}
		v, _ := bodies.LoadOrStore(key, new(atomic.Int64))
		v.(*atomic.Int64).Add(1)
		switch r.URL.Path {
		case "/503":
			res503(n, w, r)
		case "/reset":
			resReset(t, w)
		case "/stream":
			w.Header().Set("Content-Type", "text/plain")
			io.WriteString(w, "partial-")
			http.NewResponseController(w).Flush()
			resReset(t, w)
		default:
			w.Write(b)
		}
	}
	s1, s2 := resStartServer(t, app), resStartServer(t, app)
	dead := resDeadAddr(t)
	m := resStartMeshlet(t,
		resUpstream{name: "api", endpoints: []string{s1.addr, s2.addr}},
		resUpstream{name: "half", lb: "round_robin", endpoints: []string{dead, s1.addr}})
	c := resClient(1)
	api := map[string]string{"upstream": "api"}
	served := func() int64 { return s1.n.Load() + s2.n.Load() }
	// quiet waits until meshlet has no request in flight on upstream: then no further attempt can come.
	quiet := func(upstream string) {
		meshlettest.Eventually(t, 5*time.Second, "requests in flight on "+upstream, func() bool {
			return m.p.MetricSum(t, "meshlet_requests_in_flight", map[string]string{"upstream": upstream}) == 0
		})
	}

	t.Run("post answered 503", func(t *testing.T) {
		before, sup := served(), m.p.MetricSum(t, "meshlet_retries_suppressed_total", map[string]string{"upstream": "api", "why": "method"})
		resp, err := c.Post(m.url("api")+"/503", "text/plain", strings.NewReader("order-1"))
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		quiet("api")
		if resp.StatusCode != http.StatusServiceUnavailable {
			t.Errorf("status %d, want the app's 503", resp.StatusCode)
		}
		if d := served() - before; d != 1 {
			t.Errorf("the app received the POST %d times, want 1", d)
		}
		if d := m.p.MetricSum(t, "meshlet_retries_suppressed_total", map[string]string{"upstream": "api", "why": "method"}) - sup; d != 1 {
			t.Errorf("meshlet_retries_suppressed_total{why=method} grew by %v, want 1", d)
		}
	})
	t.Run("post reset after the app read it", func(t *testing.T) {
		before, sup := served(), m.p.MetricSum(t, "meshlet_retries_suppressed_total", map[string]string{"upstream": "api", "why": "method"})
		resp, err := c.Post(m.url("api")+"/reset", "text/plain", strings.NewReader("order-2"))
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		quiet("api")
		if resp.StatusCode != http.StatusBadGateway {
			t.Errorf("status %d, want 502", resp.StatusCode)
		}
		if d := served() - before; d != 1 {
			t.Errorf("the app received the POST %d times, want 1", d)
		}
		if d := m.p.MetricSum(t, "meshlet_retries_suppressed_total", map[string]string{"upstream": "api", "why": "method"}) - sup; d != 1 {
			t.Errorf("meshlet_retries_suppressed_total{why=method} grew by %v, want 1", d)
		}
		if !resUpstreamInfo(t, m.p, "api").hasDecision("suppressed", "", "method") {
			t.Error("decisions show no retry suppressed because of the method")
		}
	})
	t.Run("post refused", func(t *testing.T) {
		before := s1.n.Load()
		retries := m.p.MetricSum(t, "meshlet_retries_total", map[string]string{"upstream": "half", "reason": "connect-failure"})
		const n = 4 // round robin: every other one goes to the dead endpoint first
		for i := range n {
			body := fmt.Sprintf("payment-%d-%s", i, strings.Repeat("x", 1000))
			resp, err := c.Post(m.url("half"), "text/plain", strings.NewReader(body))
			if err != nil {
				t.Fatal(err)
			}
			got, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK || string(got) != body {
				t.Errorf("POST %d: %d, %d bytes back, want 200 with the %d bytes sent", i, resp.StatusCode, len(got), len(body))
			}
			if v, ok := bodies.Load(body); !ok || v.(*atomic.Int64).Load() != 1 {
				t.Errorf("POST %d did not reach the app exactly once", i)
			}
		}
		quiet("half")
		if d := s1.n.Load() - before; d != n {
			t.Errorf("the live endpoint received %d POSTs, want %d", d, n)
		}
		if d := m.p.MetricSum(t, "meshlet_retries_total", map[string]string{"upstream": "half", "reason": "connect-failure"}) - retries; d < 1 {
			t.Errorf("meshlet_retries_total{upstream=half,reason=connect-failure} grew by %v, want >= 1", d)
		}
	})
	t.Run("put replayed", func(t *testing.T) {
		body := "put-small-" + strings.Repeat("y", 10<<10)
		before := served()
		resp, err := resDo(c, http.MethodPut, m.url("api")+"/503", body)
		if err != nil {
			t.Fatal(err)
		}
		quiet("api")
		if resp.StatusCode != http.StatusServiceUnavailable {
			t.Errorf("status %d, want the last attempt's 503", resp.StatusCode)
		}
		if d := served() - before; d != 3 {
			t.Errorf("the app received the PUT %d times, want 3 (max_attempts)", d)
		}
		if v, ok := bodies.Load("PUT " + body); !ok || v.(*atomic.Int64).Load() != 3 {
			t.Error("the PUT's body did not arrive whole on every attempt")
		}
	})
	t.Run("put body too large to replay", func(t *testing.T) {
		body := "put-large-" + strings.Repeat("z", 100<<10) // over max_body_bytes (64 KiB by default)
		before := served()
		sup := m.p.MetricSum(t, "meshlet_retries_suppressed_total", map[string]string{"upstream": "api", "why": "body"})
		resp, err := resDo(c, http.MethodPut, m.url("api")+"/503", body)
		if err != nil {
			t.Fatal(err)
		}
		quiet("api")
		if resp.StatusCode != http.StatusServiceUnavailable {
			t.Errorf("status %d, want 503", resp.StatusCode)
		}
		if d := served() - before; d != 1 {
			t.Errorf("the app received the PUT %d times, want 1", d)
		}
		if d := m.p.MetricSum(t, "meshlet_retries_suppressed_total", map[string]string{"upstream": "api", "why": "body"}) - sup; d != 1 {
			t.Errorf("meshlet_retries_suppressed_total{why=body} grew by %v, want 1", d)
		}
	})
	t.Run("streaming response reset", func(t *testing.T) {
		before, retries := served(), m.p.MetricSum(t, "meshlet_retries_total", api)
		resp, err := c.Get(m.url("api") + "/stream")
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		quiet("api")
		if resp.StatusCode != http.StatusOK {
			t.Errorf("status %d, want the 200 the server started", resp.StatusCode)
		}
		if err == nil {
			t.Errorf("body read completely (%q), want an error: the stream broke", got)
		}
		if !bytes.HasPrefix([]byte("partial-"), got) {
			t.Errorf("body %q, want (a prefix of) what the server sent before the reset", got)
		}
		if d := served() - before; d != 1 {
			t.Errorf("the server received the GET %d times, want 1: a started response must not be retried", d)
		}
		if d := m.p.MetricSum(t, "meshlet_retries_total", api) - retries; d != 0 {
			t.Errorf("meshlet_retries_total grew by %v, want 0", d)
		}
	})
}

// resGRPCAttempt is one attempt a fake gRPC server received.
type resGRPCAttempt struct {
	at      time.Time
	timeout time.Duration // from grpc-timeout; -1 if absent or malformed
}

// resParseGRPCTimeout parses a grpc-timeout value.
func resParseGRPCTimeout(v string) time.Duration {
	if len(v) < 2 {
		return -1
	}
	var n int64
	if _, err := fmt.Sscan(v[:len(v)-1], &n); err != nil {
		return -1
	}
	unit := map[byte]time.Duration{'H': time.Hour, 'M': time.Minute, 'S': time.Second, 'm': time.Millisecond,
		'u': time.Microsecond, 'n': time.Nanosecond}[v[len(v)-1]]
	if unit == 0 {
		return -1
	}
	return time.Duration(n) * unit
}

// TestResilienceGRPCDeadline: with a caller's deadline of 300 ms and a server that answers UNAVAILABLE
// (trailers-only) after 120 ms, the attempts fit in the deadline, each is told what remains of it, and none
// starts after it.
func TestResilienceGRPCDeadline(t *testing.T) {
	const (
		deadline = 300 * time.Millisecond
		work     = 120 * time.Millisecond
	)
	var mu sync.Mutex
	var attempts []resGRPCAttempt
	slowUnavailable := func(_ int64, w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		attempts = append(attempts, resGRPCAttempt{at: time.Now(), timeout: resParseGRPCTimeout(r.Header.Get("Grpc-Timeout"))})
		mu.Unlock()
		select {
		case <-time.After(work):
		case <-r.Context().Done():
			return
		}
		w.Header().Set("Content-Type", "application/grpc")
		w.Header().Set("Grpc-Status", "14")
		w.Header().Set("Grpc-Message", "busy")
		w.WriteHeader(http.StatusOK)
	}
	s := []*resServer{resStartServer(t, slowUnavailable), resStartServer(t, slowUnavailable), resStartServer(t, slowUnavailable)}
	m := resStartMeshlet(t, resUpstream{name: "grpc", protocol: "grpc", endpoints: []string{s[0].addr, s[1].addr, s[2].addr},
		res: resilience.Config{Breaker: resilience.BreakerConfig{Disabled: true}}})
	client := testpb.NewTestServiceClient(grpcDial(t, m.listen["grpc"], ""))
	// Warm the client's connection up, so that the call's time is the mesh's.
	wctx, wcancel := context.WithTimeout(context.Background(), 5*time.Second)
	client.EmptyCall(wctx, &testpb.Empty{})
	wcancel()

	for call := range 3 {
		mu.Lock()
		attempts = nil
		mu.Unlock()
		start := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), deadline)
		_, err := client.UnaryCall(ctx, &testpb.SimpleRequest{})
		elapsed := time.Since(start)
		cancel()
		if c := status.Code(err); c != codes.Unavailable && c != codes.DeadlineExceeded {
			t.Errorf("call %d: %v, want UNAVAILABLE or DEADLINE_EXCEEDED", call, err)
		}
		if elapsed > deadline+200*time.Millisecond {
			t.Errorf("call %d: error after %v, want about the %v deadline", call, elapsed, deadline)
		}
		// Wait until meshlet is done with the call: then the attempt list is final.
		meshlettest.Eventually(t, 5*time.Second, "grpc requests in flight", func() bool {
			return m.p.MetricSum(t, "meshlet_requests_in_flight", map[string]string{"upstream": "grpc"}) == 0
		})
		mu.Lock()
		got := slices.Clone(attempts)
		mu.Unlock()
		var desc []string
		for _, a := range got {
			desc = append(desc, fmt.Sprintf("+%v (grpc-timeout %v)", a.at.Sub(start).Round(time.Millisecond), a.timeout))
		}
		t.Logf("call %d: %v after %v; attempts %v", call, status.Code(err), elapsed.Round(time.Millisecond), desc)
		if len(got) < 2 || len(got) > 3 {
			t.Errorf("call %d: %d attempts, want 2 or 3 (one retry fits in %v; max_attempts is 3)", call, len(got), deadline)
		}
		for i, a := range got {
			if a.at.After(start.Add(deadline + 20*time.Millisecond)) {
				t.Errorf("call %d: attempt %d started %v after the call, after its deadline", call, i+1, a.at.Sub(start))
			}
			if a.timeout <= 0 || a.timeout > deadline {
				t.Errorf("call %d: attempt %d carried grpc-timeout %v, want in (0, %v]", call, i+1, a.timeout, deadline)
			}
			if i > 0 && a.timeout > got[i-1].timeout-work+20*time.Millisecond {
				t.Errorf("call %d: attempt %d carried grpc-timeout %v, want what remains: at most %v - %v",
					call, i+1, a.timeout, got[i-1].timeout, work)
			}
		}
	}
	if got := m.p.MetricSum(t, "meshlet_retries_total", map[string]string{"upstream": "grpc", "reason": "unavailable"}); got < 3 {
		t.Errorf("meshlet_retries_total{reason=unavailable} = %v, want >= 3", got)
	}
}

// TestResilienceClientCancel: a client that goes away stops the attempts, and its cancellation is not held
// against the endpoint, however often it happens.
func TestResilienceClientCancel(t *testing.T) {
	started := make(chan struct{}, 16)
	srv := resStartServer(t, func(n int64, w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/mid-body" {
			io.WriteString(w, "first bytes\n")
			http.NewResponseController(w).Flush()
		}
		started <- struct{}{}
		select {
		case <-r.Context().Done():
		case <-time.After(10 * time.Second):
		}
	})
	gstarted := make(chan struct{}, 16)
	g := &resGRPCServer{unary: func(ctx context.Context, n int64) (*testpb.SimpleResponse, error) {
		gstarted <- struct{}{}
		select {
		case <-ctx.Done():
		case <-time.After(10 * time.Second):
		}
		return &testpb.SimpleResponse{}, nil
	}}
	gaddr := resStartGRPC(t, g)
	breaker := resilience.Config{Breaker: resilience.BreakerConfig{ConsecutiveFailures: 3}}
	m := resStartMeshlet(t, resUpstream{name: "api", endpoints: []string{srv.addr}, res: breaker},
		resUpstream{name: "grpc", protocol: "grpc", endpoints: []string{gaddr}, res: breaker})
	api := map[string]string{"upstream": "api"}
	const rounds = 4 // per path, more than consecutive_failures
	for _, path := range []string{"/before-headers", "/mid-body"} {
		for i := range rounds {
			before := srv.n.Load()
			ctx, cancel := context.WithCancel(context.Background())
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, m.url("api")+path, nil)
			errc := make(chan error, 1)
			go func() {
				resp, err := resClient(1).Do(req)
				if err == nil {
					buf := make([]byte, 12)
					_, err = io.ReadFull(resp.Body, buf)
					if err == nil {
						started <- struct{}{} // the client has read the first bytes
						_, err = io.ReadAll(resp.Body)
					}
					resp.Body.Close()
				}
				errc <- err
			}()
			want := 1
			if path == "/mid-body" {
				want = 2 // the server's and the client's
			}
			for range want {
				select {
				case <-started:
				case <-time.After(10 * time.Second):
					t.Fatalf("%s %d: the request never got going", path, i)
				}
			}
			cancel()
			select {
			case err := <-errc:
				if !errors.Is(err, context.Canceled) {
					t.Errorf("%s %d: client got %v, want its own cancellation", path, i, err)
				}
			case <-time.After(10 * time.Second):
				t.Fatalf("%s %d: the client did not return after cancelling", path, i)
			}
			meshlettest.Eventually(t, 5*time.Second, "requests in flight after the cancel", func() bool {
				return m.p.MetricSum(t, "meshlet_requests_in_flight", api) == 0
			})
			if d := srv.n.Load() - before; d != 1 {
				t.Errorf("%s %d: the server received %d attempts, want 1", path, i, d)
			}
		}
	}
	client := testpb.NewTestServiceClient(grpcDial(t, m.listen["grpc"], ""))
	for i := range rounds {
		before := g.n.Load()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		errc := make(chan error, 1)
		go func() {
			_, err := client.UnaryCall(ctx, &testpb.SimpleRequest{})
			errc <- err
		}()
		select {
		case <-gstarted:
		case <-time.After(10 * time.Second):
			t.Fatalf("gRPC %d: the call never reached the server", i)
		}
		cancel()
		if err := <-errc; status.Code(err) != codes.Canceled {
			t.Errorf("gRPC %d: client got %v, want CANCELED", i, err)
		}
		meshlettest.Eventually(t, 5*time.Second, "gRPC requests in flight after the cancel", func() bool {
			return m.p.MetricSum(t, "meshlet_requests_in_flight", map[string]string{"upstream": "grpc"}) == 0
		})
		if d := g.n.Load() - before; d != 1 {
			t.Errorf("gRPC %d: the server received %d attempts, want 1", i, d)
		}
	}
	for name, n := range map[string]int{"api": 2 * rounds, "grpc": rounds} {
		u := resUpstreamInfo(t, m.p, name)
		for _, ep := range u.Endpoints {
			if ep.Failures != 0 || ep.Breaker != "closed" || ep.Ejected || ep.InFlight != 0 {
				t.Errorf("%s endpoint %s after %d cancellations: failures %d, breaker %q, ejected %v, in flight %d; "+
					"want 0, closed, false, 0", name, ep.Address, n, ep.Failures, ep.Breaker, ep.Ejected, ep.InFlight)
			}
		}
		labels := map[string]string{"upstream": name}
		if got := m.p.MetricSum(t, "meshlet_retries_total", labels); got != 0 {
			t.Errorf("meshlet_retries_total{upstream=%s} = %v, want 0", name, got)
		}
		if got := m.p.MetricSum(t, "meshlet_breaker_transitions_total", labels); got != 0 {
			t.Errorf("meshlet_breaker_transitions_total{upstream=%s} = %v, want 0", name, got)
		}
	}
}

// resGRPCServer is a real gRPC TestService whose UnaryCall does what unary says with the 0-based number of the
// call.
type resGRPCServer struct {
	testpb.UnimplementedTestServiceServer
	n     atomic.Int64
	unary func(ctx context.Context, n int64) (*testpb.SimpleResponse, error)
}

func (s *resGRPCServer) UnaryCall(ctx context.Context, _ *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	return s.unary(ctx, s.n.Add(1)-1)
}

// resStartGRPC serves s on a loopback port and returns its address.
func resStartGRPC(t testing.TB, s *resGRPCServer) string {
	t.Helper()
	addr, _ := meshlettest.StartGRPC(t, s, nil)
	return addr
}

// TestResilienceLimits: beyond max_requests in flight and max_pending waiting, requests are refused at once with
// 503 (RESOURCE_EXHAUSTED for gRPC) and counted.
func TestResilienceLimits(t *testing.T) {
	release := make(chan struct{})
	var releaseOnce sync.Once
	free := func() { releaseOnce.Do(func() { close(release) }) }
	t.Cleanup(free)
	var inServer, maxInServer atomic.Int64
	hold := func(n int64, w http.ResponseWriter, r *http.Request) {
		cur := inServer.Add(1)
		defer inServer.Add(-1)
		for {
			old := maxInServer.Load()
			if cur <= old || maxInServer.CompareAndSwap(old, cur) {
				break
			}
		}
		select {
		case <-release:
		case <-r.Context().Done():
		}
		io.WriteString(w, "done")
	}
	srv := resStartServer(t, hold)
	g := &resGRPCServer{unary: func(ctx context.Context, n int64) (*testpb.SimpleResponse, error) {
		select {
		case <-release:
		case <-ctx.Done():
		}
		return &testpb.SimpleResponse{}, nil
	}}
	gaddr := resStartGRPC(t, g)
	limits := resilience.Config{Limits: resilience.LimitsConfig{MaxRequests: 2, MaxPending: new(1)}}
	m := resStartMeshlet(t,
		resUpstream{name: "api", endpoints: []string{srv.addr}, res: limits},
		resUpstream{name: "grpc", protocol: "grpc", endpoints: []string{gaddr}, res: limits})

	// HTTP: two held, one waiting, the rest refused at once.
	var wg sync.WaitGroup
	held := make(chan int, 3)
	for range 3 {
		wg.Go(func() {
			code, _ := meshlettest.GetBody(t, resClient(1), m.url("api"))
			held <- code
		})
	}
	meshlettest.Eventually(t, 5*time.Second, "2 requests at the server and 3 in meshlet", func() bool {
		return inServer.Load() == 2 &&
			m.p.MetricSum(t, "meshlet_requests_in_flight", map[string]string{"upstream": "api"}) == 3
	})
	if u := resUpstreamInfo(t, m.p, "api"); u.LimitInUse == nil || *u.LimitInUse != 2 {
		t.Errorf("/debug/upstreams limit_in_use = %v, want 2", u.LimitInUse)
	}
	for i := range 3 {
		start := time.Now()
		resp, err := resClient(1).Get(m.url("api"))
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("X-Meshlet-Error") != "overflow" {
			t.Errorf("overflow %d: %d (X-Meshlet-Error %q), want 503 overflow", i, resp.StatusCode, resp.Header.Get("X-Meshlet-Error"))
		}
		if d := time.Since(start); d > time.Second {
			t.Errorf("overflow %d answered after %v, want at once", i, d)
		}
	}
	if got := m.p.MetricSum(t, "meshlet_limit_overflows_total", map[string]string{"upstream": "api", "limit": "pending"}); got != 3 {
		t.Errorf("meshlet_limit_overflows_total{upstream=api,limit=pending} = %v, want 3", got)
	}
	if !resUpstreamInfo(t, m.p, "api").hasDecision("overflow", "", "max_pending") {
		t.Error("decisions show no overflow")
	}

	// gRPC: the same with RESOURCE_EXHAUSTED.
	client := testpb.NewTestServiceClient(grpcDial(t, m.listen["grpc"], ""))
	gheld := make(chan error, 3)
	for range 3 {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			defer cancel()
			_, err := client.UnaryCall(ctx, &testpb.SimpleRequest{})
			gheld <- err
		})
	}
	meshlettest.Eventually(t, 5*time.Second, "2 calls at the server and 3 in meshlet", func() bool {
		return g.n.Load() == 2 && m.p.MetricSum(t, "meshlet_requests_in_flight", map[string]string{"upstream": "grpc"}) == 3
	})
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	_, err := client.UnaryCall(ctx, &testpb.SimpleRequest{})
	cancel()
	if status.Code(err) != codes.ResourceExhausted {
		t.Errorf("gRPC overflow: %v, want RESOURCE_EXHAUSTED", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("gRPC overflow answered after %v, want at once", d)
	}
	if got := m.p.MetricSum(t, "meshlet_limit_overflows_total", map[string]string{"upstream": "grpc"}); got != 1 {
		t.Errorf("meshlet_limit_overflows_total{upstream=grpc} = %v, want 1", got)
	}

	// Released, every held and waiting request completes.
	free()
	wg.Wait()
	close(held)
	close(gheld)
	for code := range held {
		if code != http.StatusOK {
			t.Errorf("a held request ended with %d, want 200", code)
		}
	}
	for err := range gheld {
		if err != nil {
			t.Errorf("a held gRPC call ended with %v, want OK", err)
		}
	}
	if got := maxInServer.Load(); got > 2 {
		t.Errorf("the server had %d requests at once, max_requests is 2", got)
	}
	if g.n.Load() != 3 {
		t.Errorf("the gRPC server got %d calls, want the 3 admitted", g.n.Load())
	}
	meshlettest.Eventually(t, 5*time.Second, "limit_in_use back to 0", func() bool {
		u := resUpstreamInfo(t, m.p, "api")
		return u.LimitInUse != nil && *u.LimitInUse == 0
	})
}

// TestResilienceDefaults: with no retry or circuit_breaker config at all, an idempotent GET is retried on a
// refused connection and on 503, and a gRPC call on a trailers-only UNAVAILABLE.
func TestResilienceDefaults(t *testing.T) {
	good := resStartServer(t, resOK)
	oddFail := resStartServer(t, func(n int64, w http.ResponseWriter, r *http.Request) {
		if n%2 == 0 {
			res503(n, w, r)
			return
		}
		resOK(n, w, r)
	})
	g := &resGRPCServer{unary: func(ctx context.Context, n int64) (*testpb.SimpleResponse, error) {
		if n%2 == 0 {
			return nil, status.Error(codes.Unavailable, "warming up") // no header sent: trailers-only
		}
		return &testpb.SimpleResponse{Payload: &testpb.Payload{Body: []byte("ok")}}, nil
	}}
	gaddr := resStartGRPC(t, g)
	m := resStartMeshlet(t,
		resUpstream{name: "refused", lb: "round_robin", endpoints: []string{resDeadAddr(t), good.addr}},
		resUpstream{name: "flaky", endpoints: []string{oddFail.addr}},
		resUpstream{name: "grpc", protocol: "grpc", endpoints: []string{gaddr}})
	c := resClient(1)
	const n = 5

	for i := range n {
		if code, body := meshlettest.GetBody(t, c, m.url("refused")); code != http.StatusOK || body != "ok" {
			t.Errorf("GET %d on refused: %d %q, want 200 ok", i, code, body)
		}
	}
	if got := good.n.Load(); got != n {
		t.Errorf("the live endpoint got %d requests, want %d", got, n)
	}
	if got := m.p.MetricSum(t, "meshlet_retries_total", map[string]string{"upstream": "refused", "reason": "connect-failure"}); got < 1 {
		t.Errorf("meshlet_retries_total{upstream=refused,reason=connect-failure} = %v, want >= 1", got)
	}

	for i := range n {
		if code, body := meshlettest.GetBody(t, c, m.url("flaky")); code != http.StatusOK || body != "ok" {
			t.Errorf("GET %d on flaky: %d %q, want 200 ok", i, code, body)
		}
	}
	if got := oddFail.n.Load(); got != 2*n {
		t.Errorf("the flaky endpoint got %d attempts, want %d (each GET: a 503, then a retry)", got, 2*n)
	}
	if got := m.p.MetricSum(t, "meshlet_retries_total", map[string]string{"upstream": "flaky", "reason": "gateway-error"}); got != n {
		t.Errorf("meshlet_retries_total{upstream=flaky,reason=gateway-error} = %v, want %d", got, n)
	}

	client := testpb.NewTestServiceClient(grpcDial(t, m.listen["grpc"], ""))
	for i := range n {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		resp, err := client.UnaryCall(ctx, &testpb.SimpleRequest{})
		cancel()
		if err != nil || string(resp.GetPayload().GetBody()) != "ok" {
			t.Errorf("gRPC call %d: %v, want OK", i, err)
		}
	}
	if got := g.n.Load(); got != 2*n {
		t.Errorf("the gRPC server got %d calls, want %d (each: UNAVAILABLE, then a retry)", got, 2*n)
	}
	if got := m.p.MetricSum(t, "meshlet_retries_total", map[string]string{"upstream": "grpc", "reason": "unavailable"}); got != n {
		t.Errorf("meshlet_retries_total{upstream=grpc,reason=unavailable} = %v, want %d", got, n)
	}
}

// TestResilienceCheckConfig: `meshlet check` rejects bad resilience settings, every problem with its field path,
// and accepts the full documented example.
func TestResilienceCheckConfig(t *testing.T) {
	const head = "service:\n  name: web\nupstreams:\n  - name: api\n    listen: 127.0.0.1:15001\n    endpoints: [127.0.0.1:9]\n"
	for _, tc := range []struct {
		name, upstream string
		want           []string // each must appear in the output; none for a valid config
	}{
		{"valid full", `    retry: {max_attempts: 3, per_try_timeout: 0s, backoff: {base: 25ms, max: 250ms}, retry_on: [connect-failure, reset, refused-stream, gateway-error, unavailable, "429", resource-exhausted, cancelled], max_body_bytes: 65536, budget: {ratio: 0.2, min_per_second: 10, window: 10s}}
    circuit_breaker: {disabled: false, consecutive_failures: 5, failure_ratio: 0.5, min_requests: 20, interval: 10s, open_timeout: 10s, half_open_requests: 1}
    outlier: {max_ejection_percent: 50}
    limits: {max_requests: 1024, max_pending: 1024, max_connections: 1024}
`, nil},
		{"max_attempts negative", "    retry: {max_attempts: -1}\n",
			[]string{"upstreams[0].retry.max_attempts: must be >= 1"}},
		{"max_attempts too many", "    retry: {max_attempts: 11}\n",
			[]string{"upstreams[0].retry.max_attempts"}},
		{"unknown retry_on", "    retry: {retry_on: [connect-failure, sometimes]}\n",
			[]string{"upstreams[0].retry.retry_on[1]", "sometimes"}},
		{"retry_on status out of range", "    retry: {retry_on: [\"200\"]}\n",
			[]string{"upstreams[0].retry.retry_on[0]"}},
		{"failure_ratio out of range", "    circuit_breaker: {failure_ratio: 1.5}\n",
			[]string{"upstreams[0].circuit_breaker.failure_ratio"}},
		{"negative durations", "    retry: {per_try_timeout: -1s}\n    circuit_breaker: {open_timeout: -1s}\n",
			[]string{"upstreams[0].retry.per_try_timeout", "upstreams[0].circuit_breaker.open_timeout"}},
		{"backoff max below base", "    retry: {backoff: {base: 1s, max: 100ms}}\n",
			[]string{"upstreams[0].retry.backoff.max"}},
		{"budget", "    retry: {budget: {ratio: -0.5, window: 100ms}}\n",
			[]string{"upstreams[0].retry.budget.ratio", "upstreams[0].retry.budget.window"}},
		{"ejection percent", "    outlier: {max_ejection_percent: 150}\n",
			[]string{"upstreams[0].outlier.max_ejection_percent"}},
		{"unknown field", "    retry: {max_attempt: 3}\n", []string{"max_attempt"}},
		{"all at once", "    retry: {max_attempts: -2, retry_on: [bogus]}\n    circuit_breaker: {failure_ratio: 2}\n",
			[]string{"upstreams[0].retry.max_attempts", "upstreams[0].retry.retry_on[0]",
				"upstreams[0].circuit_breaker.failure_ratio"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, code := meshlettest.Exec(t, "check", "-config", meshlettest.WriteTemp(t, "meshlet.yaml", head+tc.upstream))
			if tc.want == nil {
				if code != 0 {
					t.Errorf("exit %d for a valid config:\n%s", code, out)
				}
				return
			}
			if code == 0 {
				t.Fatalf("exit 0, want an error mentioning %q:\n%s", tc.want, out)
			}
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("output does not mention %q:\n%s", w, out)
				}
			}
		})
	}
}
