package main

import (
	"os"
	"reflect"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// TestTopologies: the static and the Consul demo read the same topology from their configs; the Consul variant
// lists no endpoints, registers api, and names one Consul agent whose ports the demo checks and configures.
func TestTopologies(t *testing.T) {
	static, err := loadTopology("../../examples/demo")
	if err != nil {
		t.Fatal(err)
	}
	consul, err := loadTopology("../../examples/demo/consul")
	if err != nil {
		t.Fatal(err)
	}
	if static.Consul != "" {
		t.Errorf("static demo: Consul %q, want none", static.Consul)
	}
	if consul.Consul != "127.0.0.1:18500" {
		t.Errorf("consul demo: Consul %q", consul.Consul)
	}
	if static.CertsDir != "bin/demo-certs" || !slices.Equal(static.Services, []string{"web", "api"}) || consul.CertsDir != "" {
		t.Errorf("certificates: static %q %v (want bin/demo-certs for web and api), consul %q (want none: Consul's CA)",
			static.CertsDir, static.Services, consul.CertsDir)
	}
	s, c := *static, *consul
	s.WebConfig, s.APIConfig, c.WebConfig, c.APIConfig, c.Consul = "", "", "", "", ""
	s.CertsDir, s.Services = "", nil
	if !reflect.DeepEqual(s, c) {
		t.Errorf("the two variants differ in their addresses:\nstatic %+v\nconsul %+v", s, c)
	}
	if n, m := len(static.ports()), len(consul.ports()); m != n+5 {
		t.Errorf("consul demo checks %d ports, static %d: want the 5 of the agent more", m, n)
	}
	hcl, err := consulHCL(consul)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"http = 18500", "dns = 18600", "server = 18603", `client_addr = "127.0.0.1"`, "disable_update_check = true"} {
		if !strings.Contains(hcl, want) {
			t.Errorf("consul.hcl lacks %q:\n%s", want, hcl)
		}
	}

	// The wiring the Consul variant stands on: api registers itself, web's upstreams have no endpoints and name api.
	var api, web struct {
		Service   struct{ Register bool } `yaml:"service"`
		Upstreams []struct {
			Name      string    `yaml:"name"`
			Service   string    `yaml:"service"`
			Endpoints *[]string `yaml:"endpoints"`
		} `yaml:"upstreams"`
	}
	for _, f := range []struct {
		path string
		v    any
	}{{consul.APIConfig, &api}, {consul.WebConfig, &web}} {
		b, err := os.ReadFile(f.path)
		if err != nil {
			t.Fatal(err)
		}
		if err := yaml.Unmarshal(b, f.v); err != nil {
			t.Fatal(err)
		}
	}
	if !api.Service.Register {
		t.Error("api's meshlet does not register itself")
	}
	if len(web.Upstreams) != 2 {
		t.Fatalf("web has %d upstreams", len(web.Upstreams))
	}
	for _, u := range web.Upstreams {
		if u.Endpoints != nil || u.Service != "api" {
			t.Errorf("upstream %s: endpoints %v, service %q: want none, api", u.Name, u.Endpoints, u.Service)
		}
	}
}

func TestConsulPortsRejectsOtherHosts(t *testing.T) {
	for _, addr := range []string{"10.0.0.1:8500", "127.0.0.1", "127.0.0.1:65500"} {
		if _, err := (&topology{Consul: addr}).consulPorts(); err == nil {
			t.Errorf("%s: no error", addr)
		}
	}
}
