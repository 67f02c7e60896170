package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"

	"meshlet.dev/meshlet/grpcwire"
	"meshlet.dev/meshlet/metrics"
	"meshlet.dev/meshlet/proxy/h1guard"
	"meshlet.dev/meshlet/resilience"
)

// Status written for a request whose client went away before its response was complete (nginx's convention).
const StatusClientClosedRequest = 499

// requestInfo travels in the outbound request's context so that the transport can report what it chose.
type requestInfo struct {
	clientCtx context.Context  // the inbound request's context, without meshlet's timeout
	body      *countingBody    // the inbound request's body; nil when it has none
	abortBody func()           // ends a Read blocked on the inbound body (abortableBody, watchedConn); nil for HTTP/1.1
	idle      *streamIdle      // the request's stream_idle_timeout; nil when off
	tried     []*endpointState // endpoints the attempts went to, in order
	endpoint  string
	reason    string // set when meshlet failed the request itself
	errMsg    string
}

type requestInfoKey struct{}

func requestInfoFrom(ctx context.Context) *requestInfo {
	ri, _ := ctx.Value(requestInfoKey{}).(*requestInfo)
	return ri
}

// ServeHTTP proxies one request to the upstream: it applies the timeout, records metrics and the access log,
// and leaves the inbound request untouched (the reverse proxy works on a copy).
func (c *cluster) serveHTTP(w http.ResponseWriter, r *http.Request, alog *slog.Logger) {
	start := time.Now()
	grpc := grpcwire.IsGRPC(r.Header)
	rw := &responseWriter{ResponseWriter: w}
	ri := &requestInfo{clientCtx: r.Context()}
	var body *countingBody

	c.obs.inFlight.Inc()
	defer func() {
		p := recover()
		c.obs.inFlight.Dec()
		code := rw.code
		if p != nil && ri.clientCtx.Err() != nil {
			code = StatusClientClosedRequest
		}
		if code == 0 {
			code = http.StatusOK
		}
		var rx int64
		if body != nil {
			rx = body.n.Load()
		}
		grpcCode := notGRPC
		if grpc {
			grpcCode = rw.grpcStatus()
		}
		c.obs.record(code, grpcCode, time.Since(start), rx, rw.written)
		if alog != nil {
			alog.LogAttrs(r.Context(), slog.LevelInfo, "access",
				slog.String("direction", c.direction), slog.String("upstream", c.name),
				slog.String("method", r.Method), slog.String("authority", r.Host), slog.String("path", r.URL.Path),
				slog.String("proto", r.Proto), slog.Int("status", code), slog.String("grpc_status", grpcCodeName(grpcCode)),
				slog.Float64("duration_ms", float64(time.Since(start).Microseconds())/1000),
				slog.Int64("bytes_in", rx), slog.Int64("bytes_out", rw.written),
				slog.String("endpoint", ri.endpoint), slog.String("error", ri.errMsg))
		}
		if p != nil {
			panic(p)
		}
	}()

	if r.Method == http.MethodConnect {
		c.fail(rw, r, grpc, http.StatusMethodNotAllowed, reasonOther, "CONNECT is not supported", ri)
		return
	}
	if !validTarget(r.URL.RawQuery) || !validTarget(r.URL.Opaque) {
		// An HTTP/2 :path may carry a space or a control byte in its query, which an HTTP/1.1 request line
		// cannot: forwarded as is, it would split the line at the endpoint.
		c.m.RefusedRequests.WithLabelValues(c.direction, refusedTarget).Inc()
		c.fail(rw, r, grpc, http.StatusBadRequest, refusedTarget, "invalid byte in the request target", ri)
		return
	}
	in := r // the request to forward: inbound, a copy with the normalized path that was authorized
	if c.direction == metrics.Inbound {
		var ok bool
		if in, ok = c.inboundRequest(rw, r, grpc, ri); !ok {
			return
		}
	}
	release, err := c.acquire(r.Context())
	if err != nil {
		var oe *resilience.OverflowError
		if errors.As(err, &oe) {
			c.m.LimitOverflows.WithLabelValues(c.name, oe.Limit).Inc()
			c.decisions.Add("overflow", "", "max_"+oe.Limit+" full")
			c.fail(rw, r, grpc, http.StatusServiceUnavailable, reasonOverflow,
				"upstream "+c.name+": too many requests in flight (max_"+oe.Limit+")", ri)
		} else {
			rw.code = StatusClientClosedRequest
		}
		return
	}
	defer release()
	cfg := c.cfg.Load()
	ctx := context.WithValue(r.Context(), requestInfoKey{}, ri)
	timeout, limited := cfg.Timeout, cfg.Timeout > 0
	if grpc {
		// A grpc-timeout of 0 is a deadline already past, not "no deadline".
		if d, ok := grpcwire.ParseTimeout(r.Header.Get(grpcwire.HeaderTimeout)); ok && (!limited || d < timeout) {
			timeout, limited = d, true
		}
	}
	if limited {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	if r.Body != nil && r.Body != http.NoBody {
		body = &countingBody{ReadCloser: r.Body}
		ri.body = body
		if r.ProtoMajor == 1 {
			// Let the app stream its request body while the response streams back (bidirectional streams).
			_ = http.NewResponseController(w).EnableFullDuplex()
		} else {
			// Closing an HTTP/2 body ends a Read under way. (An HTTP/1.1 body's Close waits for it instead, and a
			// read deadline would cancel the request: a Read stalled on an HTTP/1.1 client ends with its data, or
			// with the listener's read_body_timeout.)
			ri.abortBody = func() { body.Close() }
		}
	}
	if c.streamIdle > 0 {
		// When idle, a transport waiting for the client's HTTP/2 body must return too (abortBody).
		ri.idle, ctx = newStreamIdle(ctx, c.streamIdle, ri.abortBody)
		defer ri.idle.stop()
		rw.idle = ri.idle
		if body != nil {
			body.idle = ri.idle
		}
	}
	out := in.WithContext(ctx)
	if body != nil {
		out.Body = body
	}
	c.rp.ServeHTTP(rw, out)
}

// proxyError is the reverse proxy's ErrorHandler: it maps a failed round trip to a status.
func (c *cluster) proxyError(w http.ResponseWriter, r *http.Request, err error) {
	ri := requestInfoFrom(r.Context())
	grpc := grpcwire.IsGRPC(r.Header)
	var ce *connectError
	var cf *clientFault
	if ri != nil && ri.body != nil {
		// A broken or stalled body may surface as another error (HTTP/1.1: a failed read on the connection
		// cancels the request), so the body says first.
		cf = ri.body.fault.Load()
	}
	switch {
	case cf != nil || errors.As(err, &cf):
		// The client's own input broke the request (counted by the listener's guarded handler).
		if ri != nil {
			ri.reason, ri.errMsg = reasonRefused, cf.msg
		}
		cf.write(w, grpc, true)
		return
	case ri != nil && ri.clientCtx.Err() != nil:
		// The client went away: nothing to answer, nothing to hold against the endpoint.
		c.obs.errors[reasonCanceled].Inc()
		ri.reason, ri.errMsg = reasonCanceled, err.Error()
		if rw, ok := w.(*responseWriter); ok {
			rw.code = StatusClientClosedRequest
		}
	case idleFired(r.Context()):
		c.obs.errors[reasonIdle].Inc()
		msg := fmt.Sprintf("upstream %s: no byte either way for %s (stream_idle_timeout)", c.name, c.streamIdle)
		if ri != nil {
			ri.reason, ri.errMsg = reasonIdle, msg
		}
		a := answer{reason: reasonIdle, status: http.StatusRequestTimeout, code: codes.DeadlineExceeded, msg: "meshlet: " + msg}
		a.write(w, grpc, true)
		return
	case errors.Is(err, ErrNoEndpoint):
		c.fail(w, r, grpc, http.StatusServiceUnavailable, reasonNoEndpoint,
			"no endpoint available for upstream "+c.name, ri)
	case errors.Is(err, context.DeadlineExceeded) || r.Context().Err() == context.DeadlineExceeded || deadlineNear(r):
		c.fail(w, r, grpc, http.StatusGatewayTimeout, reasonTimeout, "upstream "+c.name+" timed out", ri)
	case errors.As(err, new(*headersTooLargeError)):
		c.fail(w, r, grpc, http.StatusBadGateway, reasonHeadersTooLarge, "upstream "+c.name+": endpoint response headers too large", ri)
	case errors.As(err, &ce) && c.direction == metrics.Inbound:
		// The local app is down: this instance is unavailable (503), which callers retry elsewhere.
		c.fail(w, r, grpc, http.StatusServiceUnavailable, reasonConnect, "upstream "+c.name+": local app unreachable", ri)
	case errors.As(err, &ce):
		c.fail(w, r, grpc, http.StatusBadGateway, reasonConnect, "upstream "+c.name+": connection to endpoint failed", ri)
	default:
		c.fail(w, r, grpc, http.StatusBadGateway, reasonOther, "upstream "+c.name+": endpoint connection broken", ri)
	}
	if ri != nil && ri.reason != reasonCanceled {
		// The client sees no addresses; the log, the access log and /debug/upstreams have the details.
		ri.errMsg = err.Error()
		c.log.Debug("upstream request failed", "reason", ri.reason, "endpoint", ri.endpoint, "error", err.Error())
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
func (c *cluster) fail(w http.ResponseWriter, r *http.Request, grpc bool, status int, reason, msg string, ri *requestInfo) {
	if c, ok := c.obs.errors[reason]; ok {
		c.Inc()
	}
	if ri != nil {
		ri.reason, ri.errMsg = reason, msg
	}
	a := answer{reason: reason, status: status, code: grpcCodeForHTTP(status), msg: "meshlet: " + msg}
	if reason == reasonOverflow {
		a.code = codes.ResourceExhausted
	}
	a.write(w, grpc, false)
}

// responseWriter records the status and body size of a response. It passes flushes, hijacks and full-duplex
// requests through to the server's writer (http.ResponseController finds it with Unwrap).
type responseWriter struct {
	http.ResponseWriter
	code    int // the final (non-1xx) status, 0 until written
	written int64
	idle    *streamIdle // told of every byte written; nil when off
}

func (w *responseWriter) WriteHeader(code int) {
	if w.code == 0 && code >= 200 {
		w.code = code
	}
	w.idle.touch()
	w.ResponseWriter.WriteHeader(code)
}

func (w *responseWriter) Write(p []byte) (int, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(p)
	w.written += int64(n)
	if n > 0 {
		w.idle.touch()
	}
	return n, err
}

// FlushError flushes buffered data to the client.
func (w *responseWriter) FlushError() error {
	return http.NewResponseController(w.ResponseWriter).Flush()
}

// Unwrap returns the server's writer.
func (w *responseWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// grpcStatus returns the grpc-status the response carried, as a header, a trailer or a late trailer; Unknown if
// it carried none.
func (w *responseWriter) grpcStatus() int {
	h := w.Header()
	v := h.Get(grpcwire.HeaderStatus)
	if v == "" {
		v = h.Get(http.TrailerPrefix + grpcwire.HeaderStatus)
	}
	return int(grpcwire.ParseStatus(v))
}

// countingBody counts the bytes read from a request body. The HTTP/2 transport may still read it after the
// handler has returned, hence the atomic.
type countingBody struct {
	io.ReadCloser
	n     atomic.Int64
	fault atomic.Pointer[clientFault] // the client broke its body (malformed, stalled): no answer of the endpoint goes back
	idle  *streamIdle                 // told of every byte read; nil when off
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n.Add(int64(n))
	if n > 0 {
		b.idle.touch()
	}
	if err != nil && err != io.EOF {
		if errors.Is(err, h1guard.ErrMalformedBody) {
			err = errMalformedBody // the guard's error, as the client's fault and its answer
		}
		var cf *clientFault
		if errors.As(err, &cf) {
			b.fault.Store(cf)
		}
	}
	return n, err
}

// observer holds an upstream's metric children, resolved once so the hot path does no label lookups.
type observer struct {
	m         *metrics.Metrics
	direction string
	name      string
	inFlight  interface {
		Inc()
		Dec()
	}
	rx, tx interface{ Add(float64) }
	errors map[string]interface{ Inc() }
	cells  [5][grpcCodeSlots]atomic.Pointer[cell]
}

func newObserver(m *metrics.Metrics, direction, name string) *observer {
	o := &observer{m: m, direction: direction, name: name,
		inFlight: m.RequestsInFlight.WithLabelValues(direction, name),
		rx:       m.ReceivedBytes.WithLabelValues(direction, name),
		tx:       m.SentBytes.WithLabelValues(direction, name),
		errors:   map[string]interface{ Inc() }{},
	}
	for _, r := range []string{reasonNoEndpoint, reasonTimeout, reasonConnect, reasonCanceled, reasonOverflow, reasonDenied,
		reasonIdle, reasonOther, reasonHeadersTooLarge} {
		o.errors[r] = m.UpstreamErrors.WithLabelValues(direction, name, r)
	}
	return o
}

// record counts one finished request.
func (o *observer) record(code int, grpcCode int, d time.Duration, rx, tx int64) {
	class := code/100 - 1
	if class < 0 || class > 4 {
		class = 4
	}
	c := o.cell(class, grpcCode)
	c.requests.Inc()
	c.duration.Observe(d.Seconds())
	if rx > 0 {
		o.rx.Add(float64(rx))
	}
	if tx > 0 {
		o.tx.Add(float64(tx))
	}
}

// cell is the pair of collectors for one status class and gRPC code.
type cell struct {
	requests interface{ Inc() }
	duration interface{ Observe(float64) }
}

// cell returns the collectors for class (0 for 1xx … 4 for 5xx) and grpcCode (notGRPC or 0…16), creating them
// on first use.
func (o *observer) cell(class, grpcCode int) *cell {
	slot := &o.cells[class][grpcCode+1]
	if c := slot.Load(); c != nil {
		return c
	}
	labels := []string{o.direction, o.name, metrics.CodeClass((class + 1) * 100), grpcCodeName(grpcCode)}
	c := &cell{requests: o.m.Requests.WithLabelValues(labels...),
		duration: o.m.RequestDuration.WithLabelValues(labels...)}
	slot.Store(c)
	return c
}
