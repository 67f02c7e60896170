package inject

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"io"
	"log/slog"
	"net/http/httptest"
	"os"
	"regexp"
	"strings"
	"testing"
)

// TestRolloutWarnings: what injection leaves out or finds too short is said, per pod, and nothing else: an exec
// readinessProbe gives no app check, an app's own preStop hook is kept (no drain before its SIGTERM), a grace
// period shorter than meshlet's drain delay + drain timeout.
func TestRolloutWarnings(t *testing.T) {
	src, err := os.ReadFile("testdata/rollout.in.yaml")
	if err != nil {
		t.Fatal(err)
	}
	st, err := Inject(io.Discard, bytes.NewReader(src), testConfig)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"document 3: Pod grpc-probe: terminationGracePeriodSeconds 10 is shorter than meshlet's drain delay (5s) + drain timeout (20s) = 25s",
		"document 4: Pod exec-probe-own-prestop: containers[0] (app).readinessProbe runs a command, which Consul cannot: no app check registered",
		"document 4: Pod exec-probe-own-prestop: containers[0] (app) has a preStop hook of its own: kept",
	}
	if len(st.Warnings) != len(want) {
		t.Fatalf("warnings:\n%s\nwant %d", strings.Join(st.Warnings, "\n"), len(want))
	}
	for i, w := range want {
		if !strings.HasPrefix(st.Warnings[i], w) {
			t.Errorf("warning %d: %q, want it to start with %q", i, st.Warnings[i], w)
		}
	}
	if !strings.Contains(st.Warnings[0], "set it to at least 25 plus the app's own shutdown time") {
		t.Errorf("the grace period warning does not say what to set: %q", st.Warnings[0])
	}
}

// TestAppCheckFromProbe: each readinessProbe kind and the annotation, as the generated service.check; the
// mistakes, each with the field or annotation that has it.
func TestAppCheckFromProbe(t *testing.T) {
	pod := func(ann, probe string) string {
		return "kind: Pod\nmetadata:\n  name: p\n  annotations: {" + ann + "}\nspec:\n  containers:\n  - name: app\n" +
			"    image: app\n    ports: [{name: web, containerPort: 8080}, {name: admin, containerPort: 8081}]\n" + probe
	}
	for _, tc := range []struct {
		name, ann, probe string
		want             string // in the output ("" and err set: an error)
		err              string
		warning          string
	}{
		{"httpGet by name", "", "    readinessProbe: {httpGet: {path: /ready, port: admin}}\n",
			"check:\n            http: http://$(POD_IP):8081/ready\n            interval: 10s\n            timeout: 1s\n", "", ""},
		{"httpGet by number with a host", "", "    readinessProbe: {httpGet: {host: 127.0.0.1, port: 8080}}\n",
			"http: http://127.0.0.1:8080/\n", "", ""},
		{"grpc without service", "", "    readinessProbe: {grpc: {port: 8080}}\n", "grpc: $(POD_IP):8080\n", "", ""},
		{"no probe: no check", "", "", "", "", ""},
		{"httpHeaders: no check", "", "    readinessProbe: {httpGet: {path: /, port: 8080, httpHeaders: [{name: Host, value: x}]}}\n",
			"", "", "httpGet has httpHeaders, which the app check cannot send"},
		{"tcp annotation", "meshlet.dev/app-check: \"tcp:$(POD_IP):8081\"", "    readinessProbe: {httpGet: {port: 8080}}\n",
			"check:\n            tcp: $(POD_IP):8081\n        inbound", "", ""},
		{"unknown port name", "", "    readinessProbe: {httpGet: {port: metrics}}\n", "",
			`containers[0] (app).readinessProbe.httpGet.port "metrics" names no port of the container`, ""},
		{"bad scheme", "", "    readinessProbe: {httpGet: {port: 8080, scheme: FTP}}\n", "",
			`containers[0] (app).readinessProbe.httpGet.scheme "FTP" must be HTTP or HTTPS`, ""},
		{"bad annotation", "meshlet.dev/app-check: \"udp:1.2.3.4:53\"", "", "",
			`meshlet.dev/app-check: "udp:1.2.3.4:53" must be none, an http:// or https:// URL, tcp:HOST:PORT or grpc:HOST:PORT[/SERVICE]`, ""},
		{"annotation without a port", "meshlet.dev/app-check: \"grpc:$(POD_IP)/x\"", "", "", `want HOST:PORT with a port 1..65535`, ""},
		{"annotation without an app port", "meshlet.dev/app-port: none, meshlet.dev/app-check: none", "", "",
			"meshlet.dev/app-check: needs an app port (meshlet.dev/app-port is none)", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			st, err := Inject(&out, strings.NewReader(pod(tc.ann, tc.probe)), testConfig)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tc.want != "" && !strings.Contains(out.String(), tc.want) {
				t.Errorf("output lacks %q:\n%s", tc.want, out.String())
			}
			if tc.want == "" && strings.Contains(out.String(), "check:") {
				t.Errorf("output has a check:\n%s", out.String())
			}
			if w := strings.Join(st.Warnings, "\n"); (tc.warning == "") != (w == "") || !strings.Contains(w, tc.warning) {
				t.Errorf("warnings %q, want %q", w, tc.warning)
			}
		})
	}
}

// TestWebhookWarnsGracePeriod: the webhook admits and injects a pod whose grace period is too short, and returns
// the warning in the AdmissionResponse (kubectl shows it).
func TestWebhookWarnsGracePeriod(t *testing.T) {
	srv := httptest.NewServer(&Webhook{Config: testConfig, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	defer srv.Close()
	pod := []byte(`{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p","annotations":{"meshlet.dev/drain-timeout":"40s"}},
		"spec":{"terminationGracePeriodSeconds":30,"containers":[{"name":"app","image":"a","ports":[{"containerPort":80}]}]}}`)
	code, resp := review(t, srv.URL, "Pod", pod)
	if code != 200 || !resp.Allowed || len(resp.Patch) == 0 {
		t.Fatalf("code %d, response %+v", code, resp)
	}
	if len(resp.Warnings) != 1 || !strings.HasPrefix(resp.Warnings[0], "meshlet injection: terminationGracePeriodSeconds 30 is shorter "+
		"than meshlet's drain delay (5s) + drain timeout (40s) = 45s") {
		t.Errorf("warnings %q", resp.Warnings)
	}
	if !strings.Contains(string(resp.Patch), `"preStop":{"httpGet":{"httpHeaders":[{"name":"X-Meshlet-Drain-Token","value":"`+testDrainToken+`"}],"path":"/drain","port":15000}}`) ||
		!strings.Contains(string(resp.Patch), `admin:\n  drain_token: `+testDrainToken) {
		t.Errorf("patch lacks the drain hook: %s", resp.Patch)
	}
}

// TestDrainTokenPerPod: each injected pod gets a random drain token of its own, in its hook and in its sidecar's
// config; injecting the output again keeps it.
func TestDrainTokenPerPod(t *testing.T) {
	defer func(f func() string) { newDrainToken = f }(newDrainToken)
	newDrainToken = func() string {
		b := make([]byte, 16)
		rand.Read(b)
		return hex.EncodeToString(b)
	}
	pod := func(name string) string {
		return "apiVersion: v1\nkind: Pod\nmetadata:\n  name: " + name + "\nspec:\n  containers:\n  - name: app\n    image: a\n    ports: [{containerPort: 80}]\n"
	}
	var out bytes.Buffer
	if _, err := Inject(&out, strings.NewReader(pod("a")+"---\n"+pod("b")), testConfig); err != nil {
		t.Fatal(err)
	}
	tokenRE := regexp.MustCompile(`(?:value|drain_token): ([0-9a-f]{32})\n`)
	var toks []string
	for _, m := range tokenRE.FindAllStringSubmatch(out.String(), -1) {
		toks = append(toks, m[1])
	}
	// Per pod: the hook's, then the config's.
	if len(toks) != 4 || toks[0] != toks[1] || toks[2] != toks[3] || toks[0] == toks[2] || toks[0] == testDrainToken {
		t.Fatalf("tokens %q:\n%s", toks, out.String())
	}
	var again bytes.Buffer
	if _, err := Inject(&again, bytes.NewReader(out.Bytes()), testConfig); err != nil {
		t.Fatal(err)
	}
	if again.String() != out.String() {
		t.Fatalf("injecting again changed the pods:\n%s", again.String())
	}
}
