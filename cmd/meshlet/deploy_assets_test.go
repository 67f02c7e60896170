package main_test

// The Prometheus and Grafana assets in deploy/ against a real meshlet: every meshlet_* name they use exists in its
// /metrics; promtool accepts the rules; a real Prometheus server scrapes the meshlet and evaluates the rules and the
// dashboard's queries. Prometheus comes from the Debian package `prometheus` (.ci/run installs it); without it the
// Prometheus parts skip, and fail with CI=true.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"meshlet.dev/meshlet/discovery/discoverytest"
	"meshlet.dev/meshlet/internal/meshlettest"
	"meshlet.dev/meshlet/internal/toolbin"
)

const (
	rulesFile     = "../../deploy/prometheus/rules.yaml"
	dashboardFile = "../../deploy/grafana/meshlet-dashboard.json"
)

func TestDeployAssets(t *testing.T) {
	agent := discoverytest.StartConsul(t, discoverytest.Options{})
	admin := startInstrumentedMeshlet(t, agent.HTTPAddr, "web")
	t.Run("metric names exist", func(t *testing.T) { checkAssetMetricNames(t, admin) })
	t.Run("prometheus scrapes and evaluates", func(t *testing.T) { checkPrometheus(t, admin) })
}

// assetMetricNames is every meshlet_* name in the rules and the dashboard, histogram suffixes removed.
func assetMetricNames(t *testing.T) map[string][]string {
	t.Helper()
	names := map[string][]string{} // name -> files
	re := regexp.MustCompile(`\bmeshlet_[a-z0-9_]+`)
	for _, f := range []string{rulesFile, dashboardFile} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range re.FindAllString(string(b), -1) {
			for _, suf := range []string{"_bucket", "_sum", "_count"} {
				if strings.HasSuffix(n, suf) && n != "meshlet_connections_total" {
					n = strings.TrimSuffix(n, suf)
				}
			}
			if !slices.Contains(names[n], filepath.Base(f)) {
				names[n] = append(names[n], filepath.Base(f))
			}
		}
	}
	if len(names) < 15 {
		t.Fatalf("only %d metric names found in the assets", len(names))
	}
	return names
}

// checkAssetMetricNames: each name has samples in /metrics (a histogram counts by its base name).
func checkAssetMetricNames(t *testing.T, admin string) {
	want := assetMetricNames(t)
	var missing []string
	deadline := time.Now().Add(15 * time.Second)
	for {
		have := scrapedNames(t, admin)
		missing = missing[:0]
		for n, files := range want {
			if !have[n] {
				missing = append(missing, fmt.Sprintf("%s (used in %s)", n, strings.Join(files, ", ")))
			}
		}
		if len(missing) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond) // poll: some series appear after the traffic's effects settle
	}
	sort.Strings(missing)
	for _, m := range missing {
		t.Errorf("not in meshlet's /metrics: %s", m)
	}
}

// scrapedNames are the metric names with at least one sample in /metrics.
func scrapedNames(t *testing.T, admin string) map[string]bool {
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	have := map[string]bool{}
	for _, line := range strings.Split(string(b), "\n") {
		if line == "" || line[0] == '#' {
			continue
		}
		n := line[:strings.IndexAny(line, "{ ")]
		have[n] = true
		for _, suf := range []string{"_bucket", "_sum", "_count"} {
			if strings.HasSuffix(n, suf) {
				have[strings.TrimSuffix(n, suf)] = true
			}
		}
	}
	return have
}

// startInstrumentedMeshlet runs a meshlet whose every metric family has samples: Consul discovery (a real agent),
// a certificate, an upstream whose endpoints fail (retries, a suppressed retry, breakers opening, an ejection), an
// upstream that overflows its limit, an upstream whose tiny retry budget runs out, inbound calls (permissive mode,
// plaintext). service names the service (its certificate too); consul is the Consul agent's HTTP address. It
// returns the admin address.
func startInstrumentedMeshlet(t *testing.T, consul, service string) string {
	t.Helper()
	certs := t.TempDir()
	for _, args := range [][]string{{"certs", "ca", "-dir", certs, "-trust-domain", "example.mesh"},
		{"certs", "issue", "-dir", certs, "-service", service}} {
		if out, code := meshlettest.Exec(t, args...); code != 0 {
			t.Fatalf("meshlet %v: %d %s", args, code, out)
		}
	}
	failing := func() *httptest.Server {
		s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			http.Error(w, "down", http.StatusServiceUnavailable)
		}))
		t.Cleanup(s.Close)
		return s
	}
	bad1, bad2 := failing(), failing()
	entered, release := make(chan struct{}, 1), make(chan struct{})
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		entered <- struct{}{}
		<-release
	}))
	var releaseOnce sync.Once
	t.Cleanup(func() { releaseOnce.Do(func() { close(release) }); slow.Close() })

	bad3 := failing()
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	t.Cleanup(app.Close)

	admin, api, lim, disc := meshlettest.FreeAddr(t), meshlettest.FreeAddr(t), meshlettest.FreeAddr(t), meshlettest.FreeAddr(t)
	tight, inbound := meshlettest.FreeAddr(t), meshlettest.FreeAddr(t)
	p := meshlettest.Start(t, admin, fmt.Sprintf(`service: {name: %s, address: %q}
inbound: {listen: %q, tls: {mode: permissive, allow_plaintext: true}}   # Consul intentions decide; let plaintext in
upstreams:
  - {name: api, listen: %q, endpoints: [%q, %q], retry: {backoff: {base: 1ms, max: 2ms}},
      circuit_breaker: {open_timeout: 10m}}   # stays open while Prometheus starts, however slow the machine
  - {name: limited, listen: %q, endpoints: [%q], limits: {max_requests: 1, max_pending: 0}}
  - {name: disc, listen: %q}
  - {name: tight, listen: %q, endpoints: [%q], circuit_breaker: {open_timeout: 10m},
      retry: {backoff: {base: 1ms, max: 2ms}, budget: {ratio: 0.01, min_per_second: 0.1, window: 10s}}}
discovery: {consul: {address: %q}}
tls: {cert_file: %q, key_file: %q, ca_file: %q}
admin: {listen: %q}
shutdown: {drain_delay: 0s}
`, service, meshlettest.HostOf(app), inbound, api, meshlettest.HostOf(bad1), meshlettest.HostOf(bad2), lim,
		meshlettest.HostOf(slow), disc, tight, meshlettest.HostOf(bad3), consul,
		filepath.Join(certs, service+".crt"), filepath.Join(certs, service+".key"), filepath.Join(certs, "ca.crt"), admin))

	client := &http.Client{Timeout: 10 * time.Second}
	call := func(method, url string) int {
		req, _ := http.NewRequest(method, url, strings.NewReader("x"))
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, url, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	call("POST", "http://"+api+"/") // 503, not retried: why="method"
	for range 12 {                  // retried, then breakers open and one endpoint is ejected
		call("GET", "http://"+api+"/")
	}
	done := make(chan int, 1)
	go func() { done <- call("GET", "http://"+lim+"/") }()
	select {
	case <-entered:
	case <-time.After(10 * time.Second):
		t.Fatal("the limited upstream's first call never arrived")
	}
	if code := call("GET", "http://"+lim+"/"); code != http.StatusServiceUnavailable {
		t.Errorf("second concurrent call to the limited upstream: %d, want 503 (overflow)", code)
	}
	releaseOnce.Do(func() { close(release) })
	<-done
	if v := p.MetricSum(t, "meshlet_limit_overflows_total", nil); v < 1 {
		t.Errorf("meshlet_limit_overflows_total = %v", v)
	}
	for range 4 { // the budget allows one retry in its window; the next failures return without one
		call("GET", "http://"+tight+"/")
	}
	if v := p.MetricSum(t, "meshlet_retries_suppressed_total", map[string]string{"why": "budget"}); v < 1 {
		t.Errorf(`meshlet_retries_suppressed_total{why="budget"} = %v`, v)
	}
	if code := call("GET", "http://"+inbound+"/"); code != http.StatusOK {
		t.Errorf("inbound call: %d, want 200", code)
	}
	return admin
}

// TestPrometheusRuleMatches: the Operator's PrometheusRule carries exactly the groups of rules.yaml.
func TestPrometheusRuleMatches(t *testing.T) {
	var rules struct{ Groups any }
	var cr struct {
		APIVersion string `yaml:"apiVersion"`
		Kind       string
		Spec       struct{ Groups any }
	}
	for path, v := range map[string]any{rulesFile: &rules, "../../deploy/prometheus/prometheusrule.yaml": &cr} {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if err := yaml.Unmarshal(b, v); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
	}
	if cr.APIVersion != "monitoring.coreos.com/v1" || cr.Kind != "PrometheusRule" {
		t.Errorf("prometheusrule.yaml is %s %s", cr.APIVersion, cr.Kind)
	}
	if rules.Groups == nil || !reflect.DeepEqual(rules.Groups, cr.Spec.Groups) {
		t.Error("deploy/prometheus/prometheusrule.yaml and rules.yaml differ: copy the groups of rules.yaml into its spec")
	}
}

// TestPromtoolCheckRules: the rules file is valid for Prometheus (and needs no Consul or meshlet to check).
func TestPromtoolCheckRules(t *testing.T) {
	bin := lookPrometheusTool(t, "promtool")
	out, err := exec.Command(bin, "check", "rules", rulesFile).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "SUCCESS") {
		t.Fatalf("promtool check rules: %v\n%s", err, out)
	}
}

// TestPromtoolTestRules: the alerts' unit tests (deploy/prometheus/rules_test.yaml) pass, and every alert of
// rules.yaml has one.
func TestPromtoolTestRules(t *testing.T) {
	bin := lookPrometheusTool(t, "promtool")
	var tests struct {
		RuleFiles []string `yaml:"rule_files"`
		Tests     []struct {
			AlertRuleTest []struct{ Alertname string } `yaml:"alert_rule_test"`
		}
	}
	readYAML(t, rulesTestFile, &tests)
	if !slices.Equal(tests.RuleFiles, []string{filepath.Base(rulesFile)}) {
		t.Errorf("rules_test.yaml tests %v, want [rules.yaml]", tests.RuleFiles)
	}
	tested := map[string]bool{}
	for _, tc := range tests.Tests {
		for _, a := range tc.AlertRuleTest {
			tested[a.Alertname] = true
		}
	}
	for _, a := range shippedAlerts(t, rulesFile) {
		if !tested[a.Alert] {
			t.Errorf("alert %s has no test in %s", a.Alert, rulesTestFile)
		}
	}
	out, err := exec.Command(bin, "test", "rules", rulesTestFile).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "SUCCESS") {
		t.Fatalf("promtool test rules: %v\n%s", err, out)
	}
}

const (
	rulesTestFile = "../../deploy/prometheus/rules_test.yaml"
	runbookFile   = "../../docs/runbook.md"
	runbookURL    = "https://meshlet.dev/meshlet/docs/runbook.md#"
)

type shippedAlert struct {
	Alert       string
	Expr        string
	Labels      map[string]string
	Annotations map[string]string
}

// shippedAlerts are the alerts of a rules file (rules.yaml, or prometheusrule.yaml's spec).
func shippedAlerts(t *testing.T, path string) []shippedAlert {
	t.Helper()
	type groups struct {
		Groups []struct{ Rules []shippedAlert }
	}
	var f struct {
		groups `yaml:",inline"`
		Spec   groups
	}
	readYAML(t, path, &f)
	var alerts []shippedAlert
	for _, g := range append(f.Groups, f.Spec.Groups...) {
		for _, r := range g.Rules {
			if r.Alert != "" {
				alerts = append(alerts, r)
			}
		}
	}
	if len(alerts) < 12 {
		t.Fatalf("%s: %d alerts", path, len(alerts))
	}
	return alerts
}

// TestAlertConventions: in rules.yaml and prometheusrule.yaml, every alert has severity critical or warning (the
// kube-prometheus mixins' convention), a summary, and a runbook_url pointing at its own section of docs/runbook.md;
// the alerts for a meshlet target that is down and for high latency exist.
func TestAlertConventions(t *testing.T) {
	b, err := os.ReadFile(runbookFile)
	if err != nil {
		t.Fatal(err)
	}
	sections := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^## (\S+)$`).FindAllStringSubmatch(string(b), -1) {
		sections[m[1]] = true
	}
	for _, path := range []string{rulesFile, "../../deploy/prometheus/prometheusrule.yaml"} {
		names := map[string]bool{}
		for _, a := range shippedAlerts(t, path) {
			names[a.Alert] = true
			if s := a.Labels["severity"]; s != "critical" && s != "warning" {
				t.Errorf("%s: %s: severity %q, want critical or warning", path, a.Alert, s)
			}
			if a.Annotations["summary"] == "" {
				t.Errorf("%s: %s: no summary", path, a.Alert)
			}
			if u := a.Annotations["runbook_url"]; u != runbookURL+strings.ToLower(a.Alert) {
				t.Errorf("%s: %s: runbook_url %q, want %q", path, a.Alert, u, runbookURL+strings.ToLower(a.Alert))
			}
			if !sections[a.Alert] {
				t.Errorf("%s: %s has no section \"## %s\" in %s", path, a.Alert, a.Alert, runbookFile)
			}
		}
		for _, want := range []string{"MeshletTargetDown", "MeshletUpstreamLatencyHigh"} {
			if !names[want] {
				t.Errorf("%s: no alert %s", path, want)
			}
		}
		for s := range sections {
			if !names[s] {
				t.Errorf("%s has a section for %s, which %s does not have", runbookFile, s, path)
			}
		}
	}
}

func lookPrometheusTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		toolbin.Missing(t, fmt.Sprintf("%s not found (the Debian package prometheus: apt-get install prometheus): %v", name, err))
	}
	return p
}

// checkPrometheus runs a Prometheus server on loopback that scrapes the meshlet every second with the rules loaded,
// and waits until the target is up, every rule has evaluated without error, the recording rules have data, and
// every query of the dashboard runs.
func checkPrometheus(t *testing.T, admin string) {
	rules, err := filepath.Abs(rulesFile)
	if err != nil {
		t.Fatal(err)
	}
	prom := startPrometheus(t, fmt.Sprintf(`global: {scrape_interval: 1s, evaluation_interval: 1s}
rule_files: [%q]
scrape_configs:
  - job_name: meshlet
    static_configs: [{targets: [%q], labels: {namespace: shop, app: web}}]
`, rules, admin))

	prom.poll("the meshlet target to be up", func() (bool, string) {
		targets, ok := prom.targets()
		if !ok || len(targets) != 1 {
			return false, "no target yet"
		}
		tg := targets[0]
		return tg.Health == "up", tg.Health + " " + tg.LastError
	})
	prom.waitRules(10)
	query := func(q string) (int, string) {
		res, e := prom.query(q)
		if res == nil {
			return -1, e
		}
		return len(res), e
	}
	prom.poll("the recording rules to have data for upstream api", func() (bool, string) {
		n, e := query(`meshlet:upstream_error_ratio:rate5m{upstream="api", app="web"}`)
		return n == 1, fmt.Sprintf("%d series %s", n, e)
	})
	// The alert that the failing upstream must trip at once (no `for` would be needed to see it pending).
	prom.poll("MeshletCircuitBreakersOpen to be pending or firing for api", func() (bool, string) {
		n, e := query(`ALERTS{alertname="MeshletCircuitBreakersOpen", upstream="api"}`)
		return n >= 1, fmt.Sprintf("%d series %s", n, e)
	})
	checkDashboardQueries(t, query)
}

// promServer is a Prometheus server on loopback, stopped when the test ends.
type promServer struct {
	t      *testing.T
	addr   string
	exited chan struct{}
}

// startPrometheus runs the Debian package's prometheus on config (YAML).
func startPrometheus(t *testing.T, config string) *promServer {
	t.Helper()
	bin := lookPrometheusTool(t, "prometheus")
	dir := t.TempDir()
	conf := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(conf, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	p := &promServer{t: t, addr: meshlettest.FreeAddr(t), exited: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, bin, "--config.file="+conf, "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+p.addr, "--log.level=warn")
	var out meshlettest.SyncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	go func() { cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() {
		cancel()
		<-p.exited
		if t.Failed() {
			t.Logf("prometheus config:\n%s\nprometheus output:\n%s", config, out.String())
		}
	})
	return p
}

func (p *promServer) api(path string, v any) bool {
	resp, err := http.Get("http://" + p.addr + path)
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	return resp.StatusCode == 200 && json.NewDecoder(resp.Body).Decode(v) == nil
}

// poll calls cond until it holds, failing the test after a minute or if Prometheus exits.
func (p *promServer) poll(what string, cond func() (bool, string)) {
	p.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	last := ""
	for time.Now().Before(deadline) {
		select {
		case <-p.exited:
			p.t.Fatalf("prometheus exited while waiting for %s", what)
		default:
		}
		var ok bool
		if ok, last = cond(); ok {
			return
		}
		time.Sleep(200 * time.Millisecond) // poll the API; Prometheus scrapes and evaluates every second
	}
	p.t.Fatalf("timed out waiting for %s: %s", what, last)
}

type promTarget struct {
	Labels            map[string]string
	Health, LastError string
}

// targets are the active targets, with their labels after relabelling.
func (p *promServer) targets() ([]promTarget, bool) {
	var r struct {
		Data struct {
			ActiveTargets []promTarget `json:"activeTargets"`
		}
	}
	ok := p.api("/api/v1/targets?state=active", &r)
	return r.Data.ActiveTargets, ok
}

// waitRules waits until every rule (at least min) has evaluated, and fails the test at once on a rule's error.
func (p *promServer) waitRules(min int) {
	p.t.Helper()
	p.poll("every rule to evaluate without error", func() (bool, string) {
		var r struct {
			Data struct {
				Groups []struct {
					Name  string
					Rules []struct {
						Name, Health, LastError string
						LastEvaluation          time.Time `json:"lastEvaluation"`
					}
				}
			}
		}
		if !p.api("/api/v1/rules", &r) {
			return false, "no rules answer"
		}
		n := 0
		for _, g := range r.Data.Groups {
			for _, rule := range g.Rules {
				if rule.Health == "err" {
					p.t.Fatalf("rule %s: %s", rule.Name, rule.LastError)
				}
				if rule.Health != "ok" || rule.LastEvaluation.Year() < 2000 {
					return false, rule.Name + " not evaluated yet"
				}
				n++
			}
		}
		return n >= min, fmt.Sprintf("%d rules evaluated", n)
	})
}

// query runs an instant query and returns the labels of each series (nil and the error if it fails).
func (p *promServer) query(q string) ([]map[string]string, string) {
	var r struct {
		Status, Error string
		Data          struct {
			Result []struct{ Metric map[string]string }
		}
	}
	resp, err := http.Get("http://" + p.addr + "/api/v1/query?query=" + url.QueryEscape(q))
	if err != nil {
		return nil, err.Error()
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		return nil, err.Error()
	}
	if r.Status != "success" {
		return nil, r.Status + ": " + r.Error
	}
	series := make([]map[string]string, 0, len(r.Data.Result))
	for _, s := range r.Data.Result {
		series = append(series, s.Metric)
	}
	return series, r.Error
}

// checkDashboardQueries runs every query of the dashboard (Grafana variables filled in) and expects it to parse.
func checkDashboardQueries(t *testing.T, query func(string) (int, string)) {
	b, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatal(err)
	}
	vars := strings.NewReplacer("$__rate_interval", "1m", "$namespace", ".*", "$app", ".*", "$upstream", ".*")
	n := 0
	for _, p := range d.Panels {
		for _, tg := range p.Targets {
			n++
			if c, e := query(vars.Replace(tg.Expr)); c < 0 || e != "" {
				t.Errorf("panel %q: query %s: %s", p.Title, tg.Expr, e)
			}
		}
	}
	if n < 20 {
		t.Errorf("only %d dashboard queries", n)
	}
}
