package main

import (
	"bytes"
	"os"
	"path/filepath"
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
		{"unknown top-level key", "service: {name: web}\nfrobnicate: 1\n", "frobnicate: unknown field (line 2)"},
		{"unknown nested key", "service: {name: web, prot: http}\n", "service.prot: unknown field (line 1)"},
		{"unknown upstream key", "service: {name: web}\nupstreams:\n  - {name: a, endpoint: [1.2.3.4:5]}\n", "upstreams[0].endpoint: unknown field (line 3)"},
		{"bad duration", "service: {name: web}\nshutdown: {drain_delay: soon}\n", "line 2"},
		{"bad yaml", "service: [\n", "bad YAML"},
		{"empty", "", "config is empty"},
		{"two documents", "service: {name: web}\n---\nservice: {name: api}\n", "single YAML document"},
		{"subset size", "service: {name: web}\nupstreams:\n  - {name: a, subset_size: 100}\n", ""},
		{"implicit subset size", "service: {name: web}\noutbound: {transparent: {subset_size: 50}}\n", ""},
		{"bad subset size", "service: {name: web}\nupstreams:\n  - {name: a, subset_size: many}\n", "upstreams[0].subset_size"},
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
	cfg, err := decodeConfig([]byte("service: {name: web}\nshutdown: {drain_delay: 0s}\nupstreams:\n  - {name: api, listen: 127.0.0.1:9001, timeout: 250ms, subset_size: 100}\n"))
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
	if cfg.Upstreams[0].SubsetSize != 100 {
		t.Fatalf("subset_size: 100 decoded as %d", cfg.Upstreams[0].SubsetSize)
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

// TestCheckReport: meshlet check names the field path of every problem, on every line the file, and catches what
// run would fail on or serve badly: an unknown field or a type error in any section, a listener on admin.listen,
// an upstream with neither endpoints nor discovery (an explicit endpoints: [] is a warning).
func TestCheckReport(t *testing.T) {
	for _, tc := range []struct {
		name, yaml string
		code       int
		want       []string // lines of stderr (each prefixed with the file's path, but warnings)
	}{
		{"unknown field and type error", `service: {name: web}
outbound: {listen: 127.0.0.1:15001}
upstreams:
  - name: api
    retries: 3
    timeout: 5
    endpoints: [127.0.0.1:9000]
  - {name: billing, endpoints: [127.0.0.1:9001], connect_timeout: soon}
`, 1, []string{"upstreams[0].retries: unknown field (line 5)", "upstreams[0].timeout: 5 must be a duration such as 5s (line 6)",
			"upstreams[1].connect_timeout: soon must be a duration such as 5s (line 8)"}},
		{"inbound on the admin address", `service: {name: web, address: 127.0.0.1:8080}
inbound: {listen: 127.0.0.1:15000}
`, 1, []string{"inbound.listen: 127.0.0.1:15000 is also admin.listen"}},
		{"upstream on the admin port of every address", `service: {name: web}
admin: {listen: 0.0.0.0:15000}
upstreams: [{name: api, listen: 127.0.0.1:15000, endpoints: [127.0.0.1:9000]}]
`, 1, []string{"upstreams[0].listen: 127.0.0.1:15000 is also admin.listen"}},
		{"no endpoints, no discovery", `service: {name: web}
upstreams: [{name: api, listen: 127.0.0.1:9001}]
`, 1, []string{"upstreams[0]: api has no endpoints and there is no discovery"}},
		{"endpoints: [] is meant", `service: {name: web}
upstreams: [{name: api, listen: 127.0.0.1:9001, endpoints: []}]
`, 0, []string{"warning: upstreams[0]: api has no endpoints (endpoints: [])"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "meshlet.yaml")
			if err := os.WriteFile(path, []byte(tc.yaml), 0o600); err != nil {
				t.Fatal(err)
			}
			var out, errb bytes.Buffer
			code := check(path, &out, &errb)
			if code != tc.code {
				t.Fatalf("exit %d, want %d:\n%s", code, tc.code, errb.String())
			}
			for _, w := range tc.want {
				if !strings.HasPrefix(w, "warning:") {
					w = path + ": " + w
				}
				if !strings.Contains(errb.String(), w) {
					t.Errorf("stderr lacks %q:\n%s", w, errb.String())
				}
			}
			for _, l := range strings.Split(strings.TrimSpace(errb.String()), "\n") {
				if l != "" && !strings.HasPrefix(l, path+": ") && !strings.HasPrefix(l, "warning: ") {
					t.Errorf("a line of the report does not name the file: %q", l)
				}
			}
		})
	}
}
