package proxy

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/textproto"
	"net/url"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/net/http/httpguts"

	"meshlet.dev/meshlet/discovery"
	"meshlet.dev/meshlet/grpcwire"
	"meshlet.dev/meshlet/metrics"
)

// rewriteTimeout is the fuzzed upstream's configured timeout.
const rewriteTimeout = time.Hour

// wireRequest is what the fuzzed upstream's endpoint received: the request head as raw bytes and the body.
type wireRequest struct {
	head []byte // request line and header lines, each ending in CRLF, without the blank line
	body []byte
	err  error // reading or parsing what arrived
	gen  uint64
}

// rewriteRig is an outbound HTTP/1.1 upstream whose endpoint is an in-memory connection: every request meshlet
// sends goes through the real reverse proxy (its Rewrite), the retry transport (gRPC deadline propagation),
// upstream.RoundTrip and net/http's transport, and its bytes on the wire are handed to the test.
type rewriteRig struct {
	u        *cluster
	wire     chan wireRequest
	deadline chan time.Time // the deadline of the outbound request's context, as the reverse proxy sends it
	// gen counts the client requests; a connection carries the generation it was dialed in, so that what a
	// request given up on (a gRPC deadline of a few ns) still sends is not taken for the next one's.
	gen atomic.Uint64
}

func newRewriteRig(tb testing.TB) *rewriteRig {
	cfg := Config{Service: ServiceConfig{Name: "web"}, Upstreams: []UpstreamConfig{{Name: "api",
		Listen: "127.0.0.1:0", Protocol: ProtocolHTTP, Endpoints: []string{"192.0.2.10:8080"}, Timeout: rewriteTimeout}}}
	cfg.Upstreams[0].Resilience.Retry.MaxAttempts = 1 // one attempt: the endpoint is always healthy
	cfg.Upstreams[0].Resilience.Breaker.Disabled = true
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		tb.Fatal(err)
	}
	m := metrics.New(prometheus.NewRegistry(), "test")
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	u := newCluster(&cfg.Upstreams[0], metrics.Outbound, m, log, nil)
	u.endpoints.update(discovery.Snapshot{Service: "api", Index: 1,
		Endpoints: []discovery.Endpoint{{ID: "e1", Addr: netip.MustParseAddrPort("192.0.2.10:8080")}}})
	rig := &rewriteRig{u: u, wire: make(chan wireRequest, 16), deadline: make(chan time.Time, 4)}
	// Every request on a connection of its own: the transport would otherwise keep a connection dialed for a
	// request that gave up (a gRPC deadline of a few ns) and hand it to the next one, tagged with the old
	// generation, and the next request would seem never to reach the endpoint. (A negative idle limit closes
	// such a connection; DisableKeepAlives would add Connection: close to every request.)
	u.transport.Load().h1.MaxIdleConnsPerHost = -1
	u.transport.Load().h1.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		client, server := net.Pipe()
		go rig.serveOne(server, rig.gen.Load())
		return client, nil
	}
	rp := u.reverseProxy()
	next := rp.Transport
	rp.Transport = roundTripFunc(func(r *http.Request) (*http.Response, error) {
		dl, _ := r.Context().Deadline()
		rig.deadline <- dl
		return next.RoundTrip(r)
	})
	tb.Cleanup(u.close)
	return rig
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// serveOne reads one request from c, hands it to the test, answers 200 and closes the connection.
func (rig *rewriteRig) serveOne(c net.Conn, gen uint64) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	var raw bytes.Buffer
	br := bufio.NewReader(io.TeeReader(c, &raw))
	req, err := http.ReadRequest(br)
	if err != nil && raw.Len() == 0 {
		return // the transport gave up before writing (an invalid Host, say): nothing reached the endpoint
	}
	w := wireRequest{gen: gen}
	if err != nil {
		w.err = fmt.Errorf("endpoint could not parse the request: %w", err)
	} else {
		w.body, w.err = io.ReadAll(req.Body)
	}
	head, _, ok := bytes.Cut(raw.Bytes(), []byte("\r\n\r\n"))
	if !ok && w.err == nil {
		w.err = fmt.Errorf("no end of header section in %q", raw.Bytes())
	}
	w.head = append(head, "\r\n"...)
	rig.wire <- w
	io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
}

// rewriteMethods are the methods FuzzHeaderRewrite picks from.
var rewriteMethods = []string{"GET", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "HEAD", "CONNECT", "PRI", "get"}

// Hop-by-hop headers (RFC 9110 section 7.6.1 and RFC 2616's list) and the forwarding headers a client must not be
// able to set for the app behind meshlet.
var (
	hopByHop   = []string{"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade"}
	forwarding = []string{"Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto"}
)

// parseFuzzHeaders reads headers from s: records separated by 0x1e, each a name, a colon and a value (any bytes,
// CR, LF and NUL included). Like net/http's server it keeps Host out of the map (it is the authority).
func parseFuzzHeaders(s string) http.Header {
	h := http.Header{}
	for rec := range strings.SplitSeq(s, "\x1e") {
		name, value, ok := strings.Cut(rec, ":")
		// Fields net/http's servers (HTTP/1.1 and HTTP/2) refuse never reach meshlet's handler.
		if !ok || http.CanonicalHeaderKey(name) == "Host" || !httpguts.ValidHeaderFieldName(name) ||
			!httpguts.ValidHeaderFieldValue(value) {
			continue
		}
		h.Add(name, value)
	}
	return h
}

// wireHeaders splits a request head into its request target and its header fields, in order.
func wireHeaders(t *testing.T, head []byte) (target string, fields [][2]string) {
	lines := strings.Split(strings.TrimSuffix(string(head), "\r\n"), "\r\n")
	parts := strings.Split(lines[0], " ")
	if len(parts) != 3 || parts[2] != "HTTP/1.1" {
		t.Fatalf("request line %q", lines[0])
	}
	for _, l := range lines[1:] {
		name, value, ok := strings.Cut(l, ": ")
		if !ok || !httpguts.ValidHeaderFieldName(name) || !httpguts.ValidHeaderFieldValue(value) ||
			strings.ContainsAny(value, "\r\n\x00") {
			t.Fatalf("malformed header line on the wire: %q\nhead:\n%s", l, head)
		}
		fields = append(fields, [2]string{http.CanonicalHeaderKey(name), value})
	}
	return parts[1], fields
}

// FuzzHeaderRewrite drives requests with arbitrary headers, authority, target, method and body through an
// upstream's real request path (the reverse proxy's Rewrite, the retry transport, RoundTrip, net/http's transport)
// to an in-memory endpoint, and checks what arrives there byte for byte:
//   - meshlet never panics; a request either reaches the endpoint whole or meshlet answers it itself with an
//     error status (invalid header names and values, CONNECT, an invalid Host or upgrade token);
//   - the header section is well formed: every line a token name and a value without CR, LF or NUL, so no input
//     can smuggle a header line or a second request;
//   - hop-by-hop headers do not pass: Connection, Keep-Alive, Proxy-*, Trailer, Transfer-Encoding, TE (except as
//     "TE: trailers" when the client's TE asked for trailers), Upgrade and Connection except as the pair
//     "Connection: Upgrade" and the client's Upgrade on an upgrade request, and every header the client's
//     Connection named;
//   - the client's Forwarded and X-Forwarded-* never reach the app (meshlet adds none);
//   - every other header arrives unchanged: the same values in the same order, byte for byte up to the optional
//     whitespace around a value that HTTP/1.1 does not count as part of it; the only headers meshlet adds are
//     Host, Content-Length and, on gRPC calls, grpc-timeout;
//   - the Host is the client's authority; the path and a well-formed query are the client's; the body arrives
//     whole;
//   - the outbound request has a deadline no later than the upstream's timeout, or the client's grpc-timeout
//     when that is sooner, and a gRPC call carries it on the wire as one valid grpc-timeout no longer than that.
//
// requestIDForm is the form of the request IDs meshlet makes: version-4 UUIDs, lowercase.
var requestIDForm = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

func FuzzHeaderRewrite(f *testing.F) {
	for _, s := range []struct {
		method          uint8
		authority, path string
		headers, body   string
	}{
		{0, "api", "/", "Accept:*/*\x1eUser-Agent:curl/8", ""},
		{1, "api.mesh:80", "/v1/items?a=1&b=%20x", "Content-Type:application/json\x1eX-Request-Id:abc", `{"a":1}`},
		{0, "api", "/", "Connection:keep-alive, X-Secret, x-other\x1eX-Secret:s\x1eX-Other:o\x1eX-Kept:k", ""},
		{0, "api", "/", "Connection:close\x1eKeep-Alive:timeout=5\x1eProxy-Connection:keep-alive\x1eProxy-Authorization:Basic eA==\x1eTransfer-Encoding:chunked", ""},
		{0, "api", "/", "TE:trailers, deflate\x1eTrailer:X-Checksum", ""},
		{0, "api", "/", "TE:gzip", ""},
		{0, "api", "/ws", "Connection:Upgrade\x1eUpgrade:websocket\x1eSec-WebSocket-Key:dGhlIHNhbXBsZSBub25jZQ==", ""},
		{0, "api", "/ws", "Connection:upgrade, X-A\x1eUpgrade:h2c\x1eX-A:1", ""},
		{0, "api", "/", "Forwarded:for=1.2.3.4\x1eX-Forwarded-For:1.2.3.4\x1eX-Forwarded-Host:evil\x1eX-Forwarded-Proto:https", ""},
		{1, "api", "/pkg.Svc/Call", "Content-Type:application/grpc\x1eGrpc-Timeout:5S\x1eTe:trailers", "\x00\x00\x00\x00\x00"},
		{1, "api", "/pkg.Svc/Call", "Content-Type:application/grpc+proto\x1eGrpc-Timeout:99999999H", ""},
		{1, "api", "/pkg.Svc/Call", "Content-Type:application/grpc\x1eGrpc-Timeout:1n", ""},
		{1, "api", "/pkg.Svc/Call", "Content-Type:application/grpc\x1eGrpc-Timeout:bogus", ""},
		{1, "api", "/pkg.Svc/Call", "Content-Type:application/grpc\x1eConnection:grpc-timeout\x1eGrpc-Timeout:2m", ""},
		{0, "api", "/", "X-Multi:a\x1eX-Multi:b\x1ex-multi: c \x1eX-Empty:", ""},
		{0, "api", "/", "X-Inject:a\r\nX-Evil: 1\x1eX-Nul:a\x00b\x1eX-Lf:a\nb", ""},
		{0, "api", "/", "Bad Name:v\x1e:novalue\x1eX-Ok:v", ""},
		{0, "api", "/", "X-Tab:\ta\tb\t\x1eX-Space:  lead and trail  \x1eX-Utf8:héllo\x1eX-High:\xff\xfe", ""},
		{0, "", "/", "", ""},
		{0, "api\r\nX-Evil: 1", "/", "", ""},
		{0, "[::1]:9001", "/%2F%2e?q=%zz;x", "", ""},
		{0, "bücher.example", "/", "", ""},
		{7, "api", "/", "", ""},
		{0, "api", "/", "Content-Length:5\x1eHost:evil", ""},
		{0, "api", "/", "Connection:Host, Content-Length, User-Agent\x1eUser-Agent:x", ""},
		{0, "api", "/", "User-Agent:a\x1eUser-Agent:b", ""},
	} {
		f.Add(s.method, s.authority, s.path, s.headers, s.body)
	}
	rig := newRewriteRig(f)
	f.Fuzz(func(t *testing.T, method uint8, authority, path, headers, body string) {
		rig.check(t, rewriteMethods[int(method)%len(rewriteMethods)], authority, path, headers, body)
	})
}

func (rig *rewriteRig) check(t *testing.T, method, authority, target, headers, body string) {
	if !strings.HasPrefix(target, "/") {
		target = "/" + target
	}
	u, err := url.ParseRequestURI(target)
	if err != nil || u.Host != "" || u.Scheme != "" {
		return // net/http's server would have refused the request line
	}
	in := parseFuzzHeaders(headers)
	req := &http.Request{Method: method, URL: u, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1, Header: in,
		Host: authority, RemoteAddr: "127.0.0.1:40000", RequestURI: target, Body: http.NoBody}
	if body != "" {
		req.Body, req.ContentLength = io.NopCloser(strings.NewReader(body)), int64(len(body))
	}
	inCopy := in.Clone()
	gen := rig.gen.Add(1)
	for len(rig.wire) > 0 {
		<-rig.wire // left by an earlier request given up on
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req = req.WithContext(ctx)
	rec := httptest.NewRecorder()
	start := time.Now()
	done := make(chan struct{})
	go func() {
		defer close(done)
		rig.u.serveHTTP(rec, req, nil)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatalf("meshlet did not answer within 5s")
	}

	var dl time.Time
	sent := false
	select {
	case dl = <-rig.deadline:
		sent = true
	default:
	}
	var w wireRequest
	reached := false
	for len(rig.wire) > 0 {
		if x := <-rig.wire; x.gen == gen {
			if reached {
				t.Fatalf("more than one request left meshlet for one client request")
			}
			w, reached = x, true
		}
	}
	if len(rig.deadline) > 0 {
		t.Fatalf("more than one request left meshlet for one client request")
	}
	if !equalHeaders(in, inCopy) {
		t.Fatalf("the client's request headers were modified:\nbefore %q\nafter  %q", inCopy, in)
	}
	if !reached {
		// meshlet answered itself: an HTTP error, or for gRPC calls a status in a trailers-only 200; either way it
		// says so in X-Meshlet-Error.
		if rec.Header().Get("X-Meshlet-Error") == "" {
			t.Fatalf("nothing reached the endpoint, yet the client got %d without X-Meshlet-Error", rec.Code)
		}
		if method == http.MethodConnect && !(rec.Code == http.StatusMethodNotAllowed ||
			grpcwire.IsGRPC(req.Header) && rec.Code == http.StatusOK && rec.Header().Get("Grpc-Status") == "12") {
			t.Fatalf("CONNECT answered %d (grpc-status %q), want 405 or, for gRPC, UNIMPLEMENTED", rec.Code,
				rec.Header().Get("Grpc-Status"))
		}
		return
	}
	if rec.Header().Get("X-Meshlet-Error") == "timeout" && grpcwire.IsGRPC(req.Header) && sent {
		// A gRPC deadline shorter than the round trip ran out on the way: nothing more to compare.
		if d, ok := grpcwire.ParseTimeout(inCopy.Get("Grpc-Timeout")); ok && dl.After(start.Add(d+time.Second)) {
			t.Fatalf("outbound deadline %v, want one by %v (grpc-timeout %q)", dl, start.Add(d), inCopy.Get("Grpc-Timeout"))
		}
		return
	}
	if w.err != nil {
		t.Fatalf("%v\nhead:\n%s", w.err, w.head)
	}
	if rec.Code != http.StatusOK {
		t.Fatalf("the request reached the endpoint, which answered 200, but the client got %d: %s", rec.Code, rec.Body)
	}
	if !sent {
		t.Fatal("the request reached the endpoint without passing the reverse proxy's transport")
	}

	grpc := grpcwire.IsGRPC(req.Header)
	wantDeadline := start.Add(rewriteTimeout)
	inTimeout, inTimeoutOK := time.Duration(0), false
	if grpc {
		if d, ok := grpcwire.ParseTimeout(inCopy.Get("Grpc-Timeout")); ok {
			inTimeout, inTimeoutOK = d, true
			if d < rewriteTimeout {
				wantDeadline = start.Add(d)
			}
		}
	}
	if dl.IsZero() || dl.After(wantDeadline.Add(time.Second)) {
		t.Fatalf("outbound deadline %v, want one by %v (upstream timeout %v; gRPC %v, grpc-timeout %q)",
			dl, wantDeadline, rewriteTimeout, grpc, inCopy.Get("Grpc-Timeout"))
	}

	target2, fields := wireHeaders(t, w.head)
	out := http.Header{}
	for _, f := range fields {
		out[f[0]] = append(out[f[0]], f[1])
	}
	// What the client's Connection named, and whether this is an upgrade the reverse proxy carries.
	named := map[string]bool{}
	for _, v := range inCopy["Connection"] {
		for tok := range strings.SplitSeq(v, ",") {
			if tok = textproto.TrimString(tok); tok != "" { // as the reverse proxy reads it
				named[http.CanonicalHeaderKey(tok)] = true
			}
		}
	}
	upType := ""
	if httpguts.HeaderValuesContainsToken(inCopy["Connection"], "Upgrade") {
		upType = inCopy.Get("Upgrade")
	}
	teTrailers := httpguts.HeaderValuesContainsToken(inCopy["Te"], "trailers")

	// Headers meshlet (or net/http under it) may write that the client did not send, and when.
	added := func(name string) bool {
		switch name {
		case "Host", "Content-Length":
			return true
		case "Te":
			return teTrailers
		case "Connection", "Upgrade":
			return upType != ""
		case "Grpc-Timeout":
			return grpc
		case HeaderRequestID: // added when the client sent none (newRequestID)
			return len(inCopy[HeaderRequestID]) == 0
		}
		return false
	}
	if _, sent := inCopy[HeaderRequestID]; !sent {
		if vs := out[HeaderRequestID]; len(vs) != 1 || !requestIDForm.MatchString(vs[0]) {
			t.Fatalf("X-Request-Id added to a request without one: %q, want one version-4 UUID", vs)
		}
	}
	for name, vs := range out {
		if len(vs) > 1 && (name == "Host" || name == "Content-Length") {
			t.Fatalf("%d %s lines on the wire: %q", len(vs), name, vs)
		}
		if slices.Contains(forwarding, name) {
			t.Fatalf("%s reached the app: %q", name, vs)
		}
		if slices.Contains(hopByHop, name) || named[name] {
			switch {
			case name == "Te" && teTrailers && slices.Equal(vs, []string{"trailers"}):
			case name == "Connection" && upType != "" && slices.Equal(vs, []string{"Upgrade"}):
			case name == "Upgrade" && upType != "" && slices.Equal(vs, []string{strings.Trim(upType, " \t")}):
			case named[name] && !slices.Contains(hopByHop, name) && added(name):
			default:
				t.Fatalf("hop-by-hop header %s reached the app: %q (client sent %q, Connection %q)",
					name, vs, inCopy[name], inCopy["Connection"])
			}
			continue
		}
		if _, ok := inCopy[name]; !ok && !added(name) && name != "User-Agent" {
			t.Fatalf("header %s on the wire that the client did not send: %q", name, vs)
		}
	}
	for name, vs := range inCopy {
		if slices.Contains(hopByHop, name) || named[name] || slices.Contains(forwarding, name) ||
			name == "Content-Length" || (grpc && name == "Grpc-Timeout") {
			continue
		}
		want := make([]string, len(vs))
		for i, v := range vs {
			want[i] = strings.Trim(v, " \t")
		}
		if name == "User-Agent" {
			want = want[:1] // a singleton field: net/http writes the first value only, and none if it is empty
			if vs[0] == "" {
				want = nil
			}
		}
		if !slices.Equal(out[name], want) {
			t.Fatalf("end-to-end header %s: client sent %q, the app got %q", name, vs, out[name])
		}
	}
	if ua, ok := inCopy["User-Agent"]; (!ok || named["User-Agent"]) && out["User-Agent"] != nil {
		t.Fatalf("User-Agent %q on the wire; the client sent %q", out["User-Agent"], ua)
	}

	// Host, target and body. net/http writes a non-ASCII authority in punycode, an invalid one (control
	// characters, spaces) as an empty Host rather than an altered one, and drops an IPv6 zone ("[fe80::1%eth0]").
	wantHost, err := httpguts.PunycodeHostPort(authority)
	if err != nil || !httpguts.ValidHostHeader(wantHost) {
		wantHost = ""
	}
	if strings.HasPrefix(wantHost, "[") {
		if i := strings.LastIndex(wantHost, "]"); i >= 0 {
			if j := strings.LastIndex(wantHost[:i], "%"); j >= 0 {
				wantHost = wantHost[:j] + wantHost[i:]
			}
		}
	}
	if authority == "" {
		wantHost = "192.0.2.10:8080" // no authority (HTTP/1.0): the endpoint's address
	}
	if host := out.Get("Host"); host != wantHost {
		t.Fatalf("Host %q on the wire, want %q (the client's authority was %q)", host, wantHost, authority)
	}
	wu, err := url.ParseRequestURI(target2)
	if err != nil {
		t.Fatalf("request target %q on the wire: %v", target2, err)
	}
	if wu.Path != u.Path {
		t.Fatalf("path %q on the wire (target %q), the client's was %q (target %q)", wu.Path, target2, u.Path, target)
	}
	// A query that parses means the same on the wire (the reverse proxy re-encodes only one that does not parse
	// and cuts one with too many parameters).
	if q, err := url.ParseQuery(u.RawQuery); err == nil && strings.Count(u.RawQuery, "&") < 1000 {
		if wq, err := url.ParseQuery(wu.RawQuery); err != nil || !reflect.DeepEqual(wq, q) {
			t.Fatalf("query %q on the wire, the client's was %q", wu.RawQuery, u.RawQuery)
		}
	}
	if string(w.body) != body {
		t.Fatalf("body %q on the wire, the client sent %q", w.body, body)
	}

	// gRPC deadline propagation.
	if grpc {
		gt := out["Grpc-Timeout"]
		if len(gt) != 1 {
			t.Fatalf("gRPC call with grpc-timeout %q reached the app with %q, want one value", inCopy["Grpc-Timeout"], gt)
		}
		d, ok := grpcwire.ParseTimeout(gt[0])
		if !ok {
			t.Fatalf("grpc-timeout %q on the wire does not parse", gt[0])
		}
		limit := rewriteTimeout
		if inTimeoutOK && inTimeout < limit {
			limit = inTimeout
		}
		if d > limit {
			t.Fatalf("grpc-timeout %q (%v) on the wire is longer than the %v meshlet allowed (client sent %q)",
				gt[0], d, limit, inCopy["Grpc-Timeout"])
		}
	}
}

func equalHeaders(a, b http.Header) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if !slices.Equal(v, b[k]) {
			return false
		}
	}
	return true
}
