package proxy

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"time"

	"meshlet.dev/meshlet/discovery"
	"meshlet.dev/meshlet/metrics"
)

// removedListenerDrain bounds how long a listener removed by a reload may take to finish its connections.
const removedListenerDrain = 30 * time.Second

// Reload applies cfg to a running proxy without dropping connections: endpoint lists and per-upstream settings
// are swapped in place; added upstreams get their listeners; removed ones stop accepting and drain in the
// background. Changes to the service, the inbound listener or the outbound listener's address need a restart:
// they are reported in the returned warnings and otherwise ignored. If cfg is invalid or a new listener cannot
// be bound, nothing changes and the error says why.
func (p *Proxy) Reload(cfg Config) (warnings []string, err error) {
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
	if old.Outbound.Listen != cfg.Outbound.Listen {
		warnings = append(warnings, "outbound.listen changes only on restart; keeping "+old.Outbound.Listen)
		cfg.Outbound.Listen = old.Outbound.Listen
	}
	oldByName := map[string]UpstreamConfig{}
	for _, uc := range old.Upstreams {
		oldByName[uc.Name] = uc
	}
	// Bind the listeners of new and replaced upstreams first, so that a failure leaves everything as it was.
	type change struct {
		uc UpstreamConfig
		u  *upstream
		l  listener
	}
	var added []change
	for i, uc := range cfg.Upstreams {
		prev, ok := oldByName[uc.Name]
		// http, http2 and grpc switch in place (the transport is chosen per request); tcp is another listener.
		if ok && prev.Listen == uc.Listen && (prev.Protocol == ProtocolTCP) == (uc.Protocol == ProtocolTCP) {
			continue
		}
		u := newUpstream(uc, metrics.Outbound, p.m, p.log, p.tls)
		var l listener
		if uc.Listen != "" {
			if ok && prev.Listen == uc.Listen {
				// Same address, new protocol: the old listener must go first; we cannot bind twice.
				return nil, fmt.Errorf("upstreams[%d].protocol: changing the protocol of a listener needs a restart", i)
			}
			l, err = p.bind(fmt.Sprintf("upstreams[%d].listen", i), uc.Listen, metrics.Outbound, uc.Name, u, nil)
			if err != nil {
				for _, c := range added {
					if c.l != nil {
						c.l.closeUnserved()
					}
				}
				return nil, err
			}
		}
		added = append(added, change{uc, u, l})
	}
	newNames := map[string]bool{}
	for _, uc := range cfg.Upstreams {
		newNames[uc.Name] = true
	}
	addedNames := map[string]bool{}
	for _, c := range added {
		addedNames[c.uc.Name] = true
	}
	// Remove upstreams that are gone or replaced.
	for name, e := range p.upstreams {
		if newNames[name] && !addedNames[name] {
			continue
		}
		p.removeUpstream(name, e)
	}
	// Update the ones that stay.
	for _, uc := range cfg.Upstreams {
		if addedNames[uc.Name] {
			continue
		}
		e := p.upstreams[uc.Name]
		e.u.setConfig(uc)
		if uc.Endpoints == nil && p.discovery != nil {
			if e.src != p.discovery || e.service != uc.Service || e.opts != uc.watchOptions() {
				e.cancelWatch()
				p.startWatch(e, uc)
			}
			continue
		}
		if e.src != p.static {
			e.cancelWatch()
			p.startWatch(e, uc)
			continue
		}
		eps, _ := discovery.ParseAddrs(uc.Endpoints)
		p.static.Set(uc.Name, eps)
	}
	for _, c := range added {
		p.addUpstream(c.uc, c.u)
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

// removeUpstream stops an upstream's listener (draining it in the background) and its watch. Call with p.mu held.
func (p *Proxy) removeUpstream(name string, e *upstreamEntry) {
	delete(p.upstreams, name)
	p.m.Endpoints.DeleteLabelValues(name)
	key := "upstream/" + name
	if l, ok := p.listeners[key]; ok {
		delete(p.listeners, key)
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			ctx, cancel := context.WithTimeout(p.baseCtx, removedListenerDrain)
			defer cancel()
			l.shutdown(ctx)
			e.cancelWatch()
			e.u.close()
		}()
		return
	}
	e.cancelWatch()
	e.u.close()
}
