package proxy

import (
	"strings"
	"testing"
	"time"
)

// TestTransportConfig: the transport settings' defaults and Validate errors, each with its field path.
func TestTransportConfig(t *testing.T) {
	valid := func() Config {
		return Config{Service: ServiceConfig{Name: "web", Address: "127.0.0.1:8080"}, Inbound: InboundConfig{Listen: "127.0.0.1:21000"},
			Upstreams: []UpstreamConfig{{Name: "api", Listen: "127.0.0.1:9001", Endpoints: []string{"127.0.0.1:9101"}}}}
	}
	t.Run("defaults", func(t *testing.T) {
		c := valid()
		c.SetDefaults()
		if c.Inbound.MaxResponseHeaderBytes != DefaultMaxResponseHeaderBytes || c.Upstreams[0].MaxResponseHeaderBytes != DefaultMaxResponseHeaderBytes {
			t.Fatalf("max_response_header_bytes defaults: inbound %d, upstream %d", c.Inbound.MaxResponseHeaderBytes,
				c.Upstreams[0].MaxResponseHeaderBytes)
		}
		if uc := inboundUpstreamConfig(c); uc.MaxResponseHeaderBytes != DefaultMaxResponseHeaderBytes {
			t.Fatalf("the inbound direction's limit is %d", uc.MaxResponseHeaderBytes)
		}
		if c.Inbound.Limits.TCPIdleTimeout != DefaultTCPIdleTimeout || c.Outbound.Limits.TCPIdleTimeout != DefaultTCPIdleTimeout {
			t.Fatalf("tcp_idle_timeout defaults: inbound %v, outbound %v", c.Inbound.Limits.TCPIdleTimeout, c.Outbound.Limits.TCPIdleTimeout)
		}
	})
	for _, tc := range []struct {
		name   string
		edit   func(*Config)
		errors []string
	}{
		{"limits in range", func(c *Config) {
			c.Inbound.MaxResponseHeaderBytes, c.Upstreams[0].MaxResponseHeaderBytes = 1<<10, 16<<20
		}, nil},
		{"limits out of range", func(c *Config) {
			c.Inbound.MaxResponseHeaderBytes, c.Upstreams[0].MaxResponseHeaderBytes = 100, 32<<20
		}, []string{"inbound.max_response_header_bytes: 100 must be between 1024 and 16777216",
			"upstreams[0].max_response_header_bytes: 33554432 must be between"}},
		{"negative limit", func(c *Config) { c.Upstreams[0].MaxResponseHeaderBytes = -1 },
			[]string{"upstreams[0].max_response_header_bytes"}},
		{"tcp idle timeouts", func(c *Config) {
			c.Inbound.Limits.TCPIdleTimeout, c.Outbound.Limits.TCPIdleTimeout = time.Second, 24*time.Hour
		}, nil},
		{"negative tcp idle timeouts", func(c *Config) {
			c.Inbound.Limits.TCPIdleTimeout, c.Outbound.Limits.TCPIdleTimeout = -time.Second, -time.Second
		}, []string{"inbound.limits.tcp_idle_timeout: must not be negative", "outbound.limits.tcp_idle_timeout: must not be negative"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := valid()
			tc.edit(&c)
			c.SetDefaults()
			err := c.Validate()
			if len(tc.errors) == 0 {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil {
				t.Fatalf("want errors %q, got none", tc.errors)
			}
			for _, want := range tc.errors {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not mention %q", err, want)
				}
			}
		})
	}
}
