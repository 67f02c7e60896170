package main

import (
	"strings"
	"testing"
	"time"
)

func TestDecodeConfig(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		want string // substring of the error; empty means success
	}{
		{"minimal", "service: {name: web}\n", ""},
		{"unknown top-level key", "service: {name: web}\nfrobnicate: 1\n", "line 2: unknown field frobnicate"},
		{"unknown nested key", "service: {name: web, prot: http}\n", "unknown field prot"},
		{"unknown upstream key", "service: {name: web}\nupstreams:\n  - {name: a, endpoint: [1.2.3.4:5]}\n", "unknown field endpoint"},
		{"bad duration", "service: {name: web}\nshutdown: {drain_delay: soon}\n", "line 2"},
		{"bad yaml", "service: [\n", "bad YAML"},
		{"empty", "", "config is empty"},
		{"two documents", "service: {name: web}\n---\nservice: {name: api}\n", "single YAML document"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := decodeConfig([]byte(tt.yaml))
			if tt.want == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want one containing %q", err, tt.want)
			}
		})
	}
}

func TestConfigDefaultsAndEnv(t *testing.T) {
	cfg, err := decodeConfig([]byte("service: {name: web}\nshutdown: {drain_delay: 0s}\nupstreams:\n  - {name: api, listen: 127.0.0.1:9001, timeout: 250ms}\n"))
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"MESHLET_LOG_LEVEL": "debug", "MESHLET_ADMIN_LISTEN": "127.0.0.1:9999"}
	applyEnv(cfg, func(k string) string { return env[k] })
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		t.Fatal(err)
	}
	if cfg.Log.Level != "debug" || cfg.Admin.Listen != "127.0.0.1:9999" {
		t.Fatalf("env not applied: %+v %+v", cfg.Log, cfg.Admin)
	}
	if *cfg.Shutdown.DrainDelay != 0 || cfg.Shutdown.DrainTimeout != defaultDrainTimeout {
		t.Fatalf("drain delay 0 must stay 0 and timeout default: %v %v", *cfg.Shutdown.DrainDelay, cfg.Shutdown.DrainTimeout)
	}
	if cfg.Upstreams[0].Timeout != 250*time.Millisecond || cfg.Upstreams[0].ConnectTimeout != 5*time.Second {
		t.Fatalf("durations: %+v", cfg.Upstreams[0])
	}
	view := cfg.view().(map[string]any)
	ups := view["upstreams"].([]any)
	if ups[0].(map[string]any)["timeout"] != "250ms" {
		t.Fatalf("debug view should show durations as strings: %v", ups[0])
	}
}

func TestValidateJoinsAllProblems(t *testing.T) {
	cfg, err := decodeConfig([]byte("service: {name: Web}\nlog: {level: loud}\nadmin: {listen: nope}\nupstreams:\n  - {name: api, endpoints: [x]}\n"))
	if err != nil {
		t.Fatal(err)
	}
	cfg.setDefaults()
	err = cfg.validate()
	for _, want := range []string{"service.name", "log.level", "admin.listen", "upstreams[0].endpoints[0]", "upstreams[0].listen"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("validation error %v does not name %s", err, want)
		}
	}
}
