package consul

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"

	"meshlet.dev/meshlet/discovery"
	"meshlet.dev/meshlet/mtls"
)

// ConfigEntries watches the service-defaults, service-router, proxy-defaults and mesh config entries with one
// blocking query per kind (/v1/config/<kind>) and turns them into discovery.UpstreamSettings, and the mesh entry
// into the TLS settings of both directions (InboundTLS, OutboundTLS) and MeshDestinationsOnly. Changed is
// signalled after every change. It is safe for concurrent use; Run owns its goroutines.
type ConfigEntries struct {
	c       *Source
	changed chan struct{}

	mu       sync.Mutex
	defaults map[string]*api.ServiceConfigEntry       // by service name
	proxy    *api.ProxyConfigEntry                    // proxy-defaults/global; nil without one
	mesh     *api.MeshConfigEntry                     // the mesh entry; nil without one (or when the token may not read it)
	routers  map[string]*api.ServiceRouterConfigEntry // by service name
	answered map[string]bool                          // kinds that have answered once
	warned   map[string]uint64                        // kind/name → the version whose ignored fields were logged
	errs     map[string]error                         // kinds whose latest query failed
}

// Config entry kinds meshlet reads.
var entryKinds = []string{api.ServiceDefaults, api.ServiceRouter, api.ProxyDefaults, api.MeshConfig}

// NewConfigEntries returns a watcher of c's config entries; nothing is queried before Run.
func NewConfigEntries(c *Source) *ConfigEntries {
	return &ConfigEntries{c: c, changed: make(chan struct{}, 1), defaults: map[string]*api.ServiceConfigEntry{},
		routers: map[string]*api.ServiceRouterConfigEntry{}, answered: map[string]bool{}, errs: map[string]error{}, warned: map[string]uint64{}}
}

// Changed receives a value after each change of the entries (one-slot: changes in a burst coalesce).
func (e *ConfigEntries) Changed() <-chan struct{} { return e.changed }

// Run watches until ctx ends (Watch, one loop per kind) and returns nil then.
func (e *ConfigEntries) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	for _, kind := range entryKinds {
		wg.Go(func() { e.loop(ctx, kind) })
	}
	wg.Wait()
	return nil
}

func (e *ConfigEntries) loop(ctx context.Context, kind string) {
	Watch(ctx, Options{Wait: e.c.cfg.WaitTime}, func(q *api.QueryOptions) (uint64, error) {
		entries, meta, err := e.c.client.ConfigEntries().List(kind, q)
		if err != nil {
			err = classify(err)
			if kind == api.MeshConfig && errors.Is(err, ErrDenied) {
				// Reading the mesh entry needs mesh:read (or operator:read), which a service's token may lack:
				// meshlet then keeps its own TLS minimum (tls.min_version), the stricter choice, and says so once.
				e.meshDenied(err)
				return 0, errMeshDenied
			}
			return 0, err
		}
		if ctx.Err() != nil {
			return 0, ctx.Err()
		}
		e.store(kind, entries)
		return meta.LastIndex, nil
	}, func(err error, _ time.Duration) {
		if errors.Is(err, errMeshDenied) {
			return
		}
		e.mu.Lock()
		prev := e.errs[kind]
		e.errs[kind] = err
		e.mu.Unlock()
		if prev == nil || prev.Error() != err.Error() {
			e.c.log.Warn("consul config entries query failed", "kind", kind, "error", err.Error())
		}
	})
}

// store keeps the answer of one kind and signals a change when it differs from the last.
func (e *ConfigEntries) store(kind string, entries []api.ConfigEntry) {
	e.mu.Lock()
	defer e.mu.Unlock()
	delete(e.errs, kind)
	for _, en := range entries {
		e.warnIgnored(en)
	}
	changed := !e.answered[kind]
	e.answered[kind] = true
	switch kind {
	case api.ServiceDefaults:
		next := map[string]*api.ServiceConfigEntry{}
		for _, en := range entries {
			if sd, ok := en.(*api.ServiceConfigEntry); ok {
				next[sd.Name] = sd
				if old := e.defaults[sd.Name]; old == nil || old.ModifyIndex != sd.ModifyIndex {
					changed = true
				}
			}
		}
		changed = changed || len(next) != len(e.defaults)
		e.defaults = next
	case api.ProxyDefaults:
		var next *api.ProxyConfigEntry
		for _, en := range entries {
			if pd, ok := en.(*api.ProxyConfigEntry); ok && pd.Name == api.ProxyConfigGlobal {
				next = pd
			}
		}
		old := e.proxy
		changed = changed || (old == nil) != (next == nil) || (old != nil && next != nil && old.ModifyIndex != next.ModifyIndex)
		e.proxy = next
	case api.MeshConfig:
		var next *api.MeshConfigEntry
		for _, en := range entries {
			if m, ok := en.(*api.MeshConfigEntry); ok {
				next = m
			}
		}
		tlsChanged := meshTLSChanged(e.mesh, next)
		changed = changed || tlsChanged || meshDestinationsOnly(e.mesh) != meshDestinationsOnly(next)
		if tlsChanged {
			for _, in := range []bool{true, false} {
				if _, problems := meshTLS(next, in); len(problems) > 0 {
					e.c.log.Warn("consul mesh config entry: TLS settings meshlet cannot apply in full", "incoming", in,
						"problems", strings.Join(problems, "; "))
				}
			}
		}
		e.mesh = next
	case api.ServiceRouter:
		next := map[string]*api.ServiceRouterConfigEntry{}
		for _, en := range entries {
			if sr, ok := en.(*api.ServiceRouterConfigEntry); ok {
				next[sr.Name] = sr
				if old := e.routers[sr.Name]; old == nil || old.ModifyIndex != sr.ModifyIndex {
					changed = true
				}
			}
		}
		changed = changed || len(next) != len(e.routers)
		e.routers = next
	}
	if changed {
		select {
		case e.changed <- struct{}{}:
		default:
		}
	}
}

// errMeshDenied fails a query of the mesh entry the token may not read (meshDenied said so): the watch tries
// again after its backoff, so that a token given mesh:read later is noticed, and logs nothing more.
var errMeshDenied = errors.New("the ACL token may not read the mesh config entry")

// meshDenied records that the token may not read the mesh entry: as answered, without an entry.
func (e *ConfigEntries) meshDenied(err error) {
	e.mu.Lock()
	first := !e.answered[api.MeshConfig]
	e.answered[api.MeshConfig] = true
	e.mesh = nil
	e.mu.Unlock()
	if first {
		e.c.log.Warn("consul mesh config entry not readable (the token needs mesh:read); the inbound TLS minimum is tls.min_version and mesh_destinations_only the file's",
			"error", err.Error())
	}
}

// InboundTLS and OutboundTLS are what the mesh config entry says of meshlet's inbound listeners and of its dials
// to other sidecars (TLS.Incoming, TLS.Outgoing): versions and TLS 1.2 cipher suites; zero while it says nothing
// or is not known.
func (e *ConfigEntries) InboundTLS() mtls.MeshTLS {
	e.mu.Lock()
	defer e.mu.Unlock()
	m, _ := meshTLS(e.mesh, true)
	return m
}

func (e *ConfigEntries) OutboundTLS() mtls.MeshTLS {
	e.mu.Lock()
	defer e.mu.Unlock()
	m, _ := meshTLS(e.mesh, false)
	return m
}

// meshTLS reads one direction of the mesh entry's TLS, with what of it meshlet cannot apply (an unknown version
// is ignored, an unknown or insecure cipher suite left out: both said by the caller).
func meshTLS(m *api.MeshConfigEntry, incoming bool) (mtls.MeshTLS, []string) {
	if m == nil || m.TLS == nil {
		return mtls.MeshTLS{}, nil
	}
	d := m.TLS.Outgoing
	if incoming {
		d = m.TLS.Incoming
	}
	if d == nil {
		return mtls.MeshTLS{}, nil
	}
	var out mtls.MeshTLS
	var problems []string
	var err error
	if out.Min, err = mtls.MeshVersion(d.TLSMinVersion); err != nil {
		problems = append(problems, "TLSMinVersion: "+err.Error())
	}
	if out.Max, err = mtls.MeshVersion(d.TLSMaxVersion); err != nil {
		problems = append(problems, "TLSMaxVersion: "+err.Error())
	}
	ids, unknown := mtls.CipherSuites(d.CipherSuites)
	out.CipherSuites = ids
	if len(unknown) > 0 {
		problems = append(problems, "CipherSuites unknown or insecure in Go, left out: "+strings.Join(unknown, ", "))
	}
	if len(d.CipherSuites) > 0 && len(ids) == 0 {
		problems = append(problems, "no cipher suite of CipherSuites is usable: Go's secure defaults apply")
	}
	return out, problems
}

// meshTLSChanged reports whether the TLS of the mesh entry differs between a and b.
func meshTLSChanged(a, b *api.MeshConfigEntry) bool {
	for _, in := range []bool{true, false} {
		x, _ := meshTLS(a, in)
		y, _ := meshTLS(b, in)
		if fmt.Sprint(x) != fmt.Sprint(y) {
			return true
		}
	}
	return false
}

// Ready says why the entries are not known yet: nil once both kinds have answered (later failures keep the last
// known entries, like endpoints), the latest error otherwise, or that no answer has come yet.
func (e *ConfigEntries) Ready() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, kind := range entryKinds {
		if e.answered[kind] {
			continue
		}
		if err := e.errs[kind]; err != nil {
			return fmt.Errorf("consul config entries %s: no answer yet: %w", kind, err)
		}
		return fmt.Errorf("consul config entries %s: no answer yet", kind)
	}
	return nil
}

// MeshDestinationsOnly is the mesh entry's TransparentProxy.MeshDestinationsOnly (false without the entry, or
// when the token may not read it).
func (e *ConfigEntries) MeshDestinationsOnly() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return meshDestinationsOnly(e.mesh)
}

func meshDestinationsOnly(m *api.MeshConfigEntry) bool {
	return m != nil && m.TransparentProxy.MeshDestinationsOnly
}

// Settings returns what the entries say about calls from caller to the upstream service: service-defaults of
// the upstream (Protocol; else proxy-defaults/global's Config.protocol, the mesh's default), service-defaults of
// the caller (UpstreamConfig: the override named after the upstream, field by field over Defaults), and
// service-router of the upstream (its catch-all route).
func (e *ConfigEntries) Settings(caller, upstream string) discovery.UpstreamSettings {
	e.mu.Lock()
	defer e.mu.Unlock()
	var s discovery.UpstreamSettings
	protocol := ""
	if e.proxy != nil {
		protocol, _ = e.proxy.Config["protocol"].(string) // the mesh's default
	}
	if sd := e.defaults[upstream]; sd != nil && sd.Protocol != "" {
		protocol = sd.Protocol
	}
	switch protocol = strings.ToLower(protocol); protocol {
	case "http", "http2", "grpc", "tcp":
		s.Protocol = protocol
	}
	if sd := e.defaults[caller]; sd != nil && sd.UpstreamConfig != nil {
		applyUpstreamConfig(&s, sd.UpstreamConfig.Defaults)
		for _, o := range sd.UpstreamConfig.Overrides {
			if o != nil && o.Name == upstream && o.Peer == "" && (o.Namespace == "" || o.Namespace == "default") {
				applyUpstreamConfig(&s, o)
			}
		}
	}
	if sr := e.routers[upstream]; sr != nil {
		for _, r := range sr.Routes {
			if catchAll(r.Match) {
				s.Route = routeSettings(r.Destination)
				break
			}
		}
	}
	return s
}

// applyUpstreamConfig lays the fields u sets over s.
func applyUpstreamConfig(s *discovery.UpstreamSettings, u *api.UpstreamConfig) {
	if u == nil {
		return
	}
	if u.ConnectTimeoutMs > 0 {
		s.ConnectTimeout = time.Duration(u.ConnectTimeoutMs) * time.Millisecond
	}
	if l := u.Limits; l != nil {
		if l.MaxConcurrentRequests != nil && *l.MaxConcurrentRequests > 0 {
			s.MaxRequests = l.MaxConcurrentRequests
		}
		if l.MaxPendingRequests != nil && *l.MaxPendingRequests >= 0 {
			s.MaxPending = l.MaxPendingRequests
		}
		if l.MaxConnections != nil && *l.MaxConnections > 0 {
			s.MaxConnections = l.MaxConnections
		}
	}
	if p := u.PassiveHealthCheck; p != nil {
		if p.MaxFailures > 0 {
			s.ConsecutiveFailures = p.MaxFailures
		}
		if p.BaseEjectionTime != nil && *p.BaseEjectionTime > 0 {
			s.OpenTimeout = *p.BaseEjectionTime
		} else if p.Interval > 0 {
			s.OpenTimeout = p.Interval
		}
		if p.EnforcingConsecutive5xx != nil {
			s.BreakerOff = *p.EnforcingConsecutive5xx == 0
		}
		if p.MaxEjectionPercent != nil && *p.MaxEjectionPercent > 0 && *p.MaxEjectionPercent <= 100 {
			s.MaxEjectionPercent = int(*p.MaxEjectionPercent)
		}
	}
}

// catchAll reports whether a route matches every request.
func catchAll(m *api.ServiceRouteMatch) bool {
	if m == nil || m.HTTP == nil {
		return true
	}
	h := m.HTTP
	return h.PathExact == "" && h.PathRegex == "" && (h.PathPrefix == "" || h.PathPrefix == "/") &&
		len(h.Header) == 0 && len(h.QueryParam) == 0 && len(h.Methods) == 0
}

// routeSettings turns a route destination into retry and timeout settings, the way Consul configures Envoy: a
// route with no retry setting does not retry; retry conditions without NumRetries mean one retry.
func routeSettings(d *api.ServiceRouteDestination) *discovery.RouteSettings {
	rs := &discovery.RouteSettings{MaxAttempts: 1}
	if d == nil {
		return rs
	}
	rs.Timeout = d.RequestTimeout
	var on []string
	add := func(c string) {
		if !slices.Contains(on, c) {
			on = append(on, c)
		}
	}
	for _, c := range d.RetryOn {
		switch {
		case c == "5xx":
			add("gateway-error")
			add("500")
		case slices.Contains(retryOnHonoured, c):
			add(c)
		}
	}
	if d.RetryOnConnectFailure {
		add("connect-failure")
	}
	for _, code := range d.RetryOnStatusCodes {
		add(strconv.Itoa(int(code)))
	}
	retries := int(d.NumRetries)
	if retries == 0 && len(on) > 0 {
		retries = 1
	}
	rs.MaxAttempts = min(retries+1, 10)
	if len(on) > 0 {
		rs.RetryOn = on
	}
	return rs
}
