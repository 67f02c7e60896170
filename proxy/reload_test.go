package proxy

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"meshlet.dev/meshlet/internal/testports"
	"meshlet.dev/meshlet/resilience"
)

// TestReloadDiff applies one change at a time to a running proxy, in process, and checks what the reload does
// with it: applied in place (the same cluster, the new setting), a replaced cluster (another listener, or a switch
// between tcp and HTTP), a removed or added upstream, a change kept for the restart (a warning, the running
// setting stays), or a refusal that changes nothing.
func TestReloadDiff(t *testing.T) {
	backend := echoServer(t)
	ep := strings.TrimPrefix(backend.URL, "http://")
	other := echoServer(t)
	otherEP := strings.TrimPrefix(other.URL, "http://")
	type outcome int
	const (
		inPlace outcome = iota
		replaced
		removed
		kept    // a warning; the running setting stays
		refused // an error; nothing changes
	)
	cases := []struct {
		name   string
		change func(c *Config)
		want   outcome
		check  func(t *testing.T, p *Proxy) // what the running proxy shows afterwards; nil: nothing more
	}{
		{name: "endpoints", want: inPlace, change: func(c *Config) { c.Upstreams[0].Endpoints = []string{otherEP} },
			check: func(t *testing.T, p *Proxy) {
				eventuallyTrue(t, func() bool {
					eps := upstreamInfo(t, p, "api").Endpoints
					return len(eps) == 1 && eps[0].Address == otherEP
				}, "the api endpoint becomes "+otherEP)
			}},
		{name: "lb", want: inPlace, change: func(c *Config) { c.Upstreams[0].LB = LBRoundRobin },
			check: func(t *testing.T, p *Proxy) {
				if lb := upstreamInfo(t, p, "api").LB; lb != LBRoundRobin {
					t.Fatalf("lb %q after reload", lb)
				}
			}},
		{name: "subset_size", want: inPlace, change: func(c *Config) {
			c.Upstreams[0].Endpoints, c.Upstreams[0].SubsetSize = []string{ep, otherEP}, 1
		}, check: func(t *testing.T, p *Proxy) {
			eventuallyTrue(t, func() bool {
				ui := upstreamInfo(t, p, "api")
				in := 0
				for _, e := range ui.Endpoints {
					if e.InSubset {
						in++
					}
				}
				return ui.SubsetSize == 1 && len(ui.Endpoints) == 2 && in == 1
			}, "the api upstream calls 1 of its 2 endpoints")
		}},
		{name: "timeout", want: inPlace, change: func(c *Config) { c.Upstreams[0].Timeout = 7 * time.Second },
			check: func(t *testing.T, p *Proxy) {
				if to := upstreamInfo(t, p, "api").Timeout; to != "7s" {
					t.Fatalf("timeout %q after reload", to)
				}
			}},
		{name: "http to http2", want: inPlace, change: func(c *Config) { c.Upstreams[0].Protocol = ProtocolHTTP2 }},
		{name: "listen address", want: replaced, change: func(c *Config) { c.Upstreams[0].Listen = freeLoopback(t) },
			check: func(t *testing.T, p *Proxy) {
				// The replaced cluster's endpoint leaves meshlet_breaker_endpoints; the new one's counts once.
				if got := p.m.BreakerEndpoints.WithLabelValues("api", resilience.StateClosed).Value(); got != 1 {
					t.Fatalf("meshlet_breaker_endpoints{upstream=api,state=closed} = %v after the upstream was replaced, want 1", got)
				}
			}},
		{name: "http to tcp on another listener", want: replaced, change: func(c *Config) {
			c.Upstreams[0].Protocol, c.Upstreams[0].Listen = ProtocolTCP, freeLoopback(t)
		}},
		{name: "http to tcp on the same listener", want: refused, change: func(c *Config) { c.Upstreams[0].Protocol = ProtocolTCP }},
		{name: "upstream removed", want: removed, change: func(c *Config) { c.Upstreams = c.Upstreams[1:] }},
		{name: "service", want: kept, change: func(c *Config) { c.Service.Name = "other" }},
		{name: "outbound listen", want: kept, change: func(c *Config) { c.Outbound.Listen = freeLoopback(t) }},
		{name: "outbound limits", want: kept, change: func(c *Config) { c.Outbound.Limits.MaxConnections = 7 }},
		{name: "invalid name", want: refused, change: func(c *Config) { c.Upstreams[0].Name = "Bad Name" }},
		{name: "listen address taken", want: refused, change: func(c *Config) { c.Upstreams[1].Listen = backend.Listener.Addr().String() }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			// Fixed ports, as a config file has them: a reload compares listen addresses as written.
			cfg := Config{Service: ServiceConfig{Name: "web"}, Outbound: OutboundConfig{Listen: freeLoopback(t)},
				Upstreams: []UpstreamConfig{
					{Name: "api", Listen: freeLoopback(t), Endpoints: []string{ep}},
					{Name: "billing", Endpoints: []string{ep}},
				}}
			p, _ := startProxy(t, cfg)
			running := p.runningConfig()
			before := p.clusterOf("api")
			next := running
			next.Upstreams = append([]UpstreamConfig(nil), running.Upstreams...)
			tc.change(&next)
			warnings, err := p.Reload(next)
			after := p.runningConfig()
			switch tc.want {
			case refused:
				if err == nil {
					t.Fatalf("reload accepted the change (warnings %q)", warnings)
				}
				if p.clusterOf("api") != before || !reflect.DeepEqual(after.Upstreams, running.Upstreams) {
					t.Fatalf("a refused reload changed the api upstream: %+v", after.Upstreams[0])
				}
				return
			case kept:
				if err != nil || len(warnings) != 1 {
					t.Fatalf("reload: %v, warnings %q; want one warning", err, warnings)
				}
				if !reflect.DeepEqual(after.Service, running.Service) || after.Outbound.Listen != running.Outbound.Listen ||
					after.Outbound.Limits != running.Outbound.Limits {
					t.Fatalf("a restart-only setting changed: %+v", after)
				}
			default:
				if err != nil || len(warnings) != 0 {
					t.Fatalf("reload: %v, warnings %q", err, warnings)
				}
			}
			switch c := p.clusterOf("api"); tc.want {
			case inPlace, kept:
				if c != before {
					t.Fatal("the api cluster was replaced; want it updated in place")
				}
			case replaced:
				if c == nil || c == before {
					t.Fatal("the api cluster was kept; want a new one")
				}
				if got := p.Addrs()["upstream/api"]; got != next.Upstreams[0].Listen {
					t.Fatalf("api listens on %s, want %s", got, next.Upstreams[0].Listen)
				}
			case removed:
				if c != nil || p.Addrs()["upstream/api"] != "" {
					t.Fatal("the removed upstream is still there")
				}
			}
			if tc.check != nil {
				tc.check(t, p)
			}
		})
	}
}

// runningConfig returns a copy of the config the proxy runs.
func (p *Proxy) runningConfig() Config {
	p.mu.Lock()
	defer p.mu.Unlock()
	c := p.cfg
	c.Upstreams = append([]UpstreamConfig(nil), p.cfg.Upstreams...)
	return c
}

// clusterOf returns the running cluster of an upstream, or nil.
func (p *Proxy) clusterOf(name string) *cluster {
	p.mu.Lock()
	defer p.mu.Unlock()
	if e, ok := p.upstreams[name]; ok {
		return e.cluster
	}
	return nil
}

func upstreamInfo(t *testing.T, p *Proxy, name string) UpstreamInfo {
	t.Helper()
	for _, u := range p.Upstreams() {
		if u.Name == name {
			return u
		}
	}
	t.Fatalf("no upstream %s", name)
	return UpstreamInfo{}
}

func eventuallyTrue(t *testing.T, cond func() bool, what string) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting: %s", what)
		}
	}
}

// freeLoopback returns a loopback address whose port was free a moment ago.
func freeLoopback(t *testing.T) string {
	t.Helper()
	// Below the ephemeral range: a port 0 gave could be taken by another test's client connection before the
	// reload binds it ("address already in use", seen with other tests running beside these).
	addr, err := testports.Free()
	if err != nil {
		t.Fatal(err)
	}
	return addr
}
