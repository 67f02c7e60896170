package main

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"meshlet.dev/meshlet/consul"
	"meshlet.dev/meshlet/discovery"
	"meshlet.dev/meshlet/proxy"
)

// TestImplicitUpstreams: the services of the mesh become upstreams unless the config has them (by name or by
// service); the config's addresses win, then the first service by name; a service left with no address, or whose
// name cannot name an upstream, is left out; the protocol is Consul's (tcp too), else auto; and the merged config
// always validates, whatever the mesh says.
func TestImplicitUpstreams(t *testing.T) {
	explicit := []proxy.UpstreamConfig{
		{Name: "api", Addresses: []string{"198.18.0.5"}, Endpoints: []string{"198.18.0.2:80"}},
		{Name: "payments", Service: "billing", Addresses: []string{"240.0.0.9/32"}},
	}
	mesh := []consul.MeshService{
		{Name: "api", Addresses: []string{"240.0.0.1"}},                       // the config's upstream: left alone
		{Name: "billing", Addresses: []string{"240.0.0.2"}},                   // the config's by service
		{Name: "cache", Addresses: []string{"240.0.0.3", "198.18.0.5"}},       // one address is api's
		{Name: "db", Addresses: []string{"240.0.0.4", "198.18.0.7:5432"}},     // Consul says tcp
		{Name: "Legacy_Svc", Addresses: []string{"240.0.0.5"}},                // no DNS label
		{Name: "orders", Addresses: []string{"240.0.0.9"}},                    // payments' address
		{Name: "search", Addresses: []string{"240.0.0.6", "198.18.0.7:5432"}}, // db's instance address
	}
	settings := func(svc string) discovery.UpstreamSettings {
		switch svc {
		case "db":
			return discovery.UpstreamSettings{Protocol: "tcp"}
		case "search":
			return discovery.UpstreamSettings{Protocol: "grpc", ConnectTimeout: 7e9}
		}
		return discovery.UpstreamSettings{}
	}
	got := implicitUpstreams(mesh, explicit, settings, slog.New(slog.NewTextHandler(io.Discard, nil)))
	want := []string{
		"cache auto [240.0.0.3]",
		"db tcp [240.0.0.4 198.18.0.7:5432]",
		"search grpc [240.0.0.6]",
	}
	if len(got) != len(want) {
		t.Fatalf("got %d implicit upstreams: %+v", len(got), got)
	}
	for i, uc := range got {
		if s := fmt.Sprintf("%s %s %v", uc.Name, uc.Protocol, uc.Addresses); s != want[i] || !uc.Implicit || uc.Service != uc.Name || uc.Endpoints != nil {
			t.Errorf("implicit upstream %d: %s %+v, want %s", i, s, uc, want[i])
		}
	}
	if got[2].ConnectTimeout != 7e9 {
		t.Errorf("search's connect timeout from Consul: %v", got[2].ConnectTimeout)
	}
	cfg := proxy.Config{Service: proxy.ServiceConfig{Name: "web"}, Outbound: proxy.OutboundConfig{Listen: "127.0.0.1:15001",
		Transparent: proxy.TransparentConfig{Enabled: true}}, Upstreams: append(explicit, got...)}
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		t.Fatalf("the merged config does not validate: %v", err)
	}
}

// TestConsulServicesNeedsConsul: outbound.transparent.consul_services: true without discovery.consul is an error
// that names the field; false, or unset, is not.
func TestConsulServicesNeedsConsul(t *testing.T) {
	for _, tc := range []struct{ value, want string }{{"true", "outbound.transparent.consul_services: needs discovery.consul"}, {"false", ""}, {"", ""}} {
		line := ""
		if tc.value != "" {
			line = "\n    consul_services: " + tc.value
		}
		path := filepath.Join(t.TempDir(), "meshlet.yaml")
		writeFile(t, path, "service:\n  name: web\noutbound:\n  listen: 127.0.0.1:15001\n  transparent:\n    enabled: true"+line+"\n")
		_, err := loadConfig(path)
		if tc.want == "" {
			if err != nil {
				t.Errorf("consul_services %q: %v", tc.value, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("consul_services %q: %v, want %q", tc.value, err, tc.want)
		}
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestPinnedByTheFile: the settings an upstream of the file sets are pinned (a discovery chain does not override
// them); those it leaves unset are not.
func TestPinnedByTheFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "meshlet.yaml")
	writeFile(t, path, `service:
  name: web
outbound:
  listen: 127.0.0.1:15001
upstreams:
  - name: api
    timeout: 2s
    retry:
      max_attempts: 2
  - name: db
discovery:
  consul:
    address: 127.0.0.1:1
`)
	cfg, s := entriesSidecar(t, path)
	pc := s.withEntries(cfg)
	if got := pc.Upstreams[0].Pinned; got != (proxy.Pinned{Timeout: true, Retry: true}) {
		t.Errorf("api pinned %+v", got)
	}
	if got := pc.Upstreams[1].Pinned; got != (proxy.Pinned{}) {
		t.Errorf("db pinned %+v", got)
	}
}

// TestNoWrittenUpstreamsStayNone: a file that writes no upstream (the usual transparent-mode config, every
// upstream Consul's) has none written at every merge: the upstreams a previous merge made (the implicit ones,
// now the running config's) are not taken for written ones, pinned and kept when the mesh no longer has them.
func TestNoWrittenUpstreamsStayNone(t *testing.T) {
	path := filepath.Join(t.TempDir(), "meshlet.yaml")
	writeFile(t, path, `service:
  name: web
outbound:
  listen: 127.0.0.1:15001
discovery:
  consul:
    address: 127.0.0.1:1
`)
	cfg, s := entriesSidecar(t, path)
	if pc := s.withEntries(cfg); len(pc.Upstreams) != 0 {
		t.Fatalf("first merge: %d upstreams, want none", len(pc.Upstreams))
	}
	// What applyEntries leaves after a merge that had the mesh's services: the running upstreams.
	cfg.Upstreams = []proxy.UpstreamConfig{{Name: "api", Implicit: true, Addresses: []string{"240.0.0.1"},
		Protocol: proxy.ProtocolHTTP, ConnectTimeout: 5e9}}
	if pc := s.withEntries(cfg); len(pc.Upstreams) != 0 {
		t.Fatalf("second merge (the mesh has no service now): %d upstreams %+v, want none: a previous merge's upstreams are not written ones",
			len(pc.Upstreams), pc.Upstreams)
	}
}

// entriesSidecar loads the config at path (with a discovery.consul section) and returns it with a sidecar that
// merges Consul's config entries into it (none: the agent is not called).
func entriesSidecar(t *testing.T, path string) (*fileConfig, *sidecar) {
	t.Helper()
	cfg, err := loadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	c, err := consul.NewSource(*cfg.Discovery.Consul, consul.SourceOptions{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return cfg, &sidecar{cfg: cfg, entries: consul.NewConfigEntries(c), log: slog.New(slog.NewTextHandler(io.Discard, nil))}
}
