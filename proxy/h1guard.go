package proxy

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"io"
	"net"
	"net/http"
	"sync"
	"time"
)

// The HTTP/1.1 guard checks the framing of every request on a plaintext HTTP listener before net/http parses it,
// because net/http is lenient where a proxy must not be: it forwards a request with both Content-Length and
// Transfer-Encoding as chunked (RFC 9112 section 6.3 allows that), unfolds obsolete line folding, accepts bare LF
// line ends and identical duplicate Content-Lengths. Any of these lets a front proxy and the app disagree on where
// a request ends (request smuggling). The guard refuses them as Envoy does: it buffers each request head until it
// is complete, checks it, and only then hands it to net/http; it follows the body's framing (Content-Length or
// chunked) so that it finds the next head on a kept-alive connection. A refused head never reaches net/http: the
// guard hands over a synthetic request that the guard's handler answers (400, 431, 501 or 505 with Connection:
// close, counted in meshlet_refused_requests_total by reason), and then the connection ends.
//
// Mutual TLS connections that speak HTTP/1.1 are guarded too; HTTP/2 ones (ALPN h2) are not, as net/http needs the
// *tls.Conn itself for them, and HTTP/2 framing leaves no such ambiguity.

// Reasons the guard refuses a request (the reason label of meshlet_refused_requests_total).
const (
	malformedRequestLine   = "invalid_request_line"
	malformedVersion       = "unsupported_version"
	malformedLineEnd       = "bare_cr_lf"
	malformedObsFold       = "obs_fold"
	malformedHeaderName    = "invalid_header_name"
	malformedHeaderValue   = "invalid_header_value"
	malformedCLAndTE       = "content_length_and_transfer_encoding"
	malformedMultipleCL    = "multiple_content_length"
	malformedCL            = "invalid_content_length"
	malformedTE            = "unsupported_transfer_encoding"
	malformedHeadTooLarge  = "headers_too_large"
	malformedChunk         = "invalid_chunked_body"
	maxChunkLineBytes      = 4 << 10 // a chunk-size line with its extensions
	guardReadChunk         = 4 << 10
	guardMaxContentLenDigs = 18 // below 2^63
)

// rejectedPath is the path of the synthetic request the guard hands to net/http in place of a refused head. It
// carries a random token, so that no client can name it.
var rejectedPath = func() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return "/.meshlet-rejected/" + hex.EncodeToString(b[:])
}()

var guardBufs = sync.Pool{New: func() any { b := make([]byte, 0, guardReadChunk); return &b }}

type guardState uint8

const (
	gHead      guardState = iota // reading a request head
	gLength                      // passing a Content-Length body
	gChunkLine                   // reading a chunk-size line
	gChunkData                   // passing chunk data
	gChunkEnd                    // the CRLF after chunk data
	gTrailer                     // trailer lines after the last chunk
	gOpaque                      // HTTP/2 or an upgraded connection: bytes pass unchecked
	gRejected                    // a refused head was replaced; the connection ends after its answer
	gFailed                      // a body's framing broke: reads fail
)

// rejection is why the guard refused a head and what status answers it.
type rejection struct {
	reason string
	status int
}

// guardConn is one guarded connection. net/http calls Read from one goroutine at a time (its background read
// included); handlers read rejected and broken under mu.
type guardConn struct {
	net.Conn
	maxHead      int                  // bytes a request head may take, request line included
	writeTimeout time.Duration        // a write that makes no progress this long fails (0: none)
	tls          *tls.ConnectionState // the handshake of a mutual TLS connection; nil for plaintext

	mu       sync.Mutex
	rejected *rejection // a refused head
	broken   bool       // a body's chunked framing broke (counted once, by brokenBody)

	state guardState
	in    *[]byte // bytes read and not yet handed on (pooled); nil when empty
	out   int     // bytes at the front of *in that are ready for net/http
	scan  int     // how far the head at the front of *in has been checked
	left  int64   // bytes left in a Content-Length body or a chunk
	line  []byte  // the chunk-size or trailer line being read
	trail int     // bytes of trailers so far
	err   error   // an error that came with data, returned by the next read
}

// guardListener wraps the plaintext connections a listener accepts in a guardConn.
type guardListener struct {
	net.Listener
	maxHead      int
	writeTimeout time.Duration
}

func (l *guardListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	g := &guardConn{Conn: c, maxHead: l.maxHead, writeTimeout: l.writeTimeout}
	if tc, ok := c.(*tls.Conn); ok {
		// The inbound listener hands over mutual TLS connections with the handshake done. HTTP/2 (ALPN h2) needs
		// the *tls.Conn itself (net/http hands it to its HTTP/2 server); HTTP/1.1 is guarded like plaintext, and
		// its requests find the peer's certificates through the guard (tlsStateOf), as net/http then leaves
		// Request.TLS nil.
		cs := tc.ConnectionState()
		if cs.NegotiatedProtocol == "h2" {
			return c, nil
		}
		g.tls = &cs
	}
	return g, nil
}

// tlsStateOf returns the TLS state of the connection r came on: net/http's, or the guard's for a guarded mutual
// TLS connection; nil for plaintext.
func tlsStateOf(r *http.Request) *tls.ConnectionState {
	if r.TLS != nil {
		return r.TLS
	}
	if g := guardOf(r); g != nil {
		return g.tls
	}
	return nil
}

// Write gives each write writeTimeout to make progress: a client that stops reading is disconnected.
func (g *guardConn) Write(p []byte) (int, error) {
	if g.writeTimeout > 0 {
		_ = g.Conn.SetWriteDeadline(time.Now().Add(g.writeTimeout))
	}
	return g.Conn.Write(p)
}

// CloseWrite lets the half-close of upgraded connections through.
func (g *guardConn) CloseWrite() error {
	if cw, ok := g.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

func (g *guardConn) buffered() bool { return g.in != nil && len(*g.in) > 0 }

func (g *guardConn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	for {
		if g.out > 0 {
			return g.handOut(p), nil
		}
		switch g.state {
		case gRejected:
			return 0, io.EOF
		case gFailed:
			return 0, errMalformedBody
		case gOpaque:
			if g.buffered() {
				g.out = len(*g.in)
				continue
			}
			return g.connRead(p)
		case gHead:
			if g.buffered() {
				if g.checkHead() {
					continue
				}
				if err := g.fill(); err != nil {
					return 0, err
				}
				continue
			}
			// Between requests nothing is buffered: read straight into p (no buffer held by idle connections).
			n, err := g.connRead(p)
			if n == 0 {
				return 0, err
			}
			g.stash(p[:n])
		default: // in a body
			if g.buffered() {
				g.out = g.body(*g.in)
				continue
			}
			n, err := g.connRead(p)
			if n == 0 {
				return 0, err
			}
			k := g.body(p[:n])
			if k < n {
				g.stash(p[k:n])
			}
			if k > 0 {
				return k, nil
			}
		}
	}
}

// connRead reads from the connection; an error that comes with data is kept for the next call.
func (g *guardConn) connRead(p []byte) (int, error) {
	if g.err != nil {
		err := g.err
		g.err = nil
		return 0, err
	}
	n, err := g.Conn.Read(p)
	if n > 0 && err != nil {
		g.err, err = err, nil
	}
	return n, err
}

// handOut copies ready bytes into p and drops them from the buffer.
func (g *guardConn) handOut(p []byte) int {
	b := *g.in
	n := copy(p, b[:g.out])
	g.out -= n
	rest := copy(b, b[n:])
	*g.in = b[:rest]
	g.scan = max(g.scan-n, 0)
	if rest == 0 {
		g.release()
	}
	return n
}

// stash appends b to the buffer, taking one from the pool if needed.
func (g *guardConn) stash(b []byte) {
	if g.in == nil {
		g.in = guardBufs.Get().(*[]byte)
	}
	*g.in = append(*g.in, b...)
}

func (g *guardConn) release() {
	if g.in != nil && cap(*g.in) <= 4*guardReadChunk {
		*g.in = (*g.in)[:0]
		guardBufs.Put(g.in)
	}
	g.in, g.scan = nil, 0
}

// fill reads more of an incomplete head into the buffer.
func (g *guardConn) fill() error {
	b := *g.in
	if cap(b)-len(b) < guardReadChunk/2 {
		nb := make([]byte, len(b), 2*cap(b)+guardReadChunk)
		copy(nb, b)
		b = nb
	}
	n, err := g.connRead(b[len(b):cap(b)])
	*g.in = b[:len(b)+n]
	if n > 0 {
		return nil
	}
	if err == nil {
		err = io.ErrNoProgress
	}
	return err
}

// checkHead checks the buffered head line by line; it returns false when the head is not complete yet. A complete
// head is made ready for net/http (out set, state set for its body) or replaced by the synthetic rejected request.
func (g *guardConn) checkHead() bool {
	b := *g.in
	for {
		i := bytes.IndexByte(b[g.scan:], '\n')
		if i < 0 {
			rest := b[g.scan:]
			if k := bytes.IndexByte(rest, '\r'); k >= 0 && k < len(rest)-1 {
				return g.reject(malformedLineEnd, http.StatusBadRequest)
			}
			if len(b) > g.maxHead {
				return g.reject(malformedHeadTooLarge, http.StatusRequestHeaderFieldsTooLarge)
			}
			return false
		}
		end := g.scan + i
		line := b[g.scan:end]
		if len(line) == 0 || line[len(line)-1] != '\r' || bytes.IndexByte(line[:len(line)-1], '\r') >= 0 {
			return g.reject(malformedLineEnd, http.StatusBadRequest)
		}
		if end+1 > g.maxHead {
			return g.reject(malformedHeadTooLarge, http.StatusRequestHeaderFieldsTooLarge)
		}
		g.scan = end + 1
		if len(line) == 1 { // the empty line ends the head
			return g.headDone(b[:g.scan])
		}
	}
}

// headDone checks a complete head and sets up its body.
func (g *guardConn) headDone(head []byte) bool {
	h, reason, status := parseHead(head)
	if reason != "" {
		return g.reject(reason, status)
	}
	g.out = len(head)
	switch {
	case h.h2:
		g.state = gOpaque
	case h.upgrade:
		// The handler closes the connection after any answer but 101 (closeUnlessSwitching).
		g.state = gOpaque
	case h.chunked:
		g.state, g.line = gChunkLine, g.line[:0]
	case h.length > 0:
		g.state, g.left = gLength, h.length
	default:
		g.state = gHead
	}
	return true
}

// reject replaces the buffered bytes by the synthetic request; the connection ends after its answer.
func (g *guardConn) reject(reason string, status int) bool {
	g.mu.Lock()
	g.rejected = &rejection{reason: reason, status: status}
	g.mu.Unlock()
	*g.in = append((*g.in)[:0], "GET "+rejectedPath+" HTTP/1.1\r\nHost: meshlet\r\nConnection: close\r\n\r\n"...)
	g.out = len(*g.in)
	g.state = gRejected
	return true
}

// fail marks a broken body: reads fail from now on, so the request fails and the connection is not reused.
func (g *guardConn) fail() {
	g.mu.Lock()
	g.broken = true
	g.mu.Unlock()
	g.state = gFailed
}

// body follows the framing of the current body over b and returns how many of its bytes belong to it (all of
// them, unless the body ends inside b; then the rest starts the next head).
func (g *guardConn) body(b []byte) int {
	i := 0
	for i < len(b) {
		switch g.state {
		case gLength, gChunkData:
			n := int(min(g.left, int64(len(b)-i)))
			i += n
			if g.left -= int64(n); g.left == 0 {
				if g.state == gLength {
					g.state = gHead
					return i
				}
				g.state, g.line = gChunkEnd, g.line[:0]
			}
		case gChunkEnd, gChunkLine, gTrailer:
			start := i // a broken line is not handed on: net/http gets errMalformedBody, not its own error
			j := bytes.IndexByte(b[i:], '\n')
			end := len(b)
			if j >= 0 {
				end = i + j + 1
			}
			g.line = append(g.line, b[i:end]...)
			i = end
			limit := maxChunkLineBytes
			if g.state == gTrailer {
				limit = g.maxHead - g.trail
			}
			if j < 0 {
				if k := bytes.IndexByte(g.line, '\r'); k >= 0 && k < len(g.line)-1 {
					g.fail() // a CR not followed by LF
					return start
				}
			}
			if len(g.line) > limit || j >= 0 && !g.lineDone() {
				g.fail()
				return start
			}
			if g.state == gHead {
				return i
			}
		default:
			return i
		}
	}
	return i
}

// lineDone takes a complete chunk-size, chunk-end or trailer line.
func (g *guardConn) lineDone() bool {
	line := g.line
	g.line = g.line[:0]
	if len(line) < 2 || line[len(line)-2] != '\r' || bytes.IndexByte(line[:len(line)-2], '\r') >= 0 {
		return false
	}
	line = line[:len(line)-2]
	switch g.state {
	case gChunkEnd:
		if len(line) != 0 {
			return false
		}
		g.state = gChunkLine
	case gChunkLine:
		size, ok := parseChunkSize(line)
		if !ok {
			return false
		}
		if size == 0 {
			g.state, g.trail = gTrailer, 0
		} else {
			g.state, g.left = gChunkData, size
		}
	case gTrailer:
		if len(line) == 0 {
			g.state = gHead
			if cap(g.line) > 512 {
				g.line = nil // long trailers: an idle connection does not keep their buffer
			}
			return true
		}
		g.trail += len(line) + 2
		if _, _, reason := parseHeaderLine(line); reason != "" {
			return false
		}
	}
	return true
}

// parseChunkSize reads a chunk-size line without its CRLF: hex digits, then optional extensions.
func parseChunkSize(line []byte) (int64, bool) {
	var size int64
	i := 0
	for ; i < len(line); i++ {
		c := line[i]
		var d byte
		switch {
		case '0' <= c && c <= '9':
			d = c - '0'
		case 'a' <= c && c <= 'f':
			d = c - 'a' + 10
		case 'A' <= c && c <= 'F':
			d = c - 'A' + 10
		default:
			goto ext
		}
		if i >= 15 {
			return 0, false
		}
		size = size<<4 | int64(d)
	}
ext:
	if i == 0 {
		return 0, false
	}
	rest := bytes.TrimLeft(line[i:], " \t")
	if len(rest) > 0 && rest[0] != ';' {
		return 0, false
	}
	for _, c := range rest {
		if c < ' ' && c != '\t' || c == 0x7f {
			return 0, false
		}
	}
	return size, true
}

// headInfo is what the guard needs to know of a checked head.
type headInfo struct {
	h2      bool // the HTTP/2 connection preface
	upgrade bool
	chunked bool
	length  int64
}

// parseHead checks a complete head (ending in the empty line): request line, header lines and body framing.
func parseHead(head []byte) (h headInfo, reason string, status int) {
	head = head[:len(head)-2] // the empty line
	nl := bytes.Index(head, []byte("\r\n"))
	if nl <= 0 { // an empty line before the request line
		return h, malformedRequestLine, http.StatusBadRequest
	}
	reqLine, rest := head[:nl], head[nl+2:]
	method, after, ok1 := bytes.Cut(reqLine, []byte(" "))
	target, version, ok2 := bytes.Cut(after, []byte(" "))
	if !ok1 || !ok2 || !isToken(method) || len(target) == 0 || !visible(target) || !visible(version) {
		return h, malformedRequestLine, http.StatusBadRequest
	}
	if string(method) == "PRI" && string(target) == "*" && string(version) == "HTTP/2.0" && len(rest) == 0 {
		h.h2 = true
		return h, "", 0
	}
	http10 := string(version) == "HTTP/1.0"
	if !http10 && string(version) != "HTTP/1.1" {
		return h, malformedVersion, http.StatusHTTPVersionNotSupported
	}
	var cls, tes int
	for len(rest) > 0 {
		var line []byte
		line, rest, _ = bytes.Cut(rest, []byte("\r\n"))
		name, value, reason := parseHeaderLine(line)
		if reason != "" {
			return h, reason, http.StatusBadRequest
		}
		switch {
		case asciiEqualFold(name, "content-length"):
			if cls++; cls > 1 {
				return h, malformedMultipleCL, http.StatusBadRequest
			}
			n, ok := parseContentLength(value)
			if !ok {
				return h, malformedCL, http.StatusBadRequest
			}
			h.length = n
		case asciiEqualFold(name, "transfer-encoding"):
			if tes++; tes > 1 || !asciiEqualFold(value, "chunked") {
				return h, malformedTE, http.StatusNotImplemented
			}
			h.chunked = true
		case asciiEqualFold(name, "upgrade"):
			h.upgrade = true
		}
	}
	switch {
	case cls > 0 && tes > 0:
		return h, malformedCLAndTE, http.StatusBadRequest
	case tes > 0 && http10:
		// net/http ignores Transfer-Encoding on HTTP/1.0 requests; the app might not.
		return h, malformedTE, http.StatusBadRequest
	}
	return h, "", 0
}

// parseHeaderLine splits "name: value" and checks both; value comes without surrounding whitespace.
func parseHeaderLine(line []byte) (name, value []byte, reason string) {
	if len(line) > 0 && (line[0] == ' ' || line[0] == '\t') {
		return nil, nil, malformedObsFold
	}
	name, value, ok := bytes.Cut(line, []byte(":"))
	if !ok || !isToken(name) {
		return nil, nil, malformedHeaderName
	}
	value = bytes.Trim(value, " \t")
	for _, c := range value {
		if c < ' ' && c != '\t' || c == 0x7f {
			return nil, nil, malformedHeaderValue
		}
	}
	return name, value, ""
}

func parseContentLength(v []byte) (int64, bool) {
	if len(v) == 0 || len(v) > guardMaxContentLenDigs {
		return 0, false
	}
	var n int64
	for _, c := range v {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

// isToken reports whether b is a non-empty RFC 9110 token.
func isToken(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	for _, c := range b {
		if c >= 0x80 || !tokenChars[c] {
			return false
		}
	}
	return true
}

// visible reports whether b has only visible ASCII and obs-text (no controls, no spaces).
func visible(b []byte) bool {
	for _, c := range b {
		if c <= ' ' || c == 0x7f {
			return false
		}
	}
	return true
}

func asciiEqualFold(b []byte, lower string) bool {
	if len(b) != len(lower) {
		return false
	}
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != lower[i] {
			return false
		}
	}
	return true
}

var tokenChars = func() (t [128]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c] = true
		t[c-'a'+'A'] = true
	}
	for _, c := range "!#$%&'*+-.^_`|~" {
		t[c] = true
	}
	return t
}()

type guardKey struct{}

// guardContext is the listener's ConnContext: it lets handlers find the guard of their connection.
func guardContext(ctx context.Context, c net.Conn) context.Context {
	if g, ok := c.(*guardConn); ok {
		return context.WithValue(ctx, guardKey{}, g)
	}
	return ctx
}

// guardOf returns the guard of the connection a request came on, or nil.
func guardOf(r *http.Request) *guardConn {
	g, _ := r.Context().Value(guardKey{}).(*guardConn)
	return g
}

// rejectionFor returns why the guard refused the request r stands for, or nil when r is a real request.
func (g *guardConn) rejectionFor(r *http.Request) *rejection {
	if r.URL.Path != rejectedPath {
		return nil
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.rejected
}

// brokenBody reports, once, that a request body on this connection broke its chunked framing.
func (g *guardConn) brokenBody() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	b := g.broken
	g.broken = false
	return b
}

// closeUnlessSwitching answers an upgrade request that is not switched (any final status but 101) with
// Connection: close: the guard passes the connection unchecked after an upgrade request, so it must not carry
// another request.
type closeUnlessSwitching struct {
	http.ResponseWriter
	wrote bool
}

func (w *closeUnlessSwitching) WriteHeader(code int) {
	if code != http.StatusSwitchingProtocols && code >= 200 && !w.wrote {
		w.Header().Set("Connection", "close")
	}
	if code >= 200 {
		w.wrote = true
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *closeUnlessSwitching) Write(p []byte) (int, error) {
	if !w.wrote {
		w.WriteHeader(http.StatusOK)
	}
	return w.ResponseWriter.Write(p)
}

func (w *closeUnlessSwitching) Unwrap() http.ResponseWriter { return w.ResponseWriter }
