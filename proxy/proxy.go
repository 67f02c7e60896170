// Package proxy carries the local app's calls to its upstreams and other sidecars' calls to the local app: the
// listeners, the HTTP handler on httputil.ReverseProxy, the transports (HTTP/1.1, h2c), gRPC specifics, TCP
// passthrough, endpoint pickers and routing by name.
package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"meshlet.dev/meshlet/discovery"
	"meshlet.dev/meshlet/metrics"
	"meshlet.dev/meshlet/mtls"
	"meshlet.dev/meshlet/proxy/h1guard"
)

// Options are a Proxy's collaborators.
type Options struct {
	Logger    *slog.Logger     // required
	Metrics   *metrics.Metrics // required
	AccessLog bool             // one log line per request at info level
	// Discovery finds the endpoints of upstreams that list none in the config; nil means such upstreams have no
	// endpoint (every call gets 503 / UNAVAILABLE).
	Discovery discovery.Source
	// TLS is the source of this sidecar's certificate and trust roots; nil means no TLS: the inbound listener
	// and the calls to other sidecars are plaintext.
	TLS mtls.Source
	// TLSMinVersion is "1.3" (default) or "1.2".
	TLSMinVersion string
	// InboundTLS and OutboundTLS, when set, are asked at each inbound handshake and each dial to another sidecar
	// for what the mesh says of TLS (versions, TLS 1.2 cipher suites; zero: TLSMinVersion and Go's defaults):
	// Consul's mesh config entry (consul.ConfigEntries.InboundTLS, OutboundTLS).
	InboundTLS, OutboundTLS func() mtls.MeshTLS
	// Authorizer, when set with TLS, decides on each inbound connection and request besides inbound.tls.allow
	// (Consul's intentions).
	Authorizer Authorizer
}

// Proxy runs all of meshlet's data-plane listeners for one config. Create it with New, bind with Start, change it
// with Reload and stop it with Shutdown. Its methods are safe for concurrent use.
type Proxy struct {
	log        *slog.Logger
	m          *metrics.Metrics
	accessLog  *slog.Logger // nil when access logging is off
	refusedLog refusedLog
	budget     *connBudget                // file descriptors for client and upstream connections, shared by all
	heads      map[string]*h1guard.Budget // memory for HTTP/1.1 request heads being received, by direction
	discovery  discovery.Source           // nil: static endpoints only
	tls        *tlsState                  // nil: no TLS

	baseCtx    context.Context // parent of every request; cancelled when Shutdown gives up waiting
	cancelBase context.CancelFunc

	unknown *observer // requests for names that are no upstream
	routes  atomic.Pointer[routeTable]
	addrs   atomic.Pointer[addrTable] // upstreams[].addresses, for the transparent listener
	// transparentOutcomes is meshlet_outbound_connections_total; nil without outbound.transparent.
	transparentOutcomes *prometheus.CounterVec
	detections          *prometheus.CounterVec // meshlet_outbound_protocol_detections_total; nil likewise
	draining            atomic.Bool
	// idleSweep is how often sweepIdle looks for upstreams not called since its last look (idleConnTimeout).
	idleSweep time.Duration
	meshOnly  atomic.Bool // Consul's mesh entry says mesh_destinations_only (SetMeshDestinationsOnly)

	mu sync.Mutex // guards the fields below
	// cfg is the running config. Its Upstreams are the proxy's own copy, never changed once running (a reload
	// replaces the slice): each cluster's settings point into it (cluster.cfg), and UpstreamConfigs shares it.
	cfg Config
	// staticIndex numbers the snapshots of the config's endpoint lists, one per upstream applied (at start and at
	// each reload), as a watch's index numbers a source's.
	staticIndex uint64
	started     bool
	stopped     bool
	inbound     *cluster
	listeners   map[string]listener // by config field path of the listen address ("inbound", "outbound", upstream name)
	// upstreams are the upstreams by name; routes (storeRoutes) shares the map, so it is never changed once
	// published: Reload changes a copy.
	upstreams map[string]*upstreamEntry
	wg        sync.WaitGroup // serving goroutines and watches
}

// upstreamEntry is a configured upstream with its watch. An upstream with static endpoints has neither watch nor
// chain: its entry is a few words (issue 16).
type upstreamEntry struct {
	cluster *cluster
	// pending marks an implicit upstream whose watch has not started (false once it has, and for the others):
	// activate starts it at its first use, with the cluster's config.
	pending bool
	watch   *entryWatch // where the endpoints come from; nil: the config's list (static)
	chain   *entryChain // the discovery chain's state (chain.go); nil until the first chain
}

// entryWatch is the discovery watch of an upstream's endpoints.
type entryWatch struct {
	cancel  context.CancelFunc
	src     discovery.Source
	service string                 // the name watched on src
	opts    discovery.WatchOptions // tag and datacenter of a discovered upstream
}

// New validates cfg (after applying defaults) and returns a Proxy that has not bound anything yet. The proxy
// keeps a copy of cfg.Upstreams (UpstreamConfigs): the caller's stays its own.
func New(cfg Config, opts Options) (*Proxy, error) {
	cfg.Upstreams = slices.Clone(cfg.Upstreams)
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &Proxy{
		log:        opts.Logger.With("component", "proxy"),
		m:          opts.Metrics,
		discovery:  opts.Discovery,
		baseCtx:    ctx,
		cancelBase: cancel,
		cfg:        cfg,
		listeners:  map[string]listener{},
		upstreams:  map[string]*upstreamEntry{},
		unknown:    newObserver(opts.Metrics, metrics.Outbound, ""),
		idleSweep:  idleConnTimeout,
	}
	if opts.TLS != nil {
		p.tls = newTLSState(opts, cfg.Inbound.TLS)
	}
	p.refusedLog.log = p.log
	p.budget = newConnBudget(p.log)
	p.heads = map[string]*h1guard.Budget{
		metrics.Inbound:  h1guard.NewBudget(cfg.Inbound.Limits.MaxPendingHeaderBytes),
		metrics.Outbound: h1guard.NewBudget(cfg.Outbound.Limits.MaxPendingHeaderBytes),
	}
	p.resolveInboundMode(&p.cfg)
	if opts.AccessLog {
		p.accessLog = opts.Logger.With("component", "access")
	}
	empty := routeTable{}
	p.routes.Store(&empty)
	p.addrs.Store(&addrTable{})
	if cfg.Outbound.Transparent.Enabled {
		p.transparentOutcomes, p.detections = opts.Metrics.RegisterTransparent()
	}
	return p, nil
}

// Start binds every listener of the config and starts serving. If any address cannot be bound, nothing is left
// open and the error names the config field and address.
func (p *Proxy) Start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.started {
		return errors.New("proxy already started")
	}
	cfg := p.cfg
	bound := map[string]listener{}
	fail := func(err error) error {
		for _, l := range bound {
			l.closeUnserved()
		}
		return err
	}
	if cfg.Inbound.Listen != "" {
		ucfg := inboundUpstreamConfig(cfg)
		p.inbound = p.newCluster(&ucfg, metrics.Inbound)
		eps, err := discovery.ParseAddrs(ucfg.Endpoints)
		if err != nil {
			return err
		}
		p.inbound.endpoints.update(discovery.Snapshot{Service: cfg.Service.Name, Endpoints: eps, Index: 1})
		p.inbound.appPorts = p.inbound.newAppPortTargets(toPorts(cfg.Service.Ports))
		l, err := p.bind("inbound.listen", cfg.Inbound.Listen, metrics.Inbound, "inbound", p.inbound, nil)
		if err != nil {
			return fail(err)
		}
		bound["inbound"] = l
	}
	if cfg.Outbound.Listen != "" {
		l, err := p.bind("outbound.listen", cfg.Outbound.Listen, metrics.Outbound, "outbound", nil,
			http.HandlerFunc(p.serveRouted))
		if err != nil {
			return fail(err)
		}
		bound["outbound"] = l
	}
	ups := map[string]*cluster{}
	for i := range cfg.Upstreams {
		uc := &cfg.Upstreams[i]
		u := p.newCluster(uc, metrics.Outbound)
		ups[uc.Name] = u
		if uc.Listen == "" {
			continue
		}
		l, err := p.bind(fmt.Sprintf("upstreams[%d].listen", i), uc.Listen, metrics.Outbound, uc.Name, u, nil)
		if err != nil {
			return fail(err)
		}
		bound["upstream/"+uc.Name] = l
	}
	p.started = true
	for i := range cfg.Upstreams {
		p.addUpstream(&cfg.Upstreams[i], ups[cfg.Upstreams[i].Name])
	}
	p.storeRoutes()
	for key, l := range bound {
		p.listeners[key] = l
		p.serve(l)
	}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		p.sweepIdle(p.baseCtx)
	}()
	p.log.Info("proxy started", "listeners", len(bound), "upstreams", len(cfg.Upstreams))
	return nil
}

// newCluster creates the upstream of uc in direction, with the proxy's shared budgets and its direction's
// stream_idle_timeout.
func (p *Proxy) newCluster(uc *UpstreamConfig, direction string) *cluster {
	u := newCluster(uc, direction, p.m, p.log, p.tls)
	u.budget = p.budget
	u.streamIdle = p.cfg.Outbound.Limits.StreamIdleTimeout
	if direction == metrics.Inbound {
		u.streamIdle = p.cfg.Inbound.Limits.StreamIdleTimeout
	}
	return u
}

// inboundUpstreamConfig describes the local app as the only endpoint of the inbound direction.
// The local app is not retried and has no breaker (it is the only endpoint), but it has limits.
func inboundUpstreamConfig(cfg Config) UpstreamConfig {
	uc := UpstreamConfig{Name: cfg.Service.Name, Listen: cfg.Inbound.Listen, Protocol: cfg.Service.Protocol,
		Endpoints: []string{cfg.Service.Address}, Peer: PeerApp, LB: LBP2C, Timeout: cfg.Inbound.Timeout,
		ConnectTimeout: DefaultConnectTimeout, MaxResponseHeaderBytes: cfg.Inbound.MaxResponseHeaderBytes}
	uc.Resilience.Retry.MaxAttempts = 1
	uc.Resilience.Breaker.Disabled = true
	uc.Resilience.SetDefaults()
	return uc
}

// bind listens on addr and returns the listener that will serve u (or h, for the name-routed listener).
func (p *Proxy) bind(field, addr, direction, label string, u *cluster, h http.Handler) (listener, error) {
	ln, err := listen(field, addr)
	if err != nil {
		return nil, err
	}
	lim := p.cfg.Outbound.Limits
	if direction == metrics.Inbound {
		lim = p.cfg.Inbound.Limits
	}
	limited := newConnLimitListener(ln, lim.MaxConnections, p.budget, p.m.ConnectionsRefused.WithLabelValues(direction, label))
	ln = limited
	if direction == metrics.Inbound {
		ln = p.appPortListener(ln, limited.refused)
		if ln, err = p.secureInbound(ln, p.cfg.Inbound.TLS.Mode, u == nil || u.protocol != ProtocolTCP); err != nil {
			return nil, err
		}
	}
	if u != nil && u.protocol == ProtocolTCP {
		return newTCPProxy(u, ln, direction, label, p.log, lim.TCPIdleTimeout), nil
	}
	if field == "outbound.listen" && p.cfg.Outbound.Transparent.Enabled {
		lns := []net.Listener{ln}
		if twin := loopbackTwin(ln, p.log); twin != nil {
			lns = append(lns, limited.twin(twin)) // one max_connections for both
		}
		return p.newTransparentListener(lns, lim), nil
	}
	if h == nil {
		h = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { u.serveHTTP(w, r, p.accessLog) })
	}
	l := p.newHTTPListener(ln, direction, label, lim, h)
	if direction == metrics.Inbound {
		l.srv.ConnContext = withAppPort
	}
	return l, nil
}

// serve runs l in a goroutine owned by p.
func (p *Proxy) serve(l listener) {
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		l.serve()
	}()
}

// addUpstream registers u and starts watching its endpoints (an implicit upstream: at its first use, through
// cluster.ensureActive). Call with p.mu held.
func (p *Proxy) addUpstream(uc *UpstreamConfig, u *cluster) {
	e := &upstreamEntry{cluster: u}
	p.upstreams[uc.Name] = e
	if uc.Implicit {
		e.pending = true
		u.lazy = func() { p.activate(e) }
		return
	}
	p.startWatch(e, uc)
}

// activate makes an implicit upstream that is not active yet ready for use: it starts its watch.
func (p *Proxy) activate(e *upstreamEntry) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if e.pending && !p.stopped && p.upstreams[e.cluster.name] == e {
		e.pending = false
		p.startWatch(e, e.cluster.cfg.Load()) // the latest: a reload's setConfig keeps it current
	}
}

// startWatch points e at the source of uc's endpoints: the config's static list, applied here and at each reload
// (no watch, no goroutine: an idle upstream costs none), or the discovery source when the config lists none. Call
// with p.mu held.
func (p *Proxy) startWatch(e *upstreamEntry, uc *UpstreamConfig) {
	e.cluster.active.Store(true)
	if uc.Endpoints != nil || p.discovery == nil {
		e.watch = nil
		e.cluster.plan.Store(nil)
		e.cluster.chain.Store(nil)
		p.setStatic(e, uc)
		return
	}
	src, service, opts := p.discovery, uc.Service, uc.watchOptions()
	ctx, cancel := context.WithCancel(context.Background())
	e.watch = &entryWatch{cancel: cancel, src: src, service: service, opts: opts}
	if cs, ok := src.(discovery.ChainSource); ok {
		p.watchChain(ctx, e, cs, service) // its targets' watches end with ctx
	} else {
		e.cluster.plan.Store(nil)
		e.cluster.chain.Store(nil)
	}
	name := uc.Name
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		if err := e.cluster.runWatch(ctx, src, service, opts); err != nil {
			p.log.Error("watch failed", "upstream", name, "service", service, "error", err)
		}
	}()
}

// setStatic gives e the endpoints uc lists (validated already). Call with p.mu held, after stopping e's watch if it
// had one.
func (p *Proxy) setStatic(e *upstreamEntry, uc *UpstreamConfig) {
	eps, _ := discovery.ParseAddrs(uc.Endpoints)
	p.staticIndex++
	e.cluster.apply(nil, discovery.Snapshot{Service: uc.Name, Endpoints: eps, Index: p.staticIndex})
}

// sweepIdle drops, every idleSweep until ctx ends, what the upstreams not called since the previous sweep built
// at their first request (dropIdle): an upstream called once, or once in a while, holds it only while it is used.
func (p *Proxy) sweepIdle(ctx context.Context) {
	t := time.NewTicker(p.idleSweep)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		p.mu.Lock()
		cs := make([]*cluster, 0, len(p.upstreams)+1)
		for _, e := range p.upstreams {
			cs = append(cs, e.cluster)
		}
		if p.inbound != nil {
			cs = append(cs, p.inbound)
		}
		p.mu.Unlock()
		for _, c := range cs {
			c.dropIdle()
		}
	}
}

// storeRoutes rebuilds the name-routing table. Call with p.mu held.
func (p *Proxy) storeRoutes() {
	rt := newRouteTable(p.upstreams, p.cfg.Outbound.Domains)
	p.routes.Store(&rt)
	at := newAddrTable(p.upstreams)
	p.addrs.Store(&at)
}

// Drain marks the proxy as draining: Ready fails from now on, while the listeners keep serving.
func (p *Proxy) Drain() { p.draining.Store(true) }

// Ready returns nil when the proxy can route: started, not draining, and every upstream has received its first
// set of endpoints. Otherwise the error says what is missing.
func (p *Proxy) Ready() error {
	if p.draining.Load() {
		return errors.New("draining")
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.started {
		return errors.New("listeners not bound yet")
	}
	for name, e := range p.upstreams {
		if !e.cluster.cfg.Load().Implicit && !e.cluster.endpoints.hasSnapshot() {
			return fmt.Errorf("upstream %s: waiting for its first endpoints", name)
		}
	}
	return nil
}

// Upstreams returns the state of every upstream (and of the inbound direction) for /debug/upstreams.
func (p *Proxy) Upstreams() []UpstreamInfo {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []UpstreamInfo
	if p.inbound != nil {
		out = append(out, p.inbound.info())
	}
	for _, uc := range p.cfg.Upstreams {
		if e, ok := p.upstreams[uc.Name]; ok {
			out = append(out, e.cluster.info())
		}
	}
	return out
}

// UpstreamConfigs returns the upstreams of the running config, defaults applied (tls.mode resolved too). The
// slice is the proxy's own, shared: the caller must not change it; a reload replaces it (the next call returns
// the new one) and never changes it.
func (p *Proxy) UpstreamConfigs() []UpstreamConfig {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cfg.Upstreams
}

// Shutdown stops accepting on every listener and waits for in-flight requests and connections until ctx ends;
// then it closes what is left, stops the watches and returns. It is idempotent.
func (p *Proxy) Shutdown(ctx context.Context) error {
	p.Drain()
	p.mu.Lock()
	if p.stopped {
		p.mu.Unlock()
		p.wg.Wait()
		return nil
	}
	p.stopped = true
	listeners := make([]listener, 0, len(p.listeners))
	for _, l := range p.listeners {
		listeners = append(listeners, l)
	}
	p.mu.Unlock()
	err := shutdownAll(ctx, listeners)
	p.cancelBase() // ends hijacked (upgraded) connections that outlived the drain
	p.mu.Lock()
	for _, e := range p.upstreams {
		e.stopWatch()
		e.cluster.close()
	}
	if p.inbound != nil {
		p.inbound.close()
	}
	p.mu.Unlock()
	p.wg.Wait()
	return err
}

// shutdownAll shuts the listeners down in parallel.
func shutdownAll(ctx context.Context, ls []listener) error {
	errs := make([]error, len(ls))
	var wg sync.WaitGroup
	for i, l := range ls {
		wg.Go(func() { errs[i] = l.shutdown(ctx) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

// Addrs returns the bound address of every listener, keyed "inbound", "outbound" or "upstream/<name>"; useful when
// the config asks for port 0.
func (p *Proxy) Addrs() map[string]string {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make(map[string]string, len(p.listeners))
	for k, l := range p.listeners {
		out[k] = l.addr()
	}
	return out
}

// resolveInboundMode applies the default of inbound.tls.mode: mtls when TLS is configured, else disabled; and the
// same default to every upstream's tls.mode (resolveUpstreamTLS).
func (p *Proxy) resolveInboundMode(cfg *Config) {
	resolveUpstreamTLS(cfg, p.tls != nil)
	if cfg.Inbound.TLS.Mode != "" {
		return
	}
	cfg.Inbound.TLS.Mode = mtls.ModeDisabled
	if p.tls != nil {
		cfg.Inbound.TLS.Mode = mtls.ModeMTLS
	}
}
