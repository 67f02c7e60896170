// Package h1guard is the HTTP/1.1 guard of meshlet's listeners. It checks the framing of every request on an HTTP
// listener before net/http parses it, because net/http is lenient where a proxy must not be: it forwards a request
// with both Content-Length and Transfer-Encoding as chunked (RFC 9112 section 6.3 allows that), unfolds obsolete
// line folding, accepts bare LF line ends and identical duplicate Content-Lengths. Any of these lets a front proxy
// and the app disagree on where a request ends (request smuggling). The guard refuses them as Envoy does: it buffers
// each request head until it is complete, checks it, and only then hands it to net/http; it follows the body's
// framing (Content-Length or chunked, by exactly the rules of net/http's chunked reader, so that both find the same
// end) to find the next head on a kept-alive connection. A refused head never reaches net/http: the guard hands over
// a synthetic request that the guard's handler answers (400, 431, 501, 503 or 505 with Connection: close, counted in
// meshlet_refused_requests_total by reason), and then the connection ends.
//
// Three more rules keep net/http and the guard in step (handoff.go): the handler admits a request only if its
// request line is the one the guard checked next; a request whose body ended in an error closes its connection
// (in full-duplex mode net/http would read on); and a connection leaves checking only for the HTTP/2 connection
// preface at its very start, or once the handler took it over for a protocol switch (101). A body the handler did
// not read to its end is left to net/http, which reads up to 256 KiB of it through the guard (by the same framing)
// before it reuses the connection, and else closes it after a lingering close.
//
// Mutual TLS connections that speak HTTP/1.1 are guarded too; HTTP/2 ones (ALPN h2) are not, as net/http needs the
// *tls.Conn itself for them, and HTTP/2 framing leaves no such ambiguity.
//
// Its interface to the proxy: NewListener wraps a listener (whose Wait joins the lingering closes); ConnContext and
// Of find a request's guard, whose Admit, Rejection, BodyFailed, BrokenBody and UpgradeWriter are what the handler
// asks and tells; TLSState; Unread, for the listener's HTTP/1.1 loop (proxy/h1serve.go), which reads through the
// guard as net/http does and hands a connection to net/http with what it read; a Budget bounds the memory of the
// heads being received.
package h1guard

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// ReadChunk is how much the guard reads at a time: a head's buffer grows to MaxHead plus ReadChunk at most, so a
// Budget must hold at least that much.
const ReadChunk = 4 << 10

// The guard's other fixed bounds (its refusal reasons are in reasons.go).
const (
	guardMaxContentLenDigs = 18 // below 2^63
	// net/http reads a request through a 4 KiB buffer: a chunk-size line with its CRLF, and a trailer section
	// with its final empty line, must fit in it.
	maxChunkLineBytes = 4 << 10
	maxTrailerBytes   = 4 << 10
	// maxChunkOverhead is net/http's bound on chunk-size lines beyond 16 bytes per chunk and twice its data.
	maxChunkOverhead = 16 << 10
	h2Preface        = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
)

// rejectedPath is the path of the synthetic request the guard hands to net/http in place of a refused head. It
// carries a random token, so that no client can name it.
var rejectedPath = func() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return "/.meshlet-rejected/" + hex.EncodeToString(b[:])
}()

// rejectedLine is the request line of the synthetic request.
var rejectedLine = "GET " + rejectedPath + " HTTP/1.1"

// errGuardClosed ends the reads of a connection whose request body ended in an error: the next request would
// start where net/http stopped, which the guard cannot vouch for.
var errGuardClosed = errors.New("meshlet: connection closed after a request body that did not end cleanly")

var guardBufs = sync.Pool{New: func() any { b := make([]byte, 0, ReadChunk); return &b }}

type guardState uint8

const (
	gHead      guardState = iota // reading a request head
	gLength                      // passing a Content-Length body
	gChunkLine                   // reading a chunk-size line
	gChunkData                   // passing chunk data
	gChunkEnd                    // the CRLF after chunk data
	gTrailer                     // trailer lines after the last chunk
	gOpaque                      // HTTP/2 (prior knowledge) or a switched protocol: bytes pass unchecked
	gRejected                    // a refused head was replaced; the connection ends after its answer
	gFailed                      // a body's framing broke: reads fail
)

// Rejection is why the guard refused a head and what status answers it.
type Rejection struct {
	Reason string // the reason label of meshlet_refused_requests_total
	Status int    // the HTTP status of the answer
}

// Conn is one guarded connection. net/http calls Read from one goroutine at a time (its background read
// included); handlers reach the guard through handoff.go, under mu or through atomics.
type Conn struct {
	net.Conn
	maxHead      int                  // bytes a request head may take, request line included
	writeTimeout time.Duration        // a write that makes no progress this long fails (0: none)
	headTimeout  time.Duration        // a head after the first has this long from its start (0: no bound)
	tls          *tls.ConnectionState // the handshake of a mutual TLS connection; nil for plaintext
	budget       *Budget              // bytes all guards of a direction may buffer together; nil: no bound
	lingers      *lingerGroup         // the listener's, which runs the lingering close; nil: uncounted

	mu       sync.Mutex
	rejected *Rejection // a refused head
	broken   bool       // a body's chunked framing broke (counted once, by BrokenBody)
	// brokenWhy says how the body broke: one of the reasons below, or "" (net/http refuses it too).
	brokenWhy string
	held      int  // bytes of budget held for in
	closed    bool // Close was called: the budget is given back, and no more is taken

	heads  atomic.Uint64    // request heads handed to net/http (the synthetic one included)
	lines  [4]atomic.Uint64 // hash of the request line of head n at n%4
	served atomic.Uint64    // requests admitted by the handler
	inBody atomic.Bool      // net/http is being handed a request body
	dead   atomic.Bool      // reads fail: a body ended in an error, or a switch went wrong

	state   guardState
	in      *[]byte // bytes read and not yet handed on (pooled); nil when empty
	out     int     // bytes at the front of *in that are ready for net/http
	scan    int     // how far the head at the front of *in has been checked, in whole lines
	seen    int     // bytes after scan known to hold no LF and no bare CR (but maybe a CR last)
	left    int64   // bytes left in a Content-Length body or a chunk
	line    []byte  // the chunk-size or trailer line being read
	trail   int     // bytes of trailers so far
	excess  int64   // chunk-line overhead, as net/http's chunked reader counts it
	started bool    // the connection is past its start (the HTTP/2 preface can no longer come)
	err     error   // an error that came with data, returned by the next read
	unread  []byte  // bytes given back by Unread, returned before anything else
	// headTimed: the head being received has its deadline, headBy (timeHead)
	headTimed bool
	headBy    time.Time
}

// Options are the guard's settings for the connections of one listener.
type Options struct {
	MaxHead      int           // bytes a request head may take, request line included
	WriteTimeout time.Duration // a write that makes no progress this long fails (0: none)
	// HeadTimeout is the time a request head after a connection's first has from its first byte (the server's
	// read_header_timeout; the first head has the server's own deadline); 0: no bound but the reader's.
	HeadTimeout time.Duration
	Budget      *Budget // bytes all guards of a direction may buffer together; nil: no bound
}

// NewListener wraps the connections ln accepts in a guard (a *Conn; HTTP/2 over TLS passes unwrapped).
func NewListener(ln net.Listener, o Options) *Listener { return &Listener{Listener: ln, o: o} }

// Listener wraps the connections a listener accepts in a Conn, and owns their lingering closes (Wait).
type Listener struct {
	net.Listener
	o       Options
	lingers lingerGroup
}

// Accept returns the next connection, guarded.
func (l *Listener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	g := &Conn{Conn: c, maxHead: l.o.MaxHead, writeTimeout: l.o.WriteTimeout, headTimeout: l.o.HeadTimeout,
		budget: l.o.Budget, lingers: &l.lingers}
	if tc, ok := c.(*tls.Conn); ok {
		// The inbound listener hands over mutual TLS connections with the handshake done. HTTP/2 (ALPN h2) needs
		// the *tls.Conn itself (net/http hands it to its HTTP/2 server); HTTP/1.1 is guarded like plaintext, and
		// its requests find the peer's certificates through the guard (TLSState), as net/http then leaves
		// Request.TLS nil.
		cs := tc.ConnectionState()
		if cs.NegotiatedProtocol == "h2" {
			return c, nil
		}
		g.tls = &cs
	} else if sc, ok := c.(interface{ ConnectionState() tls.ConnectionState }); ok {
		// A TLS connection whose protocol its first bytes tell (mtls.SniffedConn): guarded like plaintext, HTTP/2
		// by its preface (prior knowledge), with the peer's certificates for its requests.
		cs := sc.ConnectionState()
		g.tls = &cs
	}
	return g, nil
}

// Write gives each write writeTimeout to make progress: a client that stops reading is disconnected.
func (g *Conn) Write(p []byte) (int, error) {
	if g.writeTimeout > 0 {
		_ = g.Conn.SetWriteDeadline(time.Now().Add(g.writeTimeout))
	}
	return g.Conn.Write(p)
}

// CloseWrite lets the half-close of upgraded connections through.
func (g *Conn) CloseWrite() error {
	if cw, ok := g.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// Close gives back the buffer's share of the budget. A connection that ends in doubt (a refused head, a broken
// body, a body that ended in an error, a switch gone wrong) may have the client still sending: it ends with a
// lingering close, so that the client reads its answer rather than a reset that discards it.
func (g *Conn) Close() error {
	g.mu.Lock()
	first, doubt := !g.closed, g.rejected != nil || g.broken || g.dead.Load()
	g.closed = true
	g.budget.give(g.held)
	g.held = 0
	g.mu.Unlock()
	if first && doubt {
		if cw, ok := g.Conn.(interface{ CloseWrite() error }); ok && cw.CloseWrite() == nil {
			g.lingers.start(g.Conn)
			return nil
		}
	}
	return g.Conn.Close()
}

func (g *Conn) buffered() bool { return g.in != nil && len(*g.in) > 0 }

func (g *Conn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	for {
		if g.dead.Load() {
			return 0, errGuardClosed
		}
		if len(g.unread) > 0 {
			n := copy(p, g.unread)
			if g.unread = g.unread[n:]; len(g.unread) == 0 {
				g.unread = nil
			}
			return n, nil
		}
		if g.out > 0 {
			return g.handOut(p), nil
		}
		switch g.state {
		case gRejected:
			return 0, io.EOF
		case gFailed:
			return 0, ErrMalformedBody
		case gOpaque:
			if g.buffered() {
				g.out = len(*g.in)
				continue
			}
			return g.connRead(p)
		case gHead:
			if g.buffered() {
				if g.checkHead() {
					g.headTimed = false
					continue
				}
				g.timeHead()
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
			if !g.stash(p[:n]) {
				continue // refused for the budget
			}
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
			if k < n && g.state != gFailed {
				g.stash(p[k:n]) // the start of the next head (refused if the budget cannot hold it)
			}
			if k > 0 {
				return k, nil
			}
		}
	}
}

// timeHead gives a head after the first, whose start has come and whose rest has not, headTimeout to complete:
// the reader's deadline before it was the idle timeout (the guard hands a head over only once it is whole, so
// the reader cannot tell when it started). The first head has the server's header deadline from the
// connection's start. The reader sets its own deadlines again once the head is handed over.
// The deadline is set again before each read of the head, as a reader may have set another meanwhile (a read in
// the background that ended).
func (g *Conn) timeHead() {
	if g.headTimeout <= 0 || g.heads.Load() == 0 {
		return
	}
	if !g.headTimed {
		g.headTimed, g.headBy = true, time.Now().Add(g.headTimeout)
	}
	_ = g.Conn.SetReadDeadline(g.headBy)
}

// connRead reads from the connection; an error that comes with data is kept for the next call.
func (g *Conn) connRead(p []byte) (int, error) {
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
func (g *Conn) handOut(p []byte) int {
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

// stash appends b to the buffer, taking one from the pool if needed. When the budget cannot hold the buffer, the
// connection's head is refused instead (503) and stash returns false.
func (g *Conn) stash(b []byte) bool {
	if g.in == nil {
		g.in = guardBufs.Get().(*[]byte)
	}
	if need := len(*g.in) + len(b); need > cap(*g.in) {
		g.grow(need)
	}
	if !g.reserve(cap(*g.in)) {
		g.refuseForBudget()
		return false
	}
	*g.in = append(*g.in, b...)
	return true
}

// grow gives the buffer room for need bytes, at most the head limit plus one read: a head never takes more.
func (g *Conn) grow(need int) {
	b := *g.in
	size := min(max(2*cap(b)+ReadChunk, need), max(g.maxHead+ReadChunk, need))
	nb := make([]byte, len(b), size)
	copy(nb, b)
	*g.in = nb
}

// reserve makes the budget hold size bytes for the buffer; false when it cannot (or the connection is closed).
func (g *Conn) reserve(size int) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if size <= g.held {
		return true
	}
	if g.closed || !g.budget.take(size-g.held) {
		return false
	}
	g.held = size
	return true
}

// refuseForBudget replaces what is buffered by the synthetic request of a 503: the memory for heads is full.
func (g *Conn) refuseForBudget() {
	g.mu.Lock()
	held := g.held
	g.mu.Unlock()
	if g.in != nil && cap(*g.in) > held {
		// The buffer the budget could not hold is dropped for a small one, uncounted, for the synthetic request.
		b := make([]byte, 0, len(rejectedLine)+64)
		g.in = &b
	}
	g.reject(refusedHeadBudget, http.StatusServiceUnavailable)
}

func (g *Conn) release() {
	if g.in != nil && cap(*g.in) <= 4*ReadChunk {
		*g.in = (*g.in)[:0]
		guardBufs.Put(g.in)
	}
	g.in, g.scan, g.seen = nil, 0, 0
	g.mu.Lock()
	g.budget.give(g.held)
	g.held = 0
	g.mu.Unlock()
}

// fill reads more of an incomplete head into the buffer.
func (g *Conn) fill() error {
	b := *g.in
	if cap(b)-len(b) < ReadChunk/2 && cap(b) < g.maxHead+1 {
		g.grow(len(b) + ReadChunk/2)
		if !g.reserve(cap(*g.in)) {
			g.refuseForBudget()
			return nil
		}
		b = *g.in
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
// At the start of the connection, the HTTP/2 connection preface (and only the whole of it) lets the connection
// pass unchecked, as net/http serves it as HTTP/2 then.
func (g *Conn) checkHead() bool {
	b := *g.in
	if !g.started {
		n := min(len(b), len(h2Preface))
		if string(b[:n]) == h2Preface[:n] {
			if n < len(h2Preface) {
				return false
			}
			g.state, g.out = gOpaque, len(b)
			return true
		}
		g.started = true
	}
	for {
		from := g.scan + g.seen // (bytes before it were scanned by an earlier call: no byte is scanned twice)
		i := bytes.IndexByte(b[from:], '\n')
		if i < 0 {
			// No LF after from: a CR there (or just before, the last byte of the earlier scan) before the last byte
			// is a bare CR.
			if lo := max(from-1, g.scan); lo < len(b)-1 && bytes.IndexByte(b[lo:len(b)-1], '\r') >= 0 {
				return g.reject(malformedLineEnd, http.StatusBadRequest)
			}
			if len(b) > g.maxHead {
				return g.reject(malformedHeadTooLarge, http.StatusRequestHeaderFieldsTooLarge)
			}
			g.seen = len(b) - g.scan
			return false
		}
		g.seen = 0
		end := from + i
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
func (g *Conn) headDone(head []byte) bool {
	h, reason, status := parseHead(head)
	if reason != "" {
		return g.reject(reason, status)
	}
	if reqLine, _, _ := bytes.Cut(head, []byte("\r\n")); string(reqLine) != "OPTIONS * HTTP/1.1" &&
		string(reqLine) != "OPTIONS * HTTP/1.0" {
		g.handOver(lineHash(reqLine)) // (net/http answers OPTIONS * itself: no handler admits it)
	}
	g.out = len(head)
	switch {
	case h.chunked:
		g.state, g.line, g.excess = gChunkLine, g.line[:0], 0
		g.inBody.Store(true)
	case h.length > 0:
		g.state, g.left = gLength, h.length
		g.inBody.Store(true)
	default:
		g.state = gHead
	}
	return true
}

// handOver records the request line of the head about to be handed to net/http.
func (g *Conn) handOver(hash uint64) {
	n := g.heads.Load()
	g.lines[n%uint64(len(g.lines))].Store(hash)
	g.heads.Store(n + 1)
}

// reject replaces the buffered bytes by the synthetic request; the connection ends after its answer.
func (g *Conn) reject(reason string, status int) bool {
	g.mu.Lock()
	g.rejected = &Rejection{Reason: reason, Status: status}
	g.mu.Unlock()
	g.handOver(rejectedLineHash)
	*g.in = append((*g.in)[:0], rejectedLine+"\r\nHost: meshlet\r\nConnection: close\r\n\r\n"...)
	g.out = len(*g.in)
	g.state = gRejected
	g.inBody.Store(false)
	return true
}

// fail marks a broken body (why says how, for tests): reads fail from now on, so the request fails and the
// connection is not reused.
func (g *Conn) fail(why string) {
	g.mu.Lock()
	g.broken, g.brokenWhy = true, why
	g.mu.Unlock()
	g.state = gFailed
}

// bodyDone ends a body: the next bytes are a head.
func (g *Conn) bodyDone() {
	g.state = gHead
	g.inBody.Store(false)
}

// body follows the framing of the current body over b and returns how many of its bytes belong to it (all of
// them, unless the body ends inside b; then the rest starts the next head).
func (g *Conn) body(b []byte) int {
	i := 0
	for i < len(b) {
		switch g.state {
		case gLength, gChunkData:
			n := int(min(g.left, int64(len(b)-i)))
			i += n
			if g.left -= int64(n); g.left == 0 {
				if g.state == gLength {
					g.bodyDone()
					return i
				}
				g.state, g.line = gChunkEnd, g.line[:0]
			}
		case gChunkEnd, gChunkLine, gTrailer:
			start := i // a broken line is not handed on: net/http gets ErrMalformedBody, not its own error
			j := bytes.IndexByte(b[i:], '\n')
			end := len(b)
			if j >= 0 {
				end = i + j + 1
			}
			prev := len(g.line)
			g.line = append(g.line, b[i:end]...)
			i = end
			limit := maxChunkLineBytes
			if g.state == gTrailer {
				limit = maxTrailerBytes - g.trail
			}
			if j < 0 && bytes.IndexByte(g.line[max(prev-1, 0):len(g.line)-1], '\r') >= 0 {
				g.fail("") // a CR not followed by LF (only the new bytes and the one before are looked at)
				return start
			}
			if len(g.line) > limit {
				g.fail("")
				return start
			}
			if j >= 0 {
				if ok, why := g.lineDone(); !ok {
					g.fail(why)
					return start
				}
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

// Reasons the guard refuses a chunked body that net/http would read: the guard is stricter only there.
const (
	strictTrailerLF   = "trailer_bare_lf"       // a trailer line ended by a bare LF
	strictTrailerFold = "trailer_obs_fold"      // a trailer line folded onto the one before it
	strictTrailerName = "trailer_space_in_name" // a space in a trailer's name (net/http keeps it, uncanonicalized)
	strictChunkSize   = "chunk_size_2^62"       // a chunk size nobody can send
)

// lineDone takes a complete chunk-size, chunk-end or trailer line, by the rules of net/http's chunked reader
// (net/http/internal/chunked.go) and trailer reader (readTrailer in net/http/transfer.go). When it refuses the
// line, why is "" if net/http refuses it too, else one of the strict* reasons.
func (g *Conn) lineDone() (ok bool, why string) {
	line := g.line
	g.line = g.line[:0]
	if len(line) < 2 || line[len(line)-2] != '\r' || bytes.IndexByte(line[:len(line)-2], '\r') >= 0 {
		if g.state == gTrailer && bytes.IndexByte(line[:len(line)-1], '\r') < 0 {
			return false, strictTrailerLF
		}
		return false, ""
	}
	switch g.state {
	case gChunkEnd:
		if len(line) != 2 {
			return false, ""
		}
		g.state = gChunkLine
	case gChunkLine:
		size, ok := parseChunkSize(line[:len(line)-2])
		if !ok {
			if size >= 1<<62 {
				return false, strictChunkSize
			}
			return false, ""
		}
		g.excess += int64(len(line)) - 16 - 2*int64(size)
		if g.excess = max(g.excess, 0); g.excess > maxChunkOverhead {
			return false, "" // net/http: "chunked encoding contains too much non-data"
		}
		if size == 0 {
			g.state, g.trail = gTrailer, 0
		} else {
			g.state, g.left = gChunkData, int64(size)
		}
	case gTrailer:
		g.trail += len(line)
		if len(line) == 2 {
			g.bodyDone()
			if cap(g.line) > 512 {
				g.line = nil // long trailers: an idle connection does not keep their buffer
			}
			return true, ""
		}
		if g.trail+2 > maxTrailerBytes {
			return false, "" // no room left for the empty line within net/http's 4 KiB
		}
		if _, _, reason := parseHeaderLine(line[:len(line)-2]); reason != "" {
			switch {
			case reason == malformedObsFold && g.trail > len(line):
				return false, strictTrailerFold // (net/http refuses a fold on the first line)
			case reason == malformedHeaderName && spacedToken(line):
				return false, strictTrailerName
			}
			return false, ""
		}
	}
	return true, ""
}

// spacedToken reports whether the name of a header line (up to its first colon) is token characters and spaces,
// which net/http's header reader accepts in trailers.
func spacedToken(line []byte) bool {
	name, _, ok := bytes.Cut(line, []byte(":"))
	if !ok || len(name) == 0 {
		return false
	}
	for _, c := range name {
		if c != ' ' && (c >= 0x80 || !tokenChars[c]) {
			return false
		}
	}
	return true
}

// lineHash is the FNV-1a hash of a request line.
func lineHash[T string | []byte](line T) uint64 { return fnvAdd(fnvOffset, line) }

const fnvOffset = 14695981039346656037

// fnvAdd continues the FNV-1a hash h over s.
func fnvAdd[T string | []byte](h uint64, s T) uint64 {
	for i := 0; i < len(s); i++ {
		h = (h ^ uint64(s[i])) * 1099511628211
	}
	return h
}

var rejectedLineHash = lineHash(rejectedLine)

// Budget bounds the bytes that the guards of one direction hold for request heads still being received.
// A nil budget bounds nothing.
type Budget struct {
	limit int64
	used  atomic.Int64
}

func NewBudget(limit int) *Budget { return &Budget{limit: int64(limit)} }

// take holds n bytes; false when that would pass the limit.
func (b *Budget) take(n int) bool {
	if b == nil {
		return true
	}
	if b.used.Add(int64(n)) > b.limit {
		b.used.Add(-int64(n))
		return false
	}
	return true
}

// give returns n bytes.
func (b *Budget) give(n int) {
	if b != nil && n != 0 {
		b.used.Add(-int64(n))
	}
}

// The bounds of a lingering close (RFC 9112 section 9.6; nginx's lingering_close): how long, and how many bytes,
// a connection meshlet closes in doubt still reads and drops after its half-close.
const (
	lingerTime  = time.Second
	lingerBytes = 1 << 20
)

// Wait returns when the lingering closes of the connections l accepted have ended (each within lingerTime, or at
// its connection's second Close), or when ctx ends. Call it after the server closed the connections: a close that
// starts later is not waited for.
func (l *Listener) Wait(ctx context.Context) error { return l.lingers.wait(ctx) }

// lingerGroup runs and counts the lingering closes of one listener's connections. The zero value is ready; a nil
// group (a Conn made without a Listener) runs them uncounted.
type lingerGroup struct {
	mu   sync.Mutex
	n    int
	idle chan struct{} // closed when n drops to 0; made when n rises from 0
}

// start runs the lingering close of c in a goroutine of its own, counted until it ends.
func (lg *lingerGroup) start(c net.Conn) {
	if lg == nil {
		go lingerClose(c)
		return
	}
	lg.mu.Lock()
	if lg.n == 0 {
		lg.idle = make(chan struct{})
	}
	lg.n++
	lg.mu.Unlock()
	go func() {
		lingerClose(c)
		lg.mu.Lock()
		if lg.n--; lg.n == 0 {
			close(lg.idle)
		}
		lg.mu.Unlock()
	}()
}

func (lg *lingerGroup) wait(ctx context.Context) error {
	lg.mu.Lock()
	n, idle := lg.n, lg.idle
	lg.mu.Unlock()
	if n == 0 {
		return nil
	}
	select {
	case <-idle:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// lingerClose reads and drops what the client still sends, after the half-close of c, until the client closes
// its side or a bound of lingerTime and lingerBytes is reached, and then closes c (a second Close ends it early).
func lingerClose(c net.Conn) {
	_ = c.SetReadDeadline(time.Now().Add(lingerTime))
	_, _ = io.CopyN(io.Discard, c, lingerBytes)
	_ = c.Close()
}
