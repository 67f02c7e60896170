package proxy

import (
	"cmp"
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"sync/atomic"
	"time"

	"meshlet.dev/meshlet/grpcwire"
	"meshlet.dev/meshlet/metrics"
	"meshlet.dev/meshlet/proxy/h1guard"
	"meshlet.dev/meshlet/resilience"
)

// Status written for a request whose client went away before its response was complete (nginx's convention).
const StatusClientClosedRequest = 499

// exchange is one proxied request as the cluster's transport sees it. serveHTTP sets it up before the reverse
// proxy runs, and the outbound request's context carries it (exchangeFrom); its fields are fixed from then on,
// except the attempt log, which only cluster.RoundTrip writes (a request's attempts are sequential).
type exchange struct {
	clientCtx context.Context // the inbound request's context, without meshlet's timeout
	body      *countingBody   // the inbound request's body; nil when it has none
	bodyWhole bool            // body was whole in the HTTP/1.1 loop's buffer: reading it never waits (wholeBody)
	abortBody func()          // ends a Read blocked on the inbound body (abortableBody, watchedConn); nil for HTTP/1.1
	idle      *streamIdle     // the request's stream_idle_timeout; nil when off
	appPort   uint16          // inbound: the app port its connection was redirected to (service.ports); 0: the default
	requestID string          // the X-Request-Id meshlet adds to the outbound copy; "": the request had one
	peer      *peerInfo       // inbound over mutual TLS: the caller's verified identity; else nil
	// route and split are the discovery chain's picks for the request (chain.go); nil without a chain.
	route    *planRoute
	split    *planSplit
	hashKey  uint64 // the request's key for ring_hash and maglev (hasKey: its hash policies yielded one)
	hasKey   bool
	attempts attemptLog
}

// wholeBody reports whether reading the request's body to its end never waits for the client: it has none, or
// the HTTP/1.1 loop held it whole, or its HTTP/2 stream has ended (h2Body.whole).
func (ex *exchange) wholeBody() bool {
	if ex.body == nil || ex.bodyWhole {
		return true
	}
	b, ok := ex.body.ReadCloser.(wholer)
	return ok && b.whole()
}

// wholer is a request body that can tell whether it is all here (h2Body, and the bodies over one).
type wholer interface{ whole() bool }

// attemptLog is the endpoints a request's attempts went to, in order: the retry transport's attempts avoid them,
// and the access log names the last.
type attemptLog struct{ tried []*endpointState }

func (l *attemptLog) add(st *endpointState) { l.tried = append(l.tried, st) }

// last returns the address of the endpoint of the latest attempt, or "" before any.
func (l *attemptLog) last() string {
	if len(l.tried) == 0 {
		return ""
	}
	return l.tried[len(l.tried)-1].hostport
}

type exchangeKey struct{}

// exchangeFrom returns the exchange ctx carries, or nil (a request that did not come through serveHTTP).
func exchangeFrom(ctx context.Context) *exchange {
	ex, _ := ctx.Value(exchangeKey{}).(*exchange)
	return ex
}

// serveHTTP proxies one request to the cluster: it checks what the client sent, applies the limits and the
// timeout, hands a copy of the request to the reverse proxy (the inbound request is never modified), and records
// metrics and the access log.
func (c *cluster) serveHTTP(w http.ResponseWriter, r *http.Request, alog *slog.Logger) {
	start := time.Now()
	grpc := grpcwire.IsGRPC(r.Header)
	rw := &responseWriter{ResponseWriter: w}
	ex := &exchange{clientCtx: r.Context()}
	if len(r.Header[HeaderRequestID]) == 0 {
		ex.requestID = newRequestID()
	}
	if c.appPorts != nil {
		ex.appPort = appPortFrom(r.Context())
	}
	c.observe().begin()
	defer func() {
		p := recover()
		c.observe().end()
		c.done(rw, r, ex, grpc, start, alog, p != nil)
		if p != nil {
			panic(p)
		}
	}()

	in, peer, ok := c.checkRequest(rw, r, grpc)
	if !ok {
		return
	}
	ex.peer = peer
	if pl := c.plan.Load(); pl != nil {
		if ex.route, ex.split = pl.pick(in); ex.route == nil {
			c.fail(rw, r, grpc, http.StatusServiceUnavailable, reasonNoEndpoint,
				"upstream "+c.name+": no route of its discovery chain matches the request")
			return
		}
		if len(ex.split.hash) > 0 {
			ex.hashKey, ex.hasKey = requestHash(in, ex.split.hash)
		}
	}
	release, err := c.acquire(r.Context())
	if err != nil {
		var oe *resilience.OverflowError
		if errors.As(err, &oe) {
			c.m.LimitOverflows.WithLabelValues(c.name, oe.Limit).Inc()
			c.decisions.Add("overflow", "", "max_"+oe.Limit+" full")
			c.fail(rw, r, grpc, http.StatusServiceUnavailable, reasonOverflow,
				"upstream "+c.name+": too many requests in flight (max_"+oe.Limit+")")
		} else {
			rw.code = StatusClientClosedRequest
		}
		return
	}
	defer release()
	ctx := context.WithValue(r.Context(), exchangeKey{}, ex)
	if ex.route != nil && ex.route.retry != nil {
		ctx = resilience.WithPolicy(ctx, ex.route.retry)
	}
	if timeout, limited := c.timeout(r, grpc, ex); limited {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	if r.Body != nil && r.Body != http.NoBody {
		ex.body = &countingBody{ReadCloser: r.Body}
		ex.bodyWhole = wholeBody(r.Context())
		if r.ProtoMajor == 1 {
			// Let the app stream its request body while the response streams back (bidirectional streams).
			_ = http.NewResponseController(w).EnableFullDuplex()
		} else {
			// Closing an HTTP/2 body ends a Read under way. (An HTTP/1.1 body's Close waits for it instead, and a
			// read deadline would cancel the request: a Read stalled on an HTTP/1.1 client ends with its data, or
			// with the listener's read_body_timeout.)
			body := ex.body
			ex.abortBody = func() { body.Close() }
		}
	}
	streamIdle := c.streamIdle
	if ex.route != nil && ex.route.idle > 0 {
		streamIdle = ex.route.idle
	}
	if streamIdle > 0 {
		// When idle, a transport waiting for the client's HTTP/2 body must return too (abortBody).
		ex.idle, ctx = newStreamIdle(ctx, streamIdle, ex.abortBody)
		defer ex.idle.stop()
		rw.idle = ex.idle
		if ex.body != nil {
			ex.body.idle = ex.idle
		}
	}
	body := in.Body
	if ex.body != nil {
		body = ex.body
	}
	forwardAs(c.reverseProxy(), rw, in, ctx, body)
}

// checkRequest refuses what the cluster never forwards (CONNECT, a request target with a byte an HTTP/1.1
// request line cannot carry) and, inbound, normalizes the path and authorizes the caller (inboundRequest). It
// returns the request to forward and its caller's verified identity (inbound over mutual TLS; else nil), or false
// after answering the client itself.
func (c *cluster) checkRequest(rw *responseWriter, r *http.Request, grpc bool) (*http.Request, *peerInfo, bool) {
	if r.Method == http.MethodConnect {
		c.fail(rw, r, grpc, http.StatusMethodNotAllowed, reasonOther, "CONNECT is not supported")
		return nil, nil, false
	}
	if !validTarget(r.URL.RawQuery) || !validTarget(r.URL.Opaque) {
		// An HTTP/2 :path may carry a space or a control byte in its query, which an HTTP/1.1 request line
		// cannot: forwarded as is, it would split the line at the endpoint.
		c.m.RefusedRequests.WithLabelValues(c.direction, refusedTarget).Inc()
		c.fail(rw, r, grpc, http.StatusBadRequest, refusedTarget, "invalid byte in the request target")
		return nil, nil, false
	}
	if c.direction == metrics.Inbound {
		return c.inboundRequest(rw, r, grpc)
	}
	return r, nil, true
}

// timeout returns the request's timeout: its discovery-chain route's or resolver's, else the cluster's, or a
// gRPC call's grpc-timeout when shorter (a grpc-timeout of 0 is a deadline already past, not "no deadline");
// false when there is none.
func (c *cluster) timeout(r *http.Request, grpc bool, ex *exchange) (time.Duration, bool) {
	cfg := c.cfg.Load()
	timeout, limited := cfg.Timeout, cfg.Timeout > 0
	if ex.route != nil {
		if d := cmp.Or(ex.route.timeout, ex.split.requestTimeout); d > 0 {
			timeout, limited = d, true
		}
	}
	if grpc {
		if d, ok := grpcwire.ParseTimeout(r.Header.Get(grpcwire.HeaderTimeout)); ok && (!limited || d < timeout) {
			timeout, limited = d, true
		}
	}
	return timeout, limited
}

// done records a finished request: its metrics and its access-log line (alog nil: none). panicked: the handler
// is unwinding a panic (the reverse proxy's http.ErrAbortHandler when the client went away mid-response).
func (c *cluster) done(rw *responseWriter, r *http.Request, ex *exchange, grpc bool, start time.Time, alog *slog.Logger, panicked bool) {
	code := rw.code
	if panicked && ex.clientCtx.Err() != nil {
		code = StatusClientClosedRequest
	}
	if code == 0 {
		code = http.StatusOK
	}
	var rx int64
	if ex.body != nil {
		rx = ex.body.n.Load()
	}
	grpcCode := notGRPC
	if grpc {
		grpcCode = rw.grpcStatus()
	}
	var caller string
	if ex.peer != nil {
		caller = ex.peer.id.Service
	}
	c.observe().record(code, grpcCode, time.Since(start), rx, rw.written, caller)
	if ex.route != nil {
		ex.route.requests[min(max(code/100-1, 0), 4)].Inc()
	}
	if alog != nil {
		trace, span := traceIDs(r.Header)
		alog.LogAttrs(r.Context(), slog.LevelInfo, "access",
			slog.String("direction", c.direction), slog.String("upstream", c.name),
			slog.String("method", r.Method), slog.String("authority", r.Host), slog.String("path", r.URL.Path),
			slog.String("proto", r.Proto), slog.Int("status", code), slog.String("grpc_status", grpcCodeName(grpcCode)),
			slog.Float64("duration_ms", float64(time.Since(start).Microseconds())/1000),
			slog.Int64("bytes_in", rx), slog.Int64("bytes_out", rw.written),
			slog.String("endpoint", ex.attempts.last()), slog.String("error", rw.errMsg),
			slog.String("request_id", cmp.Or(ex.requestID, r.Header.Get(HeaderRequestID))),
			slog.String("trace_id", trace), slog.String("span_id", span))
	}
}

// responseWriter records the status and body size of a response. It passes flushes, hijacks and full-duplex
// requests through to the server's writer (http.ResponseController finds it with Unwrap).
type responseWriter struct {
	http.ResponseWriter
	code    int // the final (non-1xx) status, 0 until written
	written int64
	idle    *streamIdle // told of every byte written; nil when off
	errMsg  string      // why meshlet failed the request (noteError), for the access log; "" when it did not
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
