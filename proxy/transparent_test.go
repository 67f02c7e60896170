package proxy

import (
	"context"
	"log/slog"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"meshlet.dev/meshlet/internal/syncbuf"
	"meshlet.dev/meshlet/metrics"

	"meshlet.dev/meshlet/discovery"
)

func TestParseAddress(t *testing.T) {
	for _, tc := range []struct{ in, want, err string }{
		{in: "198.18.0.5", want: "198.18.0.5/32"},
		{in: "198.18.0.0/24", want: "198.18.0.0/24"},
		{in: "198.18.0.77/24", want: "198.18.0.0/24"},
		{in: "198.18.0.5:80", want: "198.18.0.5:80"},
		{in: "[2001:db8::5]:443", want: "[2001:db8::5]:443"},
		{in: "2001:db8::/64", want: "2001:db8::/64"},
		{in: "::ffff:198.18.0.5", want: "198.18.0.5/32"},
		{in: "198.18.0.5:0", err: "port 0"},
		{in: "api.example", err: "must be an IP, a CIDR or ip:port"},
		{in: "198.18.0.0/33", err: "must be an IP"},
		{in: "", err: "must be an IP"},
		{in: "198.18.0.0/16:443", err: "must be an IP"}, // a network takes every port
	} {
		a, err := parseAddress(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("parseAddress(%q) = %v, %v; want error %q", tc.in, a, err, tc.err)
			}
			continue
		}
		if err != nil || a.String() != tc.want {
			t.Errorf("parseAddress(%q) = %v, %v; want %s", tc.in, a, err, tc.want)
		}
	}
}

// TestAddrTableLookup: the most specific address wins (a port over any port, then the longest prefix); a
// destination no upstream claims finds none.
func TestAddrTableLookup(t *testing.T) {
	mk := func(name string, addrs ...string) *upstreamEntry {
		c := &cluster{name: name}
		c.cfg.Store(&UpstreamConfig{Name: name, Addresses: addrs})
		return &upstreamEntry{cluster: c}
	}
	table := newAddrTable(map[string]*upstreamEntry{
		"net":   mk("net", "198.18.0.0/16"),
		"sub":   mk("sub", "198.18.1.0/24"),
		"host":  mk("host", "198.18.1.7"),
		"port":  mk("port", "198.18.1.7:443"),
		"web":   mk("web", "198.18.1.7:80"),
		"v6":    mk("v6", "2001:db8::/32"),
		"other": mk("other"),
	})
	for dst, want := range map[string]string{
		"198.18.9.9:80":          "net",
		"198.18.1.9:80":          "sub",
		"198.18.1.7:22":          "host",
		"198.18.1.7:80":          "web",
		"198.18.9.9:443":         "net",
		"198.18.1.7:443":         "port",
		"[2001:db8::1]:80":       "v6",
		"[::ffff:198.18.1.7]:80": "web",
		"198.19.0.1:80":          "",
		"[2001:db9::1]:80":       "",
	} {
		got := ""
		if e := table.lookup(netip.MustParseAddrPort(dst)); e != nil {
			got = e.cluster.name
		}
		if got != want {
			t.Errorf("lookup(%s) = %q, want %q", dst, got, want)
		}
	}
}

func TestTransparentConfigValidate(t *testing.T) {
	base := func() Config {
		c := Config{Service: ServiceConfig{Name: "web"}, Outbound: OutboundConfig{Listen: "127.0.0.1:15001",
			Transparent: TransparentConfig{Enabled: true}},
			Upstreams: []UpstreamConfig{{Name: "api", Addresses: []string{"198.18.0.5:80"}, Endpoints: []string{"198.18.0.2:80"}},
				{Name: "db", Protocol: ProtocolTCP, Addresses: []string{"198.18.0.6"}, Endpoints: []string{"198.18.0.2:5432"}}}}
		return c
	}
	for _, tc := range []struct {
		name   string
		change func(c *Config)
		want   string // "": valid
	}{
		{"valid: tcp without listen when it has addresses", func(*Config) {}, ""},
		{"addresses without transparent", func(c *Config) { c.Outbound.Transparent.Enabled = false },
			"upstreams[0].addresses: only with outbound.transparent.enabled"},
		{"transparent without outbound listener", func(c *Config) { c.Outbound.Listen = ""; c.Upstreams[0].Listen = "127.0.0.1:9000" },
			"outbound.transparent.enabled: needs outbound.listen"},
		{"bad address", func(c *Config) { c.Upstreams[0].Addresses = []string{"api"} }, "upstreams[0].addresses[0]"},
		{"address claimed twice", func(c *Config) { c.Upstreams[1].Addresses = []string{"198.18.0.5:80"} },
			"upstreams[1].addresses[0]: 198.18.0.5:80 is also upstreams[0].addresses[0]"},
		{"tcp without listen or addresses", func(c *Config) { c.Upstreams[1].Addresses = nil },
			"upstreams[1].listen: required for protocol tcp"},
		{"valid: auto with addresses", func(c *Config) { c.Upstreams[0].Protocol = ProtocolAuto }, ""},
		{"auto with a listen address", func(c *Config) {
			c.Upstreams[0].Protocol = ProtocolAuto
			c.Upstreams[0].Listen = "127.0.0.1:9000"
		}, "upstreams[0].protocol: auto is detected on redirected connections: needs addresses and no listen"},
		{"auto without addresses", func(c *Config) {
			c.Upstreams[0].Protocol = ProtocolAuto
			c.Upstreams[0].Addresses = nil
		}, "upstreams[0].protocol: auto is detected"},
		{"unknown protocol", func(c *Config) { c.Upstreams[0].Protocol = "h3" },
			`upstreams[0].protocol: "h3" must be one of http, http2, grpc, tcp (upstreams: or auto)`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := base()
			tc.change(&c)
			c.SetDefaults()
			err := c.Validate()
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Validate: %v; want %q", err, tc.want)
			}
		})
	}
}

// TestIsOwnListener: a destination at the port of one of meshlet's listeners, on a loopback, unspecified or local
// address, is meshlet itself (refused: meshlet never loops); another port or a remote address is not.
func TestIsOwnListener(t *testing.T) {
	cfg := Config{Service: ServiceConfig{Name: "web"}, Outbound: OutboundConfig{Listen: "127.0.0.1:0"}}
	p, _ := startProxy(t, cfg)
	own := netip.MustParseAddrPort(p.Addrs()["outbound"])
	for dst, want := range map[netip.AddrPort]bool{
		own: true,
		netip.AddrPortFrom(netip.MustParseAddr("::1"), own.Port()):         true,
		netip.AddrPortFrom(netip.MustParseAddr("0.0.0.0"), own.Port()):     true,
		netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), own.Port()+1): false,
		netip.AddrPortFrom(netip.MustParseAddr("198.18.77.1"), own.Port()): false, // not an address of this host
	} {
		if got := p.isOwnListener(dst); got != want {
			t.Errorf("isOwnListener(%s) = %v, want %v", dst, got, want)
		}
	}
}

// TestImplicitUpstreamLazy: an implicit upstream (a service of the Consul mesh) starts watching its endpoints at
// its first connection, not at start or reload, and does not hold up /ready; an explicit one watches from the
// start; a reload before the first connection keeps it idle, with the new settings.
func TestImplicitUpstreamLazy(t *testing.T) {
	src := &optionsRecorder{watched: make(chan discovery.WatchOptions, 8)}
	cfg := Config{Service: ServiceConfig{Name: "web"}, Outbound: OutboundConfig{Listen: "127.0.0.1:0",
		Transparent: TransparentConfig{Enabled: true}},
		Upstreams: []UpstreamConfig{
			{Name: "api", Addresses: []string{"198.18.0.5"}},
			{Name: "db", Protocol: ProtocolAuto, Addresses: []string{"240.0.0.2"}, Implicit: true},
			{Name: "cache", Protocol: ProtocolAuto, Addresses: []string{"240.0.0.3"}, Implicit: true},
		}}
	p, _ := startProxyWith(t, cfg, src)
	src.next(t) // api's
	select {
	case <-src.watched:
		t.Fatal("the implicit upstream watches before its first connection")
	case <-time.After(100 * time.Millisecond):
	}
	if err := p.Ready(); err != nil {
		t.Fatalf("ready: %v", err)
	}
	cfg.Upstreams[1].Timeout = 3 * time.Second
	if _, err := p.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	select {
	case <-src.watched:
		t.Fatal("a reload started the implicit upstream's watch")
	case <-time.After(100 * time.Millisecond):
	}
	e := (*p.addrs.Load()).lookup(netip.MustParseAddrPort("240.0.0.2:7000"))
	if e == nil || e.cluster.name != "db" {
		t.Fatalf("240.0.0.2:7000 finds %v", e)
	}
	if e.cluster.obs.Load() != nil {
		t.Fatal("an implicit upstream has an observer (metric series) before its first use")
	}
	for range 3 {
		e.cluster.ensureActive()
	}
	src.next(t)
	if !e.cluster.active.Load() {
		t.Fatal("not active after its first use")
	}
	select {
	case <-src.watched:
		t.Fatal("activated twice")
	case <-time.After(100 * time.Millisecond):
	}
	if info := upstreamInfo(t, p, "db"); !info.Implicit || info.Timeout != "3s" {
		t.Fatalf("db after its first connection: %+v", info)
	}

	// A request routed by name is a first use too: the watch starts, the request is served (no endpoint: 503).
	resp, err := http.Get("http://" + p.Addrs()["outbound"] + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("no Host of an upstream: %d", resp.StatusCode)
	}
	req, _ := http.NewRequest("GET", "http://"+p.Addrs()["outbound"]+"/", nil)
	req.Host = "cache"
	if resp, err = http.DefaultClient.Do(req); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("X-Meshlet-Error") != reasonNoEndpoint {
		t.Fatalf("cache by name: %d %q", resp.StatusCode, resp.Header.Get("X-Meshlet-Error"))
	}
	src.next(t)
}

// TestTransparentShutdownQuiet: a transparent outbound listener shuts down without an error in the log (its
// connection queue was closed by the accept loop as well as by the HTTP server's shutdown, which then reported the
// closed listener as "listener stopped"). Repeated: it was a race.
func TestTransparentShutdownQuiet(t *testing.T) {
	for i := range 30 {
		var logs syncbuf.Buffer
		p, err := New(Config{Service: ServiceConfig{Name: "web"}, Outbound: OutboundConfig{Listen: "127.0.0.1:0",
			Transparent: TransparentConfig{Enabled: true}}},
			Options{Logger: slog.New(slog.NewTextHandler(&logs, nil)), Metrics: metrics.New(prometheus.NewRegistry(), "test")})
		if err != nil {
			t.Fatal(err)
		}
		if err := p.Start(); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err = p.Shutdown(ctx)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(logs.String(), "level=ERROR") {
			t.Fatalf("run %d: an error at shutdown:\n%s", i, logs.String())
		}
	}
}
