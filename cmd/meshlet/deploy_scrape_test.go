package main_test

// The shipped scrape configs end to end: a real Prometheus scrapes real meshlet processes through the relabelling of
// deploy/prometheus/scrape.yaml, podmonitor.yaml and servicemonitor.yaml, and every alert expression and every
// dashboard query finds each pod's series under the right app. There is no Kubernetes here, so the targets come from
// a file_sd file whose labels are the __meta_kubernetes_* labels Kubernetes service discovery would give those pods;
// the relabel rules are the shipped ones, read from the files. There is no Prometheus Operator either: the
// PodMonitor's and ServiceMonitor's relabelings are converted to relabel_configs (the Operator's field names map one
// to one) and appended, as the Operator does, to the relabel_configs the Operator generates before them (namespace,
// pod, container, job, endpoint; written out in operatorPodMonitor and operatorServiceMonitor).

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"meshlet.dev/meshlet/discovery/discoverytest"
	"meshlet.dev/meshlet/internal/meshlettest"
)

const (
	scrapeFile         = "../../deploy/prometheus/scrape.yaml"
	podMonitorFile     = "../../deploy/prometheus/podmonitor.yaml"
	serviceMonitorFile = "../../deploy/prometheus/servicemonitor.yaml"
)

// scrapedPod is a pod with a meshlet sidecar as Kubernetes would describe it, and the app label it must get.
type scrapedPod struct {
	name   string
	labels map[string]string // the pod's labels
	app    string            // the app label its series must carry
	admin  string            // meshlet's admin address
}

func TestShippedScrapeConfigs(t *testing.T) {
	lookPrometheusTool(t, "prometheus") // before starting anything: skip, or fail with CI=true
	agent := discoverytest.StartConsul(t, discoverytest.Options{})
	pods := []scrapedPod{
		{name: "billing-7d9f", labels: map[string]string{"app": "billing"}, app: "billing"},
		{name: "api-5c4b", labels: map[string]string{"app.kubernetes.io/name": "api"}, app: "api"},
		{name: "web-6f8d", labels: map[string]string{"app": "web", "app.kubernetes.io/name": "web"}, app: "web"},
		{name: "checkout-9a1e", labels: map[string]string{"app": "checkout-v1", "app.kubernetes.io/name": "checkout"},
			app: "checkout"},
	}
	for i := range pods {
		pods[i].admin = startInstrumentedMeshlet(t, agent.HTTPAddr, pods[i].app)
	}
	// A pod whose sidecar does not answer (nothing listens at its address): its target is down.
	down := scrapedPod{name: "gone-1b2c", labels: map[string]string{"app.kubernetes.io/name": "gone"}, app: "gone",
		admin: meshlettest.FreeAddr(t)}

	t.Run("scrape.yaml", func(t *testing.T) {
		job := shippedScrapeJob(t)
		checkScrapeJob(t, job, podTargets(append(slices.Clone(pods), down), false), pods, down)
	})
	t.Run("podmonitor.yaml", func(t *testing.T) {
		job := operatorPodMonitor(t)
		checkScrapeJob(t, job, podTargets(append(slices.Clone(pods), down), false), pods, down)
	})
	t.Run("servicemonitor.yaml", func(t *testing.T) {
		job := operatorServiceMonitor(t)
		checkScrapeJob(t, job, podTargets(append(slices.Clone(pods), down), true), pods, down)
	})
}

// sdLabelName is how Kubernetes service discovery writes a Kubernetes label's name into a meta label.
func sdLabelName(s string) string {
	return regexp.MustCompile(`[^a-zA-Z0-9_]`).ReplaceAllString(s, "_")
}

// podTargets are the file_sd target groups standing in for what Kubernetes service discovery finds: with role pod,
// each pod's container port meshlet-admin (and, to be dropped, the app's port http at the same address); with role
// endpoints (viaService), the endpoints of a Service labelled meshlet.dev/metrics: "true" backed by those pods, and
// a Service without that label.
func podTargets(pods []scrapedPod, viaService bool) []map[string]any {
	var groups []map[string]any
	add := func(p scrapedPod, port string, service map[string]string) {
		l := map[string]string{
			"__meta_kubernetes_namespace":               "shop",
			"__meta_kubernetes_pod_name":                p.name,
			"__meta_kubernetes_pod_phase":               "Running",
			"__meta_kubernetes_pod_container_name":      "meshlet",
			"__meta_kubernetes_pod_container_port_name": port,
			"__meta_kubernetes_pod_ip":                  strings.Split(p.admin, ":")[0],
		}
		for k, v := range p.labels {
			l["__meta_kubernetes_pod_label_"+sdLabelName(k)] = v
			l["__meta_kubernetes_pod_labelpresent_"+sdLabelName(k)] = "true"
		}
		if viaService {
			l["__meta_kubernetes_service_name"] = p.app + "-metrics"
			l["__meta_kubernetes_endpoint_port_name"] = port
			l["__meta_kubernetes_endpoint_ready"] = "true"
			l["__meta_kubernetes_endpoint_address_target_kind"] = "Pod"
			l["__meta_kubernetes_endpoint_address_target_name"] = p.name
			for k, v := range service {
				l["__meta_kubernetes_service_label_"+sdLabelName(k)] = v
				l["__meta_kubernetes_service_labelpresent_"+sdLabelName(k)] = "true"
			}
		}
		groups = append(groups, map[string]any{"targets": []string{p.admin}, "labels": l})
	}
	metrics := map[string]string{"meshlet.dev/metrics": "true"}
	for _, p := range pods {
		add(p, "meshlet-admin", metrics)
		add(p, "http", metrics) // not meshlet's port: dropped
	}
	if viaService {
		other := pods[0]
		other.name = "unlabelled-3f4a"
		add(other, "meshlet-admin", map[string]string{"team": "shop"}) // a Service without the label: not selected
	}
	return groups
}

// readYAML reads a YAML file into a generic value.
func readYAML(t *testing.T, path string, v any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

// shippedScrapeJob is the job of scrape.yaml as it is, but for its kubernetes_sd_configs (role pod), which become a
// file_sd_configs, and a 1s scrape interval.
func shippedScrapeJob(t *testing.T) map[string]any {
	var f struct {
		ScrapeConfigs []map[string]any `yaml:"scrape_configs"`
	}
	readYAML(t, scrapeFile, &f)
	if len(f.ScrapeConfigs) != 1 {
		t.Fatalf("scrape.yaml has %d jobs, want 1", len(f.ScrapeConfigs))
	}
	job := f.ScrapeConfigs[0]
	sd, _ := job["kubernetes_sd_configs"].([]any)
	if len(sd) != 1 || sd[0].(map[string]any)["role"] != "pod" {
		t.Fatalf("scrape.yaml: kubernetes_sd_configs is %v, want one with role pod", job["kubernetes_sd_configs"])
	}
	if job["relabel_configs"] == nil {
		t.Fatal("scrape.yaml: no relabel_configs")
	}
	delete(job, "kubernetes_sd_configs")
	return job
}

// operatorRelabelings converts a PodMonitor's or ServiceMonitor's relabelings to relabel_configs.
func operatorRelabelings(t *testing.T, file string, rs []map[string]any) []any {
	fields := map[string]string{"sourceLabels": "source_labels", "separator": "separator", "targetLabel": "target_label",
		"regex": "regex", "modulus": "modulus", "replacement": "replacement", "action": "action"}
	var out []any
	for i, r := range rs {
		c := map[string]any{}
		for k, v := range r {
			name, ok := fields[k]
			if !ok {
				t.Fatalf("%s: relabelings[%d]: field %s unknown to this test", file, i, k)
			}
			if k == "action" {
				v = strings.ToLower(v.(string)) // the Operator accepts Replace as well as replace
			}
			c[name] = v
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		t.Fatalf("%s: no relabelings", file)
	}
	return out
}

// operatorEndpoint is a podMetricsEndpoints or endpoints entry.
type operatorEndpoint struct {
	Port, Path, Interval string
	Relabelings          []map[string]any
}

// operatorPodMonitor is the scrape job the Prometheus Operator generates for podmonitor.yaml (role pod): its
// relabel_configs before the PodMonitor's own relabelings, which come last.
func operatorPodMonitor(t *testing.T) map[string]any {
	var pm struct {
		Kind     string
		Metadata struct{ Name string }
		Spec     struct {
			Selector            map[string]any
			PodMetricsEndpoints []operatorEndpoint `yaml:"podMetricsEndpoints"`
		}
	}
	readYAML(t, podMonitorFile, &pm)
	if pm.Kind != "PodMonitor" || len(pm.Spec.PodMetricsEndpoints) != 1 || len(pm.Spec.Selector) != 0 {
		t.Fatalf("podmonitor.yaml: want a PodMonitor with one endpoint and an empty selector")
	}
	ep := pm.Spec.PodMetricsEndpoints[0]
	relabel := []any{
		map[string]any{"action": "drop", "source_labels": []string{"__meta_kubernetes_pod_phase"}, "regex": "(Failed|Succeeded)"},
		map[string]any{"action": "keep", "source_labels": []string{"__meta_kubernetes_pod_container_port_name"}, "regex": ep.Port},
		map[string]any{"source_labels": []string{"__meta_kubernetes_namespace"}, "target_label": "namespace"},
		map[string]any{"source_labels": []string{"__meta_kubernetes_pod_container_name"}, "target_label": "container"},
		map[string]any{"source_labels": []string{"__meta_kubernetes_pod_name"}, "target_label": "pod"},
		map[string]any{"target_label": "job", "replacement": "monitoring/" + pm.Metadata.Name},
		map[string]any{"target_label": "endpoint", "replacement": ep.Port},
	}
	return map[string]any{
		"job_name":        "podMonitor/monitoring/" + pm.Metadata.Name + "/0",
		"metrics_path":    ep.Path,
		"relabel_configs": append(relabel, operatorRelabelings(t, podMonitorFile, ep.Relabelings)...),
	}
}

// operatorServiceMonitor is the scrape job the Prometheus Operator generates for servicemonitor.yaml (role
// endpoints), the ServiceMonitor's relabelings last.
func operatorServiceMonitor(t *testing.T) map[string]any {
	var sm struct {
		Kind     string
		Metadata struct{ Name string }
		Spec     struct {
			Selector struct {
				MatchLabels map[string]string `yaml:"matchLabels"`
			}
			Endpoints []operatorEndpoint
		}
	}
	readYAML(t, serviceMonitorFile, &sm)
	if sm.Kind != "ServiceMonitor" || len(sm.Spec.Endpoints) != 1 || len(sm.Spec.Selector.MatchLabels) == 0 {
		t.Fatalf("servicemonitor.yaml: want a ServiceMonitor with one endpoint and matchLabels")
	}
	ep := sm.Spec.Endpoints[0]
	var relabel []any
	keys := make([]string, 0, len(sm.Spec.Selector.MatchLabels))
	for k := range sm.Spec.Selector.MatchLabels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		relabel = append(relabel, map[string]any{"action": "keep",
			"source_labels": []string{"__meta_kubernetes_service_label_" + sdLabelName(k),
				"__meta_kubernetes_service_labelpresent_" + sdLabelName(k)},
			"regex": "(" + sm.Spec.Selector.MatchLabels[k] + ");true"})
	}
	relabel = append(relabel,
		map[string]any{"action": "keep", "source_labels": []string{"__meta_kubernetes_endpoint_port_name"}, "regex": ep.Port},
		map[string]any{"source_labels": []string{"__meta_kubernetes_endpoint_address_target_kind",
			"__meta_kubernetes_endpoint_address_target_name"}, "regex": "Pod;(.*)", "target_label": "pod"},
		map[string]any{"source_labels": []string{"__meta_kubernetes_namespace"}, "target_label": "namespace"},
		map[string]any{"source_labels": []string{"__meta_kubernetes_service_name"}, "target_label": "service"},
		map[string]any{"source_labels": []string{"__meta_kubernetes_pod_name"}, "target_label": "pod"},
		map[string]any{"source_labels": []string{"__meta_kubernetes_pod_container_name"}, "target_label": "container"},
		map[string]any{"action": "drop", "source_labels": []string{"__meta_kubernetes_pod_phase"}, "regex": "(Failed|Succeeded)"},
		map[string]any{"source_labels": []string{"__meta_kubernetes_service_name"}, "target_label": "job"},
		map[string]any{"target_label": "endpoint", "replacement": ep.Port},
	)
	return map[string]any{
		"job_name":        "serviceMonitor/monitoring/" + sm.Metadata.Name + "/0",
		"metrics_path":    ep.Path,
		"relabel_configs": append(relabel, operatorRelabelings(t, serviceMonitorFile, ep.Relabelings)...),
	}
}

// boolComparisons makes each comparison with a number `bool`, so that an alert's expression returns the series it
// watches whether or not they cross its threshold: `x > 0.05 and y > 0.1` becomes `x > bool 0.05 and y > bool 0.1`.
var boolComparisons = regexp.MustCompile(`(==|!=|>=|<=|>|<)\s*([0-9])`)

func boolify(expr string) string { return boolComparisons.ReplaceAllString(expr, "$1 bool $2") }

// checkScrapeJob runs Prometheus with job (targets from groups) and the rules, and checks the labels of the targets,
// the series of every alert expression and of every dashboard query: each live pod's under its app, the down pod's
// target under its own.
func checkScrapeJob(t *testing.T, job map[string]any, groups []map[string]any, pods []scrapedPod, down scrapedPod) {
	dir := t.TempDir()
	sd := filepath.Join(dir, "targets.json")
	b, err := json.Marshal(groups)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(sd, b, 0o600); err != nil {
		t.Fatal(err)
	}
	rules, err := filepath.Abs(rulesFile)
	if err != nil {
		t.Fatal(err)
	}
	job["file_sd_configs"] = []any{map[string]any{"files": []string{sd}}}
	job["scrape_interval"] = "1s"
	job["scrape_timeout"] = "1s"
	conf, err := yaml.Marshal(map[string]any{
		"global":         map[string]any{"scrape_interval": "1s", "evaluation_interval": "1s"},
		"rule_files":     []string{rules},
		"scrape_configs": []any{job},
	})
	if err != nil {
		t.Fatal(err)
	}
	prom := startPrometheus(t, string(conf))

	live := make([]string, 0, len(pods))
	for _, p := range pods {
		live = append(live, p.app)
	}
	all := append(slices.Clone(live), down.app)
	sort.Strings(live)
	sort.Strings(all)

	// The targets: one per pod's meshlet-admin port, with job, namespace, pod and app; the down pod's target down.
	prom.poll("the targets to be scraped", func() (bool, string) {
		targets, ok := prom.targets()
		if !ok {
			return false, "no targets answer"
		}
		var got []string
		healthy := true
		for _, tg := range targets {
			l := tg.Labels
			got = append(got, fmt.Sprintf("job=%s namespace=%s pod=%s app=%s", l["job"], l["namespace"], l["pod"], l["app"]))
			if (tg.Health == "up") != (l["app"] != down.app) {
				healthy = false
			}
		}
		sort.Strings(got)
		var want []string
		for _, p := range append(slices.Clone(pods), down) {
			want = append(want, fmt.Sprintf("job=meshlet namespace=shop pod=%s app=%s", p.name, p.app))
		}
		sort.Strings(want)
		return slices.Equal(got, want) && healthy, fmt.Sprintf("targets %q (health as expected: %v), want %q", got, healthy, want)
	})
	prom.waitRules(10)

	// apps are the app labels of a query's series; "" for a series without one.
	apps := func(q string) ([]string, string) {
		series, e := prom.query(q)
		if series == nil {
			return nil, e
		}
		var got []string
		for _, s := range series {
			if !slices.Contains(got, s["app"]) {
				got = append(got, s["app"])
			}
		}
		sort.Strings(got)
		return got, e
	}

	// Every alert's expression: its series are those of the live pods' apps (of all pods for one on `up`).
	var rf struct {
		Groups []struct {
			Rules []struct{ Alert, Expr string }
		}
	}
	readYAML(t, rulesFile, &rf)
	n := 0
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				continue
			}
			n++
			want := live
			if regexp.MustCompile(`\bup\b`).MatchString(r.Expr) {
				want = all
			}
			q := boolify(r.Expr)
			prom.poll(r.Alert+"'s series under each app", func() (bool, string) {
				got, e := apps(q)
				return slices.Equal(got, want), fmt.Sprintf("%s: apps %q, want %q %s", q, got, want, e)
			})
		}
	}
	if n < 10 {
		t.Errorf("only %d alerts in %s", n, rulesFile)
	}
	// An alert that the failing upstreams trip at once, pending or firing under each app.
	prom.poll("MeshletCircuitBreakersOpen under each app", func() (bool, string) {
		got, e := apps(`ALERTS{alertname="MeshletCircuitBreakersOpen"}`)
		return slices.Equal(got, live), fmt.Sprintf("apps %q, want %q %s", got, live, e)
	})

	// The dashboard: its app variable lists the apps, and each query, for each app, has series.
	prom.poll("the dashboard's app variable to list the apps", func() (bool, string) {
		var r struct{ Data []string }
		ok := prom.api("/api/v1/label/app/values?match[]="+`meshlet_build_info{namespace=~"shop"}`, &r)
		return ok && slices.Equal(r.Data, live), fmt.Sprintf("%q, want %q", r.Data, live)
	})
	b, err = os.ReadFile(dashboardFile)
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
	for _, app := range live {
		vars := strings.NewReplacer("$__rate_interval", "5m", "$namespace", "shop", "$app", app, "$upstream", ".*")
		for _, p := range d.Panels {
			for _, tg := range p.Targets {
				q := boolify(vars.Replace(tg.Expr))
				prom.poll(fmt.Sprintf("panel %q to have series for app %s", p.Title, app), func() (bool, string) {
					series, e := prom.query(q)
					return len(series) > 0, fmt.Sprintf("%s: %d series %s", q, len(series), e)
				})
			}
		}
	}
}
