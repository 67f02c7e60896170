package inject

// Injection that would be unsafe or wrong is refused or skipped with a reason (issue 11, item 20): hostNetwork
// pods, a container of the pod's own named meshlet, a containerPort out of range, and YAML read otherwise than
// kubectl reads it (aliases, merge keys, duplicate keys).

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"
	"time"

	sigsyaml "sigs.k8s.io/yaml"
)

// deployment is a Deployment "web" whose pod spec lines (indented under template.spec) are spec.
func deployment(spec string) string { return deploymentWith("", spec) }

// deploymentWith is deployment with the template's annotations ann (YAML lines at their level; none when "").
func deploymentWith(ann, spec string) string {
	if ann != "" {
		ann = "      annotations:\n" + ann
	}
	return `apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
` + ann + `    spec:
` + spec
}

const webContainer = `      containers:
      - name: web
        image: web:1
        ports: [{containerPort: 8080}]
`

func TestInjectHostNetwork(t *testing.T) {
	for _, tc := range []struct {
		value  string
		skiped bool
	}{
		{"true", true}, {"True", true}, {"yes", true}, {"on", true}, {"y", true}, {`"true"`, true}, {"!!bool true", true},
		{"false", false}, {"no", false}, {"off", false}, {"null", false}, {"~", false}, {"", false},
	} {
		t.Run(tc.value, func(t *testing.T) {
			in := deployment("      hostNetwork: " + tc.value + "\n" + webContainer)
			var out bytes.Buffer
			st, err := Inject(&out, strings.NewReader(in), testConfig)
			if err != nil {
				t.Fatal(err)
			}
			if !tc.skiped {
				if st.Injected != 1 || st.Unmeshed != 0 || len(st.Warnings) != 0 {
					t.Errorf("hostNetwork: %s: %+v, want injected", tc.value, st)
				}
				return
			}
			if st.Injected != 0 || st.Unmeshed != 1 || out.String() != in {
				t.Errorf("hostNetwork: %s: %+v, output changed:\n%s", tc.value, st, out.String())
			}
			if len(st.Warnings) != 1 || !strings.HasPrefix(st.Warnings[0], "document 1: Deployment web: not injected: hostNetwork: ") ||
				!strings.Contains(st.Warnings[0], "every process on the node") {
				t.Errorf("warnings %q", st.Warnings)
			}
		})
	}
	t.Run("already injected", func(t *testing.T) {
		var once bytes.Buffer
		if _, err := Inject(&once, strings.NewReader(deployment(webContainer)), testConfig); err != nil {
			t.Fatal(err)
		}
		in := strings.Replace(once.String(), "    spec:\n", "    spec:\n      hostNetwork: true\n", 1)
		_, err := Inject(io.Discard, strings.NewReader(in), testConfig)
		if err == nil || !strings.Contains(err.Error(), "hostNetwork: true with a meshlet sidecar") {
			t.Errorf("err = %v", err)
		}
	})
}

func TestInjectRefusesOwnMeshletContainer(t *testing.T) {
	for name, spec := range map[string]string{
		"in containers": webContainer + "      - name: meshlet\n        image: example.com/our-own-meshlet:2\n",
		"in initContainers": "      initContainers:\n      - name: meshlet\n        image: example.com/tool\n" +
			"        env: [{name: OTHER, value: x}]\n" + webContainer,
	} {
		t.Run(name, func(t *testing.T) {
			var out bytes.Buffer
			_, err := Inject(&out, strings.NewReader(deployment(spec)), testConfig)
			if err == nil || !strings.Contains(err.Error(), `Deployment web: `) ||
				!strings.Contains(err.Error(), `its own container named "meshlet", which injection would replace`) {
				t.Errorf("err = %v", err)
			}
			if out.Len() != 0 {
				t.Errorf("output despite the error:\n%s", out.String())
			}
		})
	}
}

func TestInjectContainerPort(t *testing.T) {
	for _, tc := range []struct{ port, err string }{
		{"8080", ""}, {"1", ""}, {"65535", ""},
		{"0", `containerPort "0" must be a port number 1..65535`},
		{"-1", `"-1"`}, {"70000", "70000 must be"}, {"99999", "99999 must be"}, {`"8080"`, `"8080"`},
		{"0x1F90", `"0x1F90"`}, {"08080", `"08080"`}, {"8_080", `"8_080"`}, {"+8080", `"+8080"`}, {"8080.0", `"8080.0"`},
		{"[8080]", "(not a number)"},
	} {
		t.Run(tc.port, func(t *testing.T) {
			in := deployment("      containers:\n      - name: web\n        image: web:1\n        ports: [{containerPort: " + tc.port + "}]\n")
			_, err := Inject(io.Discard, strings.NewReader(in), testConfig)
			if tc.err == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), "meshlet.dev/app-port: not set, and containers[0].ports[0].containerPort") ||
				!strings.Contains(err.Error(), tc.err) {
				t.Errorf("err = %v, want %q", err, tc.err)
			}
		})
	}
	in := deployment("      containers:\n      - name: web\n        image: web:1\n        ports: [{containerPort: 0}]\n")
	in = strings.Replace(in, "      labels: {app: web}\n", "      labels: {app: web}\n      annotations: {meshlet.dev/app-port: \"8080\"}\n", 1)
	if _, err := Inject(io.Discard, strings.NewReader(in), testConfig); err != nil {
		t.Errorf("with meshlet.dev/app-port set, the containerPort is not used: %v", err)
	}
}

// kubectlView decodes each document of a YAML stream as kubectl does (sigs.k8s.io/yaml) into JSON values.
func kubectlView(t *testing.T, stream []byte) []any {
	t.Helper()
	var docs []any
	for _, d := range splitDocuments(stream) {
		j, err := sigsyaml.YAMLToJSON(d)
		if err != nil {
			t.Fatalf("sigs.k8s.io/yaml: %v\n%s", err, d)
		}
		var v any
		if err := json.Unmarshal(j, &v); err != nil {
			t.Fatal(err)
		}
		if v != nil {
			docs = append(docs, v)
		}
	}
	return docs
}

// aliasManifests use anchors, aliases, merge keys and duplicate keys in the places injection reads and writes.
var aliasManifests = map[string]string{
	"template metadata is an alias": `apiVersion: apps/v1
kind: Deployment
metadata: &meta
  name: web
  labels: {app: web}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: *meta
    spec:
      containers: [{name: web, image: web:1, ports: [{containerPort: 8080}]}]
`,
	"containers through a merge key": `apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      <<: &base
        containers: [{name: web, image: web:1, ports: [{containerPort: 8080}]}]
        terminationGracePeriodSeconds: 30
      serviceAccountName: web
`,
	"opt-out through an alias": `apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  annotations: &ann {meshlet.dev/inject: "false"}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}, annotations: *ann}
    spec:
      containers: [{name: web, image: web:1}]
`,
	"hostNetwork given twice": `apiVersion: v1
kind: Pod
metadata: {name: web, labels: {app: web}}
spec:
  hostNetwork: false
  containers: [{name: web, image: web:1, ports: [{containerPort: 8080}]}]
  hostNetwork: true
`,
	"merge after a key, merge of a sequence": `apiVersion: v1
kind: List
items:
- &pod
  apiVersion: v1
  kind: Pod
  metadata: {name: one, labels: {app: one}}
  spec:
    containers: [{name: one, image: one:1, ports: [{containerPort: 8081}]}]
- apiVersion: v1
  kind: Pod
  metadata:
    name: two
    labels: {app: two}
    annotations: {meshlet.dev/upstreams: "api:9001"}
    <<: [{annotations: {meshlet.dev/upstreams: "billing:9002"}}, {name: three}]
  spec:
    <<: *pod
    containers: [{name: two, image: two:1, ports: [{containerPort: 8082}]}]
`,
	"already injected, template through an alias": `apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  selector: {matchLabels: {app: web}}
  template: &tmpl
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: web, image: web:1, ports: [{containerPort: 8080}]}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db}
spec:
  selector: {matchLabels: {app: db}}
  serviceName: db
  template:
    metadata: {labels: {app: db}}
    spec: {containers: [&c {name: db, image: db:1, ports: [{containerPort: 5432}]}], initContainers: [*c]}
`,
}

// TestInjectReadsYAMLAsKubectl: injecting a manifest that uses aliases, merge keys and duplicate keys gives what
// injecting kubectl's reading of it (plain JSON) gives, as kubectl reads both.
func TestInjectReadsYAMLAsKubectl(t *testing.T) {
	for name, in := range aliasManifests {
		t.Run(name, func(t *testing.T) {
			var got bytes.Buffer
			gst, err := Inject(&got, strings.NewReader(in), testConfig)
			if err != nil {
				t.Fatal(err)
			}
			var plain bytes.Buffer // kubectl's reading of each document, as JSON documents
			for i, d := range kubectlView(t, []byte(in)) {
				if i > 0 {
					plain.WriteString("---\n")
				}
				j, _ := json.Marshal(d)
				plain.Write(j)
				plain.WriteString("\n")
			}
			var want bytes.Buffer
			wst, err := Inject(&want, &plain, testConfig)
			if err != nil {
				t.Fatal(err)
			}
			g, w := kubectlView(t, got.Bytes()), kubectlView(t, want.Bytes())
			if !reflect.DeepEqual(g, w) || !reflect.DeepEqual(gst, wst) {
				gj, _ := json.MarshalIndent(g, "", " ")
				wj, _ := json.MarshalIndent(w, "", " ")
				t.Errorf("injected %+v:\n%s\nwant (%+v):\n%s\noutput:\n%s", gst, gj, wst, wj, got.String())
			}
			var again bytes.Buffer
			if _, err := Inject(&again, bytes.NewReader(got.Bytes()), testConfig); err != nil || again.String() != got.String() {
				t.Errorf("injecting twice differs from once (%v):\n%s", err, again.String())
			}
		})
	}
}

// TestInjectAliasBomb: a document whose aliases expand exponentially is refused quickly.
func TestInjectAliasBomb(t *testing.T) {
	in := "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  labels: {app: p}\n  annotations:\n    a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n"
	for i := 1; i < 9; i++ {
		in += "    a" + string(rune('0'+i)) + ": &a" + string(rune('0'+i)) + " [" + strings.Repeat("*a"+string(rune('0'+i-1))+", ", 9) + "*a" + string(rune('0'+i-1)) + "]\n"
	}
	in += "spec: {containers: [{name: p, image: p}]}\n"
	start := time.Now()
	_, err := Inject(io.Discard, strings.NewReader(in), testConfig)
	if err == nil || !strings.Contains(err.Error(), "through its aliases") {
		t.Errorf("err = %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("took %v", d)
	}
}

// TestWebhookSafety: a hostNetwork pod is admitted unchanged with a warning; a pod with its own container named
// meshlet and a pod with an out-of-range containerPort are denied with the reason.
func TestWebhookSafety(t *testing.T) {
	srv := httptest.NewServer(&Webhook{Config: testConfig, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	defer srv.Close()
	pod := func(spec string) []byte {
		return []byte(`{"apiVersion":"v1","kind":"Pod","metadata":{"name":"web","labels":{"app":"web"}},"spec":` + spec + `}`)
	}
	code, resp := review(t, srv.URL, "Pod", pod(`{"hostNetwork":true,"containers":[{"name":"web","image":"w","ports":[{"containerPort":8080}]}]}`))
	if code != 200 || !resp.Allowed || resp.Patch != nil || len(resp.Warnings) != 1 ||
		!strings.Contains(resp.Warnings[0], "meshlet injection: not injected: hostNetwork: true") {
		t.Errorf("hostNetwork: code %d, response %+v", code, resp)
	}
	for name, tc := range map[string]struct{ spec, says string }{
		"own meshlet container": {`{"containers":[{"name":"web","image":"w"},{"name":"meshlet","image":"ours"}]}`, `its own container named "meshlet"`},
		"containerPort 0":       {`{"containers":[{"name":"web","image":"w","ports":[{"containerPort":0}]}]}`, `containerPort "0" must be a port number`},
		"containerPort 70000":   {`{"containers":[{"name":"web","image":"w","ports":[{"containerPort":70000}]}]}`, `containerPort 70000 must be`},
	} {
		code, resp := review(t, srv.URL, "Pod", pod(tc.spec))
		if code != 200 || resp.Allowed || resp.Status == nil || !strings.Contains(resp.Status.Message, tc.says) {
			t.Errorf("%s: code %d, response %+v", name, code, resp)
		}
	}
}
