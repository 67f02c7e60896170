package main

// The discovery section of the config file, service registration (service.register), and their wiring into the
// sidecar.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"meshlet.dev/meshlet/consul"
	"meshlet.dev/meshlet/proxy"
)

// discoveryConfig is the discovery section: where upstreams without static endpoints are found.
type discoveryConfig struct {
	// Consul, when present, finds upstreams in Consul (and lets service.register register this instance).
	Consul *consul.Config `yaml:"consul" json:"consul"`
}

// setDefaults and validate of the discovery section and registration.
func (c *fileConfig) setDiscoveryDefaults() {
	if c.Discovery.Consul != nil {
		c.Discovery.Consul.SetDefaults()
	}
}

func (c *fileConfig) validateDiscovery() []error {
	var errs []error
	if c.Discovery.Consul != nil {
		if err := c.Discovery.Consul.Validate("discovery.consul"); err != nil {
			errs = append(errs, err)
		}
	}
	if c.Service.Register {
		if c.Discovery.Consul == nil {
			errs = append(errs, errors.New("service.register: needs discovery.consul"))
		}
		if c.Inbound.Listen == "" {
			errs = append(errs, errors.New("service.register: needs inbound.listen (what callers reach)"))
		}
	}
	if c.Service.Check != nil {
		if !c.Service.Register {
			errs = append(errs, errors.New("service.check: needs service.register"))
		}
		if err := c.Service.Check.Validate("service.check"); err != nil {
			errs = append(errs, err)
		}
	}
	return errs
}

// applyDiscoveryEnv honours Consul's own environment variables for the consul section.
func applyDiscoveryEnv(cfg *fileConfig, getenv func(string) string) {
	if cfg.Discovery.Consul != nil {
		cfg.Discovery.Consul.ApplyEnv(getenv)
	}
}

// startDiscovery creates the Consul source when the config has one; it contacts nothing yet.
func (s *sidecar) startDiscovery() error {
	if s.cfg.Discovery.Consul == nil {
		return nil
	}
	c, err := consul.NewSource(*s.cfg.Discovery.Consul, consul.SourceOptions{Logger: s.log, Metrics: s.m.Discovery})
	if err != nil {
		return err
	}
	s.consul = c
	s.entries = consul.NewConfigEntries(c)
	return nil
}

// startMesh creates the watch of the mesh's services (outbound.transparent.consul_services), once the config is
// complete (with sidecar_for, the registration may make it transparent); it contacts nothing yet.
func (s *sidecar) startMesh() {
	if t := s.cfg.Outbound.Transparent; s.consul != nil && t.Enabled && (t.ConsulServices == nil || *t.ConsulServices) {
		s.mesh = consul.NewMesh(s.consul)
	}
}

// registration is the part that registers this instance (service.register), once the listeners are bound:
// Run waits until the sidecar is routable (bounded by registerWait), then keeps the registration; Ready says why
// the instance is not registered yet.
type registration struct{ s *sidecar }

func (p registration) Run(ctx context.Context) error {
	// Register once routable (bounded), so that the /ready check starts passing: registered while still waiting
	// for, say, the first config entries, it would start critical and pass only a check interval later.
	// A drain that began meanwhile (GET /drain while the pod was still starting) means never registering.
	deadline := time.Now().Add(registerWait)
	for p.s.routable() != nil && time.Now().Before(deadline) && p.s.drainStart.Load() == nil {
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(20 * time.Millisecond):
		}
	}
	if p.s.drainStart.Load() != nil {
		return nil
	}
	return p.s.registrar.Load().Run(ctx)
}

func (p registration) Ready() error {
	r := p.s.registrar.Load()
	if r == nil {
		return errors.New("consul registration: not started yet (listeners not bound)")
	}
	return r.Ready()
}

// prepareRegistration makes the registrar of this instance when the config asks for it, once the listeners are
// bound (the registration part then runs it).
func (s *sidecar) prepareRegistration() {
	if !s.mustRegister {
		return
	}
	inbound := s.proxy.Addrs()["inbound"]
	if h, _, err := net.SplitHostPort(s.cfg.Inbound.Listen); err == nil && h != "" {
		_, p, _ := net.SplitHostPort(inbound)
		inbound = net.JoinHostPort(h, p) // keep the configured host (0.0.0.0: the agent's address)
	}
	addrs := s.proxy.Addrs()
	r := consul.NewRegistrar(s.consul, consul.Registration{
		Service: s.cfg.Service.Name, App: s.cfg.Service.Address, Inbound: inbound, Admin: s.admin.Addr(),
		Tags: s.cfg.Service.Tags, Meta: s.cfg.Service.Meta, AppCheck: s.cfg.Service.Check, Ready: s.routable,
		CheckInterval: s.cfg.Discovery.Consul.CheckInterval, ResyncInterval: s.cfg.Discovery.Consul.ResyncInterval,
		Upstreams: registeredUpstreams(s.cfg.Upstreams, addrs), Transparent: s.cfg.Outbound.Transparent.Enabled,
		OutboundPort: portOf(addrs["outbound"]),
	})
	s.registrar.Store(r)
}

// registeredUpstreams are the upstreams the sidecar's registration lists (for Consul's UI and topology): those
// with a listener of their own, at its bound address, each destination service and datacenter once (Consul
// refuses a registration that lists one twice; an upstream routed by name has no bind port to list).
func registeredUpstreams(ups []proxy.UpstreamConfig, addrs map[string]string) []consul.RegisteredUpstream {
	var out []consul.RegisteredUpstream
	seen := map[[2]string]bool{}
	for _, u := range ups {
		listen := addrs["upstream/"+u.Name]
		key := [2]string{u.Service, u.Datacenter}
		if u.Listen == "" || listen == "" || u.Endpoints != nil || seen[key] {
			continue
		}
		seen[key] = true
		out = append(out, consul.RegisteredUpstream{Service: u.Service, Datacenter: u.Datacenter, Listen: listen})
	}
	return out
}

// portOf is the port of addr (host:port), 0 when it has none.
func portOf(addr string) int {
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		return 0
	}
	n, _ := strconv.Atoi(p)
	return n
}

// registerWait bounds how long registration waits for the sidecar to be routable; then it registers anyway (its
// /ready check starting critical).
const registerWait = 30 * time.Second

// deregister removes this instance from Consul at the start of shutdown, so that callers stop picking it while
// the listeners still accept during the drain delay.
func (s *sidecar) deregister() {
	r := s.registrar.Load()
	if r == nil {
		return
	}
	s.parts.stop(partRegistration)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := r.Deregister(ctx); err != nil {
		s.log.Warn("consul deregistration failed; the agent's check will mark this instance critical", "error", err.Error())
	}
}

// stopDiscovery ends the Consul watches after the proxy and the parts have stopped.
func (s *sidecar) stopDiscovery() {
	if s.consul != nil {
		s.consul.Close()
	}
}

// readyReason adds what Consul said to a readiness error, so /ready tells why an upstream has no endpoints yet.
func (s *sidecar) readyReason(err error) error {
	if err == nil || s.consul == nil {
		return err
	}
	if cerr := s.consul.Err(); cerr != nil {
		return fmt.Errorf("%w: %s", err, strings.ReplaceAll(cerr.Error(), "\n", "; "))
	}
	return err
}

// discoveryChanged reports a change that needs a restart.
func discoveryChanged(old, cur *fileConfig) bool {
	a, _ := yaml.Marshal(old.Discovery)
	b, _ := yaml.Marshal(cur.Discovery)
	return !bytes.Equal(a, b)
}
