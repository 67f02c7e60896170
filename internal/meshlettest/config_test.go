package meshlettest

import (
	"bytes"
	"reflect"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"meshlet.dev/meshlet/appcheck"
	"meshlet.dev/meshlet/consul"
	"meshlet.dev/meshlet/proxy"
)

// TestFileYAML: what YAML writes decodes strictly to the same File; zero fields are left out, a pointer to zero
// and an empty list are written.
func TestFileYAML(t *testing.T) {
	for _, tc := range []struct {
		name      string
		f         File
		has, lack []string
	}{
		{"empty", File{}, nil, []string{"service", "log", "shutdown", "tls"}},
		{"sidecar", File{
			Config: proxy.Config{
				Service: proxy.ServiceConfig{Name: "api", Address: "127.0.0.1:8080", Protocol: "grpc",
					Meta: map[string]string{"b": "2", "a": "yes"}, Check: &appcheck.Check{}},
				Inbound: proxy.InboundConfig{Listen: "127.0.0.1:9000", Timeout: 1500 * time.Millisecond},
				Upstreams: []proxy.UpstreamConfig{
					{Name: "web", Listen: "127.0.0.1:9001", Peer: "sidecar", Endpoints: []string{"127.0.0.1:1", "127.0.0.1:2"}},
					{Name: "none", Endpoints: []string{}},
				},
			},
			Log:       Log{Level: "info", AccessLog: true},
			Shutdown:  Shutdown{DrainDelay: Duration(0), DrainTimeout: 5 * time.Second},
			Discovery: Discovery{Consul: &consul.Config{Address: "127.0.0.1:8500"}},
		}, []string{"drain_delay: 0s", "timeout: 1.5s", "endpoints: []", "check: {}", `a: "yes"`, "access_log: true"},
			[]string{"outbound", "register", "lb:"}},
		{"Sidecar with Consul from the environment", func() File {
			f := Sidecar("web", "127.0.0.1:15000", proxy.UpstreamConfig{Name: "api", Listen: "127.0.0.1:9001"})
			f.Discovery = Consul("", "")
			return f
		}(), []string{"drain_delay: 0s", "drain_timeout: 5s", "consul: {}", "listen: 127.0.0.1:15000"},
			[]string{"token", "address", "endpoints"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			y := tc.f.MustYAML(t)
			for _, s := range tc.has {
				if !strings.Contains(y, s) {
					t.Errorf("YAML lacks %q:\n%s", s, y)
				}
			}
			for _, s := range tc.lack {
				if strings.Contains(y, s) {
					t.Errorf("YAML has %q:\n%s", s, y)
				}
			}
			var back File
			dec := yaml.NewDecoder(bytes.NewReader([]byte(y)))
			dec.KnownFields(true)
			if err := dec.Decode(&back); err != nil && y != "{}\n" {
				t.Fatalf("decoding:\n%s\n%v", y, err)
			}
			if !reflect.DeepEqual(back, tc.f) {
				t.Errorf("decoded %+v, want %+v\nYAML:\n%s", back, tc.f, y)
			}
		})
	}
}
