package proxy

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/textproto"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http/httpguts"

	"meshlet.dev/meshlet/grpcwire"
	"meshlet.dev/meshlet/proxy/h1guard"
)

// validTarget reports whether s (a raw query) has no byte that ends or breaks an HTTP/1.1 request line.
func validTarget(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c <= ' ' || c == 0x7f {
			return false
		}
	}
	return true
}

// answer is meshlet's own answer to a request it refuses or cannot carry through: the reason (X-Meshlet-Error),
// the HTTP status, the gRPC status for gRPC calls, and a one-line message (which starts with "meshlet: ").
// Every error answer meshlet writes itself is written by answer.write.
type answer struct {
	reason string
	status int           // HTTP answer
	code   grpcwire.Code // gRPC answer
	msg    string
}

// write answers with a: a gRPC call gets a trailers-only response (HTTP 200, a.code, a.msg), any other request
// a.status with a.msg as a text body; both carry X-Meshlet-Error: a.reason. closeConn ends an HTTP/1.1 connection
// after the answer (Connection: close), for requests whose connection is in doubt; gRPC calls keep theirs.
func (a *answer) write(w http.ResponseWriter, grpc, closeConn bool) {
	h := w.Header()
	h.Set("X-Meshlet-Error", a.reason)
	if grpc {
		grpcwire.WriteStatus(w, a.code, a.msg)
		return
	}
	if closeConn {
		h.Set("Connection", "close")
	}
	http.Error(w, a.msg, a.status)
}

// clientFault is a request that broke because of what its client sent (a broken or stalled body, an invalid gRPC
// message): the answer is the client's status, and the round trip counts neither for nor against the endpoint
// and is not retried (resilience.ClassifyError takes it as no fault of the endpoint's). errFDBudget is one too.
type clientFault struct{ answer }

func (e *clientFault) Error() string          { return e.msg }
func (e *clientFault) NotEndpointFault() bool { return true }

// errMalformedBody is h1guard.ErrMalformedBody as the client's fault: a request whose chunked framing is broken
// (the connection is not reused).
var errMalformedBody error = &clientFault{answer{reason: h1guard.ReasonBrokenBody, status: http.StatusBadRequest, code: grpcwire.Internal,
	msg: "meshlet: malformed chunked request body"}}

// refusedLog logs refused requests and denied callers, at most one line per second (logLimiter): a client that
// sends nothing but bad requests must not flood the log. The lines in between are counted, and every refusal is in
// meshlet_refused_requests_total or meshlet_authz_denied_total.
type refusedLog struct {
	log *slog.Logger // nil: nothing is logged
	logLimiter
}

// connection logs one connection refused at accept (transparent interception: no original destination, a
// destination outside the mesh or meshlet's own, a port that is no app port), rate limited with the other lines.
func (l *refusedLog) connection(direction, listener, remote, why, detail string) {
	if suppressed, ok := l.allow(); ok && l.log != nil {
		l.log.Info("connection refused", "direction", direction, "listener", listener, "remote", remote,
			"reason", why, "detail", detail, "suppressed_since_last", suppressed)
	}
}

func (l *refusedLog) refused(direction, listener, remote, reason string, status int) {
	if suppressed, ok := l.allow(); ok && l.log != nil {
		l.log.Info("request refused", "direction", direction, "listener", listener, "remote", remote,
			"reason", reason, "status", status, "suppressed_since_last", suppressed)
	}
}

// countRefused counts and logs a refused request.
func (p *Proxy) countRefused(r *http.Request, direction, listener, reason string, status int) {
	p.m.RefusedRequests.WithLabelValues(direction, reason).Inc()
	p.refusedLog.refused(direction, listener, r.RemoteAddr, reason, status)
}

// guarded wraps the handler of an HTTP listener with the checks of the client's input: it refuses a request the
// HTTP/1.1 guard did not check, answers the requests the guard refused, serves an h2c upgrade as plain HTTP/1.1,
// closes the connection after an upgrade that does not happen, refuses an invalid grpc-timeout, and bounds request
// bodies (stall timeout, gRPC message size); each refusal is counted.
func (p *Proxy) guarded(direction, listener string, lim ListenerLimits, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ProtoMajor == 2 && !useH2Server {
			presizeStack(r.ProtoMajor) // net/http's server runs each HTTP/2 request on a goroutine of its own
		}
		g := h1guard.Of(r)
		if g != nil {
			if !g.Admit(r) {
				p.countRefused(r, direction, listener, refusedUnchecked, http.StatusBadRequest)
				refuseMalformed(w, refusedUnchecked, http.StatusBadRequest)
				g.BodyFailed() // nothing more is read from this connection
				return
			}
			if rej := g.Rejection(r); rej != nil {
				p.countRefused(r, direction, listener, rej.Reason, rej.Status)
				refuseMalformed(w, rej.Reason, rej.Status)
				return
			}
		}
		if r.ProtoMajor == 1 && isH2CUpgrade(r.Header) {
			r = withoutH2CUpgrade(r)
		}
		if g != nil && r.ProtoMajor == 1 && isUpgrade(r.Header) {
			w = g.UpgradeWriter(w)
		}
		grpc := grpcwire.IsGRPC(r.Header)
		if v := r.Header.Get(grpcwire.HeaderTimeout); grpc && v != "" {
			if _, ok := grpcwire.ParseTimeout(v); !ok {
				p.countRefused(r, direction, listener, refusedGRPCTimeout, http.StatusOK)
				a := answer{reason: reasonMalformed, status: http.StatusBadRequest, code: grpcwire.Internal,
					msg: fmt.Sprintf("meshlet: malformed grpc-timeout %q", v)}
				a.write(w, true, false)
				return
			}
		}
		var frames *grpcFrames
		var stalled *stallBody
		if r.Body != nil && r.Body != http.NoBody && r.Method != http.MethodConnect {
			if grpc {
				frames = &grpcFrames{ReadCloser: r.Body, limit: uint32(lim.MaxGRPCMessageBytes)}
				r = withBody(r, frames)
			}
			// Every body but an HTTP/2 gRPC call's (stream_idle_timeout bounds those) has read_body_timeout: an
			// upgrade request's body too, as the protocol has not switched while it is read.
			if lim.ReadBodyTimeout > 0 && (r.ProtoMajor == 1 || !grpc) {
				stalled = &stallBody{ReadCloser: r.Body, rc: *http.NewResponseController(w), d: lim.ReadBodyTimeout}
				if r.ProtoMajor == 1 {
					stalled.g = g // (an HTTP/2 connection's guard passes it whole: one stream's body is not its end)
				}
				r = withBody(r, stalled)
			}
		}
		// Deferred: the reverse proxy ends a response whose copy failed with a panic (http.ErrAbortHandler), and the
		// stall timer must not outlive the handler even then.
		defer func() {
			if stalled != nil {
				stalled.finish()
				if f := stalled.fault(); f != nil {
					p.countRefused(r, direction, listener, f.reason, f.status)
				}
			}
			if frames != nil {
				if f := frames.fault(); f != nil {
					p.countRefused(r, direction, listener, f.reason, f.status)
				}
			}
			if g != nil && g.BrokenBody() {
				p.countRefused(r, direction, listener, h1guard.ReasonBrokenBody, http.StatusBadRequest)
			}
		}()
		h.ServeHTTP(w, r)
	})
}

// refuseMalformed answers a request the guard refused, or one it did not check, and closes the connection.
func refuseMalformed(w http.ResponseWriter, reason string, status int) {
	a := answer{reason: reasonMalformed, status: status, msg: fmt.Sprintf("meshlet: malformed request (%s)", reason)}
	a.write(w, false, true)
}

// isH2CUpgrade reports whether an HTTP/1.1 request asks to switch to HTTP/2 over cleartext (RFC 7540 section 3.2:
// Upgrade: h2c with HTTP2-Settings).
func isH2CUpgrade(h http.Header) bool {
	return httpguts.HeaderValuesContainsToken(h["Upgrade"], "h2c") || h["Http2-Settings"] != nil
}

// withoutH2CUpgrade returns a copy of r without its h2c upgrade (the h2c token of Upgrade, HTTP2-Settings and
// their Connection tokens), to be served as HTTP/1.1, as Envoy does. meshlet speaks HTTP/2 to apps by prior
// knowledge only; an app that switched would give the caller an HTTP/2 connection in which no request passes
// meshlet's authorization, metrics or limits.
func withoutH2CUpgrade(r *http.Request) *http.Request {
	h := r.Header.Clone()
	h.Del("Http2-Settings")
	upgrades := keepTokens(h, "Upgrade", func(tok string) bool { return !strings.EqualFold(tok, "h2c") })
	keepTokens(h, "Connection", func(tok string) bool {
		return !strings.EqualFold(tok, "http2-settings") && (upgrades > 0 || !strings.EqualFold(tok, "upgrade"))
	})
	out := r.WithContext(r.Context())
	out.Header = h
	return out
}

// keepTokens keeps the comma-separated tokens of header name for which keep is true (none left: no header) and
// returns how many it kept.
func keepTokens(h http.Header, name string, keep func(string) bool) int {
	var kept []string
	for _, v := range h.Values(name) {
		for tok := range strings.SplitSeq(v, ",") {
			if tok = textproto.TrimString(tok); tok != "" && keep(tok) {
				kept = append(kept, tok)
			}
		}
	}
	h.Del(name)
	if len(kept) > 0 {
		h.Set(name, strings.Join(kept, ", "))
	}
	return len(kept)
}

// withBody returns r with body b. A request with Expect keeps its own body: net/http looks at it after the
// handler, to close a connection whose 100-continue body was never read, so that one gets a shallow copy.
func withBody(r *http.Request, b io.ReadCloser) *http.Request {
	if _, ok := r.Header["Expect"]; ok {
		r = r.WithContext(r.Context())
	}
	r.Body = b
	return r
}

// stallBody ends a request body that sends nothing for d: each read gets a deadline (the connection's for
// HTTP/1.1, the stream's for HTTP/2), cleared at the end of the body. The transport may still read the body after
// the handler returned (an endpoint that answered before reading it all); the response controller must not be
// used then, so the handler's end (finish) and each deadline change are serialised by mu.
type stallBody struct {
	io.ReadCloser
	rc http.ResponseController
	d  time.Duration
	g  *h1guard.Conn // the guard of an HTTP/1.1 connection, told when the body ends in an error; nil otherwise

	mu       sync.Mutex
	finished bool // the handler returned
	armed    bool // a deadline is set on the connection or stream
	err      *clientFault
}

// setDeadline sets (or clears, with the zero time) the read deadline while the handler runs.
func (b *stallBody) setDeadline(t time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.finished {
		return
	}
	_ = b.rc.SetReadDeadline(t)
	b.armed = !t.IsZero()
}

func (b *stallBody) Read(p []byte) (int, error) {
	if err := b.fault(); err != nil {
		return 0, err
	}
	deadline := time.Now().Add(b.d)
	b.setDeadline(deadline)
	n, err := b.ReadCloser.Read(p)
	if err != nil && err != io.EOF && !errors.Is(err, http.ErrBodyReadAfterClose) && b.g != nil {
		// (A read after Close is the transport's, which stopped sending the body: net/http reads the rest.)
		b.g.BodyFailed()
	}
	switch {
	case err == nil:
	case errors.Is(err, os.ErrDeadlineExceeded) && !time.Now().Before(deadline):
		// (A deadline that fired before ours is the handler ending the read: abortBody.)
		f := &clientFault{answer{reason: refusedBodyTimeout, status: http.StatusRequestTimeout, code: grpcwire.Canceled,
			msg: fmt.Sprintf("meshlet: the request body stalled for %s (read_body_timeout)", b.d)}}
		b.mu.Lock()
		b.err = f
		b.mu.Unlock()
		return n, f
	default:
		// The end of the body (or of the connection): no deadline may outlive it, or it would end the
		// connection's next read.
		b.setDeadline(time.Time{})
	}
	return n, err
}

// finish is called when the handler returns: it clears a deadline still set and keeps later reads from
// touching the response controller.
func (b *stallBody) finish() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.armed {
		_ = b.rc.SetReadDeadline(time.Time{})
	}
	b.finished = true
}

func (b *stallBody) fault() *clientFault {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.err
}

// grpcFrames checks the length-prefixed messages of a gRPC request body as they stream through: a compressed
// flag other than 0 or 1, a message longer than limit, or a body that ends inside a message ends the call.
type grpcFrames struct {
	io.ReadCloser
	limit  uint32
	prefix [5]byte
	have   int    // bytes of the current prefix seen
	left   uint64 // bytes left of the current message
	err    *clientFault
	shared atomic.Pointer[clientFault] // err, for the handler (the transport's goroutine reads the body)
}

func (f *grpcFrames) Read(p []byte) (int, error) {
	if f.err != nil {
		return 0, f.err
	}
	n, err := f.ReadCloser.Read(p)
	for b := p[:n]; len(b) > 0; {
		if f.left > 0 {
			k := min(f.left, uint64(len(b)))
			f.left -= k
			b = b[k:]
			continue
		}
		k := copy(f.prefix[f.have:], b)
		f.have += k
		b = b[k:]
		if f.have < len(f.prefix) {
			break
		}
		f.have = 0
		size := binary.BigEndian.Uint32(f.prefix[1:])
		switch {
		case f.prefix[0] > 1:
			f.err = &clientFault{answer{reason: refusedGRPCFrame, status: http.StatusBadRequest, code: grpcwire.Internal,
				msg: fmt.Sprintf("meshlet: invalid gRPC message prefix (compressed flag %d)", f.prefix[0])}}
		case size > f.limit:
			f.err = &clientFault{answer{reason: refusedGRPCTooLarge, status: http.StatusRequestEntityTooLarge,
				code: grpcwire.ResourceExhausted, msg: fmt.Sprintf("meshlet: gRPC message of %d bytes is larger "+
					"than the limit of %d bytes (max_grpc_message_bytes)", size, f.limit)}}
		}
		if f.err != nil {
			f.shared.Store(f.err)
			return 0, f.err
		}
		f.left = uint64(size)
	}
	if errors.Is(err, io.EOF) && (f.have > 0 || f.left > 0) {
		f.err = &clientFault{answer{reason: refusedGRPCFrame, status: http.StatusBadRequest, code: grpcwire.Internal,
			msg: "meshlet: the gRPC request body ends inside a message"}}
		f.shared.Store(f.err)
		return 0, f.err
	}
	return n, err
}

func (f *grpcFrames) fault() *clientFault { return f.shared.Load() }

func (f *grpcFrames) whole() bool {
	w, ok := f.ReadCloser.(wholer)
	return ok && w.whole()
}
