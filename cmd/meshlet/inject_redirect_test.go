package main

import (
	"bytes"
	"os"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"meshlet.dev/meshlet/redirect/redirecttest"
)

// TestInjectedRedirectArgs runs the args of the meshlet-init container in inject's transparent golden file, as
// written, through `meshlet redirect-traffic` in a network namespace of the test's own, and reads the rules back
// with the system's nft: what injection writes is what redirect-traffic accepts and means.
func TestInjectedRedirectArgs(t *testing.T) {
	redirecttest.NeedRoot(t)
	b, err := os.ReadFile("../../inject/testdata/transparent.golden.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Spec struct {
			Template struct {
				Spec struct {
					InitContainers []struct {
						Name string
						Args []string
					} `yaml:"initContainers"`
				}
			}
		}
	}
	if err := yaml.Unmarshal(b, &d); err != nil {
		t.Fatal(err)
	}
	init := d.Spec.Template.Spec.InitContainers[0]
	if init.Name != "meshlet-init" || len(init.Args) == 0 || init.Args[0] != "redirect-traffic" {
		t.Fatalf("first init container %+v", init)
	}
	ns := redirecttest.NewNetns(t)
	var out, errb bytes.Buffer
	var code int
	ns.Do(t, func() { code = run(init.Args, &out, &errb) })
	if code != 0 {
		t.Fatalf("redirect-traffic %q: exit %d: %s%s", init.Args, code, out.String(), errb.String())
	}
	rules, err := ns.NFT("list", "table", "inet", "meshlet")
	if err != nil {
		t.Fatalf("nft list: %v\n%s", err, rules)
	}
	for _, want := range []string{"meta skuid 5995 return", "meta skuid 1001 return", "tcp dport 5432 return",
		"ip daddr 10.96.0.10 return", "ip daddr 169.254.169.254 return", "redirect to :15001",
		"tcp dport 15000 return", "tcp dport 9100 return", "tcp dport 8081 return", "tcp dport 8082 return", "redirect to :21000"} {
		if strings.Count(rules, want) != 1 {
			t.Errorf("want %q once in:\n%s", want, rules)
		}
	}
}
