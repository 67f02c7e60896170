package proxy

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptrace"
	"net/http/httputil"
	"sync/atomic"
	"time"

	"meshlet.dev/meshlet/discovery"
	"meshlet.dev/meshlet/grpcwire"
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
	protocol   string // as created: tcp or one of the HTTP family; a change between tcp and HTTP replaces it
	log        *slog.Logger
	m          *metrics.Metrics
	obs        *observer
	tls        *tlsState     // nil: no TLS
	budget     *connBudget   // file descriptors; nil: none
	streamIdle time.Duration // stream_idle_timeout of the upstream's direction; 0: none
	refused    refusedLog    // refused and denied requests of the inbound direction, rate limited

	cfg       atomic.Pointer[UpstreamConfig] // swapped on reload
	endpoints *endpointSet
	transport atomic.Pointer[transports] // replaced when a reload changes what the transports are built with
	rp        *httputil.ReverseProxy
	retry     *resilience.RetryTransport // the reverse proxy's transport: retries attempts through u
	res       atomic.Pointer[resState]
	decisions *resilience.Decisions
}

func newCluster(cfg UpstreamConfig, direction string, m *metrics.Metrics, log *slog.Logger, tls *tlsState) *cluster {
	c := &cluster{
		name:      cfg.Name,
		direction: direction,
		protocol:  cfg.Protocol,
		log:       log.With("upstream", cfg.Name, "direction", direction),
		m:         m,
		obs:       newObserver(m, direction, cfg.Name),
		tls:       tls,
		decisions: resilience.NewDecisions(decisionsKept),
	}
	c.endpoints = newEndpointSet(cfg.Name, cfg.LB, cfg.Resilience, m, c.decisions, c.log)
	c.refused.log = log
	c.cfg.Store(&cfg)
	c.transport.Store(c.newTransports(&cfg))
	c.initResilience(cfg.Resilience)
	// FlushInterval stays 0: the reverse proxy flushes every write of a response of unknown length (gRPC,
	// streams, chunked) at once by itself, and buffers only responses whose length is known.
	c.rp = &httputil.ReverseProxy{
		Rewrite:        c.rewrite,
		Transport:      c.retry,
		BufferPool:     copyBuffers,
		ErrorHandler:   c.proxyError,
		ModifyResponse: modifyResponse,
		ErrorLog:       slog.NewLogLogger(c.log.Handler(), slog.LevelDebug),
	}
	return c
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
}

// setConfig swaps the settings that can change without replacing the upstream.
func (c *cluster) setConfig(cfg UpstreamConfig) {
	old := c.cfg.Swap(&cfg)
	c.setResilience(cfg.Resilience)
	c.reloadTransports(old, &cfg)
	c.endpoints.setLB(cfg.LB)
}

// watch applies the snapshots of ch until it closes.
func (c *cluster) watch(ch <-chan discovery.Snapshot) {
	for snap := range ch {
		c.endpoints.update(snap)
	}
}

// RoundTrip implements http.RoundTripper for one attempt: it picks an endpoint (avoiding those this request
// already tried), passes its circuit breaker, and sends req with the base transport the upstream's peer and
// protocol call for. It never modifies req.
func (c *cluster) RoundTrip(req *http.Request) (*http.Response, error) {
	ri := requestInfoFrom(req.Context())
	var tried []*endpointState
	if ri != nil {
		tried = ri.tried
	}
	st, end, err := c.endpoints.choose(tried)
	if err != nil {
		return nil, fmt.Errorf("upstream %s: %w", c.name, err)
	}
	var clientCtx context.Context
	if ri != nil {
		ri.endpoint = st.hostport
		ri.tried = append(ri.tried, st)
		clientCtx = ri.clientCtx
	}
	// The attempt carries its target to the dial function (never looked up again there) and names it in the
	// URL, so that pooled connections serve only this target (dialtarget.go).
	cfg := c.cfg.Load()
	tgt := c.targetOf(st, cfg)
	out := withTarget(req, tgt)
	tr := c.transport.Load()
	base := tr.base(req.Header, tgt, cfg)
	if ri != nil && ri.abortBody != nil && base == http.RoundTripper(tr.h2c) && out.Body != nil {
		// An HTTP/2 stream that fails while its body writer waits for the client makes the HTTP/2 transport close
		// the body and wait for the writer; the reverse proxy's body does not pass Close on: end that Read.
		out.Body = &abortableBody{ReadCloser: out.Body, abort: ri.abortBody}
	}
	send := out
	if ri != nil && ri.abortBody != nil && base == http.RoundTripper(tr.h1) && out.Body != nil {
		// Until the response headers come, a broken connection ends a Read blocked on the client (watchedConn).
		var held atomic.Pointer[watchedConn]
		abort := &ri.abortBody
		send = out.WithContext(httptrace.WithClientTrace(out.Context(), &httptrace.ClientTrace{
			GotConn: func(info httptrace.GotConnInfo) {
				if wc, ok := info.Conn.(*watchedConn); ok {
					wc.onBroken.Store(abort)
					held.Store(wc)
				}
			},
		}))
		defer func() {
			if wc := held.Load(); wc != nil {
				wc.onBroken.CompareAndSwap(abort, nil) // the connection may already serve another request
			}
		}()
	}
	resp, err := base.RoundTrip(send)
	if err != nil {
		err = classifyHeaderOverflow(err, cfg)
		outcome := resilience.Outcome(nil, err)
		if clientCtx != nil && clientCtx.Err() != nil {
			outcome = resilience.ErrExcluded
		}
		end(outcome)
		return nil, err
	}
	if resp.StatusCode == http.StatusSwitchingProtocols {
		if ri != nil {
			ri.idle.pause() // a switched protocol is no stream: its tunnel is not timed
		}
		end(nil) // an upgraded connection is no longer a request in flight
		return resp, nil
	}
	db := &doneBody{ReadCloser: resp.Body, resp: resp, clientCtx: clientCtx, end: end}
	if ri != nil && ri.body != nil && req.ProtoMajor == 2 && base == http.RoundTripper(tr.h2c) {
		// The reverse proxy hands the transport a body whose Close does nothing; close the client's own.
		db.reqBody = ri.body
	}
	resp.Body = db
	return resp, nil
}

// modifyResponse is the reverse proxy's ModifyResponse: dropBrokenRequest, then keepTrailersOnly.
func modifyResponse(resp *http.Response) error {
	if err := dropBrokenRequest(resp); err != nil {
		return err
	}
	keepTrailersOnly(resp)
	return nil
}

// dropBrokenRequest drops the endpoint's answer to a request whose body the client broke (malformed, stalled):
// the endpoint answered a truncated request, and the client gets meshlet's answer instead (proxyError).
func dropBrokenRequest(resp *http.Response) error {
	if ri := requestInfoFrom(resp.Request.Context()); ri != nil && ri.body != nil {
		if f := ri.body.fault.Load(); f != nil {
			resp.Body.Close()
			return f
		}
	}
	return nil
}

// keepTrailersOnly makes a gRPC trailers-only response (the status in the headers, no body) leave meshlet as one:
// the reverse proxy would otherwise flush the headers of a response of unknown length at once, racing with the
// end of the stream, and a client that gets HEADERS without END_STREAM and then an empty DATA frame sees no
// status ("server closed the stream without sending trailers"). A known length of 0 lets the headers and the end
// of the stream go out together. Statuses in headers are only legal in trailers-only responses.
func keepTrailersOnly(resp *http.Response) {
	if resp.ContentLength == -1 && resp.Header.Get(grpcwire.HeaderStatus) != "" && grpcwire.IsGRPC(resp.Request.Header) {
		resp.ContentLength = 0
	}
}

// base returns the transport for a request with header h to target t: sidecars (peer: sidecar, or an endpoint
// discovery says is one) are spoken to over HTTP/2, apps in the upstream's protocol.
func (tr *transports) base(h http.Header, t *dialTarget, cfg *UpstreamConfig) http.RoundTripper {
	if t.sidecar {
		if isUpgrade(h) {
			return tr.h1 // HTTP/2 has no Upgrade: tunnel it over HTTP/1.1 between sidecars
		}
		return tr.h2c
	}
	if cfg.Protocol == ProtocolHTTP {
		return tr.h1
	}
	return tr.h2c
}

// close releases pooled connections.
func (c *cluster) close() {
	c.transport.Load().closeIdle()
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
}

// RecentOutcomes summarizes an endpoint's latest requests (at most 32).
type RecentOutcomes struct {
	Success int `json:"success"`
	Failure int `json:"failure"`
}

// UpstreamInfo is one upstream in the /debug/upstreams view.
type UpstreamInfo struct {
	Name      string    `json:"name"`
	Direction string    `json:"direction"`
	Protocol  string    `json:"protocol"`
	Listen    string    `json:"listen,omitempty"`
	Peer      string    `json:"peer"`
	LB        string    `json:"lb"`
	Timeout   string    `json:"timeout"`
	Index     uint64    `json:"index"`
	UpdatedAt time.Time `json:"updated_at"`
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
}

func (c *cluster) info() UpstreamInfo {
	cfg := c.cfg.Load()
	ui := UpstreamInfo{Name: c.name, Direction: c.direction, Protocol: cfg.Protocol, Listen: cfg.Listen,
		Peer: cfg.Peer, LB: cfg.LB, Timeout: cfg.Timeout.String()}
	c.endpoints.info(&ui)
	ui.RetryBudget = c.retry.Budget().Remaining()
	ui.LimitInUse = c.res.Load().limiter.InUse()
	ui.Decisions = c.decisions.Latest()
	return ui
}

// runWatch starts watching the upstream's service on src; it returns when ctx ends and the watch has closed.
func (c *cluster) runWatch(ctx context.Context, src discovery.Source, service string, opts discovery.WatchOptions) error {
	ch, err := discovery.Watch(ctx, src, service, opts)
	if err != nil {
		return fmt.Errorf("watch %s: %w", service, err)
	}
	c.watch(ch)
	return nil
}
