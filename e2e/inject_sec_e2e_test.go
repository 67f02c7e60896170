package e2e_test

// meshlet inject on manifests it must not inject as they are (issue 11, item 20), against the real binary.

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"meshlet.dev/meshlet/internal/meshlettest"
)

func TestCLIInjectSafety(t *testing.T) {
	manifest := func(spec string) string {
		return "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  selector: {matchLabels: {app: web}}\n" +
			"  template:\n    metadata: {labels: {app: web}}\n    spec:\n" + spec
	}
	for _, tc := range []struct {
		name, spec string
		code       int
		says       []string
	}{
		{"hostNetwork is skipped with a reason",
			"      hostNetwork: true\n      containers: [{name: web, image: w, ports: [{containerPort: 8080}]}]\n", 0,
			[]string{"meshlet inject: warning: document 1: Deployment web: not injected: hostNetwork: true",
				"0 pod templates injected, 0 opted out, 1 left without the sidecar (see the warnings)"}},
		{"own container named meshlet",
			"      containers: [{name: web, image: w}, {name: meshlet, image: mine}]\n", 1,
			[]string{`Deployment web: containers[1]: the pod has its own container named "meshlet"`}},
		{"containerPort out of range",
			"      containers: [{name: web, image: w, ports: [{containerPort: 70000}]}]\n", 1,
			[]string{"containers[0].ports[0].containerPort 70000 must be a port number 1..65535"}},
		{"containers through a merge key",
			"      <<: {containers: [{name: web, image: w, ports: [{containerPort: 8080}]}]}\n      serviceAccountName: web\n", 0,
			[]string{"1 pod templates injected", "name: web", "address: 127.0.0.1:8080"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := filepath.Join(t.TempDir(), "in.yaml")
			if err := os.WriteFile(f, []byte(manifest(tc.spec)), 0o600); err != nil {
				t.Fatal(err)
			}
			out, code := meshlettest.Exec(t, "inject", "-image", "example.com/meshlet:1", "-f", f)
			if code != tc.code {
				t.Errorf("exit %d, want %d:\n%s", code, tc.code, out)
			}
			for _, s := range tc.says {
				if !strings.Contains(out, s) {
					t.Errorf("output lacks %q:\n%s", s, out)
				}
			}
		})
	}
}
