package main_test

// meshlet inject and meshlet webhook with transparent interception: the flags, against the real binary.

import (
	"os"
	"os/exec"
	"strings"
	"testing"

	"meshlet.dev/meshlet/internal/meshlettest"
)

func TestCLIInjectTransparent(t *testing.T) {
	want, err := os.ReadFile("../../inject/testdata/transparent.golden.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if out, code := meshlettest.Exec(t, "inject", "-image", goldenImage, "-f", "../../inject/testdata/transparent.in.yaml"); code != 0 || !strings.HasPrefix(goldenTokens(t, out), string(want)) {
		t.Errorf("exit %d, output differs from the golden file:\n%s", code, out)
	}
	deployment := "../../inject/testdata/deployment.in.yaml"
	for _, tc := range []struct {
		name   string
		args   []string
		in     string
		code   int
		has    []string
		hasNot []string
	}{
		{"-transparent", []string{"-transparent"}, deployment, 0,
			[]string{"- name: meshlet-init", "- redirect-traffic\n        - -proxy-uid\n        - \"5995\"\n        - -proxy-outbound-port\n        - \"15001\"",
				"- -exclude-inbound-port\n        - 15000,8080", "runAsUser: 5995", "transparent:\n                enabled: true"}, nil},
		{"-proxy-uid and -outbound-port", []string{"-transparent", "-proxy-uid", "1337", "-outbound-port", "16001"}, deployment, 0,
			[]string{"- -proxy-uid\n        - \"1337\"", "runAsUser: 1337", "listen: 127.0.0.1:16001"}, nil},
		{"the pod says false", []string{"-transparent"}, meshlettest.WriteTemp(t, "off.yaml", strings.Replace(mustReadFile(t, deployment),
			"meshlet.dev/upstreams:", "meshlet.dev/transparent: \"false\"\n        meshlet.dev/upstreams:", 1)), 0,
			[]string{"runAsUser: 65532"}, []string{"meshlet-init", "enabled: true"}},
		{"not asked", nil, deployment, 0, []string{"runAsUser: 65532"}, []string{"meshlet-init", "enabled: true"}},
		{"proxy UID root", []string{"-transparent", "-proxy-uid", "0"}, deployment, 2, []string{`invalid value "0" for flag -proxy-uid: "0" must be a UID 1..2147483647 (not root)`}, nil},
		{"bad exclusion", nil, meshlettest.WriteTemp(t, "bad.yaml", strings.Replace(mustReadFile(t, deployment),
			"meshlet.dev/upstreams:", "meshlet.dev/exclude-outbound-cidrs: \"10.0.0.0/8,everything\"\n        meshlet.dev/upstreams:", 1)), 1,
			[]string{`document 1: Deployment web: meshlet.dev/exclude-outbound-cidrs: invalid CIDR "everything"`}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, code := meshlettest.Exec(t, append(append([]string{"inject", "-image", goldenImage}, tc.args...), "-f", tc.in)...)
			if code != tc.code {
				t.Fatalf("exit %d, want %d:\n%s", code, tc.code, out)
			}
			for _, s := range tc.has {
				if !strings.Contains(out, s) {
					t.Errorf("output lacks %q:\n%s", s, out)
				}
			}
			for _, s := range tc.hasNot {
				if strings.Contains(out, s) {
					t.Errorf("output has %q:\n%s", s, out)
				}
			}
		})
	}
	// The webhook takes the same flags (it parses them before it asks for its certificate).
	cmd := exec.Command(meshlettest.Bin(), "webhook", "-transparent", "-proxy-uid", "5995", "-outbound-port", "15001")
	cmd.Env = append(os.Environ(), "MESHLET_IMAGE=")
	out, _ := cmd.CombinedOutput()
	if !strings.Contains(string(out), "-tls-cert, -tls-key and -image") {
		t.Errorf("webhook -transparent: %s", out)
	}
}

func mustReadFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
