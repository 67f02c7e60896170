package proxy

import (
	"context"
	"fmt"
	"log/slog"
	"net/http/httputil"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"meshlet.dev/meshlet/discovery"
	"meshlet.dev/meshlet/metrics"
	"meshlet.dev/meshlet/resilience"
)

// cluster is one destination of proxied calls and the endpoints that serve it: a configured upstream service
// (outbound), or the local app (inbound: the local-app cluster, whose one endpoint is service.address). It owns
// the endpoint set, the connection pools and the reverse proxy, and it is an http.RoundTripper that picks an
// endpoint for each attempt.
type cluster struct {
	name       string
	direction  string
	protocol   string       // as created: tcp or one of the HTTP family; a change between tcp and HTTP replaces it
	log        *slog.Logger // writes to logTo through the cluster itself (clusterHandler)
	logTo      slog.Handler // the proxy's log handler
	m          *metrics.Metrics
	obs        atomic.Pointer[observer] // made at the first request or connection (observe)
	tls        *tlsState                // nil: no TLS
	budget     *connBudget              // file descriptors; nil: none
	streamIdle time.Duration            // stream_idle_timeout of the upstream's direction; 0: none
	refused    *refusedLog              // refused and denied requests of the inbound direction, rate limited; nil outbound

	// cfg is the upstream's entry of the running config's upstreams (Proxy.cfg), swapped for the next config's on
	// reload: the settings are held once, not copied per cluster. Never written through.
	cfg       atomic.Pointer[UpstreamConfig]
	endpoints *endpointSet
	applyMu   sync.Mutex                            // orders the snapshots applied to endpoints (apply)
	transport transportSlot                         // built at the first attempt; replaced when a reload changes what they are built with
	rp        atomic.Pointer[httputil.ReverseProxy] // built at the first request (reverseProxy)
	// retry retries attempts through c: the reverse proxy's transport (retryOf), built at the first request.
	retry     atomic.Pointer[resilience.RetryTransport]
	res       atomic.Pointer[resState] // built at the first request (limits)
	lazyMu    sync.Mutex               // guards building transport, retry, res and rp, and their changes by reloads
	used      atomic.Bool              // transport or retry asked for since the last idle sweep (dropIdle)
	decisions *resilience.Decisions
	// appPorts are the inbound cluster's targets for the app's other ports (service.ports), fixed at Start; nil
	// for other clusters.
	appPorts map[uint16]*dialTarget
	// An implicit upstream (a service of the Consul mesh) costs no watch until its first use: lazy (set before the
	// cluster is published) makes it active.
	lazy   func()
	active atomic.Bool
	// plan is the discovery chain applied (chain.go); nil: the cluster's own endpoints for every request.
	plan  atomic.Pointer[plan]
	chain atomic.Pointer[chainState] // what /debug/upstreams shows of it; nil without a chain
}

// ensureActive makes an implicit upstream active before its first use (a redirected connection, a request routed
// by name), and waits up to its connect timeout for its first endpoints.
func (c *cluster) ensureActive() {
	if c.lazy == nil || c.active.Load() {
		return
	}
	c.lazy()
	c.endpoints.waitSnapshot(c.cfg.Load().ConnectTimeout)
}

// newCluster creates the cluster of cfg, which it keeps (and never changes): the caller does not change it either.
func newCluster(cfg *UpstreamConfig, direction string, m *metrics.Metrics, log *slog.Logger, tls *tlsState) *cluster {
	c := &cluster{
		name:      cfg.Name,
		direction: direction,
		protocol:  cfg.Protocol,
		logTo:     log.Handler(),
		m:         m,
		tls:       tls,
		decisions: resilience.NewDecisions(decisionsKept),
	}
	c.log = slog.New((*clusterHandler)(c))
	c.endpoints = newEndpointSet(cfg.Name, cfg.LB, cfg.SubsetSize, cfg.Resilience, m, c.decisions, c.log)
	if direction == metrics.Inbound {
		c.refused = &refusedLog{log: log}
	}
	c.cfg.Store(cfg)
	c.transport.c = c
	c.initResilience()
	return c
}

// observe returns the cluster's observer, made at the first call (its first request or connection): an upstream
// never used has none (nor, the observer's own rule, any metric series).
func (c *cluster) observe() *observer {
	if o := c.obs.Load(); o != nil {
		return o
	}
	return buildOnce(&c.lazyMu, &c.obs, func() *observer { return newObserver(c.m, c.direction, c.name) })
}

// reverseProxy returns the cluster's reverse proxy, built at the first call (the first request): an upstream
// never called holds none, nor its error logger. Once built it stays (it holds no connection).
func (c *cluster) reverseProxy() *httputil.ReverseProxy {
	return buildOnce(&c.lazyMu, &c.rp, func() *httputil.ReverseProxy {
		// FlushInterval stays 0: the reverse proxy flushes every write of a response of unknown length (gRPC,
		// streams, chunked) at once by itself, and buffers only responses whose length is known.
		return &httputil.ReverseProxy{
			Rewrite:        c.rewrite,
			Transport:      (*retryOf)(c),
			BufferPool:     copyBuffers,
			ErrorHandler:   c.proxyError,
			ModifyResponse: modifyResponse,
			ErrorLog:       slog.NewLogLogger(c.log.Handler(), slog.LevelDebug),
		}
	})
}

// clusterHandler is a cluster's log handler (the cluster itself: no object of its own): the records of logTo with
// the upstream and direction attributes first, as logTo.WithAttrs would give them; but they are added to each
// record as it is written instead of formatted ahead, so that an upstream that logs nothing costs no handler copy
// and no buffer.
type clusterHandler cluster

func (c *clusterHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return c.logTo.Enabled(ctx, l)
}

func (c *clusterHandler) Handle(ctx context.Context, r slog.Record) error {
	out := slog.NewRecord(r.Time, r.Level, r.Message, r.PC)
	out.AddAttrs(c.attrs()...)
	r.Attrs(func(a slog.Attr) bool {
		out.AddAttrs(a)
		return true
	})
	return c.logTo.Handle(ctx, out)
}

func (c *clusterHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return c.logTo.WithAttrs(c.attrs()).WithAttrs(as)
}

func (c *clusterHandler) WithGroup(name string) slog.Handler {
	return c.logTo.WithAttrs(c.attrs()).WithGroup(name)
}

func (c *clusterHandler) attrs() []slog.Attr {
	return []slog.Attr{slog.String("upstream", c.name), slog.String("direction", c.direction)}
}

// rewrite edits the outbound copy of the request: the URL names the upstream (RoundTrip puts the endpoint's
// address in its place); the Host the app sent is kept, so the far side sees what the app asked for. Request
// trailers are shared with the inbound request: the server fills their values only when the body ends, and the
// transport reads them only then, so the copy the reverse proxy made would send the keys without values.
func (c *cluster) rewrite(pr *httputil.ProxyRequest) {
	pr.Out.URL.Scheme = "http"
	pr.Out.URL.Host = c.name
	pr.Out.Host = pr.In.Host
	if pr.In.Trailer != nil {
		pr.Out.Trailer = pr.In.Trailer
	}
	ex := exchangeFrom(pr.Out.Context()) // (In's context is the server's: forwardAs)
	if ex != nil && ex.requestID != "" {
		pr.Out.Header[HeaderRequestID] = []string{ex.requestID}
	}
	if ex != nil && ex.route != nil {
		if ex.route.prefix != "" {
			p := ex.route.rewritePath(pr.In.URL.EscapedPath())
			u := *pr.Out.URL
			if u.Path, _ = url.PathUnescape(p); u.Path != p {
				u.RawPath = p
			} else {
				u.RawPath = ""
			}
			pr.Out.URL = &u
		}
		applyMods(pr.Out.Header, ex.split.reqMods)
	}
	if c.direction == metrics.Inbound {
		// The verified caller, for the app; a value the caller sent itself is never passed on.
		delete(pr.Out.Header, HeaderClientCert)
		if ex != nil {
			if v := c.clientCertHeader(ex.peer); v != "" {
				pr.Out.Header[HeaderClientCert] = []string{v}
			}
		}
	}
}

// setConfig swaps the settings that can change without replacing the upstream; cfg is kept as newCluster's is.
func (c *cluster) setConfig(cfg *UpstreamConfig) {
	old := c.cfg.Swap(cfg)
	c.setResilience(old.Resilience, cfg.Resilience)
	c.reloadTransports(old, cfg)
	c.endpoints.setPicking(cfg.LB, cfg.SubsetSize)
}

// watch applies the snapshots of ch until it closes; those that come after ctx ended are dropped (the upstream's
// endpoints have another source now).
func (c *cluster) watch(ctx context.Context, ch <-chan discovery.Snapshot) {
	for snap := range ch {
		c.apply(ctx, snap)
	}
}

// apply replaces the endpoints with snap, unless ctx (the watch that sent it; nil: none) has ended: a watch
// stopped by a reload may still be delivering while the endpoints' next source applies its own.
func (c *cluster) apply(ctx context.Context, snap discovery.Snapshot) {
	c.applyMu.Lock()
	defer c.applyMu.Unlock()
	if ctx == nil || ctx.Err() == nil {
		c.endpoints.update(snap)
	}
}

// touch notes a use of the parts built at the first request, for dropIdle; a read only, once set.
func (c *cluster) touch() {
	if !c.used.Load() {
		c.used.Store(true)
	}
}

// dropIdle drops the transports and the retry transport of a cluster that has not asked for them since the previous
// call (Proxy.sweepIdle: at least idleConnTimeout, after which its pools would have closed every idle connection
// anyway, and longer than a retry budget's window, after which a fresh budget is the same); its next request
// builds them again. A request that took them just before keeps using them: its connections close when idle, its
// retries count on the budget it has. The limiter stays: requests may still hold its slots.
func (c *cluster) dropIdle() {
	if c.used.Swap(false) {
		return
	}
	c.lazyMu.Lock()
	tr := c.transport.p.Swap(nil)
	c.retry.Store(nil)
	c.lazyMu.Unlock()
	if tr != nil {
		tr.closeIdle()
	}
}

// close releases pooled connections.
func (c *cluster) close() {
	if tr := c.transport.p.Load(); tr != nil {
		tr.closeIdle()
	}
}

// EndpointInfo is one endpoint in the /debug/upstreams view.
type EndpointInfo struct {
	ID          string            `json:"id"`
	Address     string            `json:"address"`
	Identity    string            `json:"identity,omitempty"`
	Meta        map[string]string `json:"meta,omitempty"`
	InFlight    int64             `json:"in_flight"`
	Requests    uint64            `json:"requests"`
	Failures    uint64            `json:"failures"`
	LastError   string            `json:"last_error"`
	LastErrorAt *time.Time        `json:"last_error_at,omitempty"`
	Recent      RecentOutcomes    `json:"recent"`
	Breaker     string            `json:"breaker,omitempty"` // closed, half_open, open; empty when breakers are off
	Ejected     bool              `json:"ejected"`           // out of load balancing
	// InSubset: one of the endpoints this sidecar calls (subset_size); false for all when there is no subset.
	InSubset bool `json:"in_subset,omitempty"`
}

// RecentOutcomes summarizes an endpoint's latest requests (at most 32).
type RecentOutcomes struct {
	Success int `json:"success"`
	Failure int `json:"failure"`
}

// UpstreamInfo is one upstream in the /debug/upstreams view.
type UpstreamInfo struct {
	Name      string `json:"name"`
	Direction string `json:"direction"`
	Protocol  string `json:"protocol"`
	Listen    string `json:"listen,omitempty"`
	Peer      string `json:"peer"`
	// Implicit: a service of the Consul mesh, not in the config (outbound.transparent.consul_services).
	Implicit  bool     `json:"implicit,omitempty"`
	Addresses []string `json:"addresses,omitempty"`
	LB        string   `json:"lb"`
	// SubsetSize is how many endpoints this sidecar calls (subset_size) when that is fewer than all; 0: all.
	SubsetSize int       `json:"subset_size,omitempty"`
	Timeout    string    `json:"timeout"`
	Index      uint64    `json:"index"`
	UpdatedAt  time.Time `json:"updated_at"`
	// Stale: discovery lost contact (Consul unreachable); the endpoints are the last known ones.
	Stale bool `json:"stale"`
	// LastContact is when discovery last heard from Consul; absent for static endpoints.
	LastContact *time.Time     `json:"last_contact,omitempty"`
	InFlight    int64          `json:"in_flight"`
	Endpoints   []EndpointInfo `json:"endpoints"`
	// RetryBudget is the number of retries the budget allows now.
	RetryBudget float64 `json:"retry_budget_remaining"`
	// LimitInUse is the number of requests holding a slot of max_requests.
	LimitInUse int `json:"limit_in_use"`
	// Decisions are the latest resilience decisions, newest first.
	Decisions []resilience.Decision `json:"decisions"`
	// Chain is the upstream's discovery chain (Consul): applied or refused, and why.
	Chain *chainState `json:"chain,omitempty"`
}

func (c *cluster) info() UpstreamInfo {
	cfg := c.cfg.Load()
	ui := UpstreamInfo{Name: c.name, Direction: c.direction, Protocol: cfg.Protocol, Listen: cfg.Listen,
		Peer: cfg.Peer, LB: cfg.LB, Timeout: cfg.Timeout.String(), Implicit: cfg.Implicit, Addresses: cfg.Addresses}
	c.endpoints.info(&ui)
	ui.RetryBudget = c.retryBudgetRemaining()
	if rs := c.res.Load(); rs != nil {
		ui.LimitInUse = rs.limiter.InUse()
	}
	ui.Decisions = c.decisions.Latest()
	ui.Chain = c.chain.Load()
	return ui
}

// runWatch starts watching the upstream's service on src; it returns when ctx ends and the watch has closed.
func (c *cluster) runWatch(ctx context.Context, src discovery.Source, service string, opts discovery.WatchOptions) error {
	ch, err := discovery.Watch(ctx, src, service, opts)
	if err != nil {
		return fmt.Errorf("watch %s: %w", service, err)
	}
	c.watch(ctx, ch)
	return nil
}
