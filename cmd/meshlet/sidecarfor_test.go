package main

import (
	"bytes"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"meshlet.dev/meshlet/consul"
	"meshlet.dev/meshlet/mtls"
	"meshlet.dev/meshlet/proxy"
)

func writeYAML(t *testing.T, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "meshlet.yaml")
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestLoadConfigFor: with sidecar_for (flag or file) the file is optional, discovery.consul and tls.source consul
// are implied, admin.listen defaults to Envoy's admin address; what the file says wins; the flag wins over the
// file's sidecar_for; service.register is refused.
func TestLoadConfigFor(t *testing.T) {
	t.Setenv("CONSUL_HTTP_ADDR", "127.0.0.1:18500")
	t.Setenv("MESHLET_ADMIN_LISTEN", "")
	t.Run("no file", func(t *testing.T) {
		cfg, err := loadConfigFor("", "web-1")
		if err != nil {
			t.Fatal(err)
		}
		if cfg.SidecarFor != "web-1" || cfg.Admin.Listen != defaultSidecarForAdmin || cfg.Discovery.Consul == nil ||
			cfg.Discovery.Consul.Address != "127.0.0.1:18500" || cfg.TLS.Source != mtls.SourceConsul {
			t.Errorf("config %+v: want sidecar_for web-1, admin %s, consul at $CONSUL_HTTP_ADDR, tls from consul", cfg, defaultSidecarForAdmin)
		}
	})
	t.Run("file settings win", func(t *testing.T) {
		path := writeYAML(t, "sidecar_for: web-1\nadmin: {listen: 127.0.0.1:15000}\ndiscovery: {consul: {address: 127.0.0.1:8501}}\nlog: {level: debug}\n")
		cfg, err := loadConfigFor(path, "web-2")
		if err != nil {
			t.Fatal(err)
		}
		if cfg.SidecarFor != "web-2" || cfg.Admin.Listen != "127.0.0.1:15000" || cfg.Discovery.Consul.Address != "127.0.0.1:8501" || cfg.Log.Level != "debug" {
			t.Errorf("config %+v: want the flag's sidecar_for and the file's admin, consul and log", cfg)
		}
	})
	t.Run("file's sidecar_for", func(t *testing.T) {
		cfg, err := loadConfigFor(writeYAML(t, "sidecar_for: web-1\n"), "")
		if err != nil || cfg.SidecarFor != "web-1" || cfg.Discovery.Consul == nil {
			t.Fatalf("config %+v, %v", cfg, err)
		}
	})
	t.Run("register refused", func(t *testing.T) {
		base, err := loadConfigFor(writeYAML(t, "service: {register: true}\n"), "web-1")
		if err != nil {
			t.Fatal(err)
		}
		_, _, err = withRegistration(base, consul.SidecarConfig{ProxyID: "web-1-sidecar-proxy", Service: "web", App: "127.0.0.1:8080", Inbound: "0.0.0.0:21000"})
		if err == nil || !strings.Contains(err.Error(), "service.register: not with sidecar_for") {
			t.Errorf("error %v, want service.register refused", err)
		}
	})
	t.Run("without sidecar_for a file is needed", func(t *testing.T) {
		if _, err := loadConfigFor("", ""); err == nil {
			t.Error("no error without a file and without sidecar_for")
		}
	})
}

// TestWithRegistration: the registration fills what the file leaves unset; the file's upstream of the same name
// keeps its own settings; upstreams without a protocol are tcp (Consul's default); transparent mode gets the
// outbound listener; what meshlet cannot take gives warnings.
func TestWithRegistration(t *testing.T) {
	t.Setenv("MESHLET_ADMIN_LISTEN", "")
	base, err := loadConfigFor(writeYAML(t, `service: {name: shop}
upstreams:
  - {name: api, protocol: http2, timeout: 3s}
`), "web-1")
	if err != nil {
		t.Fatal(err)
	}
	sc := consul.SidecarConfig{ProxyID: "web-1-sidecar-proxy", Service: "web", App: "127.0.0.1:8080", Inbound: "0.0.0.0:21000",
		Transparent: true, OutboundPort: 15001, Expose: []consul.ExposePath{{ListenerPort: 21500, Path: "/healthz", LocalPathPort: 8080}},
		Upstreams: []consul.SidecarUpstream{
			{Name: "api", Datacenter: "dc2", Listen: "127.0.0.1:9001", Protocol: "grpc", ConnectTimeout: time.Second},
			{Name: "db", Listen: "127.0.0.1:9002"},
			{Name: "db", Datacenter: "dc3", Listen: "127.0.0.1:9003", Protocol: "http"},
			{Name: "Bad_Name", Listen: "127.0.0.1:9004"},
			{Name: "cache", Listen: "127.0.0.1:9005", Protocol: "redis"},
		}}
	cfg, warnings, err := withRegistration(base, sc)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Service.Name != "shop" || cfg.Service.Address != "127.0.0.1:8080" || cfg.Inbound.Listen != "0.0.0.0:21000" {
		t.Errorf("service %+v, inbound %s: want the file's name, the registration's address and inbound", cfg.Service, cfg.Inbound.Listen)
	}
	if !cfg.Outbound.Transparent.Enabled || cfg.Outbound.Listen != "127.0.0.1:15001" {
		t.Errorf("outbound %+v: want transparent on 127.0.0.1:15001", cfg.Outbound)
	}
	want := map[string]proxy.UpstreamConfig{
		"api":    {Name: "api", Service: "api", Listen: "127.0.0.1:9001", Datacenter: "dc2", Protocol: "http2", ConnectTimeout: time.Second, Timeout: 3 * time.Second},
		"db":     {Name: "db", Service: "db", Listen: "127.0.0.1:9002", Protocol: "tcp", ConnectTimeout: proxy.DefaultConnectTimeout},
		"db-dc3": {Name: "db-dc3", Service: "db", Listen: "127.0.0.1:9003", Datacenter: "dc3", Protocol: "http", ConnectTimeout: proxy.DefaultConnectTimeout},
		"cache":  {Name: "cache", Service: "cache", Listen: "127.0.0.1:9005", Protocol: "tcp", ConnectTimeout: proxy.DefaultConnectTimeout},
	} // Bad_Name left out
	if len(cfg.Upstreams) != len(want) {
		t.Fatalf("upstreams %+v, want %d", cfg.Upstreams, len(want))
	}
	for _, u := range cfg.Upstreams {
		w, ok := want[u.Name]
		if !ok || u.Service != w.Service || u.Listen != w.Listen || u.Datacenter != w.Datacenter || u.Protocol != w.Protocol ||
			u.ConnectTimeout != w.ConnectTimeout || u.Timeout != w.Timeout {
			t.Errorf("upstream %s: %+v\nwant %+v", u.Name, u, w)
		}
	}
	for _, w := range []string{"service.name shop is not the registration's destination service web", "upstream Bad_Name: its name is no lowercase DNS label",
		`upstream cache: protocol "redis" unknown`} {
		if !strings.Contains(strings.Join(warnings, "\n"), w) {
			t.Errorf("warnings %q lack %q", warnings, w)
		}
	}
	if want := []proxy.ExposePath{{Listen: "0.0.0.0:21500", Path: "/healthz", Target: "127.0.0.1:8080"}}; !reflect.DeepEqual(cfg.expose, want) {
		t.Errorf("expose %+v, want %+v", cfg.expose, want)
	}
	if base.Service.Address != "" || len(base.Upstreams) != 1 || base.Outbound.Listen != "" {
		t.Errorf("withRegistration changed its base: %+v", base.Config)
	}

	// A registration the config cannot take is an error naming the field.
	sc.Upstreams = []consul.SidecarUpstream{{Name: "api", Listen: "127.0.0.1:9001"}, {Name: "db", Listen: "127.0.0.1:9001"}}
	if _, _, err := withRegistration(base, sc); err == nil || !strings.Contains(err.Error(), "upstreams[1].listen: 127.0.0.1:9001 is already used by upstreams[0].listen") {
		t.Errorf("error %v, want the clash of the two bind addresses", err)
	}
}

// TestRunFlagsSidecarFor: run needs -config unless -sidecar-for is given.
func TestRunFlagsSidecarFor(t *testing.T) {
	t.Setenv("MESHLET_CONFIG", "")
	var out, errb bytes.Buffer
	if _, _, code, ok := runFlags(nil, &out, &errb); ok || code != 2 || !strings.Contains(errb.String(), "unless -sidecar-for is given") {
		t.Errorf("no flags: ok %v, code %d, stderr %q", ok, code, errb.String())
	}
	path, sf, _, ok := runFlags([]string{"-sidecar-for", "web-1"}, &out, &errb)
	if !ok || path != "" || sf != "web-1" {
		t.Errorf("-sidecar-for web-1: %q %q %v", path, sf, ok)
	}
}

// TestCheckSidecarFor: meshlet check validates a file with sidecar_for without the agent, and says that the
// registration is read at run time; the file's own problems are still errors.
func TestCheckSidecarFor(t *testing.T) {
	var out, errb bytes.Buffer
	if code := check(writeYAML(t, "sidecar_for: web-1\nlog: {level: debug}\n"), &out, &errb); code != 0 ||
		!strings.Contains(errb.String(), "note: sidecar_for web-1") || !strings.Contains(out.String(), "config ok") {
		t.Errorf("check: %d\n%s\n%s", code, out.String(), errb.String())
	}
	out.Reset()
	errb.Reset()
	if code := check(writeYAML(t, "sidecar_for: web-1\nlog: {level: loud}\n"), &out, &errb); code != 1 || !strings.Contains(errb.String(), "log.level") {
		t.Errorf("check of a bad file: %d\n%s", code, errb.String())
	}
}
