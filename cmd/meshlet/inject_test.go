package main_test

// meshlet inject, the env:NAME config source, meshlet wait and POST /quitquitquit, against the real binary.

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"meshlet.dev/meshlet/internal/meshlettest"
)

const goldenImage = "registry.example.com/meshlet:v1.0.0" // the image inject's golden files were made with

// goldenDrainToken is the drain token of inject's golden files (made with a fixed one; the binary makes a random one
// per pod).
const goldenDrainToken = "0123456789abcdef0123456789abcdef"

// drainTokens finds the drain tokens of injected output: in the preStop hook (YAML or JSON) and in the sidecar's
// config (admin.drain_token).
var drainTokens = regexp.MustCompile(`(X-Meshlet-Drain-Token\n\s*value: |"X-Meshlet-Drain-Token","value":"|drain_token: )([0-9a-f]{32})`)

// goldenTokens checks that every token a preStop hook sends is one a sidecar's config holds (its pod's), and
// returns out with the golden files' token in their place.
func goldenTokens(t *testing.T, out string) string {
	t.Helper()
	configs := map[string]bool{}
	ms := drainTokens.FindAllStringSubmatch(out, -1)
	for _, m := range ms {
		if m[1] == "drain_token: " {
			configs[m[2]] = true
		}
	}
	for _, m := range ms {
		if m[1] != "drain_token: " && !configs[m[2]] {
			t.Errorf("a preStop hook sends drain token %s, which no sidecar's config holds", m[2])
		}
	}
	return drainTokens.ReplaceAllString(out, "${1}"+goldenDrainToken)
}

func TestCLIInject(t *testing.T) {
	in := "../../inject/testdata/multi-doc.in.yaml"
	want, err := os.ReadFile("../../inject/testdata/multi-doc.golden.yaml")
	if err != nil {
		t.Fatal(err)
	}
	t.Run("file", func(t *testing.T) {
		cmd := exec.Command(meshlettest.Bin(), "inject", "-image", goldenImage, "-f", in)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Run(); err != nil {
			t.Fatalf("%v: %s", err, stderr.String())
		}
		if goldenTokens(t, stdout.String()) != string(want) {
			t.Errorf("stdout differs from the golden file:\n%s", stdout.String())
		}
		if !strings.Contains(stderr.String(), "1 pod templates injected, 0 opted out") {
			t.Errorf("stderr: %s", stderr.String())
		}
	})
	t.Run("file as the argument", func(t *testing.T) { // meshlet inject FILE, as linkerd inject FILE
		cmd := exec.Command(meshlettest.Bin(), "inject", "-image", goldenImage, in)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Run(); err != nil {
			t.Fatalf("%v: %s", err, stderr.String())
		}
		if goldenTokens(t, stdout.String()) != string(want) {
			t.Errorf("stdout differs from the golden file:\n%s", stdout.String())
		}
	})
	t.Run("- as the argument is stdin", func(t *testing.T) {
		cmd := exec.Command(meshlettest.Bin(), "inject", "-image", goldenImage, "-")
		cmd.Stdin = bytes.NewReader(want)
		out, err := cmd.Output()
		if err != nil || string(out) != string(want) {
			t.Errorf("%v: %s", err, out)
		}
	})
	t.Run("default image: this version's", func(t *testing.T) {
		v, err := exec.Command(meshlettest.Bin(), "version").Output()
		if err != nil {
			t.Fatal(err)
		}
		version := strings.Fields(string(v))[1] // meshlet VERSION GOVERSION
		tag := regexp.MustCompile(`[^A-Za-z0-9_.-]`).ReplaceAllString(version, "-")
		cmd := exec.Command(meshlettest.Bin(), "inject", in) // a newcomer's first command: no -image, no $MESHLET_IMAGE
		cmd.Env = append(os.Environ(), "MESHLET_IMAGE=")
		out, err := cmd.Output()
		if err != nil {
			t.Fatal(err)
		}
		if wantImage := "image: ghcr.io/meshlet-dev/meshlet:" + tag + "\n"; !strings.Contains(string(out), wantImage) {
			t.Errorf("output lacks %q:\n%s", wantImage, out)
		}
		if strings.Contains(string(out), goldenImage) {
			t.Errorf("output has the golden files' image:\n%s", out)
		}
	})
	t.Run("resource flags, a pod's annotation wins", func(t *testing.T) {
		pod := meshlettest.WriteTemp(t, "pod.yaml", "kind: Pod\nmetadata:\n  name: p\n  annotations: {meshlet.dev/proxy-cpu-request: 20m}\n"+
			"spec:\n  containers:\n  - {name: app, image: app, ports: [{containerPort: 8080}]}\n")
		out, err := exec.Command(meshlettest.Bin(), "inject", "-image", "x", "-proxy-cpu-request", "100m", "-proxy-cpu-limit", "2",
			"-proxy-memory-request", "64Mi", "-proxy-memory-limit", "1Gi", pod).Output()
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{"cpu: 20m", "memory: 64Mi", `cpu: "2"`, "memory: 1Gi", "value: 921MiB"} {
			if !strings.Contains(string(out), want) {
				t.Errorf("output lacks %q:\n%s", want, out)
			}
		}
	})
	t.Run("warnings on stderr", func(t *testing.T) { // issue 12: a grace period shorter than meshlet's drain
		cmd := exec.Command(meshlettest.Bin(), "inject", "-image", goldenImage, "../../inject/testdata/rollout.in.yaml")
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Run(); err != nil {
			t.Fatalf("%v: %s", err, stderr.String())
		}
		if want := "meshlet inject: warning: document 3: Pod grpc-probe: terminationGracePeriodSeconds 10 is shorter"; !strings.Contains(stderr.String(), want) {
			t.Errorf("stderr lacks %q:\n%s", want, stderr.String())
		}
	})
	t.Run("stdin, image from the environment", func(t *testing.T) {
		cmd := exec.Command(meshlettest.Bin(), "inject")
		cmd.Env = append(os.Environ(), "MESHLET_IMAGE="+goldenImage)
		cmd.Stdin = bytes.NewReader(want) // already injected: unchanged
		out, err := cmd.Output()
		if err != nil {
			t.Fatal(err)
		}
		if string(out) != string(want) {
			t.Errorf("injecting an injected file changed it:\n%s", out)
		}
	})
	for _, tc := range []struct {
		name string
		args []string
		code int
		msg  string
	}{
		{"no image", []string{"inject", "-image", "", "-f", in}, 1, "image: required"},
		{"missing file", []string{"inject", "-image", "x", "-f", "/nonexistent.yaml"}, 1, "no such file"},
		{"missing file as the argument", []string{"inject", "-image", "x", "/nonexistent.yaml"}, 1, "no such file"},
		{"stray argument", []string{"inject", "-image", "x", in, "extra.yaml"}, 2, `unexpected argument "extra.yaml" (one FILE, or -f FILE)`},
		{"both -f and the argument", []string{"inject", "-image", "x", "-f", in, in}, 2, "give one (use -f FILE or FILE)"},
		{"-f - and the argument", []string{"inject", "-image", "x", "-f", "-", in}, 2, "give one"},
		{"bad resource flag", []string{"inject", "-image", "x", "-proxy-memory-limit", "1GB", in}, 1, `proxy memory limit: "1GB" must be a Kubernetes quantity`},
		{"bad annotation", []string{"inject", "-image", "x", "-f", meshlettest.WriteTemp(t, "bad.yaml",
			"kind: Pod\nmetadata:\n  name: p\n  annotations: {meshlet.dev/upstreams: nope}\nspec: {containers: []}\n")}, 1,
			`document 1: Pod p: meshlet.dev/upstreams: "nope" must be name:port`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd := exec.Command(meshlettest.Bin(), tc.args...)
			cmd.Env = append(os.Environ(), "MESHLET_IMAGE=")
			out, err := cmd.CombinedOutput()
			code := 0
			if ee, ok := err.(*exec.ExitError); ok {
				code = ee.ExitCode()
			}
			if code != tc.code || !strings.Contains(string(out), tc.msg) {
				t.Errorf("exit %d, output %q; want exit %d and %q", code, out, tc.code, tc.msg)
			}
		})
	}
}

// TestInjectedConfigsCheck: every config that injection generates in the golden files is a valid meshlet config
// once Kubernetes has expanded $(POD_IP), read the way the injected container reads it (-config env:NAME).
func TestInjectedConfigsCheck(t *testing.T) {
	goldens, _ := filepath.Glob("../../inject/testdata/*.golden.yaml")
	n := 0
	for _, g := range goldens {
		b, err := os.ReadFile(g)
		if err != nil {
			t.Fatal(err)
		}
		dec := yaml.NewDecoder(bytes.NewReader(b))
		for {
			var doc yaml.Node
			if err := dec.Decode(&doc); err != nil {
				break
			}
			for _, conf := range envValues(&doc, "MESHLET_CONFIG_YAML") {
				n++
				conf = strings.ReplaceAll(conf, "$(POD_IP)", "10.1.2.3")
				cmd := exec.Command(meshlettest.Bin(), "check", "-config", "env:MESHLET_CONFIG_YAML")
				cmd.Env = append(os.Environ(), "MESHLET_CONFIG_YAML="+conf, "CONSUL_HTTP_ADDR=10.0.0.1:8500")
				if out, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(out), "config ok") {
					t.Errorf("%s: generated config rejected: %v\n%s\nconfig:\n%s", filepath.Base(g), err, out, conf)
				}
			}
		}
	}
	if n < 10 {
		t.Errorf("found %d generated configs in the golden files, want at least 10", n)
	}
}

// envValues finds the values of env entries called name anywhere in the tree.
func envValues(n *yaml.Node, name string) []string {
	var out []string
	if n.Kind == yaml.MappingNode {
		var nm, val string
		for i := 0; i+1 < len(n.Content); i += 2 {
			switch n.Content[i].Value {
			case "name":
				nm = n.Content[i+1].Value
			case "value":
				val = n.Content[i+1].Value
			}
		}
		if nm == name {
			out = append(out, val)
		}
	}
	for _, c := range n.Content {
		out = append(out, envValues(c, name)...)
	}
	return out
}

// TestEnvConfigSourceRunsAndWaitAndQuit: meshlet runs on a config held in an environment variable; `meshlet
// wait`, started before it, returns once it is ready; POST /quitquitquit then shuts it down gracefully (exit 0).
func TestEnvConfigSourceRunsAndWaitAndQuit(t *testing.T) {
	admin := meshlettest.FreeAddr(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	wait := exec.CommandContext(ctx, meshlettest.Bin(), "wait", "-admin", admin, "-timeout", "20s", "-interval", "20ms")
	var waitOut meshlettest.SyncBuffer
	wait.Stdout, wait.Stderr = &waitOut, &waitOut
	if err := wait.Start(); err != nil {
		t.Fatal(err)
	}
	waitDone := make(chan error, 1)
	go func() { waitDone <- wait.Wait() }()

	conf := fmt.Sprintf("service: {name: web}\nadmin: {listen: %q}\nshutdown: {drain_delay: 0s}\n", admin)
	run := exec.Command(meshlettest.Bin(), "run", "-config", "env:MY_MESHLET_CONFIG")
	run.Env = append(os.Environ(), "MY_MESHLET_CONFIG="+conf)
	var runOut meshlettest.SyncBuffer
	run.Stdout, run.Stderr = &runOut, &runOut
	if err := run.Start(); err != nil {
		t.Fatal(err)
	}
	runDone := make(chan error, 1)
	go func() { runDone <- run.Wait() }()
	t.Cleanup(func() {
		run.Process.Signal(syscall.SIGKILL)
		<-runDone
	})

	select {
	case err := <-waitDone:
		if err != nil || !strings.Contains(waitOut.String(), "is ready") {
			t.Fatalf("meshlet wait: %v: %s\nmeshlet: %s", err, waitOut.String(), runOut.String())
		}
	case <-time.After(25 * time.Second):
		t.Fatalf("meshlet wait did not return\nmeshlet: %s", runOut.String())
	}

	resp, err := http.Post("http://"+admin+"/quitquitquit", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("quitquitquit: %d", resp.StatusCode)
	}
	select {
	case err := <-runDone:
		runDone <- err // for the cleanup
		if err != nil {
			t.Fatalf("meshlet exited with %v\n%s", err, runOut.String())
		}
	case <-time.After(15 * time.Second):
		t.Fatalf("meshlet still running after /quitquitquit\n%s", runOut.String())
	}
	for _, want := range []string{"quit requested", "shutting down", "meshlet stopped"} {
		if !strings.Contains(runOut.String(), want) {
			t.Errorf("log lacks %q:\n%s", want, runOut.String())
		}
	}
}

func TestCLIWaitFails(t *testing.T) {
	notReady := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "not ready: upstream api: waiting for its first endpoints", http.StatusServiceUnavailable)
	}))
	defer notReady.Close()
	for _, tc := range []struct {
		name, admin, want string
	}{
		{"503", strings.TrimPrefix(notReady.URL, "http://"), "503 not ready: upstream api: waiting"},
		{"nothing listening", meshlettest.FreeAddr(t), "connection refused"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			out, code := meshlettest.Exec(t, "wait", "-admin", tc.admin, "-timeout", "300ms", "-interval", "20ms")
			if code != 1 || !strings.Contains(out, tc.want) || !strings.Contains(out, "not ready after 300ms") {
				t.Errorf("exit %d, output %q; want exit 1 and %q", code, out, tc.want)
			}
			if d := time.Since(start); d > 10*time.Second {
				t.Errorf("took %v for a 300ms timeout", d)
			}
		})
	}
	if out, code := meshlettest.Exec(t, "run", "-config", "env:MESHLET_TEST_UNSET_VAR"); code != 1 || !strings.Contains(out, "MESHLET_TEST_UNSET_VAR is not set") {
		t.Errorf("unset env config: exit %d, %s", code, out)
	}
}
