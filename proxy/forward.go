package proxy

// forward is httputil.ReverseProxy.ServeHTTP for meshlet's reverse proxies (Rewrite mode, no Director), written
// again without the general machinery that costs a request CPU: the outbound header is built in one pass (the
// reverse proxy clones the header, then deletes the hop-by-hop and forwarding fields one Del at a time, each
// canonicalizing its name), the request is copied once instead of twice (Clone, then WithContext for the trace),
// the per-request state is one allocation, and a response's header is handed to the writer without a copy of each
// value. What it sends and answers is the reverse proxy's, step by step (FuzzForwardAgreement holds it to that);
// the requests it does not take (upgrades, a query the reverse proxy would re-encode) go to the reverse proxy
// itself.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/http/httptrace"
	"net/http/httputil"
	"net/textproto"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http/httpguts"
)

// fwdState is one request's state in forward, allocated as one.
type fwdState struct {
	rw    http.ResponseWriter
	mu    sync.Mutex // guards done and the writer's header against a 1xx response after RoundTrip returned
	done  bool
	trace httptrace.ClientTrace
	url   url.URL
	body  noopCloseBody
	pr    httputil.ProxyRequest
}

// forward serves req as p.ServeHTTP would.
func forward(p *httputil.ReverseProxy, rw http.ResponseWriter, req *http.Request) {
	forwardAs(p, rw, req, req.Context(), req.Body)
}

// forwardAs is forward of req with context ctx and body body: what p.ServeHTTP would do with
// req.WithContext(ctx) whose Body is body, without that copy (the outbound request is the only one made; the
// Rewrite function's In is req, whose context is not ctx: it reads ctx from Out).
func forwardAs(p *httputil.ReverseProxy, rw http.ResponseWriter, req *http.Request, ctx context.Context, body io.ReadCloser) {
	// The reverse proxy watches a CloseNotifier when the request's context cannot end: meshlet's servers give
	// every request one that ends with its client.
	if p.Rewrite == nil || p.Director != nil || p.Transport == nil || p.ErrorHandler == nil ||
		p.ErrorLog == nil || upgradeType(req.Header) != "" || queryNeedsCleaning(req.URL.RawQuery) ||
		req.Form != nil || req.PostForm != nil || req.MultipartForm != nil {
		req = req.WithContext(ctx) // (rare: upgrades, queries to clean)
		req.Body = body
		p.ServeHTTP(rw, req)
		return
	}
	f := &fwdState{rw: rw}
	f.trace.Got1xxResponse = f.got1xx
	outreq := req.WithContext(httptrace.WithClientTrace(ctx, &f.trace))
	outreq.Body = body
	f.url = *req.URL
	if req.URL.User != nil {
		u := *req.URL.User
		f.url.User = &u
	}
	outreq.URL = &f.url
	outreq.Header = outboundHeader(req.Header)
	outreq.Trailer = req.Trailer.Clone()
	if s := req.TransferEncoding; s != nil {
		outreq.TransferEncoding = slices.Clone(s)
	}
	if req.ContentLength == 0 {
		outreq.Body = nil // as the reverse proxy: a nil body lets net/http's transport retry
	}
	if outreq.Body != nil {
		// The transport closes the body it was given when it fails; the client's body is not closed by that (a
		// Close would wait for a body the client has not sent yet).
		f.body.rc = outreq.Body
		outreq.Body = &f.body
		defer f.body.Close()
	}
	outreq.Close = false
	f.pr = httputil.ProxyRequest{In: req, Out: outreq}
	p.Rewrite(&f.pr)
	if f.pr.Out != outreq {
		outreq = f.pr.Out.WithContext(httptrace.WithClientTrace(f.pr.Out.Context(), &f.trace))
	}
	if _, ok := outreq.Header["User-Agent"]; !ok {
		outreq.Header["User-Agent"] = []string{""} // not Go's default User-Agent
	}

	res, err := p.Transport.RoundTrip(outreq)
	f.mu.Lock()
	f.done = true
	f.mu.Unlock()
	if err != nil {
		p.ErrorHandler(rw, outreq, err)
		return
	}
	if res.StatusCode == http.StatusSwitchingProtocols {
		// No upgrade was asked for (those go to the reverse proxy), so this is the reverse proxy's refusal.
		if !modifyRes(p, rw, res, outreq) {
			return
		}
		resUpType := upgradeType(res.Header)
		if !isPrint(resUpType) {
			p.ErrorHandler(rw, outreq, fmt.Errorf("backend tried to switch to invalid protocol %q", resUpType))
		} else if resUpType != "" {
			p.ErrorHandler(rw, outreq, fmt.Errorf("backend tried to switch protocol %q when %q was requested", resUpType, ""))
		} else {
			p.ErrorHandler(rw, outreq, fmt.Errorf("internal error: 101 switching protocols response with non-writable body"))
		}
		return
	}
	stripHopByHop(res.Header)
	if !modifyRes(p, rw, res, outreq) {
		return
	}
	moveHeader(rw.Header(), res.Header)
	announced := len(res.Trailer)
	if announced > 0 {
		keys := make([]string, 0, len(res.Trailer))
		for k := range res.Trailer {
			keys = append(keys, k)
		}
		rw.Header().Add("Trailer", strings.Join(keys, ", "))
	}
	rw.WriteHeader(res.StatusCode)
	if err := copyResponse(p, rw, res.Body, flushInterval(p, res)); err != nil {
		defer res.Body.Close()
		if req.Context().Value(http.ServerContextKey) == nil {
			p.ErrorLog.Printf("suppressing panic for copyResponse error in test; copy error: %v", err)
			return
		}
		panic(http.ErrAbortHandler) // the server ends the response unfinished
	}
	res.Body.Close() // now: it fills in res.Trailer
	if len(res.Trailer) > 0 {
		// Chunked, so that the trailers can follow (no Content-Length computed for a short body).
		http.NewResponseController(rw).Flush()
	}
	if len(res.Trailer) == announced {
		moveHeader(rw.Header(), res.Trailer)
		return
	}
	for k, vv := range res.Trailer {
		k = http.TrailerPrefix + k
		for _, v := range vv {
			rw.Header().Add(k, v)
		}
	}
}

// got1xx forwards a 1xx response, unless RoundTrip has returned.
func (f *fwdState) got1xx(code int, header textproto.MIMEHeader) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.done {
		return nil
	}
	h := f.rw.Header()
	for k, vv := range header {
		for _, v := range vv {
			h.Add(k, v)
		}
	}
	f.rw.WriteHeader(code)
	clear(h) // WriteHeader of a 1xx response leaves the header map as it was
	return nil
}

// modifyRes runs p.ModifyResponse; false when it failed the response (answered by p.ErrorHandler).
func modifyRes(p *httputil.ReverseProxy, rw http.ResponseWriter, res *http.Response, req *http.Request) bool {
	if p.ModifyResponse == nil {
		return true
	}
	if err := p.ModifyResponse(res); err != nil {
		res.Body.Close()
		p.ErrorHandler(rw, req, err)
		return false
	}
	return true
}

// noopCloseBody is the outbound request's body: Close only marks it, and a Read after that fails.
type noopCloseBody struct {
	rc     io.ReadCloser
	closed atomic.Bool
}

func (b *noopCloseBody) Read(p []byte) (int, error) {
	if b.closed.Load() {
		return 0, errors.New("ReverseProxy does an invalid Read on closed Body")
	}
	return b.rc.Read(p)
}

func (b *noopCloseBody) Close() error {
	b.closed.Store(true)
	return nil
}

// outboundHeader is the header the reverse proxy forwards for a request with header in (not an upgrade): in's
// fields, their values copied into one array as Header.Clone does (nil values kept), without the hop-by-hop fields
// (those Connection names, and RFC 2616's list) and the forwarding fields a client may not set (Forwarded,
// X-Forwarded-*), and with Te: trailers when in's Te asks for trailers.
func outboundHeader(in http.Header) http.Header {
	var named []string // the fields Connection names, as Header.Del would name them
	for _, v := range in["Connection"] {
		for sf := range strings.SplitSeq(v, ",") {
			if sf = textproto.TrimString(sf); sf != "" {
				named = append(named, textproto.CanonicalMIMEHeaderKey(sf))
			}
		}
	}
	nv := 0
	for _, vv := range in {
		nv += len(vv)
	}
	sv := make([]string, nv)
	out := make(http.Header, len(in))
	for k, vv := range in {
		if hopOrForwarding(k) || slices.Contains(named, k) {
			continue
		}
		if vv == nil {
			out[k] = nil
			continue
		}
		n := copy(sv, vv)
		out[k] = sv[:n:n]
		sv = sv[n:]
	}
	if httpguts.HeaderValuesContainsToken(in["Te"], "trailers") {
		out["Te"] = []string{"trailers"} // the reverse proxy tells the endpoint trailers are welcome
	}
	return out
}

// hopOrForwarding reports whether k is one of the reverse proxy's hop-by-hop fields (hopHeaders) or one of the
// forwarding fields it strips in Rewrite mode.
func hopOrForwarding(k string) bool {
	switch k {
	case "Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "Te", "Trailer",
		"Transfer-Encoding", "Upgrade", "Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto":
		return true
	}
	return false
}

// stripHopByHop is the reverse proxy's removeHopByHopHeaders: the fields Connection names, then RFC 2616's list.
func stripHopByHop(h http.Header) {
	for _, v := range h["Connection"] {
		for sf := range strings.SplitSeq(v, ",") {
			if sf = textproto.TrimString(sf); sf != "" {
				delete(h, textproto.CanonicalMIMEHeaderKey(sf))
			}
		}
	}
	for _, k := range hopHeaders {
		delete(h, k)
	}
}

// hopHeaders are the reverse proxy's hop-by-hop fields (RFC 2616's list, and Proxy-Connection); hopOrForwarding
// has them in its switch.
var hopHeaders = [...]string{"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
	"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade"}

// moveHeader adds src's fields to dst, as Header.Add of each value would. A field dst does not have yet takes
// src's value slice itself: src is a response's header or trailer, which nothing reads after forward.
func moveHeader(dst, src http.Header) {
	for k, vv := range src {
		if len(vv) == 0 {
			continue
		}
		ck := textproto.CanonicalMIMEHeaderKey(k)
		if old, ok := dst[ck]; ok {
			dst[ck] = append(old, vv...)
		} else {
			dst[ck] = vv
		}
	}
}

// upgradeType is the protocol a header with Connection: Upgrade asks for ("" when none).
func upgradeType(h http.Header) string {
	if !httpguts.HeaderValuesContainsToken(h["Connection"], "Upgrade") {
		return ""
	}
	return h.Get("Upgrade")
}

func isPrint(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < ' ' || s[i] > '~' {
			return false
		}
	}
	return true
}

// queryCleaningForced: GODEBUG sets urlmaxqueryparams, and the reverse proxy re-encodes every query.
var queryCleaningForced = strings.Contains(os.Getenv("GODEBUG"), "urlmaxqueryparams")

// queryNeedsCleaning reports whether the reverse proxy would re-encode query s (cleanQueryParams: a ';', a bad
// escape, more parameters than net/url parses).
func queryNeedsCleaning(s string) bool {
	if s == "" {
		return false
	}
	if queryCleaningForced || strings.Count(s, "&")+1 > 10000 {
		return true
	}
	for i := 0; i < len(s); {
		switch s[i] {
		case ';':
			return true
		case '%':
			if i+2 >= len(s) || !isHex(s[i+1]) || !isHex(s[i+2]) {
				return true
			}
			i += 3
		default:
			i++
		}
	}
	return false
}

// flushInterval is the reverse proxy's: -1 (flush every write) for Server-Sent Events and bodies of unknown
// length, else p.FlushInterval. The media type is parsed only when it may be text/event-stream.
func flushInterval(p *httputil.ReverseProxy, res *http.Response) time.Duration {
	if ct := res.Header.Get("Content-Type"); containsFoldASCII(ct, "event-stream") {
		if base, _, _ := mime.ParseMediaType(ct); base == "text/event-stream" {
			return -1
		}
	}
	if res.ContentLength == -1 {
		return -1
	}
	return p.FlushInterval
}

// containsFoldASCII reports whether s contains sub (lower case) in any ASCII case.
func containsFoldASCII(s, sub string) bool {
	for i := 0; i+len(sub) <= len(s); i++ {
		j := 0
		for ; j < len(sub); j++ {
			c := s[i+j]
			if 'A' <= c && c <= 'Z' {
				c += 'a' - 'A'
			}
			if c != sub[j] {
				break
			}
		}
		if j == len(sub) {
			return true
		}
	}
	return false
}

// copyResponse is the reverse proxy's: the body through p.BufferPool's buffer, each write flushed at once when
// flushInterval is negative (and the header flushed by a timer if the body is slow to come).
func copyResponse(p *httputil.ReverseProxy, dst http.ResponseWriter, src io.Reader, flushInterval time.Duration) error {
	var w io.Writer = dst
	if flushInterval != 0 {
		m := &latencyWriter{dst: dst, flush: http.NewResponseController(dst).Flush, latency: flushInterval}
		defer m.stop()
		m.flushPending = true
		m.t = time.AfterFunc(flushInterval, m.delayedFlush)
		w = m
	}
	var buf []byte
	if p.BufferPool != nil {
		buf = p.BufferPool.Get()
		defer p.BufferPool.Put(buf)
	}
	if len(buf) == 0 {
		buf = make([]byte, 32<<10)
	}
	for {
		nr, rerr := src.Read(buf)
		if rerr != nil && rerr != io.EOF && rerr != context.Canceled {
			p.ErrorLog.Printf("httputil: ReverseProxy read error during body copy: %v", rerr)
		}
		if nr > 0 {
			nw, werr := w.Write(buf[:nr])
			if werr != nil {
				return werr
			}
			if nr != nw {
				return io.ErrShortWrite
			}
		}
		if rerr != nil {
			if rerr == io.EOF {
				return nil
			}
			return rerr
		}
	}
}

// latencyWriter is the reverse proxy's maxLatencyWriter.
type latencyWriter struct {
	dst          io.Writer
	flush        func() error
	latency      time.Duration // negative: flush every write
	mu           sync.Mutex    // guards t, flushPending and the flushes
	t            *time.Timer
	flushPending bool
}

func (m *latencyWriter) Write(p []byte) (n int, err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	n, err = m.dst.Write(p)
	if m.latency < 0 {
		m.flush()
		return
	}
	if m.flushPending {
		return
	}
	if m.t == nil {
		m.t = time.AfterFunc(m.latency, m.delayedFlush)
	} else {
		m.t.Reset(m.latency)
	}
	m.flushPending = true
	return
}

func (m *latencyWriter) delayedFlush() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.flushPending {
		return
	}
	m.flush()
	m.flushPending = false
}

func (m *latencyWriter) stop() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.flushPending = false
	if m.t != nil {
		m.t.Stop()
	}
}
