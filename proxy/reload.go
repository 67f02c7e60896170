package proxy

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"time"

	"meshlet.dev/meshlet/metrics"
	"meshlet.dev/meshlet/resilience"
)

// removedListenerDrain bounds how long a listener removed by a reload may take to finish its connections.
const removedListenerDrain = 30 * time.Second

// Reload applies cfg to a running proxy without dropping connections: endpoint lists and per-upstream settings
// are swapped in place; added upstreams get their listeners; removed ones stop accepting and drain in the
// background. Changes to the service, the inbound listener or the outbound listener's address or limits need a restart:
// they are reported in the returned warnings and otherwise ignored. If cfg is invalid or a new listener cannot
// be bound, nothing changes and the error says why.
func (p *Proxy) Reload(cfg Config) (warnings []string, err error) {
	cfg.Upstreams = slices.Clone(cfg.Upstreams) // the proxy's own, as New's
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.started || p.stopped {
		return nil, errors.New("proxy is not running")
	}
	old := p.cfg
	p.resolveInboundMode(&cfg)
	if !reflect.DeepEqual(old.Service, cfg.Service) || !reflect.DeepEqual(old.Inbound, cfg.Inbound) {
		warnings = append(warnings, "service and inbound settings change only on restart; keeping the running ones")
		cfg.Service, cfg.Inbound = old.Service, old.Inbound
	}
	if old.Outbound.Limits != cfg.Outbound.Limits {
		warnings = append(warnings, "outbound.limits change only on restart; keeping the running ones")
		cfg.Outbound.Limits = old.Outbound.Limits
	}
	// outbound.transparent changes only on restart, but for subset_size: the implicit upstreams took it above
	// (SetDefaults), and it applies in place as an upstream's own does.
	keptT := old.Outbound.Transparent
	keptT.SubsetSize = cfg.Outbound.Transparent.SubsetSize
	if !reflect.DeepEqual(keptT, cfg.Outbound.Transparent) {
		warnings = append(warnings, "outbound.transparent changes only on restart (but for subset_size); keeping the running settings")
		cfg.Outbound.Transparent = keptT
	}
	if old.Outbound.Listen != cfg.Outbound.Listen {
		warnings = append(warnings, "outbound.listen changes only on restart; keeping "+old.Outbound.Listen)
		cfg.Outbound.Listen = old.Outbound.Listen
	}
	added, err := p.bindAdded(old, cfg)
	if err != nil {
		return nil, err
	}
	newNames, addedNames := map[string]bool{}, map[string]bool{}
	for _, uc := range cfg.Upstreams {
		newNames[uc.Name] = true
	}
	for _, c := range added {
		addedNames[c.uc.Name] = true
	}
	p.upstreams = maps.Clone(p.upstreams) // the published one is the name-routing table's (storeRoutes)
	// Remove upstreams that are gone or replaced.
	for name, e := range p.upstreams {
		if !newNames[name] || addedNames[name] {
			p.removeUpstream(name, e)
		}
		if !newNames[name] {
			// Gone: its gauges too (removeUpstream drops meshlet_upstream_endpoints), and with the retry budget's
			// the gauge's hold on the cluster. (A replaced upstream's retry budget reads the new cluster already:
			// newCluster set it.)
			p.m.RetryBudget.Delete(name)
			for _, state := range []string{resilience.StateClosed, resilience.StateHalfOpen, resilience.StateOpen} {
				p.m.BreakerEndpoints.DeleteLabelValues(name, state)
			}
			p.m.EjectedEndpoints.DeleteLabelValues(name)
		}
	}
	for i := range cfg.Upstreams {
		if uc := &cfg.Upstreams[i]; !addedNames[uc.Name] {
			p.updateUpstream(p.upstreams[uc.Name], uc)
		}
	}
	for _, c := range added {
		p.addUpstream(c.uc, c.cluster)
		if c.l != nil {
			p.listeners["upstream/"+c.uc.Name] = c.l
			p.serve(c.l)
		}
	}
	p.cfg = cfg
	p.storeRoutes()
	p.log.Info("config reloaded", "upstreams", len(cfg.Upstreams), "added", len(added))
	return warnings, nil
}

// addedUpstream is an upstream a reload creates, with its listener bound but not serving yet.
type addedUpstream struct {
	uc      *UpstreamConfig // in the new config's upstreams
	cluster *cluster
	l       listener // nil without a listen address
}

// bindAdded creates the upstreams of cfg that are new or replaced (another listen address, or a switch between
// tcp and HTTP) and binds their listeners; if one cannot be bound, it releases the others and nothing changes.
// Call with p.mu held.
func (p *Proxy) bindAdded(old, cfg Config) ([]addedUpstream, error) {
	oldByName := map[string]UpstreamConfig{}
	for _, uc := range old.Upstreams {
		oldByName[uc.Name] = uc
	}
	var added []addedUpstream
	release := func() {
		for _, c := range added {
			if c.l != nil {
				c.l.closeUnserved()
			}
		}
	}
	for i := range cfg.Upstreams {
		uc := &cfg.Upstreams[i]
		prev, ok := oldByName[uc.Name]
		// http, http2 and grpc switch in place (the transport is chosen per request); tcp is another listener.
		if ok && prev.Listen == uc.Listen && (prev.Protocol == ProtocolTCP) == (uc.Protocol == ProtocolTCP) {
			continue
		}
		u := p.newCluster(uc, metrics.Outbound)
		var l listener
		if uc.Listen != "" {
			if ok && prev.Listen == uc.Listen {
				release() // same address, tcp ⇄ HTTP: the old listener would have to go first; we cannot bind twice
				return nil, fmt.Errorf("upstreams[%d].protocol: switching a listener between tcp and HTTP needs a restart", i)
			}
			var err error
			if l, err = p.bind(fmt.Sprintf("upstreams[%d].listen", i), uc.Listen, metrics.Outbound, uc.Name, u, nil); err != nil {
				release()
				return nil, err
			}
		}
		added = append(added, addedUpstream{uc, u, l})
	}
	return added, nil
}

// updateUpstream applies uc to an upstream that stays: its settings in place, and its endpoint source (static
// list, or discovery with its service and options) restarted only when it changed. Call with p.mu held.
func (p *Proxy) updateUpstream(e *upstreamEntry, uc *UpstreamConfig) {
	old := e.cluster.cfg.Load()
	e.cluster.setConfig(uc)
	if !reflect.DeepEqual(old, uc) {
		defer p.reapplyChain(e) // the plan was built from the old settings (a restarted watch sends its own)
	}
	if e.pending { // an implicit upstream not used yet: its watch starts with the latest config (the cluster's)
		return
	}
	if uc.Endpoints == nil && p.discovery != nil {
		if w := e.watch; w == nil || w.src != p.discovery || w.service != uc.Service || w.opts != uc.watchOptions() {
			e.stopWatch()
			p.startWatch(e, uc)
		}
		return
	}
	if e.watch != nil {
		e.stopWatch()
		p.startWatch(e, uc)
		return
	}
	p.setStatic(e, uc)
}

// removeUpstream stops an upstream's listener (draining it in the background) and its watch. Call with p.mu held.
func (p *Proxy) removeUpstream(name string, e *upstreamEntry) {
	delete(p.upstreams, name)
	p.m.Endpoints.DeleteLabelValues(name)
	// The cluster's breakers leave the gauges (a replacement counts its own under the same name); its targets' watches
	// end with the entry's, and their series go.
	e.cluster.endpoints.retire()
	if e.chain != nil {
		for _, tw := range e.chain.targets {
			p.dropTarget(tw)
		}
	}
	p.m.ChainRefused.DeleteLabelValues(name)
	key := "upstream/" + name
	if l, ok := p.listeners[key]; ok {
		delete(p.listeners, key)
		w := e.watch // an upstream with a listener is not implicit: it has a watch, or static endpoints
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			ctx, cancel := context.WithTimeout(p.baseCtx, removedListenerDrain)
			defer cancel()
			l.shutdown(ctx)
			if w != nil {
				w.cancel()
			}
			e.cluster.close()
		}()
		return
	}
	e.stopWatch()
	e.cluster.close()
}

// stopWatch stops e's watch, if it has one. Call with p.mu held.
func (e *upstreamEntry) stopWatch() {
	e.pending = false
	if e.watch != nil {
		e.watch.cancel()
	}
}
