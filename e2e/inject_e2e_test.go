package e2e_test

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"meshlet.dev/meshlet/discovery/discoverytest"
	"meshlet.dev/meshlet/internal/meshlettest"
)

// TestInjectedSidecarRuns plays the kubelet for an injected pod: it injects a Deployment, takes the sidecar's args
// and environment from the output, expands $(VAR) references as Kubernetes does (POD_IP and HOST_IP are loopback
// here, so the admin listener, which the injection puts on the pod IP, is on loopback too), and runs the binary with them next to a real Consul agent and a real app. The sidecar must become ready
// (meshlet wait), register the pod with Consul, carry a call on its inbound port to the app, and on
// POST /quitquitquit deregister and exit 0.
func TestInjectedSidecarRuns(t *testing.T) {
	agent := discoverytest.StartConsul(t, discoverytest.Options{})
	app := meshlettest.StartBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "hello from web") }), false, nil)
	appPort := app.Listener.Addr().String()[strings.LastIndexByte(app.Listener.Addr().String(), ':')+1:]
	admin, inbound := meshlettest.FreeAddr(t), meshlettest.FreeAddr(t)
	port := func(addr string) string { return addr[strings.LastIndexByte(addr, ':')+1:] }

	deployment := fmt.Sprintf(`apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata:
      labels: {app: web}
      annotations: {meshlet.dev/app-port: %q}
    spec:
      containers: [{name: web, image: web:1}]
`, appPort)
	cmd := exec.Command(meshlettest.Bin(), "inject", "-image", "meshlet:test", "-admin-port", port(admin),
		"-inbound-port", port(inbound), "-consul", agent.HTTPAddr)
	cmd.Stdin = strings.NewReader(deployment)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("inject: %v", err)
	}
	var d struct {
		Spec struct {
			Template struct {
				Spec struct {
					InitContainers []struct {
						Name string
						Args []string
						Env  []struct{ Name, Value string }
					} `yaml:"initContainers"`
				}
			}
		}
	}
	if err := yaml.Unmarshal(out, &d); err != nil || len(d.Spec.Template.Spec.InitContainers) != 1 {
		t.Fatalf("injected output: %v\n%s", err, out)
	}
	c := d.Spec.Template.Spec.InitContainers[0]
	vars := map[string]string{"POD_IP": "127.0.0.1", "HOST_IP": "127.0.0.1"} // the kubelet's fieldRefs
	env := []string{"PATH=/usr/bin:/bin"}
	for _, e := range c.Env {
		v, ok := vars[e.Name]
		if !ok {
			v = expandK8s(e.Value, vars)
		}
		vars[e.Name] = v
		env = append(env, e.Name+"="+v)
	}

	run := exec.Command(meshlettest.Bin(), c.Args...)
	run.Env = env
	var logs meshlettest.SyncBuffer
	run.Stdout, run.Stderr = &logs, &logs
	if err := run.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- run.Wait() }()
	t.Cleanup(func() {
		run.Process.Signal(syscall.SIGKILL)
		if t.Failed() {
			t.Logf("sidecar log:\n%s\nconfig:\n%s", logs.String(), vars["MESHLET_CONFIG_YAML"])
		}
	})

	// meshlet wait as the classic sidecar's postStart hook runs it: in the container's environment, no -admin.
	wait := exec.Command(meshlettest.Bin(), "wait", "-timeout", "20s", "-interval", "50ms")
	wait.Env = env
	if out, err := wait.CombinedOutput(); err != nil || !strings.Contains(string(out), admin+" is ready") {
		t.Fatalf("meshlet wait: %v %s", err, out)
	}
	services := func() string {
		s, err := agent.Client().Agent().Services()
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for id := range s {
			ids = append(ids, id)
		}
		return strings.Join(ids, " ")
	}
	if s := services(); !strings.Contains(s, "web-") || !strings.Contains(s, "-sidecar-proxy") {
		t.Errorf("registered services: %q, want web and its sidecar", s)
	}
	resp, err := http.Get("http://" + inbound + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "hello from web" {
		t.Errorf("inbound call: %d %q", resp.StatusCode, body)
	}

	resp, err = http.Post("http://"+admin+"/quitquitquit", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	select {
	case err := <-exited:
		exited <- err
		if err != nil {
			t.Fatalf("sidecar exit: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("sidecar still running 30s after /quitquitquit")
	}
	if s := services(); strings.Contains(s, "web-") {
		t.Errorf("still registered after quitting: %q", s)
	}
}

// expandK8s replaces $(NAME) with vars[NAME] as the kubelet does for defined variables; $$ is a literal $.
func expandK8s(s string, vars map[string]string) string {
	var b bytes.Buffer
	for i := 0; i < len(s); i++ {
		if s[i] == '$' && i+1 < len(s) && s[i+1] == '$' {
			b.WriteByte('$')
			i++
			continue
		}
		if s[i] == '$' && i+1 < len(s) && s[i+1] == '(' {
			if end := strings.IndexByte(s[i:], ')'); end > 0 {
				if v, ok := vars[s[i+2:i+end]]; ok {
					b.WriteString(v)
					i += end
					continue
				}
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
