package proxy

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"meshlet.dev/meshlet/grpcwire"
	"meshlet.dev/meshlet/metrics"
)

// proxyError is the reverse proxy's ErrorHandler: it maps a failed round trip to meshlet's answer (fail). The
// client's own faults and a client that went away come first: neither is held against the endpoint.
func (c *cluster) proxyError(w http.ResponseWriter, r *http.Request, err error) {
	ex := exchangeFrom(r.Context())
	grpc := grpcwire.IsGRPC(r.Header)
	var cf *clientFault
	if ex != nil && ex.body != nil {
		// A broken or stalled body may surface as another error (HTTP/1.1: a failed read on the connection
		// cancels the request), so the body says first.
		cf = ex.body.fault.Load()
	}
	switch {
	case cf != nil || errors.As(err, &cf):
		// The client's own input broke the request (counted by the listener's guarded handler).
		noteError(w, cf.msg)
		cf.write(w, grpc, true)
		return
	case ex != nil && ex.clientCtx.Err() != nil:
		// The client went away: nothing to answer, nothing to hold against the endpoint.
		c.observe().failed(reasonCanceled)
		noteError(w, err.Error())
		if rw, ok := w.(*responseWriter); ok {
			rw.code = StatusClientClosedRequest
		}
		return
	case idleFired(r.Context()):
		c.observe().failed(reasonIdle)
		msg := fmt.Sprintf("upstream %s: no byte either way for %s (stream_idle_timeout)", c.name, c.streamIdle)
		noteError(w, msg)
		a := answer{reason: reasonIdle, status: http.StatusRequestTimeout, code: grpcwire.DeadlineExceeded, msg: "meshlet: " + msg}
		a.write(w, grpc, true)
		return
	}
	status, reason, msg := c.failureOf(r, err)
	c.fail(w, r, grpc, status, reason, msg)
	// The client sees no addresses; the log, the access log and /debug/upstreams have the details.
	noteError(w, err.Error())
	var endpoint string
	if ex != nil {
		endpoint = ex.attempts.last()
	}
	c.log.Debug("upstream request failed", "reason", reason, "endpoint", endpoint, "error", err.Error())
}

// failureOf maps the error of a round trip that meshlet, not the client, failed to its status, reason and
// message: no endpoint 503, timeout 504, endpoint response headers too large 502, connect failure 502 (the local
// app down: 503, which callers retry elsewhere), anything else 502.
func (c *cluster) failureOf(r *http.Request, err error) (status int, reason, msg string) {
	var ce *connectError
	switch {
	case errors.Is(err, ErrNoEndpoint):
		return http.StatusServiceUnavailable, reasonNoEndpoint, "no endpoint available for upstream " + c.name
	case errors.Is(err, context.DeadlineExceeded) || r.Context().Err() == context.DeadlineExceeded || deadlineNear(r):
		return http.StatusGatewayTimeout, reasonTimeout, "upstream " + c.name + " timed out"
	case errors.As(err, new(*headersTooLargeError)):
		return http.StatusBadGateway, reasonHeadersTooLarge, "upstream " + c.name + ": endpoint response headers too large"
	case errors.As(err, &ce) && c.direction == metrics.Inbound:
		return http.StatusServiceUnavailable, reasonConnect, "upstream " + c.name + ": local app unreachable"
	case errors.As(err, &ce):
		return http.StatusBadGateway, reasonConnect, "upstream " + c.name + ": connection to endpoint failed"
	default:
		return http.StatusBadGateway, reasonOther, "upstream " + c.name + ": endpoint connection broken"
	}
}

// deadlineNear reports whether the request's deadline is all but reached: an endpoint that resets a call at the
// deadline meshlet handed it (grpc-timeout) may do so a moment before meshlet's own timer fires, and that is a
// timeout too.
func deadlineNear(r *http.Request) bool {
	dl, ok := r.Context().Deadline()
	return ok && time.Until(dl) < 20*time.Millisecond
}

// fail answers a request that meshlet could not proxy: a gRPC status in a trailers-only response for gRPC calls,
// an HTTP status with a one-line text body otherwise.
func (c *cluster) fail(w http.ResponseWriter, r *http.Request, grpc bool, status int, reason, msg string) {
	c.observe().failed(reason)
	noteError(w, msg)
	a := answer{reason: reason, status: status, code: grpcCodeForHTTP(status), msg: "meshlet: " + msg}
	if reason == reasonOverflow {
		a.code = grpcwire.ResourceExhausted
	}
	a.write(w, grpc, false)
}

// noteError records on w, meshlet's responseWriter, why the request failed, for the access log; other writers
// keep nothing.
func noteError(w http.ResponseWriter, msg string) {
	if rw, ok := w.(*responseWriter); ok {
		rw.errMsg = msg
	}
}
