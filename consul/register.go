package consul

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"

	"meshlet.dev/meshlet/appcheck"
	"meshlet.dev/meshlet/resilience"
)

var osHostname = os.Hostname

// MetaSidecar is the meta key a registered service instance carries with the ID of its meshlet sidecar. In auto
// mode such an instance is never an endpoint itself: callers reach it through its sidecar only, also in the
// moment between the two registrations.
const MetaSidecar = "meshlet_sidecar"

// MetaMeshlet is the meta key of meshlet's sidecar registration, with the value "true": the marker that tells
// callers the sidecar is a meshlet. Any other Connect proxy of the mesh (Consul's built-in proxy, Envoy) is a
// foreign one (discovery.ProxyForeign), spoken to in the service's own protocol.
const MetaMeshlet = "meshlet"

// Defaults of Registration (and of discovery.consul.check_interval and resync_interval).
const (
	DefaultCheckInterval  = 10 * time.Second
	DefaultResyncInterval = 10 * time.Second
)

// Registration is what a sidecar registers with its local Consul agent: the local service and, for it, a
// connect-proxy (the sidecar) that callers' meshlets find and call.
type Registration struct {
	Service string            // the service name
	App     string            // the local app, ip:port (the service instance's address and port)
	Inbound string            // the sidecar's bound inbound listener, ip:port; an unspecified IP means the agent's address
	Admin   string            // the sidecar's admin listener, for the /ready HTTP check
	Tags    []string          // on both registrations
	Meta    map[string]string // on both registrations
	// AppCheck, when set, is the app's own health check on the service instance; the sidecar's alias check
	// follows it, so callers stop picking the instance when its app fails.
	AppCheck *appcheck.Check
	// Ready is the sidecar's readiness; the /ready check starts passing when it returns nil at registration
	// (so callers need not wait a check interval), critical otherwise. Nil: critical until Consul checks.
	Ready func() error
	// CheckInterval is how often the agent checks the sidecar's /ready (discovery.consul.check_interval); 0 means
	// DefaultCheckInterval.
	CheckInterval time.Duration
	// ResyncInterval is how often the Registrar checks that the agent still has both registrations
	// (discovery.consul.resync_interval); 0 means DefaultResyncInterval.
	ResyncInterval time.Duration
	// Upstreams are written into the proxy registration (Proxy.Upstreams), so that Consul's UI and topology
	// views show what this sidecar calls, as they do for Envoy; nil writes none.
	Upstreams []RegisteredUpstream
	// Transparent writes Mode transparent and TransparentProxy.OutboundListenerPort = OutboundPort (the port
	// redirected connections arrive at; 0: Consul's default).
	Transparent  bool
	OutboundPort int
}

// RegisteredUpstream is an upstream as the proxy registration lists it.
type RegisteredUpstream struct {
	Service    string // the destination service
	Datacenter string // "": the agent's
	Listen     string // the upstream's local listener, ip:port (LocalBindAddress, LocalBindPort); "": none
}

// proxyConfig is the Proxy block of the sidecar's registration.
func (reg *Registration) proxyConfig(id, appHost string, appPort int) *api.AgentServiceConnectProxyConfig {
	pc := &api.AgentServiceConnectProxyConfig{DestinationServiceName: reg.Service, DestinationServiceID: id,
		LocalServiceAddress: appHost, LocalServicePort: appPort}
	for _, u := range reg.Upstreams {
		host, port := splitHostPort(u.Listen)
		pc.Upstreams = append(pc.Upstreams, api.Upstream{DestinationType: api.UpstreamDestTypeService,
			DestinationName: u.Service, Datacenter: u.Datacenter, LocalBindAddress: host, LocalBindPort: port})
	}
	if reg.Transparent {
		pc.Mode = api.ProxyModeTransparent
		if reg.OutboundPort > 0 {
			pc.TransparentProxy = &api.TransparentProxyConfig{OutboundListenerPort: reg.OutboundPort}
		}
	}
	return pc
}

// agentCheck is c as the Consul agent runs it, named "app" on the registration: an HTTP, TCP or GRPC check
// (GRPC "host:port/service", plaintext as appcheck probes it).
func agentCheck(c *appcheck.Check) *api.AgentServiceCheck {
	interval, timeout := c.Intervals()
	return &api.AgentServiceCheck{Name: "app", HTTP: c.HTTP, TCP: c.TCP, GRPC: c.GRPC, TLSSkipVerify: c.TLSSkipVerify,
		Interval: interval.String(), Timeout: timeout.String()}
}

// Registrar keeps a Registration registered with the Consul agent until Deregister: it registers at start
// (retrying with backoff while the agent cannot be reached), and every ResyncInterval checks that the agent still
// has both registrations, registering again when it lost them (an agent restarted without its state).
type Registrar struct {
	c   *Source
	reg Registration
	log *slog.Logger
	id  string

	mu           sync.Mutex // serializes registering and deregistering
	deregistered bool
	registered   bool
	everDone     bool  // registered at least once
	lastErr      error // why the latest attempt failed; nil after a success
}

// NewRegistrar returns a Registrar for reg on the agent c talks to. Nothing is registered before Run.
func NewRegistrar(c *Source, reg Registration) *Registrar {
	if reg.CheckInterval == 0 {
		reg.CheckInterval = DefaultCheckInterval
	}
	if reg.ResyncInterval == 0 {
		reg.ResyncInterval = DefaultResyncInterval
	}
	_, inPort := splitHostPort(reg.Inbound)
	id := fmt.Sprintf("%s-%s-%d", reg.Service, hostID(), inPort)
	return &Registrar{c: c, reg: reg, id: id, log: c.log.With("component", "consul-register", "service_id", id)}
}

// ServiceID is the stable ID of the service instance: <service>-<host>-<inbound port>.
func (r *Registrar) ServiceID() string { return r.id }

// ProxyID is the ID of the sidecar's connect-proxy registration.
func (r *Registrar) ProxyID() string { return r.id + "-sidecar-proxy" }

// Registered reports whether the last registration or check found both registrations in place.
func (r *Registrar) Registered() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.registered
}

// Ready says why this instance has not been registered yet: nil once a registration has succeeded (a later loss
// of the agent is logged and shows in meshlet_discovery_registered, but does not undo it), the latest failure
// (agent unreachable, ACL denied, ...) otherwise, or that the first attempt has not answered yet. It is meant for
// /ready: a sidecar that should register is not ready until callers can find it.
func (r *Registrar) Ready() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case r.everDone:
		return nil
	case r.lastErr != nil:
		return fmt.Errorf("consul registration of %s failed: %w", r.id, r.lastErr)
	}
	return fmt.Errorf("consul registration of %s: not registered yet", r.id)
}

// Run registers and keeps the registration until ctx ends or Deregister is called. It returns nil then.
func (r *Registrar) Run(ctx context.Context) error {
	failures := 0
	wait := time.Duration(0)
	for {
		if !resilience.Sleep(ctx, wait) {
			return nil
		}
		err := r.ensure(ctx)
		if ctx.Err() != nil {
			return nil
		}
		r.mu.Lock()
		r.lastErr = err
		r.mu.Unlock()
		if err != nil {
			failures++
			wait = Backoff(failures)
			if failures == 1 || failures%10 == 0 {
				r.log.Error("consul registration failed", "error", err.Error(), "retry_in", wait.Round(time.Millisecond).String())
			}
			continue
		}
		failures = 0
		wait = r.reg.ResyncInterval
	}
}

// ensure registers what the agent does not have.
func (r *Registrar) ensure(ctx context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.deregistered {
		return nil
	}
	agent := r.c.client.Agent()
	q := (&api.QueryOptions{}).WithContext(ctx)
	svc, _, err1 := agent.Service(r.id, q)
	prx, _, err2 := agent.Service(r.ProxyID(), q)
	// The first time, register even when the agent has both: they may be a killed predecessor's (same IDs), with
	// its tags, meta, checks and admin address; registering replaces them with this process's.
	if svc != nil && prx != nil && err1 == nil && err2 == nil && r.everDone {
		r.setRegistered(true)
		return nil
	}
	if err := firstNon404(err1, err2); err != nil {
		r.setRegistered(false)
		return classify(err)
	}
	again := r.registered
	r.setRegistered(false)
	if err := r.register(ctx); err != nil {
		return classify(err)
	}
	r.setRegistered(true)
	if again {
		r.log.Warn("consul agent had lost this instance: registered again", "proxy_id", r.ProxyID())
	} else {
		r.log.Info("registered with consul", "proxy_id", r.ProxyID(), "inbound", r.reg.Inbound)
	}
	return nil
}

// firstNon404 returns the first error that is not Consul's "unknown service" 404.
func firstNon404(errs ...error) error {
	for _, err := range errs {
		var se api.StatusError
		if err != nil && !(errors.As(err, &se) && se.Code == 404) {
			return err
		}
	}
	return nil
}

func (r *Registrar) setRegistered(v bool) {
	r.registered = v
	r.everDone = r.everDone || v
	g := 0.0
	if v {
		g = 1
	}
	r.c.m.Registered.WithLabelValues(r.id).Set(g)
}

// register sends both registrations.
func (r *Registrar) register(ctx context.Context) error {
	appHost, appPort := splitHostPort(r.reg.App)
	inHost, inPort := splitHostPort(r.reg.Inbound)
	if ip := net.ParseIP(inHost); ip != nil && ip.IsUnspecified() {
		inHost = "" // the agent's own address
	}
	admin := r.reg.Admin
	if h, p := splitHostPort(admin); h == "" || net.ParseIP(h).IsUnspecified() {
		admin = net.JoinHostPort("127.0.0.1", strconv.Itoa(p))
	}
	interval := r.reg.CheckInterval.String()
	status := api.HealthCritical
	if r.reg.Ready != nil && r.reg.Ready() == nil {
		status = api.HealthPassing
	}
	opts := api.ServiceRegisterOpts{}.WithContext(ctx)
	svc := &api.AgentServiceRegistration{ID: r.id, Name: r.reg.Service, Address: appHost, Port: appPort,
		Tags: r.reg.Tags, Meta: withMeta(r.reg.Meta, MetaSidecar, r.ProxyID())}
	if r.reg.AppCheck != nil {
		svc.Check = agentCheck(r.reg.AppCheck)
	}
	if err := r.c.client.Agent().ServiceRegisterOpts(svc, opts); err != nil {
		return fmt.Errorf("register service %s: %w", r.id, err)
	}
	prx := &api.AgentServiceRegistration{
		Kind: api.ServiceKindConnectProxy, ID: r.ProxyID(), Name: r.reg.Service + "-sidecar-proxy",
		Address: inHost, Port: inPort, Tags: r.reg.Tags, Meta: withMeta(r.reg.Meta, MetaMeshlet, "true"),
		Proxy: r.reg.proxyConfig(r.id, appHost, appPort),
		Checks: api.AgentServiceChecks{
			{Name: "meshlet /ready", HTTP: "http://" + admin + "/ready", Interval: interval, Timeout: "2s",
				Status: status},
			{Name: "destination service", AliasService: r.id},
		},
	}
	if err := r.c.client.Agent().ServiceRegisterOpts(prx, opts); err != nil {
		return fmt.Errorf("register sidecar %s: %w", r.ProxyID(), err)
	}
	return nil
}

// Deregister removes the sidecar, then the service, and stops Run from registering again. It is idempotent;
// an agent that no longer has them is not an error.
func (r *Registrar) Deregister(ctx context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.deregistered {
		return nil
	}
	r.deregistered = true
	r.setRegistered(false)
	q := (&api.QueryOptions{}).WithContext(ctx)
	var errs []error
	for _, id := range []string{r.ProxyID(), r.id} {
		if err := r.c.client.Agent().ServiceDeregisterOpts(id, q); firstNon404(err) != nil {
			errs = append(errs, fmt.Errorf("deregister %s: %w", id, classify(err)))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	r.log.Info("deregistered from consul")
	return nil
}

// withMeta returns a copy of m with k set to v.
func withMeta(m map[string]string, k, v string) map[string]string {
	out := map[string]string{k: v}
	for mk, mv := range m {
		if mk != k {
			out[mk] = mv
		}
	}
	return out
}

func splitHostPort(addr string) (string, int) {
	h, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0
	}
	n, _ := strconv.Atoi(p)
	return h, n
}
