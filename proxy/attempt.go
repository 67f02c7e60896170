package proxy

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptrace"
	"sync/atomic"

	"meshlet.dev/meshlet/grpcwire"
	"meshlet.dev/meshlet/resilience"
)

// RoundTrip implements http.RoundTripper for one attempt: it picks an endpoint (avoiding those this request
// already tried), passes its circuit breaker, and sends req with the base transport the upstream's peer and
// protocol call for. It never modifies req.
func (c *cluster) RoundTrip(req *http.Request) (*http.Response, error) {
	ex := exchangeFrom(req.Context())
	if ex == nil {
		ex = &exchange{} // a request that did not come through serveHTTP (tests): nothing to avoid, no client to watch
	}
	st, end, err := c.choose(ex)
	if err != nil {
		return nil, fmt.Errorf("upstream %s: %w", c.name, err)
	}
	ex.attempts.add(st)
	clientCtx := ex.clientCtx
	// The attempt carries its target to the dial function (never looked up again there) and names it in the
	// URL, so that pooled connections serve only this target (dialtarget.go).
	cfg := c.cfg.Load()
	tgt := c.targetOf(st, cfg)
	if ex.appPort != 0 {
		if tgt = c.appPorts[ex.appPort]; tgt == nil {
			end(resilience.ErrExcluded)
			return nil, errNoDialTarget // cannot happen: the listener admits only service.ports
		}
	}
	out := withTarget(req, tgt)
	if ex.split != nil && ex.split.connectTimeout > 0 {
		out = out.WithContext(context.WithValue(out.Context(), connectTimeoutKey{}, ex.split.connectTimeout))
	}
	tr := c.transport.Load()
	base := tr.base(req.Header, tgt, cfg)
	if ex.abortBody != nil && base == http.RoundTripper(tr.h2c) && out.Body != nil {
		// An HTTP/2 stream that fails while its body writer waits for the client makes the HTTP/2 transport close
		// the body and wait for the writer; the reverse proxy's body does not pass Close on: end that Read.
		out.Body = &abortableBody{ReadCloser: out.Body, abort: ex.abortBody}
	}
	send := out
	h1c := base == http.RoundTripper(tr.h1) && h1Eligible(out, tgt, ex.bodyWhole)
	h2own := base == http.RoundTripper(tr.h2c) && h2Eligible(out, ex.wholeBody())
	if ex.abortBody != nil && base == http.RoundTripper(tr.h1) && out.Body != nil {
		// Until the response headers come, a broken connection ends a Read blocked on the client (watchedConn).
		var held atomic.Pointer[watchedConn]
		abort := &ex.abortBody
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
	var resp *http.Response
	switch {
	case h1c:
		resp, err = tr.h1c.roundTrip(send)
	case h2own:
		resp, err = tr.h2.roundTrip(send)
	default:
		resp, err = base.RoundTrip(send)
	}
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
		ex.idle.pause() // a switched protocol is no stream: its tunnel is not timed
		end(nil)        // an upgraded connection is no longer a request in flight
		return resp, nil
	}
	db := &doneBody{ReadCloser: resp.Body, resp: resp, clientCtx: clientCtx, end: end}
	if ex.body != nil && req.ProtoMajor == 2 && base == http.RoundTripper(tr.h2c) {
		// The reverse proxy hands the transport a body whose Close does nothing; close the client's own.
		db.reqBody = ex.body
	}
	resp.Body = db
	return resp, nil
}

// choose picks the endpoint of an attempt: from the cluster's endpoints, or, with a discovery chain, from the
// request's targets in order (the primary's, then its failover's when the primary has none available).
func (c *cluster) choose(ex *exchange) (*endpointState, func(error), error) {
	if ex.split == nil {
		return c.endpoints.choose(ex.attempts.tried)
	}
	var err error
	for _, set := range ex.split.targets {
		var st *endpointState
		var end func(error)
		if st, end, err = set.chooseKey(ex.attempts.tried, ex.hashKey, ex.hasKey); err == nil {
			return st, end, nil
		}
	}
	return nil, nil, err
}

// connectTimeoutKey carries a discovery-chain resolver's connect timeout to the dial function.
type connectTimeoutKey struct{}

// modifyResponse is the reverse proxy's ModifyResponse: dropBrokenRequest, then keepTrailersOnly, then the
// discovery chain's response header changes.
func modifyResponse(resp *http.Response) error {
	if err := dropBrokenRequest(resp); err != nil {
		return err
	}
	keepTrailersOnly(resp)
	if ex := exchangeFrom(resp.Request.Context()); ex != nil && ex.split != nil {
		applyMods(resp.Header, ex.split.respMods)
	}
	return nil
}

// dropBrokenRequest drops the endpoint's answer to a request whose body the client broke (malformed, stalled):
// the endpoint answered a truncated request, and the client gets meshlet's answer instead (proxyError).
func dropBrokenRequest(resp *http.Response) error {
	if ex := exchangeFrom(resp.Request.Context()); ex != nil && ex.body != nil {
		if f := ex.body.fault.Load(); f != nil {
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

// base returns the transport for a request with header h to target t: meshlet sidecars (peer: sidecar, or an
// endpoint discovery says is one) are spoken to over HTTP/2, apps and foreign sidecars (Consul's built-in proxy
// relays the bytes to its app as they are; Envoy expects the service's protocol) in the upstream's protocol, as
// Consul's Envoy does: HTTP/1.1 for http, HTTP/2 for http2 and grpc.
func (tr *transports) base(h http.Header, t *dialTarget, cfg *UpstreamConfig) http.RoundTripper {
	if t.sidecar && !t.foreign {
		if isUpgrade(h) {
			return tr.h1 // HTTP/2 has no Upgrade: tunnel it over HTTP/1.1 between sidecars
		}
		return tr.h2c
	}
	if cfg.Protocol == ProtocolHTTP || cfg.Protocol == ProtocolAuto {
		return tr.h1
	}
	return tr.h2c
}
