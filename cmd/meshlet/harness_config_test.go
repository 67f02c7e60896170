package main

import (
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"meshlet.dev/meshlet/consul"
	"meshlet.dev/meshlet/internal/meshlettest"
	"meshlet.dev/meshlet/proxy"
)

// TestHarnessConfigSchema: meshlettest.File, which the e2e tests and tools build their configs from, is this
// file schema: the same keys in the same order (zero values marshalled alike), and what it writes decodes here,
// strictly, to the same config.
func TestHarnessConfigSchema(t *testing.T) {
	want, err := yaml.Marshal(fileConfig{})
	if err != nil {
		t.Fatal(err)
	}
	got, err := yaml.Marshal(meshlettest.File{})
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != string(want) {
		t.Fatalf("meshlettest.File differs from fileConfig:\n%s\nwant:\n%s", got, want)
	}

	f := meshlettest.File{
		Config: proxy.Config{
			Service: proxy.ServiceConfig{Name: "api", Address: "127.0.0.1:8080", Register: true},
			Inbound: proxy.InboundConfig{Listen: "127.0.0.1:9000"},
		},
		Log:       meshlettest.Log{Level: "debug", AccessLog: true},
		Shutdown:  meshlettest.Shutdown{DrainDelay: meshlettest.Duration(0), DrainTimeout: 3 * time.Second},
		Discovery: meshlettest.Discovery{Consul: &consul.Config{Address: "127.0.0.1:8500", Token: "t"}},
	}
	f.Admin.Listen = "127.0.0.1:9901"
	f.TLS.CertFile, f.TLS.KeyFile, f.TLS.CAFile = "a.crt", "a.key", "ca.crt"
	cfg, err := decodeConfig([]byte(f.MustYAML(t)))
	if err != nil {
		t.Fatal(err)
	}
	want, _ = yaml.Marshal(f)
	got, _ = yaml.Marshal(cfg)
	if string(got) != string(want) {
		t.Fatalf("decoded:\n%s\nwant:\n%s", got, want)
	}
}
