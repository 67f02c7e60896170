package proxy

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"

	"meshlet.dev/meshlet/appcheck"
	"meshlet.dev/meshlet/discovery"
	"meshlet.dev/meshlet/mtls"
	"meshlet.dev/meshlet/proxy/h1guard"
	"meshlet.dev/meshlet/resilience"
)

// Protocols an app or upstream speaks.
const (
	ProtocolHTTP  = "http"  // HTTP/1.1 (and h2c with prior knowledge from the app)
	ProtocolHTTP2 = "http2" // HTTP/2 over cleartext (h2c)
	ProtocolGRPC  = "grpc"  // gRPC over h2c
	ProtocolTCP   = "tcp"   // opaque byte stream
	// ProtocolAuto detects the protocol of each redirected connection from its first bytes (HTTP/1.x and HTTP/2
	// are served as http, anything else relayed as tcp); only for upstreams reached at addresses
	// (outbound.transparent) without a listen address of their own. Calls routed by name are HTTP.
	ProtocolAuto = "auto"
)

// Peer kinds: what an upstream's endpoints are.
const (
	PeerApp     = "app"     // plain apps, spoken to in the upstream's protocol
	PeerSidecar = "sidecar" // other meshlets' inbound listeners, spoken to over HTTP/2
)

// Load-balancing policies.
const (
	LBP2C        = "p2c"         // power of two choices over least outstanding requests
	LBRoundRobin = "round_robin" // strict rotation
	LBRandom     = "random"      // uniform random
)

// Defaults applied by Config.SetDefaults.
const (
	DefaultConnectTimeout = 5 * time.Second
	DefaultDomain         = "mesh"
)

// Config is the part of meshlet's config file that the proxy owns.
type Config struct {
	Service   ServiceConfig    `yaml:"service" json:"service"`
	Inbound   InboundConfig    `yaml:"inbound" json:"inbound"`
	Outbound  OutboundConfig   `yaml:"outbound" json:"outbound"`
	Upstreams []UpstreamConfig `yaml:"upstreams" json:"upstreams"`
}

// ServiceConfig describes the local service this sidecar stands beside.
type ServiceConfig struct {
	Name    string `yaml:"name" json:"name"`       // required
	Address string `yaml:"address" json:"address"` // the local app, ip:port; required with inbound.listen
	// Ports are the app's other ports on service.address's IP: an inbound connection redirected to one of them
	// (meshlet redirect-traffic) goes to the app at that port. A redirected connection to a port that is neither
	// one of these, service.address's nor the inbound listener's is refused. Default none.
	Ports    []int  `yaml:"ports" json:"ports"`
	Protocol string `yaml:"protocol" json:"protocol"` // what the app speaks; default http
	// Register registers the service and its sidecar (a connect-proxy) with the Consul agent at start and
	// deregisters them on shutdown. Needs discovery.consul and inbound.listen.
	Register bool              `yaml:"register" json:"register"`
	Tags     []string          `yaml:"tags" json:"tags"`
	Meta     map[string]string `yaml:"meta" json:"meta"`
	// Check is the app's own health check, registered on the service instance; nil means none.
	Check *appcheck.Check `yaml:"check" json:"check"`
}

// InboundConfig is the listener other sidecars call to reach the local app.
type InboundConfig struct {
	Listen  string           `yaml:"listen" json:"listen"`   // host:port; empty means no inbound listener
	Timeout time.Duration    `yaml:"timeout" json:"timeout"` // per request towards the app; 0 means none
	TLS     InboundTLSConfig `yaml:"tls" json:"tls"`
	Limits  ListenerLimits   `yaml:"limits" json:"limits"`

	// MaxResponseHeaderBytes bounds the response headers the local app may send, in bytes (HTTP/1.1: the status
	// line and headers; HTTP/2: the header list as HTTP/2 counts it). Larger: 502. Default 64 KiB.
	MaxResponseHeaderBytes int `yaml:"max_response_header_bytes" json:"max_response_header_bytes"`
}

// OutboundConfig is the listener that routes to upstreams by Host or :authority.
type OutboundConfig struct {
	Listen  string   `yaml:"listen" json:"listen"`   // host:port; empty means none
	Domains []string `yaml:"domains" json:"domains"` // suffixes accepted after an upstream's name; default [mesh]
	// Limits apply to the name-routed listener and to every upstream's own HTTP listener.
	Limits ListenerLimits `yaml:"limits" json:"limits"`
	// Transparent makes the outbound listener take redirected connections (meshlet redirect-traffic).
	Transparent TransparentConfig `yaml:"transparent" json:"transparent"`
}

// ListenerLimits bound what one client may cost an HTTP listener (HTTP/1.1 and HTTP/2). Zero fields mean the
// defaults (DefaultMaxHeaderBytes and the others below).
type ListenerLimits struct {
	// MaxHeaderBytes bounds the request line and headers (HTTP/1.1; net/http allows 4 KiB of slack on top) and the
	// header list (HTTP/2), in bytes. Larger requests get 431.
	MaxHeaderBytes int `yaml:"max_header_bytes" json:"max_header_bytes"`
	// ReadHeaderTimeout is how long a client has to send a request's headers; then the connection is closed.
	ReadHeaderTimeout time.Duration `yaml:"read_header_timeout" json:"read_header_timeout"`
	// IdleTimeout closes a keep-alive connection with no request for this long.
	IdleTimeout time.Duration `yaml:"idle_timeout" json:"idle_timeout"`
	// MaxConcurrentStreams bounds the HTTP/2 streams open at once on one connection; more are refused.
	MaxConcurrentStreams int `yaml:"max_concurrent_streams" json:"max_concurrent_streams"`
	// MaxConnections bounds the client connections open at once on each HTTP listener; a connection beyond it is
	// closed at accept and counted in meshlet_connections_refused_total.
	MaxConnections int `yaml:"max_connections" json:"max_connections"`
	// ReadBodyTimeout ends a request whose body stalls (no byte from the client) for this long: 408, and the
	// connection is closed. Every request body has it but an HTTP/2 gRPC call's (StreamIdleTimeout bounds those);
	// an upgrade request's body has it until the protocol has switched.
	ReadBodyTimeout time.Duration `yaml:"read_body_timeout" json:"read_body_timeout"`
	// StreamIdleTimeout ends a request (HTTP/1.1, HTTP/2 stream, gRPC call) on which no byte has moved either way
	// (request body, response) for this long, as Envoy's stream_idle_timeout: before the response has started,
	// 408 (gRPC: DEADLINE_EXCEEDED) with X-Meshlet-Error stream_idle_timeout; after, the stream is reset (HTTP/1.1:
	// the connection closed). Waiting for the app's answer counts as idle. Connections that switched protocols
	// (101) are exempt.
	StreamIdleTimeout time.Duration `yaml:"stream_idle_timeout" json:"stream_idle_timeout"`
	// MaxPendingHeaderBytes bounds the memory that the HTTP/1.1 request heads still being received on all the
	// listeners of this direction may hold together; a head that would pass it is refused with 503 and its
	// connection closed.
	MaxPendingHeaderBytes int `yaml:"max_pending_header_bytes" json:"max_pending_header_bytes"`
	// WriteTimeout disconnects a client that takes no byte of a response for this long (a stalled reader holds
	// a connection, a stream and a request to the app). HTTP/2: net/http's WriteByteTimeout; HTTP/1.1 and
	// upgraded connections: a deadline on each write.
	// Flow-control waits of long gRPC streams do not count.
	WriteTimeout time.Duration `yaml:"write_timeout" json:"write_timeout"`
	// MaxGRPCMessageBytes bounds one message of a gRPC request (its length prefix); a larger one ends the call
	// with RESOURCE_EXHAUSTED before it is forwarded.
	MaxGRPCMessageBytes int `yaml:"max_grpc_message_bytes" json:"max_grpc_message_bytes"`

	// TCPIdleTimeout closes a TCP-proxied connection (protocol tcp) with no byte in either direction for this
	// long. Default 1h (Envoy's tcp_proxy idle_timeout). HTTP listeners ignore it.
	TCPIdleTimeout time.Duration `yaml:"tcp_idle_timeout" json:"tcp_idle_timeout"`
}

// Defaults of ListenerLimits.
const (
	DefaultMaxHeaderBytes       = 64 << 10
	DefaultReadHeaderTimeout    = 10 * time.Second
	DefaultIdleTimeout          = 5 * time.Minute
	DefaultMaxConcurrentStreams = 1000
	DefaultMaxConnections       = 10000
	DefaultReadBodyTimeout      = time.Minute // as nginx's client_body_timeout
	DefaultWriteTimeout         = 30 * time.Second
	DefaultMaxGRPCMessageBytes  = 4 << 20         // gRPC's own default receive limit
	DefaultStreamIdleTimeout    = 5 * time.Minute // as Envoy's
	// DefaultMaxPendingHeaderBytes: 16 MiB per direction, so that both fit in the injected 128 MiB limit
	// beside everything else (256 heads of 64 KiB, or 4096 of one 4 KiB read each).
	DefaultMaxPendingHeaderBytes = 16 << 20
)

// setDefaults fills the zero fields of l.
func (l *ListenerLimits) setDefaults() {
	if l.MaxHeaderBytes == 0 {
		l.MaxHeaderBytes = DefaultMaxHeaderBytes
	}
	if l.ReadHeaderTimeout == 0 {
		l.ReadHeaderTimeout = DefaultReadHeaderTimeout
	}
	if l.IdleTimeout == 0 {
		l.IdleTimeout = DefaultIdleTimeout
	}
	if l.MaxConcurrentStreams == 0 {
		l.MaxConcurrentStreams = DefaultMaxConcurrentStreams
	}
	if l.MaxConnections == 0 {
		l.MaxConnections = DefaultMaxConnections
	}
	if l.ReadBodyTimeout == 0 {
		l.ReadBodyTimeout = DefaultReadBodyTimeout
	}
	if l.MaxGRPCMessageBytes == 0 {
		l.MaxGRPCMessageBytes = DefaultMaxGRPCMessageBytes
	}
	if l.WriteTimeout == 0 {
		l.WriteTimeout = DefaultWriteTimeout
	}
	if l.StreamIdleTimeout == 0 {
		l.StreamIdleTimeout = DefaultStreamIdleTimeout
	}
	if l.MaxPendingHeaderBytes == 0 {
		l.MaxPendingHeaderBytes = DefaultMaxPendingHeaderBytes
	}
}

// validate reports the problems of l under path p.
func (l *ListenerLimits) validate(p string, add func(string, string, ...any)) {
	if l.MaxHeaderBytes < 1<<10 || l.MaxHeaderBytes > 16<<20 {
		add(p+".max_header_bytes", "%d must be between 1024 and 16777216", l.MaxHeaderBytes)
	}
	if l.ReadHeaderTimeout < 0 {
		add(p+".read_header_timeout", "must not be negative")
	}
	if l.IdleTimeout < 0 {
		add(p+".idle_timeout", "must not be negative")
	}
	if l.MaxConcurrentStreams < 1 || l.MaxConcurrentStreams > 1<<20 {
		add(p+".max_concurrent_streams", "%d must be between 1 and 1048576", l.MaxConcurrentStreams)
	}
	if l.MaxConnections < 1 || l.MaxConnections > 1<<24 {
		add(p+".max_connections", "%d must be between 1 and 16777216", l.MaxConnections)
	}
	if l.ReadBodyTimeout < 0 {
		add(p+".read_body_timeout", "must not be negative")
	}
	if l.WriteTimeout < 0 {
		add(p+".write_timeout", "must not be negative")
	}
	if l.StreamIdleTimeout < 0 {
		add(p+".stream_idle_timeout", "must not be negative")
	}
	if l.MaxPendingHeaderBytes < l.MaxHeaderBytes+h1guard.ReadChunk || l.MaxPendingHeaderBytes > 1<<32 {
		add(p+".max_pending_header_bytes", "%d must be between max_header_bytes + 4096 (%d) and 4294967296",
			l.MaxPendingHeaderBytes, l.MaxHeaderBytes+h1guard.ReadChunk)
	}
	if l.MaxGRPCMessageBytes < 1<<10 || l.MaxGRPCMessageBytes > 1<<32-1 {
		add(p+".max_grpc_message_bytes", "%d must be between 1024 and 4294967295", l.MaxGRPCMessageBytes)
	}
}

// UpstreamConfig is one service the local app calls.
type UpstreamConfig struct {
	Name     string `yaml:"name" json:"name"`
	Listen   string `yaml:"listen" json:"listen"`     // host:port; empty: only the name-routed listener
	Protocol string `yaml:"protocol" json:"protocol"` // default http
	// Endpoints are static endpoints (ip:port). When the field is absent (nil) and a discovery source is
	// configured, the endpoints are discovered under Service; an explicit empty list means no endpoint.
	Endpoints []string `yaml:"endpoints" json:"endpoints"`
	// Addresses are the destinations (IPs, CIDRs, ip:port) an app reaches this upstream at when its connections
	// are redirected to meshlet (outbound.transparent): a connection whose original destination matches goes to
	// this upstream. The most specific match wins.
	Addresses []string `yaml:"addresses" json:"addresses"`
	// Service is the name to discover the endpoints under; default Name.
	Service string `yaml:"service" json:"service"`
	// Tag and Datacenter narrow discovery (discovered upstreams only): only instances with the tag, in that
	// datacenter. Empty: the discovery source's defaults.
	Tag            string            `yaml:"tag" json:"tag"`
	Datacenter     string            `yaml:"datacenter" json:"datacenter"`
	Peer           string            `yaml:"peer" json:"peer"` // app or sidecar; default app
	LB             string            `yaml:"lb" json:"lb"`     // p2c or round_robin; default p2c
	Timeout        time.Duration     `yaml:"timeout" json:"timeout"`
	ConnectTimeout time.Duration     `yaml:"connect_timeout" json:"connect_timeout"`
	TLS            UpstreamTLSConfig `yaml:"tls" json:"tls"`
	// Resilience is the retry, circuit_breaker, outlier and limits sections; on with defaults when absent.
	Resilience resilience.Config `yaml:",inline" json:"resilience"`

	// SubsetSize, when above 0, keeps this sidecar's calls to that many of the upstream's endpoints, chosen by
	// rendezvous hashing with a seed of the process's own (each sidecar its own subset; an endpoint that leaves
	// is replaced by one, the others stay): fewer connections, and connections that stay warm, with upstreams of
	// thousands of endpoints. Load balancing runs within the subset; when no endpoint of the subset is available
	// (ejected, breaker open, all tried), the attempt goes to another endpoint of the upstream. Not with a hash
	// policy (ring_hash, maglev: every caller must map a key alike). 0 (default): every endpoint.
	SubsetSize int `yaml:"subset_size" json:"subset_size,omitempty"`

	// MaxResponseHeaderBytes bounds the response headers an endpoint may send, in bytes (HTTP/1.1: the status
	// line and headers; HTTP/2: the header list as HTTP/2 counts it). Larger: 502. Default 64 KiB.
	MaxResponseHeaderBytes int `yaml:"max_response_header_bytes" json:"max_response_header_bytes"`

	// Implicit marks an upstream the sidecar added for a service of the Consul mesh
	// (outbound.transparent.consul_services), not written in the config: its endpoints are watched from its
	// first redirected connection on, not from the start, and it does not hold up /ready.
	Implicit bool `yaml:"-" json:"implicit,omitempty"`
	// Pinned are the settings the config file sets itself, which a discovery chain does not override (the
	// file wins, as over Consul's config entries): filled by the sidecar from the file as written.
	Pinned Pinned `yaml:"-" json:"pinned,omitzero"`
}

// Pinned says which of an upstream's settings the config file sets.
type Pinned struct {
	Timeout        bool `json:"timeout,omitempty"`
	ConnectTimeout bool `json:"connect_timeout,omitempty"`
	Retry          bool `json:"retry,omitempty"`
	LB             bool `json:"lb,omitempty"`
}

// watchOptions are the discovery options of a discovered upstream. Call it on a config whose tls.mode is
// resolved (resolveUpstreamTLS): mtls keeps discovery to the service's sidecars.
func (c *UpstreamConfig) watchOptions() discovery.WatchOptions {
	return discovery.WatchOptions{Tag: c.Tag, Datacenter: c.Datacenter, MutualTLS: c.TLS.Mode == mtls.ModeMTLS}
}

// SetDefaults fills the zero fields with their documented defaults.
func (c *Config) SetDefaults() {
	if c.Service.Protocol == "" {
		c.Service.Protocol = ProtocolHTTP
	}
	if c.Outbound.Domains == nil {
		c.Outbound.Domains = []string{DefaultDomain}
	}
	c.Inbound.Limits.setDefaults()
	c.Outbound.Limits.setDefaults()
	for i := range c.Upstreams {
		u := &c.Upstreams[i]
		if u.Protocol == "" {
			u.Protocol = ProtocolHTTP
		}
		if u.Service == "" {
			u.Service = u.Name
		}
		if u.Peer == "" {
			u.Peer = PeerApp
		}
		if u.LB == "" {
			u.LB = LBP2C
		}
		if u.ConnectTimeout == 0 {
			u.ConnectTimeout = DefaultConnectTimeout
		}
		if u.Implicit && u.SubsetSize == 0 {
			u.SubsetSize = c.Outbound.Transparent.SubsetSize
		}
		u.Resilience.SetDefaults()
	}
	c.setTransportDefaults()
}

// ValidName reports whether s can name an upstream (a lowercase DNS label): 1 to 63 of a-z, 0-9 and '-', neither
// first nor last a '-' (the regexp ^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$, which compiled to 44 KB of heap that
// every meshlet held).
func ValidName(s string) bool {
	if len(s) == 0 || len(s) > 63 || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '-' {
			return false
		}
	}
	return true
}

// Validate reports every problem in c, each prefixed with its field path. Call SetDefaults first.
func (c *Config) Validate() error {
	var errs []error
	add := func(path, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", path, fmt.Sprintf(format, args...)))
	}
	if c.Service.Name == "" {
		add("service.name", "required")
	} else if !ValidName(c.Service.Name) {
		add("service.name", "%q must be a lowercase DNS label (a-z, 0-9, -)", c.Service.Name)
	}
	checkProtocol(add, "service.protocol", c.Service.Protocol)
	if c.Inbound.Listen != "" {
		checkListen(add, "inbound.listen", c.Inbound.Listen)
		if c.Service.Address == "" {
			add("service.address", "required when inbound.listen is set")
		}
	}
	for i, port := range c.Service.Ports {
		if port < 1 || port > 65535 {
			add(fmt.Sprintf("service.ports[%d]", i), "%d must be a port (1..65535)", port)
		} else if slices.Index(c.Service.Ports, port) < i {
			add(fmt.Sprintf("service.ports[%d]", i), "%d is listed twice", port)
		}
	}
	if len(c.Service.Ports) > 0 && c.Service.Address == "" {
		add("service.ports", "needs service.address (the app's IP)")
	}
	if c.Service.Address != "" {
		if _, err := netip.ParseAddrPort(c.Service.Address); err != nil {
			add("service.address", "%q must be ip:port", c.Service.Address)
		}
	}
	if c.Inbound.Timeout < 0 {
		add("inbound.timeout", "must not be negative")
	}
	c.Inbound.Limits.validate("inbound.limits", add)
	c.Outbound.Limits.validate("outbound.limits", add)
	c.validateTransport(add)
	if m := c.Inbound.TLS.Mode; m != "" && !validTLSMode(m, "mtls", "permissive", "disabled") {
		add("inbound.tls.mode", "%q must be mtls, permissive or disabled", m)
	}
	for i, a := range c.Inbound.TLS.Allow {
		if strings.HasPrefix(a, "spiffe://") {
			if _, err := mtls.ParseID(a); err != nil {
				add(fmt.Sprintf("inbound.tls.allow[%d]", i), "%v", err)
			}
		} else if !ValidName(a) {
			add(fmt.Sprintf("inbound.tls.allow[%d]", i), "%q must be a service name or a spiffe:// ID", a)
		}
	}
	listens := map[string]string{}
	claim := func(path, addr string) {
		if strings.HasSuffix(addr, ":0") {
			return // any free port: never a clash
		}
		if prev, ok := listens[addr]; ok {
			add(path, "%s is already used by %s", addr, prev)
			return
		}
		listens[addr] = path
	}
	if c.Inbound.Listen != "" {
		claim("inbound.listen", c.Inbound.Listen)
	}
	if c.Outbound.Listen != "" {
		checkListen(add, "outbound.listen", c.Outbound.Listen)
		claim("outbound.listen", c.Outbound.Listen)
	}
	for i, d := range c.Outbound.Domains {
		if d == "" || strings.HasPrefix(d, ".") || strings.HasSuffix(d, ".") {
			add(fmt.Sprintf("outbound.domains[%d]", i), "%q must be a domain without leading or trailing dot", d)
		}
	}
	c.validateTransparent(add)
	names := map[string]int{}
	for i, u := range c.Upstreams {
		p := fmt.Sprintf("upstreams[%d]", i)
		if u.Name != "" && ValidName(u.Name) {
			if j, ok := names[u.Name]; ok {
				add(p+".name", "%q is also upstreams[%d].name", u.Name, j)
			}
			names[u.Name] = i
		}
		if u.Listen != "" {
			claim(p+".listen", u.Listen)
		} else if u.Protocol != ProtocolTCP && c.Outbound.Listen == "" {
			add(p+".listen", "required when outbound.listen is not set")
		}
		u.validate(p, add)
		if err := u.Resilience.Validate(p); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// validateTransparent checks outbound.transparent and the upstreams' addresses: they need it, and an address
// belongs to one upstream.
func (c *Config) validateTransparent(add func(string, string, ...any)) {
	if c.Outbound.Transparent.Enabled && c.Outbound.Listen == "" {
		add("outbound.transparent.enabled", "needs outbound.listen (the port redirected connections arrive at)")
	}
	if c.Outbound.Transparent.SubsetSize < 0 {
		add("outbound.transparent.subset_size", "must not be negative (0: every endpoint)")
	}
	claimed := map[address]string{}
	for i, u := range c.Upstreams {
		p := fmt.Sprintf("upstreams[%d]", i)
		if len(u.Addresses) > 0 && !c.Outbound.Transparent.Enabled {
			add(p+".addresses", "only with outbound.transparent.enabled (addresses are matched against redirected connections)")
		}
		for j, a := range u.Addresses {
			if pa, err := parseAddress(a); err == nil {
				if prev, ok := claimed[pa]; ok {
					add(fmt.Sprintf("%s.addresses[%d]", p, j), "%s is also %s", pa, prev)
				}
				claimed[pa] = fmt.Sprintf("%s.addresses[%d]", p, j)
			}
		}
	}
}

func checkProtocol(add func(string, string, ...any), path, p string) {
	switch p {
	case ProtocolHTTP, ProtocolHTTP2, ProtocolGRPC, ProtocolTCP:
	default:
		add(path, "%q must be one of http, http2, grpc, tcp (upstreams: or auto)", p)
	}
}

func checkListen(add func(string, string, ...any), path, addr string) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		add(path, "%q must be host:port", addr)
		return
	}
	if host != "" && host != "localhost" {
		if _, err := netip.ParseAddr(host); err != nil {
			add(path, "%q: host must be an IP address or localhost", addr)
		}
	}
	if n, err := net.LookupPort("tcp", port); err != nil || n == 0 && port != "0" {
		add(path, "%q: bad port", addr)
	}
}

// validate reports the problems of one upstream that do not depend on the others, under path p.
func (u *UpstreamConfig) validate(p string, add func(string, string, ...any)) {
	switch {
	case u.Name == "":
		add(p+".name", "required")
	case !ValidName(u.Name):
		add(p+".name", "%q must be a lowercase DNS label (a-z, 0-9, -)", u.Name)
	}
	if u.Protocol == ProtocolAuto {
		if u.Listen != "" || len(u.Addresses) == 0 {
			add(p+".protocol", "auto is detected on redirected connections: needs addresses and no listen")
		}
	} else {
		checkProtocol(add, p+".protocol", u.Protocol)
	}
	if u.Service != "" && !ValidName(u.Service) {
		add(p+".service", "%q must be a lowercase DNS label (a-z, 0-9, -)", u.Service)
	}
	if u.Listen != "" {
		checkListen(add, p+".listen", u.Listen)
	} else if u.Protocol == ProtocolTCP && len(u.Addresses) == 0 {
		add(p+".listen", "required for protocol tcp (tcp cannot be routed by name) unless addresses are given")
	}
	for j, a := range u.Addresses {
		if _, err := parseAddress(a); err != nil {
			add(fmt.Sprintf("%s.addresses[%d]", p, j), "%v", err)
		}
	}
	if u.Endpoints != nil && u.Tag != "" {
		add(p+".tag", "only for discovered upstreams (this one lists endpoints)")
	}
	if u.Endpoints != nil && u.Datacenter != "" {
		add(p+".datacenter", "only for discovered upstreams (this one lists endpoints)")
	}
	for j, e := range u.Endpoints {
		if _, err := netip.ParseAddrPort(e); err != nil {
			add(fmt.Sprintf("%s.endpoints[%d]", p, j), "%q must be ip:port", e)
		}
	}
	if u.Peer != PeerApp && u.Peer != PeerSidecar {
		add(p+".peer", "%q must be app or sidecar", u.Peer)
	}
	if u.LB != LBP2C && u.LB != LBRoundRobin {
		add(p+".lb", "%q must be p2c or round_robin", u.LB)
	}
	if u.SubsetSize < 0 {
		add(p+".subset_size", "must not be negative (0: every endpoint)")
	}
	if u.Timeout < 0 {
		add(p+".timeout", "must not be negative")
	}
	if m := u.TLS.Mode; m != "" && !validTLSMode(m, "mtls", "disabled") {
		add(p+".tls.mode", "%q must be mtls or disabled", m)
	}
	if u.ConnectTimeout < 0 {
		add(p+".connect_timeout", "must not be negative")
	}
}
