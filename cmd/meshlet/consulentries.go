package main

// Consul config entries (service-defaults, service-router) applied to the upstreams found in Consul: merged into
// the upstream config as written in the file (explicit settings win) and applied through the proxy's reload path,
// which swaps per-upstream settings in place without dropping connections.

import (
	"context"
	"sync"

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
// defaults applied. Without Consul it is cfg's.
func (s *sidecar) withEntries(cfg *fileConfig) proxy.Config {
	pc := cfg.Config
	if s.entries == nil || cfg.explicit == nil {
		return pc
	}
	pc.Upstreams = make([]proxy.UpstreamConfig, len(cfg.explicit))
	for i, uc := range cfg.explicit {
		if uc.Endpoints == nil {
			svc := uc.Service
			if svc == "" {
				svc = uc.Name
			}
			uc = uc.WithDiscovered(s.entries.Settings(cfg.Service.Name, svc))
		}
		pc.Upstreams[i] = uc
	}
	pc.SetDefaults()
	return pc
}

// applyEntries re-applies the running config with the current entries.
func (s *sidecar) applyEntries() {
	s.mu.Lock()
	defer s.mu.Unlock()
	merged := s.withEntries(s.cfg)
	if _, err := s.proxy.Reload(merged); err != nil {
		s.log.Error("consul config entries not applied; the running settings stay", "error", err.Error())
		return
	}
	s.cfg.Upstreams = merged.Upstreams // /debug/config shows what runs
	s.log.Info("consul config entries applied", "upstreams", len(merged.Upstreams))
}

// entriesErr says why the config entries are not known yet (for /ready); nil without Consul.
func (s *sidecar) entriesErr() error {
	if s.entries == nil {
		return nil
	}
	return s.entries.Ready()
}
