// Package helmtest runs Helm's CLI for the tests of the chart deploy/helm/meshlet (inject's TestHelmChart* and
// cmd/meshlet's TestHelmChartWebhook), the way discoverytest runs a real Consul agent.
//
// The binary is found through $MESHLET_HELM_BIN or bin/helm at the module root (`make helm` builds it from
// tools/helm). Without one the test is skipped with a message saying how to get it, except with CI=true, where it
// fails.
package helmtest

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"meshlet.dev/meshlet/internal/toolbin"
)

// Binary returns the path of the helm binary ($MESHLET_HELM_BIN, else bin/helm), or an error saying how to get
// one.
func Binary() (string, error) { return toolbin.Find("helm") }

// Helm is a helm binary and the chart directory it is run on.
type Helm struct {
	Bin   string
	Chart string // deploy/helm/meshlet, absolute
}

// New finds the helm binary and the chart; without a binary it skips the test (fails it with CI=true).
func New(t testing.TB) *Helm {
	t.Helper()
	bin := toolbin.Need(t, "helm")
	root, err := toolbin.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	return &Helm{Bin: bin, Chart: filepath.Join(root, "deploy", "helm", "meshlet")}
}

// Run runs helm with args in an empty HOME of its own (no user repositories, plugins or cache), and returns its
// stdout, its stderr and the error of a non-zero exit.
func (h *Helm) Run(t testing.TB, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	home := t.TempDir()
	cmd := exec.Command(h.Bin, args...)
	cmd.Env = append(os.Environ(), "HOME="+home, "HELM_CACHE_HOME="+filepath.Join(home, "cache"),
		"HELM_CONFIG_HOME="+filepath.Join(home, "config"), "HELM_DATA_HOME="+filepath.Join(home, "data"),
		"KUBECONFIG="+filepath.Join(home, "no-kubeconfig"))
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err = cmd.Run()
	return out.String(), errb.String(), err
}

// Template renders the chart as the release "meshlet" in the namespace meshlet-system (what the README installs)
// with extra helm template arguments (-f FILE, --set k=v); a failure fails the test.
func (h *Helm) Template(t testing.TB, args ...string) string {
	t.Helper()
	out, stderr, err := h.Run(t, append([]string{"template", "meshlet", h.Chart, "--namespace", "meshlet-system"}, args...)...)
	if err != nil {
		t.Fatalf("helm template %v: %v\n%s", args, err, stderr)
	}
	return out
}
