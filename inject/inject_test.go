package inject

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

var testConfig = Config{Image: "registry.example.com/meshlet:v1.0.0"}

// TestGolden injects every testdata/*.in.yaml and compares with its .golden.yaml; then injects the golden file
// again and expects the very same bytes (idempotence).
func TestGolden(t *testing.T) {
	ins, err := filepath.Glob("testdata/*.in.yaml")
	if err != nil || len(ins) == 0 {
		t.Fatalf("no testdata: %v", err)
	}
	for _, in := range ins {
		name := strings.TrimSuffix(filepath.Base(in), ".in.yaml")
		t.Run(name, func(t *testing.T) {
			src, err := os.ReadFile(in)
			if err != nil {
				t.Fatal(err)
			}
			var out bytes.Buffer
			if _, err := Inject(&out, bytes.NewReader(src), testConfig); err != nil {
				t.Fatal(err)
			}
			golden := strings.TrimSuffix(in, ".in.yaml") + ".golden.yaml"
			if *update {
				if err := os.WriteFile(golden, out.Bytes(), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatal(err)
			}
			if out.String() != string(want) {
				t.Errorf("output differs from %s (go test ./inject -update rewrites it):\n%s", golden, out.String())
			}
			var again bytes.Buffer
			if _, err := Inject(&again, bytes.NewReader(out.Bytes()), testConfig); err != nil {
				t.Fatal(err)
			}
			if again.String() != out.String() {
				t.Errorf("injecting twice differs from once:\n%s", again.String())
			}
		})
	}
}

// TestUnrelatedUntouched: every document the injection does not change is copied byte for byte, and in a changed
// document every field other than the pod's initContainers/containers, annotations and the app containers' preStop
// hook (the drain) is equal.
func TestUnrelatedUntouched(t *testing.T) {
	src, err := os.ReadFile("testdata/multi-doc.in.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	st, err := Inject(&out, bytes.NewReader(src), testConfig)
	if err != nil {
		t.Fatal(err)
	}
	if st.Injected != 1 || st.Skipped != 0 {
		t.Errorf("stats %+v, want 1 injected", st)
	}
	inDocs, outDocs := splitDocuments(src), splitDocuments(out.Bytes())
	if len(inDocs) != len(outDocs) {
		t.Fatalf("%d documents in, %d out", len(inDocs), len(outDocs))
	}
	changed := 0
	for i := range inDocs {
		if !bytes.Equal(inDocs[i], outDocs[i]) {
			changed++
			if !strings.Contains(string(inDocs[i]), "kind: Deployment") {
				t.Errorf("document %d changed:\n%s", i+1, outDocs[i])
			}
		}
	}
	if changed != 1 {
		t.Errorf("%d documents changed, want 1", changed)
	}
	// In the Deployment, remove what injection owns and compare the rest.
	strip := func(b []byte) any {
		var v map[string]any
		if err := yaml.Unmarshal(b, &v); err != nil {
			t.Fatal(err)
		}
		tmpl := v["spec"].(map[string]any)["template"].(map[string]any)
		delete(tmpl["metadata"].(map[string]any), "annotations")
		spec := tmpl["spec"].(map[string]any)
		delete(spec, "initContainers")
		for _, c := range spec["containers"].([]any) {
			c := c.(map[string]any)
			if lc, ok := c["lifecycle"].(map[string]any); ok {
				delete(lc, "preStop")
				if len(lc) == 0 {
					delete(c, "lifecycle")
				}
			}
		}
		return v
	}
	a, b := strip(inDocs[2]), strip(outDocs[2])
	ay, _ := yaml.Marshal(a)
	by, _ := yaml.Marshal(b)
	if !bytes.Equal(ay, by) {
		t.Errorf("fields other than the sidecar changed:\n%s\nvs\n%s", ay, by)
	}
}

// TestSidecarShape checks what a platform team relies on in the injected container.
func TestSidecarShape(t *testing.T) {
	src, _ := os.ReadFile("testdata/deployment.in.yaml")
	var out bytes.Buffer
	if _, err := Inject(&out, bytes.NewReader(src), testConfig); err != nil {
		t.Fatal(err)
	}
	var d struct {
		Spec struct {
			Template struct {
				Metadata struct {
					Annotations map[string]string
				}
				Spec struct {
					InitContainers []map[string]any `yaml:"initContainers"`
					Containers     []map[string]any
				}
			}
		}
	}
	if err := yaml.Unmarshal(out.Bytes(), &d); err != nil {
		t.Fatal(err)
	}
	ps := d.Spec.Template.Spec
	if len(ps.InitContainers) != 1 || ps.InitContainers[0]["name"] != "meshlet" || ps.InitContainers[0]["restartPolicy"] != "Always" {
		t.Fatalf("want meshlet as the one native sidecar, got %v", ps.InitContainers)
	}
	if len(ps.Containers) != 1 || ps.Containers[0]["name"] != "web" {
		t.Fatalf("app containers changed: %v", ps.Containers)
	}
	c := ps.InitContainers[0]
	checks := map[string]string{
		"startupProbe.httpGet.path":                "/ready",
		"readinessProbe.httpGet.path":              "/ready",
		"livenessProbe.httpGet.path":               "/live",
		"livenessProbe.httpGet.port":               PortAdmin,
		"securityContext.readOnlyRootFilesystem":   "true",
		"securityContext.runAsNonRoot":             "true",
		"securityContext.allowPrivilegeEscalation": "false",
		"securityContext.capabilities.drop":        "[ALL]",
		"resources.limits.memory":                  "128Mi",
		"resources.requests.cpu":                   "50m",
		"image":                                    testConfig.Image,
		"args":                                     "[run -config env:MESHLET_CONFIG_YAML]",
	}
	for path, want := range checks {
		var v any = c
		for _, k := range strings.Split(path, ".") {
			v = v.(map[string]any)[k]
		}
		if got := strings.TrimSpace(strings.ReplaceAll(fmtAny(v), "\n", " ")); got != want {
			t.Errorf("%s = %q, want %q", path, got, want)
		}
	}
	var conf string
	for _, e := range c["env"].([]any) {
		if e.(map[string]any)["name"] == ConfigEnv {
			conf = e.(map[string]any)["value"].(string)
		}
	}
	for _, want := range []string{"name: web", "address: 127.0.0.1:8080", "listen: $(POD_IP):21000",
		"name: api", "listen: 127.0.0.1:9001", "protocol: grpc", "name: billing", "register: true"} {
		if !strings.Contains(conf, want) {
			t.Errorf("generated config lacks %q:\n%s", want, conf)
		}
	}
	if !strings.Contains(fmtAny(c["env"]), "MESHLET_ADMIN_LISTEN") || !strings.Contains(fmtAny(c["env"]), "$(POD_IP):15000") {
		t.Errorf("no MESHLET_ADMIN_LISTEN on the pod IP: %v", c["env"])
	}
	if a := d.Spec.Template.Metadata.Annotations; a["prometheus.io/scrape"] != "true" || a["prometheus.io/port"] != "15000" {
		t.Errorf("scrape annotations: %v", a)
	}
}

func fmtAny(v any) string {
	b, _ := yaml.Marshal(v)
	s := strings.TrimSpace(string(b))
	if strings.HasPrefix(s, "- ") { // a list: render as [a b]
		return "[" + strings.Join(strings.Split(strings.ReplaceAll(s, "- ", ""), "\n"), " ") + "]"
	}
	return s
}

// TestErrors: bad annotations stop injection with the document, the object and the annotation named.
func TestErrors(t *testing.T) {
	pod := func(ann string) string {
		return "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  annotations:\n    " + ann +
			"\nspec:\n  containers:\n  - name: app\n    image: app\n    ports: [{containerPort: 8080}]\n"
	}
	for _, tc := range []struct{ name, in, want string }{
		{"upstream without port", pod(`meshlet.dev/upstreams: "api"`), `meshlet.dev/upstreams: "api" must be name:port`},
		{"bad protocol", pod(`meshlet.dev/upstreams: "api:9001:soap"`), "protocol must be"},
		{"upstream on app port", pod(`meshlet.dev/upstreams: "api:8080"`), "upstream api's port 8080 is also the app port"},
		{"bad app port", pod(`meshlet.dev/app-port: "eighty"`), `meshlet.dev/app-port: "eighty"`},
		{"bad service", pod(`meshlet.dev/service: "Web_1"`), `meshlet.dev/service: "Web_1" must be a lowercase DNS label`},
		{"bad yaml", "kind: Pod\n  bad: [", "bad YAML"},
		{"bad tls", pod(`meshlet.dev/tls: vault`), `meshlet.dev/tls: "vault" must be consul or none`},
		{"second document", "kind: ConfigMap\n---\n" + pod(`meshlet.dev/app-protocol: soap`), "document 2: Pod p: meshlet.dev/app-protocol"},
		{"unknown inject value", pod(`meshlet.dev/inject: "maybe"`), `Pod p: meshlet.dev/inject: "maybe" must be enabled or disabled (or true or false)`},
		{"bad cpu request", pod(`meshlet.dev/proxy-cpu-request: "fast"`), `meshlet.dev/proxy-cpu-request: "fast" must be a Kubernetes quantity`},
		{"bad cpu limit", pod(`meshlet.dev/proxy-cpu-limit: "1 core"`), `meshlet.dev/proxy-cpu-limit: "1 core" must be a Kubernetes quantity`},
		{"bad memory request", pod(`meshlet.dev/proxy-memory-request: "64MB"`), `meshlet.dev/proxy-memory-request: "64MB" must be a Kubernetes quantity`},
		{"bad memory limit", pod(`meshlet.dev/proxy-memory-limit: "-1Gi"`), `meshlet.dev/proxy-memory-limit: "-1Gi" must be more than 0`},
		{"zero memory limit", pod(`meshlet.dev/proxy-memory-limit: "0"`), `meshlet.dev/proxy-memory-limit: "0" must be more than 0`},
		{"memory request above limit", pod(`meshlet.dev/proxy-memory-request: 256Mi`),
			`meshlet.dev/proxy-memory-request: 256Mi is more than the limit 128Mi (meshlet.dev/proxy-memory-limit)`},
		{"cpu request above limit", pod("meshlet.dev/proxy-cpu-limit: 10m\n    meshlet.dev/proxy-cpu-request: 0.1"),
			`meshlet.dev/proxy-cpu-request: 0.1 is more than the limit 10m (meshlet.dev/proxy-cpu-limit)`},
		{"bad access log", pod(`meshlet.dev/access-log: "sometimes"`), `meshlet.dev/access-log: "sometimes" must be true or false`},
		{"bad drain delay", pod(`meshlet.dev/drain-delay: "5"`), `meshlet.dev/drain-delay: "5" must be a duration such as 5s`},
		{"negative drain timeout", pod(`meshlet.dev/drain-timeout: "-1s"`), `meshlet.dev/drain-timeout: "-1s" must be a duration`},
		{"bad log level", pod(`meshlet.dev/log-level: "trace"`), `meshlet.dev/log-level: "trace" must be debug, info, warn or error`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			_, err := Inject(&out, strings.NewReader(tc.in), testConfig)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to contain %q", err, tc.want)
			}
			if out.Len() != 0 {
				t.Errorf("wrote output despite the error: %s", out.String())
			}
		})
	}
	if _, err := Inject(new(bytes.Buffer), strings.NewReader(""), Config{}); err == nil || !strings.Contains(err.Error(), "image: required") {
		t.Errorf("missing image: err = %v", err)
	}
}

// TestInjectOptInOut: meshlet.dev/inject takes Linkerd's enabled/disabled as well as true/false, in any case.
func TestInjectOptInOut(t *testing.T) {
	for v, injected := range map[string]bool{"": true, "true": true, "enabled": true, "Enabled": true, "TRUE": true,
		"false": false, "disabled": false, "Disabled": false, "FALSE": false} {
		in := "kind: Pod\nmetadata:\n  name: p\n  annotations: {meshlet.dev/inject: \"" + v + "\"}\n" +
			"spec:\n  containers:\n  - {name: app, image: app, ports: [{containerPort: 8080}]}\n"
		var out bytes.Buffer
		st, err := Inject(&out, strings.NewReader(in), testConfig)
		if err != nil {
			t.Fatalf("%q: %v", v, err)
		}
		if got := st.Injected == 1; got != injected || st.Skipped == 1 == injected {
			t.Errorf("meshlet.dev/inject: %q: stats %+v, want injected %v", v, st, injected)
		}
		if !injected && out.String() != in {
			t.Errorf("%q: opted-out pod changed:\n%s", v, out.String())
		}
	}
}

// TestTuningAnnotations: each tuning annotation lands where meshlet and the kubelet read it.
func TestTuningAnnotations(t *testing.T) {
	for _, tc := range []struct {
		name, ann string
		classic   bool
		want      []string // substrings of the injected pod
		wantNot   []string
	}{
		{"defaults", "", false, []string{"cpu: 50m", "memory: 32Mi", "memory: 128Mi", "name: GOMEMLIMIT\n", "value: 115MiB"},
			[]string{"access_log", "shutdown:", "default-container"}},
		{"cpu request and limit", "meshlet.dev/proxy-cpu-request: 200m\n    meshlet.dev/proxy-cpu-limit: 500m", false,
			[]string{"requests:\n        cpu: 200m", "limits:\n        cpu: 500m"}, nil},
		{"memory request and limit", "meshlet.dev/proxy-memory-request: 100Mi\n    meshlet.dev/proxy-memory-limit: 256Mi", false,
			[]string{"memory: 100Mi", "memory: 256Mi", "value: 230MiB"}, []string{"128Mi"}},
		{"memory limit in decimal", "meshlet.dev/proxy-memory-limit: 1G", false, []string{"memory: 1G", "value: 858MiB"}, nil},
		{"memory limit with an exponent", "meshlet.dev/proxy-memory-limit: 2e8", false, []string{`memory: "2e8"`, "value: 171MiB"}, nil},
		{"small memory limit", "meshlet.dev/proxy-memory-limit: 10Mi\n    meshlet.dev/proxy-memory-request: 10Mi", false,
			[]string{"value: \"9437184\""}, nil},
		{"access log on", `meshlet.dev/access-log: "true"`, false, []string{"access_log: true"}, nil},
		{"access log off", `meshlet.dev/access-log: "false"`, false, nil, []string{"access_log"}},
		{"log level", "meshlet.dev/log-level: warn", false, []string{"level: warn"}, nil},
		{"drain delay", "meshlet.dev/drain-delay: 15s", false, []string{"shutdown:\n          drain_delay: 15s\n"}, []string{"drain_timeout"}},
		{"drain timeout", "meshlet.dev/drain-timeout: 1m30s", false, []string{"shutdown:\n          drain_timeout: 1m30s\n"}, []string{"drain_delay"}},
		{"classic: default container", "", true, []string{`kubectl.kubernetes.io/default-container: "app"`}, nil},
		{"classic by annotation", `meshlet.dev/native-sidecar: "false"`, false, []string{`kubectl.kubernetes.io/default-container: "app"`}, nil},
		{"classic: the pod's own default container kept", "kubectl.kubernetes.io/default-container: side", true,
			[]string{"kubectl.kubernetes.io/default-container: side\n"}, []string{`default-container: "app"`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := "kind: Pod\nmetadata:\n  name: p\n  annotations:\n    meshlet.dev/service: p\n    " + tc.ann +
				"\nspec:\n  containers:\n  - {name: app, image: app, ports: [{containerPort: 8080}]}\n  - {name: side, image: side}\n"
			cfg := testConfig
			cfg.Classic = tc.classic
			var out bytes.Buffer
			if _, err := Inject(&out, strings.NewReader(in), cfg); err != nil {
				t.Fatal(err)
			}
			for _, w := range tc.want {
				if !strings.Contains(out.String(), w) {
					t.Errorf("output lacks %q:\n%s", w, out.String())
				}
			}
			for _, w := range tc.wantNot {
				if strings.Contains(out.String(), w) {
					t.Errorf("output has %q:\n%s", w, out.String())
				}
			}
		})
	}
}

// TestConfigResources: the cluster-wide defaults (Config) are checked as quantities too.
func TestConfigResources(t *testing.T) {
	cfg := testConfig
	cfg.MemoryLimit, cfg.CPULimit = "lots", "2"
	if _, err := Inject(new(bytes.Buffer), strings.NewReader(""), cfg); err == nil || !strings.Contains(err.Error(), `proxy memory limit: "lots" must be a Kubernetes quantity`) {
		t.Errorf("err = %v", err)
	}
	// Valid defaults apply to every pod that does not set the annotation; a pod's annotation wins.
	cfg.MemoryLimit, cfg.MemoryRequest, cfg.CPURequest = "512Mi", "256Mi", "1"
	pod := "kind: Pod\nmetadata:\n  name: p\n  annotations: {meshlet.dev/proxy-cpu-limit: \"4\"}\n" +
		"spec:\n  containers:\n  - {name: app, image: app, ports: [{containerPort: 8080}]}\n"
	var out bytes.Buffer
	if _, err := Inject(&out, strings.NewReader(pod), cfg); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"requests:\n        cpu: \"1\"\n        memory: 256Mi", "limits:\n        cpu: \"4\"\n        memory: 512Mi", "value: 460MiB"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
	cfg.CPURequest = "5"
	if _, err := Inject(new(bytes.Buffer), strings.NewReader(pod), cfg); err == nil || !strings.Contains(err.Error(), `meshlet.dev/proxy-cpu-request: 5 is more than the limit 4 (meshlet.dev/proxy-cpu-limit)`) {
		t.Errorf("request from the default above the pod's limit: err = %v", err)
	}
}

// testDrainToken replaces the random drain token, so that the golden files stay the same from run to run.
const testDrainToken = "0123456789abcdef0123456789abcdef"

func init() { newDrainToken = func() string { return testDrainToken } }
