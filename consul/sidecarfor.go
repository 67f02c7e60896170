package consul

// meshlet run -sidecar-for: the sidecar's connect-proxy registration on the local agent (merged with central
// config) read the way Consul's own proxies read it, and followed with the agent's hash-based blocking queries.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
)

// DefaultOutboundListenerPort is the port redirected outbound connections arrive at in transparent mode when the
// registration names none (Consul's default, TransparentProxy.OutboundListenerPort).
const DefaultOutboundListenerPort = 15001

// ErrRegistration marks a registration that meshlet cannot run from: unknown ID, not a service or a connect-proxy,
// a service without a sidecar registration. Retrying does not help; the message says what to change.
var ErrRegistration = errors.New("consul registration")

// SidecarConfig is what meshlet takes from a connect-proxy registration, as Consul's proxies do.
type SidecarConfig struct {
	ProxyID   string // the connect-proxy registration's ID
	Service   string // Proxy.DestinationServiceName: the identity meshlet serves
	ServiceID string // Proxy.DestinationServiceID
	// App is the local app, Proxy.LocalServiceAddress (default 127.0.0.1) : LocalServicePort; "" without a port.
	App string
	// Inbound is the public listener: Config bind_address (else the registration's Address, else 0.0.0.0, the
	// agent's address) : Config bind_port (else Port); "" without a port.
	Inbound   string
	Upstreams []SidecarUpstream
	// Transparent is Mode transparent; OutboundPort is then TransparentProxy.OutboundListenerPort (default
	// DefaultOutboundListenerPort).
	Transparent  bool
	OutboundPort int
	Expose       []ExposePath
	// Warnings say what of the registration meshlet refused or cannot honour (the rest is used).
	Warnings []string
}

// SidecarUpstream is one of Proxy.Upstreams, of destination type service.
type SidecarUpstream struct {
	Name       string // DestinationName
	Datacenter string
	// Listen is LocalBindAddress (default 127.0.0.1) : LocalBindPort.
	Listen string
	// Protocol is Config["protocol"] (tcp, http, http2, grpc; merged from service-defaults with
	// merge-central-config); "" when unset.
	Protocol string
	// ConnectTimeout is Config["connect_timeout_ms"]; 0 when unset.
	ConnectTimeout time.Duration
}

// ExposePath is one of Proxy.Expose.Paths: a plain HTTP listener on ListenerPort that forwards Path only to the
// local app's LocalPathPort (for probes that cannot speak mutual TLS).
type ExposePath struct {
	ListenerPort  int
	Path          string
	LocalPathPort int
	Protocol      string // http (default) or http2
}

// ParseSidecar reads a connect-proxy registration (as /v1/agent/service/<id>?merge-central-config answers it).
// What meshlet cannot take is left out with a warning (prepared-query upstreams, peers, unix sockets); a
// registration that is no connect-proxy is an error.
func ParseSidecar(svc *api.AgentService) (SidecarConfig, error) {
	if svc == nil {
		return SidecarConfig{}, fmt.Errorf("%w: empty answer", ErrRegistration)
	}
	if svc.Kind != api.ServiceKindConnectProxy || svc.Proxy == nil {
		return SidecarConfig{}, fmt.Errorf("%w: %s is a %s registration, not a connect-proxy", ErrRegistration, svc.ID, kindName(svc.Kind))
	}
	p := svc.Proxy
	sc := SidecarConfig{ProxyID: svc.ID, Service: p.DestinationServiceName, ServiceID: p.DestinationServiceID}
	if sc.Service == "" {
		return SidecarConfig{}, fmt.Errorf("%w: connect-proxy %s has no destination_service_name", ErrRegistration, svc.ID)
	}
	warn := func(format string, args ...any) { sc.Warnings = append(sc.Warnings, fmt.Sprintf(format, args...)) }
	if p.LocalServicePort > 0 {
		sc.App = net.JoinHostPort(orDefault(p.LocalServiceAddress, "127.0.0.1"), strconv.Itoa(p.LocalServicePort))
	} else {
		warn("proxy %s has no local_service_port: no inbound listener (meshlet serves outbound calls only)", svc.ID)
	}
	bindAddr, bindPort := orDefault(stringOf(p.Config["bind_address"]), orDefault(svc.Address, "0.0.0.0")), svc.Port
	if n, ok := intOf(p.Config["bind_port"]); ok && n > 0 {
		bindPort = n
	}
	if sc.App != "" && bindPort > 0 {
		sc.Inbound = net.JoinHostPort(bindAddr, strconv.Itoa(bindPort))
	}
	switch p.Mode {
	case api.ProxyModeTransparent:
		sc.Transparent, sc.OutboundPort = true, DefaultOutboundListenerPort
		if tp := p.TransparentProxy; tp != nil && tp.OutboundListenerPort > 0 {
			sc.OutboundPort = tp.OutboundListenerPort
		}
	case api.ProxyModeDefault, api.ProxyModeDirect:
	default:
		warn("mode %q unknown: taken as direct", p.Mode)
	}
	for i, u := range p.Upstreams {
		if up, ok := parseUpstream(u, i, sc.Transparent, warn); ok {
			sc.Upstreams = append(sc.Upstreams, up)
		}
	}
	if p.Expose.Checks {
		warn("expose.checks is not supported: only the listed expose.paths are served")
	}
	for i, e := range p.Expose.Paths {
		if e.ListenerPort <= 0 || e.LocalPathPort <= 0 || !strings.HasPrefix(e.Path, "/") {
			warn("expose.paths[%d]: needs listener_port, local_path_port and a path starting with /: left out", i)
			continue
		}
		proto := orDefault(e.Protocol, "http")
		if proto != "http" && proto != "http2" {
			warn("expose.paths[%d]: protocol %q must be http or http2: left out", i, e.Protocol)
			continue
		}
		sc.Expose = append(sc.Expose, ExposePath{ListenerPort: e.ListenerPort, Path: e.Path, LocalPathPort: e.LocalPathPort, Protocol: proto})
	}
	return sc, nil
}

// parseUpstream reads upstream i; false (with a warning) when meshlet cannot serve it.
func parseUpstream(u api.Upstream, i int, transparent bool, warn func(string, ...any)) (SidecarUpstream, bool) {
	where := fmt.Sprintf("upstreams[%d] (%s)", i, u.DestinationName)
	switch {
	case u.DestinationType != "" && u.DestinationType != api.UpstreamDestTypeService:
		warn("%s: destination_type %s is not supported (service only): upstream left out", where, u.DestinationType)
		return SidecarUpstream{}, false
	case u.DestinationName == "":
		warn("upstreams[%d]: no destination_name: upstream left out", i)
		return SidecarUpstream{}, false
	case u.DestinationPeer != "":
		warn("%s: destination_peer is not supported: upstream left out", where)
		return SidecarUpstream{}, false
	case (u.DestinationNamespace != "" && u.DestinationNamespace != "default") || (u.DestinationPartition != "" && u.DestinationPartition != "default"):
		warn("%s: namespaces and partitions other than default are not supported: upstream left out", where)
		return SidecarUpstream{}, false
	case u.LocalBindSocketPath != "":
		warn("%s: local_bind_socket_path is not supported (TCP bind ports only): upstream left out", where)
		return SidecarUpstream{}, false
	case u.LocalBindPort <= 0 && transparent:
		warn("%s: no local_bind_port: no listener of its own (transparent mode reaches it at its addresses, as every service of the mesh)", where)
		return SidecarUpstream{}, false
	case u.LocalBindPort <= 0:
		warn("%s: no local_bind_port: upstream left out", where)
		return SidecarUpstream{}, false
	}
	up := SidecarUpstream{Name: u.DestinationName, Datacenter: u.Datacenter, Protocol: stringOf(u.Config["protocol"]),
		Listen: net.JoinHostPort(orDefault(u.LocalBindAddress, "127.0.0.1"), strconv.Itoa(u.LocalBindPort))}
	if ms, ok := intOf(u.Config["connect_timeout_ms"]); ok && ms > 0 {
		up.ConnectTimeout = time.Duration(ms) * time.Millisecond
	}
	return up, true
}

func kindName(k api.ServiceKind) string {
	if k == api.ServiceKindTypical {
		return "plain service"
	}
	return string(k)
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// stringOf is v when it is a string, else "".
func stringOf(v any) string {
	s, _ := v.(string)
	return s
}

// intOf reads a number of a proxy's Config map (JSON numbers decode as float64; HCL may give strings).
func intOf(v any) (int, bool) {
	switch n := v.(type) {
	case float64:
		return int(n), true
	case int:
		return n, true
	case string:
		i, err := strconv.Atoi(n)
		return i, err == nil
	}
	return 0, false
}

// SidecarFor finds a sidecar's connect-proxy registration on the local agent (Resolve) and follows it (Run):
// each change is signalled on Changed; Config returns the latest. While the agent cannot be reached, or after
// the registration was deleted, the last known config stays (Ready says the registration is gone). Safe for
// concurrent use; Run owns its goroutine.
type SidecarFor struct {
	c       *Source
	id      string
	changed chan struct{}

	mu      sync.Mutex
	proxyID string
	cfg     SidecarConfig
	gone    error // set while the agent answers that the registration does not exist
	err     error // the latest query's failure
}

// NewSidecarFor returns a finder of the registration of id (a service ID, or its connect-proxy's); nothing is
// queried before Resolve.
func NewSidecarFor(c *Source, id string) *SidecarFor {
	return &SidecarFor{c: c, id: id, changed: make(chan struct{}, 1)}
}

// Changed receives a value after each change of the config (one-slot: changes in a burst coalesce).
func (s *SidecarFor) Changed() <-chan struct{} { return s.changed }

// Config returns the latest config read.
func (s *SidecarFor) Config() SidecarConfig {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cfg
}

// Ready is nil unless the agent answered, at its latest query, that the registration no longer exists.
func (s *SidecarFor) Ready() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.gone
}

// Resolve finds the connect-proxy registration: id itself when it is one, else the connect-proxy whose
// destination service ID is id (<id>-sidecar-proxy first), reads it and returns it, with what it found in found
// ("connect-proxy web-1-sidecar-proxy, the sidecar of service web-1"). Errors wrapping ErrRegistration are
// permanent; others (agent unreachable) may pass.
func (s *SidecarFor) Resolve(ctx context.Context) (cfg SidecarConfig, found string, err error) {
	agent := s.c.client.Agent()
	q := &api.QueryOptions{MergeCentralConfig: true}
	svc, _, err := agent.Service(s.id, q.WithContext(ctx))
	if isNotFound(err) {
		return SidecarConfig{}, "", fmt.Errorf("%w: the agent at %s has no service or connect-proxy with ID %q (-sidecar-for takes the ID the service, or its sidecar, was registered with on this agent)", ErrRegistration, s.c.cfg.Address, s.id)
	}
	if err != nil {
		return SidecarConfig{}, "", classify(err)
	}
	switch svc.Kind {
	case api.ServiceKindConnectProxy:
		found = "connect-proxy " + svc.ID
	case api.ServiceKindTypical:
		if svc, err = s.sidecarOf(ctx, svc.ID); err != nil {
			return SidecarConfig{}, "", err
		}
		found = fmt.Sprintf("connect-proxy %s, the sidecar of service %s", svc.ID, s.id)
	}
	cfg, err = ParseSidecar(svc)
	if err != nil {
		return SidecarConfig{}, "", err
	}
	s.mu.Lock()
	s.proxyID, s.cfg = svc.ID, cfg
	s.mu.Unlock()
	return cfg, found, nil
}

// sidecarOf finds the connect-proxy registration of service id on the agent.
func (s *SidecarFor) sidecarOf(ctx context.Context, id string) (*api.AgentService, error) {
	agent := s.c.client.Agent()
	filter := fmt.Sprintf("Kind == %q and Proxy.DestinationServiceID == %q", api.ServiceKindConnectProxy, id)
	proxies, err := agent.ServicesWithFilterOpts(filter, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return nil, classify(err)
	}
	var pick string
	switch {
	case len(proxies) == 0:
		return nil, fmt.Errorf("%w: service %s has no connect-proxy registered on this agent (add connect { sidecar_service {} } to its definition)", ErrRegistration, id)
	case proxies[id+"-sidecar-proxy"] != nil:
		pick = id + "-sidecar-proxy"
	case len(proxies) == 1:
		for k := range proxies {
			pick = k
		}
	default:
		var ids []string
		for k := range proxies {
			ids = append(ids, k)
		}
		return nil, fmt.Errorf("%w: service %s has several connect-proxies (%s): name one with -sidecar-for", ErrRegistration, id, strings.Join(ids, ", "))
	}
	svc, _, err := agent.Service(pick, (&api.QueryOptions{MergeCentralConfig: true}).WithContext(ctx))
	if err != nil {
		return nil, classify(err)
	}
	return svc, nil
}

// Run follows the registration Resolve found until ctx ends (Watch, with the agent's hash-based blocking) and
// returns nil then. A registration that changes into one meshlet cannot read keeps the last config.
func (s *SidecarFor) Run(ctx context.Context) error {
	s.mu.Lock()
	id := s.proxyID
	s.mu.Unlock()
	if id == "" {
		return errors.New("consul sidecar-for: Run before Resolve")
	}
	log := s.c.log.With("proxy_id", id)
	var hash string
	var version uint64
	Watch(ctx, Options{Wait: s.c.cfg.WaitTime}, func(q *api.QueryOptions) (uint64, error) {
		if q.WaitIndex == 0 { // the first query, or after an error: answer at once
			hash = ""
		}
		q.WaitIndex, q.WaitHash, q.MergeCentralConfig = 0, hash, true
		svc, meta, err := s.c.client.Agent().Service(id, q)
		if isNotFound(err) {
			return 0, s.setGone(fmt.Errorf("consul registration of %s was deleted from the agent: serving its last known config", id))
		}
		if err != nil {
			return 0, classify(err)
		}
		if ctx.Err() != nil {
			return 0, ctx.Err()
		}
		if meta.LastContentHash == hash && hash != "" {
			return version, nil // the wait ended without a change
		}
		hash = meta.LastContentHash
		version++
		cfg, err := ParseSidecar(svc)
		if err != nil {
			return 0, err
		}
		s.store(cfg, log)
		return version, nil
	}, func(err error, _ time.Duration) {
		s.mu.Lock()
		prev := s.err
		s.err = err
		s.mu.Unlock()
		if prev == nil || prev.Error() != err.Error() {
			log.Warn("consul sidecar registration query failed; the last known config stays", "error", err.Error())
		}
	})
	return nil
}

// setGone records that the registration is gone (the failure callback logs it) and returns err.
func (s *SidecarFor) setGone(err error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.gone = err
	return err
}

// store keeps cfg and signals a change when it differs from the last.
func (s *SidecarFor) store(cfg SidecarConfig, log *slog.Logger) {
	s.mu.Lock()
	wasGone := s.gone != nil
	s.gone, s.err = nil, nil
	same := reflect.DeepEqual(s.cfg, cfg)
	s.cfg = cfg
	s.mu.Unlock()
	if wasGone {
		log.Info("consul sidecar registration is back")
	}
	if same {
		return
	}
	select {
	case s.changed <- struct{}{}:
	default:
	}
}

// isNotFound reports Consul's 404 (unknown service ID).
func isNotFound(err error) bool {
	var se api.StatusError
	return errors.As(err, &se) && se.Code == 404
}
