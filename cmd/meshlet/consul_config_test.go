package main

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

func TestConsulConfig(t *testing.T) {
	api := "service: {name: api, address: 127.0.0.1:8080, protocol: http, register: true}\ninbound: {listen: 127.0.0.1:21001}\ndiscovery:\n  consul: {address: 127.0.0.1:8500}\nadmin: {listen: 127.0.0.1:15001}\n"
	web := "service: {name: web, address: 127.0.0.1:8081, protocol: http}\ninbound: {listen: 127.0.0.1:21000}\nupstreams:\n  - {name: api, listen: 127.0.0.1:9001, protocol: http}   # no endpoints: found in Consul\ndiscovery:\n  consul: {address: 127.0.0.1:8500}\nadmin: {listen: 127.0.0.1:15000}\n"
	for _, tt := range []struct {
		name, yaml string
		env        map[string]string
		wantErr    string
		check      func(t *testing.T, c *fileConfig)
	}{
		{name: "issue api", yaml: api, check: func(t *testing.T, c *fileConfig) {
			if !c.Service.Register || c.Discovery.Consul == nil || c.Discovery.Consul.Address != "127.0.0.1:8500" {
				t.Errorf("registration %+v consul %+v", c.Service, c.Discovery.Consul)
			}
		}},
		{name: "issue web", yaml: web, check: func(t *testing.T, c *fileConfig) {
			if c.Service.Register || c.Upstreams[0].Endpoints != nil {
				t.Errorf("web: %+v", c)
			}
		}},
		{name: "tags and meta", yaml: strings.Replace(api, "register: true}", "register: true, tags: [v1, canary], meta: {team: payments}}", 1),
			check: func(t *testing.T, c *fileConfig) {
				if len(c.Service.Tags) != 2 || c.Service.Meta["team"] != "payments" {
					t.Errorf("registration %+v", c.Service)
				}
			}},
		{name: "app check", yaml: strings.Replace(api, "register: true}", "register: true, check: {http: 'http://127.0.0.1:8080/health', interval: 5s}}", 1),
			check: func(t *testing.T, c *fileConfig) {
				if ch := c.Service.Check; ch == nil || ch.HTTP != "http://127.0.0.1:8080/health" || ch.Interval != 5*time.Second {
					t.Errorf("check %+v", ch)
				}
				b, _ := json.Marshal(c.view())
				if !strings.Contains(string(b), `"check":{"grpc":"","http":"http://127.0.0.1:8080/health"`) {
					t.Errorf("view has no check: %s", b)
				}
			}},
		{name: "app check strict", yaml: strings.Replace(api, "register: true}", "register: true, check: {htp: x}}", 1),
			wantErr: "service.check.htp: unknown field"},
		{name: "app check needs one kind", yaml: strings.Replace(api, "register: true}", "register: true, check: {interval: 5s}}", 1),
			wantErr: "service.check: set one of http, tcp and grpc (0 set)"},
		{name: "app check needs register", yaml: "service: {name: api, check: {tcp: '127.0.0.1:8080'}}\n",
			wantErr: "service.check: needs service.register"},
		{name: "check interval under consul's minimum", yaml: "service: {name: web}\ndiscovery: {consul: {check_interval: 100ms}}\n",
			wantErr: "discovery.consul.check_interval"},
		{name: "unknown service key still an error", yaml: strings.Replace(api, "register: true", "registr: true", 1),
			wantErr: "service.registr: unknown field"},
		{name: "register needs consul", yaml: "service: {name: api, address: 127.0.0.1:8080, register: true}\ninbound: {listen: 127.0.0.1:21001}\n",
			wantErr: "service.register: needs discovery.consul"},
		{name: "register needs inbound", yaml: "service: {name: api, register: true}\ndiscovery: {consul: {}}\n",
			wantErr: "service.register: needs inbound.listen"},
		{name: "bad mode and token twice", yaml: "service: {name: web}\ndiscovery: {consul: {mode: mesh, token: a, token_file: /x}}\n",
			wantErr: "discovery.consul.mode"},
		{name: "environment like consul's tools", yaml: "service: {name: web}\ndiscovery: {consul: {}}\n",
			env: map[string]string{"CONSUL_HTTP_ADDR": "127.0.0.1:18500", "CONSUL_HTTP_TOKEN": "s3cr3t-token"},
			check: func(t *testing.T, c *fileConfig) {
				if c.Discovery.Consul.Address != "127.0.0.1:18500" || c.Discovery.Consul.Token != "s3cr3t-token" {
					t.Errorf("consul %+v", c.Discovery.Consul)
				}
				b, _ := json.Marshal(c.view())
				if strings.Contains(string(b), "s3cr3t") || !strings.Contains(string(b), "redacted") {
					t.Errorf("view shows the token: %s", b)
				}
			}},
		{name: "the file wins over the environment", yaml: "service: {name: web}\ndiscovery: {consul: {address: 127.0.0.2:8500}}\n",
			env: map[string]string{"CONSUL_HTTP_ADDR": "127.0.0.1:18500"},
			check: func(t *testing.T, c *fileConfig) {
				if c.Discovery.Consul.Address != "127.0.0.2:8500" {
					t.Errorf("address %q", c.Discovery.Consul.Address)
				}
			}},
		{name: "no discovery section ignores the environment", yaml: "service: {name: web}\n",
			env: map[string]string{"CONSUL_HTTP_ADDR": "127.0.0.1:18500"},
			check: func(t *testing.T, c *fileConfig) {
				if c.Discovery.Consul != nil {
					t.Errorf("consul %+v", c.Discovery.Consul)
				}
			}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := decodeConfig([]byte(tt.yaml))
			if err == nil {
				applyEnv(cfg, func(k string) string { return tt.env[k] })
				cfg.setDefaults()
				err = cfg.validate()
			}
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, cfg)
		})
	}
}

func TestConsulConfigChangeNeedsRestart(t *testing.T) {
	load := func(y string) *fileConfig {
		t.Helper()
		c, err := decodeConfig([]byte(y))
		if err != nil {
			t.Fatal(err)
		}
		c.setDefaults()
		return c
	}
	base := load("service: {name: api, address: 127.0.0.1:8080, register: true}\ninbound: {listen: 127.0.0.1:21001}\ndiscovery: {consul: {address: 127.0.0.1:8500}}\n")
	for _, tc := range []struct {
		name, yaml string
		changed    bool
	}{
		{"same", "service: {name: api, address: 127.0.0.1:8080, register: true}\ninbound: {listen: 127.0.0.1:21001}\ndiscovery: {consul: {address: 127.0.0.1:8500}}\nlog: {level: debug}\n", false},
		{"address", "service: {name: api, address: 127.0.0.1:8080, register: true}\ninbound: {listen: 127.0.0.1:21001}\ndiscovery: {consul: {address: 127.0.0.1:8501}}\n", true},
		// Tags are part of the service section: a change there is the proxy's to refuse (it warns and keeps it).
		{"tags", "service: {name: api, address: 127.0.0.1:8080, register: true, tags: [v2]}\ninbound: {listen: 127.0.0.1:21001}\ndiscovery: {consul: {address: 127.0.0.1:8500}}\n", false},
		{"no consul", "service: {name: api, address: 127.0.0.1:8080}\ninbound: {listen: 127.0.0.1:21001}\n", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := discoveryChanged(base, load(tc.yaml)); got != tc.changed {
				t.Errorf("discoveryChanged = %v, want %v", got, tc.changed)
			}
		})
	}
}
