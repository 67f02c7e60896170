package proxy

import (
	"strings"
	"testing"
	"time"
)

func TestConfigValidate(t *testing.T) {
	valid := func() Config {
		return Config{
			Service:   ServiceConfig{Name: "web", Address: "127.0.0.1:8080"},
			Inbound:   InboundConfig{Listen: "0.0.0.0:21000"},
			Upstreams: []UpstreamConfig{{Name: "api", Listen: "127.0.0.1:9001", Protocol: "grpc", Endpoints: []string{"127.0.0.1:9101"}}},
		}
	}
	tests := []struct {
		name   string
		edit   func(*Config)
		errors []string // substrings that must all appear; none means valid
	}{
		{"valid", func(*Config) {}, nil},
		{"missing name", func(c *Config) { c.Service.Name = "" }, []string{"service.name: required"}},
		{"bad protocol", func(c *Config) { c.Upstreams[0].Protocol = "smtp" }, []string{"upstreams[0].protocol"}},
		{"bad endpoint", func(c *Config) { c.Upstreams[0].Endpoints = []string{"api:80"} }, []string{"upstreams[0].endpoints[0]"}},
		{"duplicate names", func(c *Config) {
			c.Upstreams = append(c.Upstreams, UpstreamConfig{Name: "api", Listen: "127.0.0.1:9002"})
		},
			[]string{"upstreams[1].name", "also upstreams[0].name"}},
		{"duplicate listen", func(c *Config) {
			c.Upstreams = append(c.Upstreams, UpstreamConfig{Name: "b", Listen: "127.0.0.1:9001"})
		}, []string{"upstreams[1].listen", "already used by upstreams[0].listen"}},
		{"inbound without address", func(c *Config) { c.Service.Address = "" }, []string{"service.address: required"}},
		{"app ports", func(c *Config) { c.Service.Ports = []int{9090, 9091} }, nil},
		{"bad app ports", func(c *Config) { c.Service.Ports = []int{0, 9090, 9090, 70000} },
			[]string{"service.ports[0]: 0 must be a port", "service.ports[2]: 9090 is listed twice", "service.ports[3]: 70000 must be a port"}},
		{"app ports without address", func(c *Config) { c.Service.Ports, c.Service.Address, c.Inbound.Listen = []int{9090}, "", "" },
			[]string{"service.ports: needs service.address"}},
		{"no listener for upstream", func(c *Config) { c.Upstreams[0].Listen = "" }, []string{"upstreams[0].listen: required when outbound.listen"}},
		{"routed upstream", func(c *Config) { c.Upstreams[0].Listen = ""; c.Outbound.Listen = "127.0.0.1:15001" }, nil},
		{"tcp needs a port", func(c *Config) {
			c.Upstreams[0].Listen, c.Upstreams[0].Protocol, c.Outbound.Listen = "", "tcp", "127.0.0.1:15001"
		}, []string{"upstreams[0].listen: required for protocol tcp"}},
		{"bad peer and lb", func(c *Config) { c.Upstreams[0].Peer, c.Upstreams[0].LB = "proxy", "random" },
			[]string{"upstreams[0].peer", "upstreams[0].lb"}},
		{"negative timeout", func(c *Config) { c.Upstreams[0].Timeout = -time.Second }, []string{"upstreams[0].timeout"}},
		{"subset", func(c *Config) { c.Upstreams[0].SubsetSize = 100 }, nil},
		{"negative subset", func(c *Config) { c.Upstreams[0].SubsetSize = -1 }, []string{"upstreams[0].subset_size: must not be negative"}},
		{"negative implicit subset", func(c *Config) { c.Outbound.Transparent.SubsetSize = -1 },
			[]string{"outbound.transparent.subset_size: must not be negative"}},
		{"bad listen", func(c *Config) { c.Inbound.Listen = "21000" }, []string{"inbound.listen"}},
		{"hostname listen", func(c *Config) { c.Inbound.Listen = "example.com:21000" }, []string{"inbound.listen"}},
		{"limits", func(c *Config) {
			c.Inbound.Limits = ListenerLimits{MaxHeaderBytes: 4096, ReadHeaderTimeout: time.Second, IdleTimeout: time.Minute,
				MaxConcurrentStreams: 10}
		}, nil},
		{"bad limits", func(c *Config) {
			c.Inbound.Limits = ListenerLimits{MaxHeaderBytes: 100, ReadHeaderTimeout: -time.Second}
			c.Outbound.Limits = ListenerLimits{IdleTimeout: -time.Second, MaxConcurrentStreams: -1, MaxConnections: -1}
		}, []string{"inbound.limits.max_header_bytes", "inbound.limits.read_header_timeout",
			"outbound.limits.idle_timeout", "outbound.limits.max_concurrent_streams", "outbound.limits.max_connections"}},
		{"several at once", func(c *Config) { c.Service.Name = "Web"; c.Upstreams[0].Name = "" },
			[]string{"service.name", "upstreams[0].name: required"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := valid()
			tt.edit(&c)
			c.SetDefaults()
			err := c.Validate()
			if len(tt.errors) == 0 {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("want errors %q, got none", tt.errors)
			}
			for _, want := range tt.errors {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not mention %q", err, want)
				}
			}
		})
	}
}

func TestConfigDefaults(t *testing.T) {
	c := Config{Upstreams: []UpstreamConfig{{Name: "api"}}}
	c.SetDefaults()
	u := c.Upstreams[0]
	if c.Service.Protocol != ProtocolHTTP || u.Protocol != ProtocolHTTP || u.Peer != PeerApp || u.LB != LBP2C ||
		u.ConnectTimeout != DefaultConnectTimeout || len(c.Outbound.Domains) != 1 || c.Outbound.Domains[0] != "mesh" {
		t.Fatalf("defaults not applied: %+v", c)
	}
	want := ListenerLimits{MaxHeaderBytes: 64 << 10, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 5 * time.Minute,
		MaxConcurrentStreams: 1000, MaxConnections: 10000, ReadBodyTimeout: time.Minute, MaxGRPCMessageBytes: 4 << 20,
		WriteTimeout: 30 * time.Second, StreamIdleTimeout: 5 * time.Minute, MaxPendingHeaderBytes: 16 << 20,
		TCPIdleTimeout: time.Hour}
	if c.Inbound.Limits != want || c.Outbound.Limits != want {
		t.Fatalf("limits defaults: inbound %+v outbound %+v, want %+v", c.Inbound.Limits, c.Outbound.Limits, want)
	}
}
