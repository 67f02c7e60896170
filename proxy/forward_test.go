package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptrace"
	"net/http/httputil"
	"net/textproto"
	"net/url"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"meshlet.dev/meshlet/metrics"
)

// forward (forward.go) must do what httputil.ReverseProxy.ServeHTTP does: FuzzForwardAgreement serves the same
// request with each, through the same transport (which answers from the fuzzer's bytes, sends 1xx responses
// before and after its answer, fails), and compares what the transport was asked (the outbound request, its body
// byte for byte), what the response writer was told (1xx and final headers, every write, the trailers), what was
// logged and whether the handler panicked.

// forwardOutcome is what one side did with a request.
type forwardOutcome struct {
	Sent     []string // the outbound request as the transport got it, one line per fact
	Events   []string // the response writer's calls, in order (flushes as flushEvents has them)
	Trailers []string // the writer's header after the handler: the trailers
	Logged   string
	Panic    string
	// fast: forward served the request itself (it had not handed it to the reverse proxy): only forward puts the
	// 1xx trace in the outbound request's context before Rewrite runs. Not compared.
	fast bool
}

// forwardWriter records a handler's calls. It has the calls net/http's writers have that the reverse proxy uses
// (Flush through http.ResponseController).
type forwardWriter struct {
	mu     sync.Mutex
	h      http.Header
	events []string
}

func (w *forwardWriter) Header() http.Header { return w.h }

func (w *forwardWriter) WriteHeader(code int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.events = append(w.events, fmt.Sprintf("header %d %s", code, headerLines(w.h)))
}

func (w *forwardWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.events = append(w.events, fmt.Sprintf("write %q", p))
	return len(p), nil
}

func (w *forwardWriter) Flush() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.events = append(w.events, "flush")
}

// flushEvents drops the flushes a timer may or may not have made: the reverse proxy flushes a response of
// unknown length after every write, and a timer flushes its header unless the first write came first. So a run
// of flushes counts as one, and a flush right after the header does not count.
func flushEvents(events []string) []string {
	var out []string
	for _, e := range events {
		if e == "flush" && len(out) > 0 && (out[len(out)-1] == "flush" || strings.HasPrefix(out[len(out)-1], "header ")) {
			continue
		}
		out = append(out, e)
	}
	return out
}

// headerLines is h as sorted "Name: value" lines (a nil value as "Name nil"). The reverse proxy lists the
// trailers it announces in map order: Trailer's names are sorted.
func headerLines(h http.Header) string {
	var out []string
	for k, vv := range h {
		if vv == nil {
			out = append(out, k+" nil")
		}
		for _, v := range vv {
			if k == "Trailer" {
				names := strings.Split(v, ", ")
				slices.Sort(names)
				v = strings.Join(names, ", ")
			}
			out = append(out, k+": "+v)
		}
	}
	slices.Sort(out)
	return strings.Join(out, "|")
}

// forwardRig is an outbound cluster's reverse proxy with its transport replaced by the fuzzer's.
func forwardRig(t testing.TB) *cluster {
	cfg := Config{Service: ServiceConfig{Name: "web"}, Upstreams: []UpstreamConfig{{Name: "api",
		Listen: "127.0.0.1:0", Protocol: ProtocolHTTP, Endpoints: []string{"192.0.2.10:8080"}}}}
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	m := metrics.New(prometheus.NewRegistry(), "test")
	u := newCluster(&cfg.Upstreams[0], metrics.Outbound, m, slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	t.Cleanup(u.close)
	return u
}

// Fuzzer's mode bits.
const (
	fwdTransportFails = 1 << iota // RoundTrip returns an error
	fwdEarly1xx                   // a 1xx response (103) before the answer
	fwdLate1xx                    // a 1xx response while the body is read (RoundTrip has returned)
	fwdNoServer                   // the request's context has no http.ServerContextKey (a copy error does not panic)
	fwdModifyFails                // ModifyResponse fails
	fwdReadBody                   // the transport reads the request body
	fwdHTTP2                      // the request came over HTTP/2 (no Transfer-Encoding; a chunked body's length unknown)
)

func runForward(u *cluster, useForward bool, rawReq, rawResp []byte, mode byte) forwardOutcome {
	var out forwardOutcome
	req, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(rawReq)))
	if err != nil {
		return out
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if mode&fwdNoServer == 0 {
		ctx = context.WithValue(ctx, http.ServerContextKey, &http.Server{})
	}
	req = req.WithContext(ctx)
	req.RemoteAddr = "127.0.0.1:4000"
	if mode&fwdHTTP2 != 0 {
		req.Proto, req.ProtoMajor, req.ProtoMinor = "HTTP/2.0", 2, 0
		req.TransferEncoding = nil
	}

	var logged bytes.Buffer
	base := u.reverseProxy()
	rp := &httputil.ReverseProxy{BufferPool: base.BufferPool, ErrorHandler: base.ErrorHandler,
		ErrorLog: log.New(&logged, "", 0)}
	rp.Rewrite = func(pr *httputil.ProxyRequest) {
		out.fast = httptrace.ContextClientTrace(pr.Out.Context()) != nil
		base.Rewrite(pr)
	}
	rp.ModifyResponse = func(res *http.Response) error {
		if mode&fwdModifyFails != 0 {
			return errors.New("modify failed")
		}
		return base.ModifyResponse(res)
	}
	rp.Transport = roundTripFunc(func(r *http.Request) (*http.Response, error) {
		out.Sent = sentFacts(r, mode&fwdReadBody != 0)
		trace := httptrace.ContextClientTrace(r.Context())
		if trace == nil || trace.Got1xxResponse == nil {
			out.Sent = append(out.Sent, "no 1xx trace")
		} else if mode&fwdEarly1xx != 0 {
			if err := trace.Got1xxResponse(103, textproto.MIMEHeader{"Link": {"</a>; rel=preload"}}); err != nil {
				out.Sent = append(out.Sent, "1xx: "+err.Error())
			}
		}
		if mode&fwdTransportFails != 0 {
			return nil, errors.New("dial tcp 192.0.2.10:8080: connection refused")
		}
		res, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(rawResp)), r)
		if err != nil {
			return nil, err
		}
		if mode&fwdLate1xx != 0 && trace != nil && trace.Got1xxResponse != nil {
			res.Body = &lateHook{ReadCloser: res.Body, hook: func() { trace.Got1xxResponse(100, textproto.MIMEHeader{"X-Late": {"1"}}) }}
		}
		return res, nil
	})
	w := &forwardWriter{h: http.Header{}}
	func() {
		defer func() {
			if p := recover(); p != nil {
				out.Panic = fmt.Sprint(p)
			}
		}()
		if useForward {
			forward(rp, w, req)
		} else {
			rp.ServeHTTP(w, req)
		}
	}()
	out.Events = flushEvents(w.events)
	out.Trailers = strings.Split(headerLines(w.h), "|")
	out.Logged = logged.String()
	return out
}

// sentFacts is what matters of an outbound request; the body is read when readBody.
func sentFacts(r *http.Request, readBody bool) []string {
	facts := []string{r.Method, r.URL.String(), "host " + r.Host, r.Proto, fmt.Sprint("length ", r.ContentLength),
		fmt.Sprint("close ", r.Close), fmt.Sprint("te ", r.TransferEncoding), "header " + headerLines(r.Header),
		"trailer " + headerLines(r.Trailer), fmt.Sprint("body nil ", r.Body == nil)}
	if readBody && r.Body != nil {
		b, err := io.ReadAll(r.Body)
		facts = append(facts, fmt.Sprintf("body %q %v", b, err))
		facts = append(facts, "trailer after body "+headerLines(r.Trailer))
		facts = append(facts, fmt.Sprint("close error ", r.Body.Close()))
		_, err = r.Body.Read(make([]byte, 1))
		facts = append(facts, fmt.Sprint("read after close ", err))
	}
	return facts
}

// lateHook runs hook at the first Read.
type lateHook struct {
	io.ReadCloser
	once sync.Once
	hook func()
}

func (l *lateHook) Read(p []byte) (int, error) {
	l.once.Do(l.hook)
	return l.ReadCloser.Read(p)
}

func FuzzForwardAgreement(f *testing.F) {
	get := "GET /a?b=1 HTTP/1.1\r\nHost: api\r\nUser-Agent: t\r\n\r\n"
	ok := "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: 1\r\n\r\nok"
	for _, s := range []struct {
		req, resp string
		mode      byte
	}{
		{get, ok, 0},
		{"GET / HTTP/1.1\r\nHost: api\r\n\r\n", ok, 0}, // no User-Agent: sent empty
		{"GET / HTTP/1.1\r\nHost: api\r\nConnection: keep-alive, X-Secret, x-other\r\nX-Secret: s\r\nX-Other: o\r\nX-Kept: k\r\nKeep-Alive: 5\r\nProxy-Authorization: x\r\n\r\n", ok, 0},
		{"GET / HTTP/1.1\r\nHost: api\r\nTE: trailers, deflate\r\nTrailer: X-T\r\nForwarded: for=x\r\nX-Forwarded-For: 1.2.3.4\r\nX-Forwarded-Host: h\r\nX-Forwarded-Proto: https\r\n\r\n", ok, 0},
		{"GET / HTTP/1.1\r\nHost: api\r\nConnection: te, user-agent\r\nTE: trailers\r\nUser-Agent: u\r\n\r\n", ok, 0},
		{"GET /ws HTTP/1.1\r\nHost: api\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n", "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n", 0},
		{get, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n", 0},
		{get, "HTTP/1.1 101 Switching Protocols\r\n\r\n", 0},
		{get, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: web\x01socket\r\n\r\n", 0},
		{"GET /a?b=1;c=2 HTTP/1.1\r\nHost: api\r\n\r\n", ok, 0},
		{"GET /a?b=%zz HTTP/1.1\r\nHost: api\r\n\r\n", ok, 0},
		{"POST /p HTTP/1.1\r\nHost: api\r\nContent-Length: 5\r\n\r\nhello", ok, fwdReadBody},
		{"POST /p HTTP/1.1\r\nHost: api\r\nContent-Length: 0\r\n\r\n", ok, fwdReadBody},
		{"POST /p HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n3\r\nabc\r\n0\r\nX-Sum: 9\r\n\r\n", ok, fwdReadBody},
		{"POST /p HTTP/1.1\r\nHost: api\r\nContent-Length: 10\r\n\r\nshort", ok, fwdReadBody},
		{get, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-T, X-U\r\n\r\n3\r\nabc\r\n0\r\nX-T: v\r\nX-U: w\r\n\r\n", 0},
		{get, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-T\r\n\r\n3\r\nabc\r\n0\r\nX-T: v\r\nX-Other: o\r\n\r\n", 0},
		{get, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-Unannounced: v\r\n\r\n", 0},
		{get, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\nContent-Length: 4\r\n\r\ndata", 0},
		{get, "HTTP/1.1 200 OK\r\nContent-Type: Text/Event-Stream\r\n\r\ndata", 0},
		{get, "HTTP/1.1 200 OK\r\nConnection: X-Hop, close\r\nX-Hop: 1\r\nKeep-Alive: 1\r\nUpgrade: x\r\nProxy-Authenticate: y\r\nContent-Length: 2\r\n\r\nok", 0},
		{get, "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", 0},
		{get, "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", fwdNoServer},
		{get, "HTTP/1.1 204 No Content\r\nX-A: 1\r\nX-A: 2\r\n\r\n", 0},
		{get, ok, fwdTransportFails},
		{get, ok, fwdEarly1xx},
		{get, ok, fwdLate1xx},
		{get, ok, fwdEarly1xx | fwdTransportFails},
		{get, ok, fwdModifyFails},
		{get, "HTTP/1.1 101 Switching Protocols\r\n\r\n", fwdModifyFails},
		{"HEAD / HTTP/1.1\r\nHost: api\r\n\r\n", "HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n", 0},
		{"GET http://other/x?y HTTP/1.1\r\nHost: api\r\n\r\n", ok, 0},
		{"GET / HTTP/1.0\r\nHost: api\r\n\r\n", "HTTP/1.0 200 OK\r\n\r\nclose-delimited", 0},
		{"GET / HTTP/1.1\r\nHost: api\r\nX-Request-Id: abc\r\nX-Empty:\r\n\r\n", ok, 0},
		{get, "garbage", 0},
		{"POST /p HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\nContent-Type: application/grpc\r\nTE: trailers\r\n\r\n3\r\nabc\r\n0\r\nX-Sum: 9\r\n\r\n",
			"HTTP/1.1 200 OK\r\nContent-Type: application/grpc\r\nTrailer: Grpc-Status, Grpc-Message\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n\x00\x00\x00\x00\x00\r\n0\r\nGrpc-Status: 0\r\nGrpc-Message: \r\n\r\n", fwdHTTP2 | fwdReadBody},
		{"GET / HTTP/1.1\r\nHost: api\r\nX-A: 1\r\n\r\n", "HTTP/1.1 200 OK\r\nContent-Type: application/grpc\r\nGrpc-Status: 5\r\nGrpc-Message: nope\r\n\r\n", fwdHTTP2},
		{"GET / HTTP/1.1\r\nHost: api\r\nTE: gzip\r\nTrailer: X\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", ok, 0},
		{"GET / HTTP/1.1\r\nHost: api\r\nKeep-Alive: 5\r\nProxy-Connection: keep-alive\r\nUpgrade: h2c\r\n\r\n", ok, 0},
		{get, "HTTP/1.1 200 OK\r\nX-T: h\r\nTrailer: X-T\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\nX-T: v\r\n\r\n", 0},
		{get, "HTTP/1.1 200 OK\r\nKeep-Alive: 5\r\nTe: x\r\nTrailer: X-T\r\nContent-Length: 0\r\n\r\n", 0},
	} {
		f.Add([]byte(s.req), []byte(s.resp), s.mode)
	}
	u := forwardRig(f)
	f.Fuzz(func(t *testing.T, rawReq, rawResp []byte, mode byte) {
		if len(rawReq) > 16<<10 || len(rawResp) > 16<<10 {
			return
		}
		want := runForward(u, false, rawReq, rawResp, mode)
		got := runForward(u, true, rawReq, rawResp, mode)
		want.fast, got.fast = false, false
		if !reflect.DeepEqual(want, got) {
			t.Errorf("request %q, response %q, mode %#x:\nreverse proxy: %#v\nforward:       %#v", rawReq, rawResp, mode, want, got)
		}
	})
}

// hopOrForwarding's switch has every field of hopHeaders and of the forwarding fields the fuzz test of the
// rewrite checks, and no other.
func TestHopOrForwarding(t *testing.T) {
	for _, k := range append(hopHeaders[:], forwarding...) {
		if !hopOrForwarding(k) {
			t.Errorf("hopOrForwarding(%q) = false", k)
		}
	}
	for _, k := range []string{"Content-Length", "Host", "X-Forwarded-Port", "Trailers", "Tе", "connection"} {
		if hopOrForwarding(k) {
			t.Errorf("hopOrForwarding(%q) = true", k)
		}
	}
}

// The common requests go through forward itself; upgrades and queries the reverse proxy re-encodes go to it.
func TestForwardTakes(t *testing.T) {
	u := forwardRig(t)
	for _, c := range []struct {
		req  string
		fast bool
	}{
		{"GET /a?b=1 HTTP/1.1\r\nHost: api\r\n\r\n", true},
		{"POST /a HTTP/1.1\r\nHost: api\r\nContent-Length: 1\r\n\r\nx", true},
		{"GET /a?b=%41 HTTP/1.1\r\nHost: api\r\nConnection: X-A\r\n\r\n", true},
		{"GET /ws HTTP/1.1\r\nHost: api\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n", false},
		{"GET /a?b=1;c=2 HTTP/1.1\r\nHost: api\r\n\r\n", false},
		{"GET /a?b=%4 HTTP/1.1\r\nHost: api\r\n\r\n", false},
	} {
		out := runForward(u, true, []byte(c.req), []byte("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"), 0)
		if len(out.Sent) == 0 {
			t.Fatalf("%q: nothing sent", c.req)
		}
		if out.fast != c.fast {
			t.Errorf("%q: served by forward itself %v, want %v", c.req, out.fast, c.fast)
		}
		if old := runForward(u, false, []byte(c.req), []byte("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"), 0); old.fast {
			t.Errorf("%q: the reverse proxy's Rewrite saw a trace", c.req)
		}
	}
}

// BenchmarkForward is the reverse proxy's own work on a request (the transport answers at once from memory; the
// writer keeps nothing), through httputil.ReverseProxy.ServeHTTP and through forward: a GET as curl sends it,
// and a response as a small JSON API answers.
func BenchmarkForward(b *testing.B) {
	u := forwardRig(b)
	rp := u.reverseProxy()
	body := []byte(`{"id":1,"name":"item"}`)
	rp2 := *rp
	rp2.Transport = roundTripFunc(func(r *http.Request) (*http.Response, error) {
		return &http.Response{StatusCode: 200, ProtoMajor: 1, ProtoMinor: 1, Request: r, ContentLength: int64(len(body)),
			Header: http.Header{"Content-Type": {"application/json"}, "Content-Length": {"22"}, "Date": {"Mon, 07 Dec 2026 02:00:00 GMT"}},
			Body:   io.NopCloser(bytes.NewReader(body))}, nil
	})
	for _, c := range []struct {
		name  string
		serve func(http.ResponseWriter, *http.Request)
	}{{"reverseproxy", rp2.ServeHTTP}, {"forward", func(w http.ResponseWriter, r *http.Request) { forward(&rp2, w, r) }}} {
		b.Run(c.name, func(b *testing.B) {
			ctx, cancel := context.WithCancel(context.WithValue(context.Background(), http.ServerContextKey, &http.Server{}))
			defer cancel()
			b.ReportAllocs()
			for b.Loop() {
				req := &http.Request{Method: "GET", URL: &url.URL{Path: "/v1/items/1"}, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
					Host: "api", RemoteAddr: "127.0.0.1:4000", Body: http.NoBody,
					Header: http.Header{"User-Agent": {"curl/8.5.0"}, "Accept": {"*/*"}}}
				c.serve(discardWriter{http.Header{}}, req.WithContext(ctx))
			}
		})
	}
}

type discardWriter struct{ h http.Header }

func (w discardWriter) Header() http.Header         { return w.h }
func (w discardWriter) WriteHeader(int)             {}
func (w discardWriter) Write(p []byte) (int, error) { return len(p), nil }
