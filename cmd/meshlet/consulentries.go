package main

// Consul config entries (service-defaults, service-router) applied to the upstreams found in Consul: merged into
// the upstream config as written in the file (explicit settings win) and applied through the proxy's reload path,
// which swaps per-upstream settings in place without dropping connections.

import (
	"context"
	"log/slog"
	"sync"

	"meshlet.dev/meshlet/consul"
	"meshlet.dev/meshlet/discovery"
	"meshlet.dev/meshlet/proxy"
)

// entriesPart is the config-entries watch with its applier: each change of the entries is applied at once.
// Ready is the entries' readiness.
type entriesPart struct{ s *sidecar }

func (e entriesPart) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	wg.Go(func() { e.s.entries.Run(ctx) })
	defer wg.Wait()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-e.s.entries.Changed():
			e.s.applyEntries()
		}
	}
}

func (e entriesPart) Ready() error { return e.s.entries.Ready() }

// withEntries returns cfg's proxy config with the config entries merged into every upstream found in Consul,
// and, in transparent mode, an implicit upstream for every other service of the mesh (consul.Mesh), defaults
// applied. Without Consul it is cfg's.
func (s *sidecar) withEntries(cfg *fileConfig) proxy.Config {
	pc := cfg.Config
	if s.entries == nil {
		return pc
	}
	explicit := cfg.explicit
	if explicit == nil && len(cfg.Upstreams) > 0 {
		explicit = cfg.Upstreams // a config not read from a file: as it is
	}
	pc.Upstreams = make([]proxy.UpstreamConfig, len(explicit))
	for i, uc := range explicit {
		uc.Pinned = proxy.Pinned{Timeout: uc.Timeout != 0, ConnectTimeout: uc.ConnectTimeout != 0,
			Retry: uc.Resilience.Retry.MaxAttempts != 0 || uc.Resilience.Retry.RetryOn != nil, LB: uc.LB != ""}
		if uc.Endpoints == nil {
			svc := uc.Service
			if svc == "" {
				svc = uc.Name
			}
			uc = uc.WithDiscovered(s.entries.Settings(cfg.Service.Name, svc))
		}
		pc.Upstreams[i] = uc
	}
	if s.mesh != nil {
		settings := func(svc string) discovery.UpstreamSettings { return s.entries.Settings(cfg.Service.Name, svc) }
		pc.Upstreams = append(pc.Upstreams, implicitUpstreams(s.mesh.Services(), pc.Upstreams, settings, s.log)...)
	}
	defaultTCP(pc.Upstreams, cfg.fromRegistration)
	pc.SetDefaults()
	return pc
}

// implicitUpstreams are the services of the mesh that no upstream of the config is (by name or service), each
// at its addresses that no upstream of the config claims (the config's win; among the mesh's services, the first
// by name), with the protocol Consul's service-defaults gives it, else auto (detected per connection).
func implicitUpstreams(mesh []consul.MeshService, explicit []proxy.UpstreamConfig,
	settingsOf func(service string) discovery.UpstreamSettings, log *slog.Logger) []proxy.UpstreamConfig {
	taken, claimed := map[string]bool{}, map[string]string{}
	for _, uc := range explicit {
		taken[uc.Name] = true
		if uc.Service != "" {
			taken[uc.Service] = true
		}
		for _, a := range uc.Addresses {
			if k, err := proxy.CanonicalAddress(a); err == nil {
				claimed[k] = uc.Name
			}
		}
	}
	var out []proxy.UpstreamConfig
	for _, svc := range mesh {
		if taken[svc.Name] {
			continue
		}
		if !proxy.ValidName(svc.Name) {
			log.Debug("consul mesh service not an implicit upstream: its name is no lowercase DNS label", "service", svc.Name)
			continue
		}
		uc := proxy.UpstreamConfig{Name: svc.Name, Service: svc.Name, Implicit: true, Protocol: proxy.ProtocolAuto}
		for _, a := range svc.Addresses {
			k, err := proxy.CanonicalAddress(a)
			if err != nil {
				continue
			}
			if prev, ok := claimed[k]; ok {
				log.Debug("consul mesh address left to another upstream", "service", svc.Name, "address", a, "upstream", prev)
				continue
			}
			claimed[k] = svc.Name
			uc.Addresses = append(uc.Addresses, a)
		}
		if len(uc.Addresses) == 0 {
			continue
		}
		settings := settingsOf(svc.Name)
		if settings.Protocol != "" {
			uc.Protocol = settings.Protocol // tcp too: Consul said so
		}
		out = append(out, uc.WithDiscovered(settings))
	}
	return out
}

// applyEntries re-applies the running config with the current entries.
func (s *sidecar) applyEntries() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.proxy.SetMeshDestinationsOnly(s.entries.MeshDestinationsOnly())
	merged := s.withEntries(s.cfg)
	if _, err := s.proxy.Reload(merged); err != nil {
		s.log.Error("consul config entries not applied; the running settings stay", "error", err.Error())
		return
	}
	s.cfg.Upstreams = s.proxy.UpstreamConfigs() // /debug/config shows what runs (merged's, held once)
	s.log.Info("consul config entries applied", "upstreams", len(merged.Upstreams))
}

// meshPart is the watch of the mesh's services (outbound.transparent.consul_services) with its applier: each
// change makes the implicit upstreams anew. Ready is the mesh's readiness.
type meshPart struct{ s *sidecar }

func (m meshPart) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	wg.Go(func() { m.s.mesh.Run(ctx) })
	defer wg.Wait()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-m.s.mesh.Changed():
			m.s.applyEntries()
		}
	}
}

func (m meshPart) Ready() error { return m.s.mesh.Ready() }

// entriesErr says why the config entries are not known yet (for /ready); nil without Consul.
func (s *sidecar) entriesErr() error {
	if s.entries == nil {
		return nil
	}
	return s.entries.Ready()
}
