package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2"

	"meshlet.dev/meshlet/proxy/h1guard"
)

// meshlet's own HTTP/1.1 keep-alive loop (issue 16). Behind the guard, net/http's server spends per request a
// goroutine and a read to notice a client leaving (started at once, ended with two read-deadline changes), a
// connection reader between the socket and its buffer, and a cancellable context; the loop watches for a client
// leaving only once a request has run for h1GoneAfter, and reads straight from its buffer. For the common
// requests of a guarded HTTP/1.1 connection (plaintext or mutual TLS), the listener serves them itself: one
// goroutine per connection reads each head with http.ReadRequest (net/http's own parser, after the guard checked
// the head) and net/http's server's checks, runs the listener's handler on that goroutine with h1Writer, which
// frames the response as net/http's server does (FuzzH1Agreement holds the two to the same bytes), and writes it
// through the connection's buffered writer. Anything else is handed to net/http's server with the bytes already
// read (h1Server.handoff): HTTP/2 (ALPN h2 or the prior-knowledge preface), and any request the loop does not serve (not
// HTTP/1.1, Expect, Upgrade, CONNECT, a head larger than the buffer: scanHead); the connection is net/http's from
// then on.

// h1BufSize is the read and write buffer of a connection, as net/http's.
const h1BufSize = 4 << 10

// h1MaxPostHandlerRead is what is read of a request body the handler left, to reuse the connection (net/http's
// maxPostHandlerReadBytes); more closes it.
const h1MaxPostHandlerRead = 256 << 10

// h1GoneAfter is how long a request runs before its connection is watched for the client leaving (a read in the
// background, as net/http's server does for every request): requests that end sooner cost no goroutine and no read.
const h1GoneAfter = 10 * time.Millisecond

// h1Server serves the HTTP/1.1 connections of one listener, and hands the others to srv.
type h1Server struct {
	srv     *http.Server
	handoff *connQueue      // the listener net/http's server serves: the connections the loop hands over
	baseCtx context.Context // srv's BaseContext, with the values net/http's server adds

	mu        sync.Mutex
	conns     map[*h1Conn]struct{}
	counted   map[net.Conn]struct{} // connections the loop counted (StateNew) and handed off: net/http must not count them again
	closing   atomic.Bool
	wg        sync.WaitGroup
	connState func(net.Conn, http.ConnState)

	// HTTP/2 (h2serve.go): the connections served, and their settings (srv's).
	h2c     bool // prior-knowledge HTTP/2 connections are served here, not by net/http (useH2Server)
	h2tls   bool // and TLS connections with ALPN h2
	h2cfg   h2Config
	h2conns map[*h2Conn]struct{}
	// the sweep of the connections that wait long (sweepH2): h2sweep is guarded by mu
	h2epoch      atomic.Uint64
	h2sweepArmed atomic.Bool
	h2sweep      *time.Timer
	h2sweepEvery time.Duration // h2ShrinkSweep
	h2moved      atomic.Int64  // connections moved to a goroutine of their own (serveParked), for the tests
	// handlers runs the HTTP/2 connections' handlers (h2workers.go)
	handlers handlerPool
}

func newH1Server(srv *http.Server, addr net.Addr) *h1Server {
	s := &h1Server{srv: srv, handoff: newConnQueue(addr), conns: map[*h1Conn]struct{}{}, counted: map[net.Conn]struct{}{},
		connState: srv.ConnState, h2cfg: h2ConfigOf(srv), h2conns: map[*h2Conn]struct{}{}, h2sweepEvery: h2ShrinkSweep}
	// HTTP/2 where net/http's server would speak it (srv.Protocols; nil: HTTP/1.1, and HTTP/2 over TLS).
	s.h2c = useH2Server && srv.Protocols != nil && srv.Protocols.UnencryptedHTTP2()
	s.h2tls = useH2Server && (srv.Protocols == nil || srv.Protocols.HTTP2())
	srv.ConnState = func(c net.Conn, st http.ConnState) {
		s.mu.Lock()
		_, mine := s.counted[c]
		if mine && (st == http.StateClosed || st == http.StateHijacked) {
			delete(s.counted, c)
		}
		s.mu.Unlock()
		if mine && st == http.StateNew {
			return
		}
		if s.connState != nil {
			s.connState(c, st)
		}
	}
	return s
}

// serve accepts from ln until it is closed; net/http serves the handed-off connections meanwhile. It returns
// http.ErrServerClosed after shutdown, as Serve does.
func (s *h1Server) serve(ln net.Listener) error {
	base := context.Background()
	if s.srv.BaseContext != nil {
		base = s.srv.BaseContext(ln)
	}
	s.baseCtx = context.WithValue(base, http.ServerContextKey, s.srv)
	served := make(chan error, 1)
	go func() { served <- s.srv.Serve(s.handoff) }()
	var tempDelay time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if s.closing.Load() || errors.Is(err, net.ErrClosed) {
				s.handoff.Close()
				<-served
				return http.ErrServerClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() { // as net/http: back off on accept errors such as EMFILE
				tempDelay = min(max(2*tempDelay, 5*time.Millisecond), time.Second)
				time.Sleep(tempDelay)
				continue
			}
			s.handoff.Close()
			<-served
			return err
		}
		tempDelay = 0
		g, ok := c.(*h1guard.Conn)
		if !ok { // a *tls.Conn with ALPN h2
			if tc, isTLS := c.(*tls.Conn); isTLS && s.h2tls && tc.ConnectionState().Version >= tls.VersionTLS13 {
				s.mu.Lock()
				if s.closing.Load() {
					s.mu.Unlock()
					c.Close()
					continue
				}
				s.wg.Add(1)
				s.mu.Unlock()
				go s.serveH2TLS(tc)
				continue
			}
			// net/http's HTTP/2 server checks TLS 1.2's cipher suites against HTTP/2's list itself
			s.give(c)
			continue
		}
		hc := &h1Conn{s: s, g: g, born: time.Now()}
		hc.fresh.Store(true)
		s.mu.Lock()
		if s.closing.Load() {
			s.mu.Unlock()
			c.Close()
			continue
		}
		s.conns[hc] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go hc.run()
	}
}

// shutdown closes the idle connections, tells the active ones to close after their response, and waits for them
// until ctx ends (then closes them too). net/http's Shutdown of the handed-off ones is the caller's.
func (s *h1Server) shutdown(ctx context.Context) error {
	s.closing.Store(true)
	s.closeIdle()
	s.mu.Lock()
	h2 := make([]*h2Conn, 0, len(s.h2conns))
	for c := range s.h2conns {
		h2 = append(h2, c)
	}
	s.mu.Unlock()
	for _, c := range h2 {
		// GOAWAY; the connection closes once its streams have ended. On a goroutine each, as net/http's
		// shutdown hooks: a write to a client that does not read waits for the write timeout.
		go c.startGracefulShutdown()
	}
	s.closeIdleH2()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-done:
			s.stopH2Background()
			return nil
		case <-tick.C:
			s.closeIdle()
			s.closeIdleH2()
		case <-ctx.Done():
			s.closeAll()
			return ctx.Err()
		}
	}
}

func (s *h1Server) closeIdle() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.conns {
		if c.idle.Load() && (!c.fresh.Load() || time.Since(c.born) >= 5*time.Second) {
			c.g.Close()
		}
	}
}

// closeIdleH2 closes the HTTP/2 connections without a stream (net/http's Shutdown closes its idle ones too).
func (s *h1Server) closeIdleH2() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.h2conns {
		c.closeIfIdle()
	}
}

// stopH2Background ends what HTTP/2 keeps running beside the connections: the handler pool's parked workers and
// the sweep of waiting connections (the server's end).
func (s *h1Server) stopH2Background() {
	s.handlers.close()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.h2sweep != nil {
		s.h2sweep.Stop()
	}
}

// closeAll closes every connection of the loop (Server.Close).
func (s *h1Server) closeAll() {
	s.closing.Store(true)
	s.stopH2Background()
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.conns {
		c.g.Close()
	}
	for c := range s.h2conns {
		c.nc.Close()
	}
}

// give hands c to net/http's server (closed when that has stopped).
func (s *h1Server) give(c net.Conn) {
	if !s.handoff.put(c) {
		c.Close()
	}
}

func (s *h1Server) state(c net.Conn, st http.ConnState) {
	if s.connState != nil {
		s.connState(c, st)
	}
}

// h1Conn is one connection the loop serves.
type h1Conn struct {
	s      *h1Server
	g      *h1guard.Conn
	br     *bufio.Reader // from h1Readers
	bw     *bufio.Writer // from h1Writers, while a request is served
	ctx    context.Context
	remote string
	idle   atomic.Bool // between requests: shutdown may close it
	// fresh: no request yet, since born; shutdown closes such a connection only after 5 s, as net/http's server
	// does, so that a request on its way is not lost
	fresh atomic.Bool
	born  time.Time

	// The watch for the client leaving (watchGone): armed per request by a timer that runs on.
	goneMu     sync.Mutex
	goneTimer  *time.Timer
	goneCancel context.CancelCauseFunc // the running request's; nil between requests
	goneFired  bool                    // the timer fired for the running request
	goneBodyOK bool                    // its body is read to its end: the reader is free for the watch
	goneDone   chan struct{}           // closed when the watch's read returns; nil: no watch started
}

// run is the connection's goroutine. An HTTP/2 connection that waits for its socket is waited for here, at the
// bottom of the stack (serveH2).
func (c *h1Conn) run() {
	if h2 := c.serve(); h2 != nil && serveParked(h2) {
		c.finish(false)
	}
}

// serve serves the connection until it ends, or until it is an HTTP/2 connection that waits for its socket (then
// returned, and the connection's end is run's).
func (c *h1Conn) serve() (h2 *h2Conn) {
	s := c.s
	handedOff := false
	defer func() {
		if err := recover(); err != nil && err != http.ErrAbortHandler {
			const size = 64 << 10
			buf := make([]byte, size)
			buf = buf[:runtime.Stack(buf, false)]
			s.srv.ErrorLog.Printf("http: panic serving %v: %v\n%s", c.remote, err, buf)
		}
		if h2 == nil {
			c.finish(handedOff)
		}
	}()
	s.state(c.g, http.StateNew)
	c.remote = c.g.RemoteAddr().String()
	ctx := context.WithValue(s.baseCtx, http.LocalAddrContextKey, c.g.LocalAddr())
	if s.srv.ConnContext != nil {
		ctx = s.srv.ConnContext(ctx, c.g)
	}
	c.ctx = ctx
	c.br = h1Readers.Get().(*bufio.Reader)
	c.br.Reset(c.g)
	for first := true; ; first = false {
		if !c.awaitRequest(first) {
			return
		}
		head, ok := c.fullHead()
		if !ok {
			return
		}
		var h h1Head
		if head != nil {
			h = scanHead(head)
		}
		if head == nil && s.h2c && c.prefaced() {
			// HTTP/2 with prior knowledge: served on this goroutine, from this buffer (h2serve.go).
			c.idle.Store(false)
			c.fresh.Store(false)
			c.g.SetReadDeadline(time.Time{})
			br := c.br
			c.br = nil // serveH2's now
			return s.serveH2(c.g, br, c.ctx, true, func() { c.finish(false) })
		}
		if !h.eligible {
			c.handOff()
			handedOff = true
			return
		}
		c.idle.Store(false)
		c.fresh.Store(false)
		s.state(c.g, http.StateActive)
		keep := c.serveRequest(h)
		if !keep || s.closing.Load() {
			return
		}
		c.idle.Store(true)
		s.state(c.g, http.StateIdle)
	}
}

// finish ends the connection (closed unless handed off) and takes it off the server.
func (c *h1Conn) finish(handedOff bool) {
	s := c.s
	c.unwatchGone() // a handler that panicked left its watch armed, maybe reading
	if !handedOff {
		c.g.Close()
		s.state(c.g, http.StateClosed)
	}
	if c.br != nil {
		c.br.Reset(nil)
		h1Readers.Put(c.br)
	}
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	s.wg.Done()
}

// awaitRequest waits for the next request: the first one for at most the header timeout from the connection's
// start, the next ones for at most the idle timeout. The guard hands a head over only once it is whole, so the
// wait covers the head (as with net/http's server behind the guard, whose header deadline for a kept-alive
// connection starts once its Peek returned, with the head already read). false: the connection ends.
func (c *h1Conn) awaitRequest(first bool) bool {
	srv := c.s.srv
	if first {
		c.idle.Store(true)
		if d := srv.ReadHeaderTimeout; d > 0 {
			c.g.SetReadDeadline(time.Now().Add(d))
		}
		if _, err := c.br.Peek(1); err != nil {
			c.badRequest(err)
			return false
		}
		return true
	}
	d := srv.IdleTimeout
	if d <= 0 {
		d = srv.ReadTimeout
	}
	if d > 0 {
		c.g.SetReadDeadline(time.Now().Add(d))
	} else {
		c.g.SetReadDeadline(time.Time{}) // none (and none a handler may have left)
	}
	if _, err := c.br.Peek(4); err != nil {
		return false // as net/http's server: a kept-alive connection that ends, or does not go on, ends quietly
	}
	return true
}

// fullHead returns the next request head, whole in the read buffer (the guard hands heads over whole). nil with
// ok: the head does not fit the buffer, or the connection is HTTP/2; !ok: the connection ended.
func (c *h1Conn) fullHead() ([]byte, bool) {
	for {
		b, _ := c.br.Peek(c.br.Buffered())
		if bytes.HasPrefix(b, []byte("PRI ")) {
			return nil, true
		}
		if i := bytes.Index(b, []byte("\r\n\r\n")); i >= 0 {
			return b[:i+4], true
		}
		if len(b) >= c.br.Size() {
			return nil, true
		}
		if _, err := c.br.Peek(len(b) + 1); err != nil {
			if len(b) > 0 && err == io.EOF {
				err = io.ErrUnexpectedEOF // a head cut short, as net/http's parser says
			}
			c.badRequest(err)
			return nil, false
		}
	}
}

// prefaced reports whether the connection goes on with HTTP/2's client preface, which net/http's server (the
// connection handed to it) would take for HTTP/2 with prior knowledge.
func (c *h1Conn) prefaced() bool {
	b, _ := c.br.Peek(c.br.Buffered())
	if !bytes.HasPrefix(b, []byte("PRI ")) {
		return false
	}
	b, err := c.br.Peek(len(http2.ClientPreface))
	return err == nil && string(b) == http2.ClientPreface
}

// serveH2TLS serves a mutual TLS connection whose client chose h2 (ALPN) as net/http's server would: the same
// context, and every request's TLS field set.
func (s *h1Server) serveH2TLS(tc *tls.Conn) {
	defer s.wg.Done()
	s.state(tc, http.StateNew)
	ctx := context.WithValue(s.baseCtx, http.LocalAddrContextKey, tc.LocalAddr())
	if s.srv.ConnContext != nil {
		ctx = s.srv.ConnContext(ctx, tc)
	}
	br := h1Readers.Get().(*bufio.Reader)
	br.Reset(tc)
	serveParked(s.serveH2(tc, br, ctx, false, nil)) // (a TLS connection waits in its reader: never parked)
	tc.Close()
	s.state(tc, http.StateClosed)
}

// handOff gives the connection, with what the loop read of it and has not used, to net/http's server.
func (c *h1Conn) handOff() {
	b, _ := c.br.Peek(c.br.Buffered())
	c.g.Unread(bytes.Clone(b)) // the reader goes back to its pool when serve returns
	c.g.SetReadDeadline(time.Time{})
	c.s.mu.Lock()
	c.s.counted[c.g] = struct{}{}
	c.s.mu.Unlock()
	c.s.give(c.g)
}

// h1Head is what the loop reads of a head before net/http's parser does.
type h1Head struct {
	eligible bool   // the loop serves it
	hosts    int    // Host fields (net/http's ReadRequest drops them from the header map)
	host     []byte // the value of the last one, trimmed
}

// scanHead reads head (request line and header fields, CRLF line ends): the loop serves HTTP/1.1 requests that
// are not CONNECT and have no Expect and no Upgrade field; net/http serves the others.
func scanHead(head []byte) h1Head {
	var h h1Head
	eol := bytes.Index(head, []byte("\r\n"))
	line := head[:eol]
	if !bytes.HasSuffix(line, []byte(" HTTP/1.1")) || bytes.HasPrefix(line, []byte("CONNECT ")) {
		return h
	}
	for rest := head[eol+2:]; len(rest) > 2; {
		i := bytes.Index(rest, []byte("\r\n"))
		if i < 0 {
			return h
		}
		field := rest[:i]
		rest = rest[i+2:]
		colon := bytes.IndexByte(field, ':')
		if colon < 0 {
			return h
		}
		name := field[:colon]
		switch {
		case h1guard.EqualFoldASCII(name, "expect"), h1guard.EqualFoldASCII(name, "upgrade"):
			return h
		case h1guard.EqualFoldASCII(name, "host"):
			h.hosts++
			h.host = bytes.Trim(field[colon+1:], " \t")
		}
	}
	h.eligible = true
	return h
}

// serveRequest reads one request, runs the handler and finishes the response; false: close the connection.
func (c *h1Conn) serveRequest(h h1Head) bool {
	req, err := http.ReadRequest(c.br)
	if err != nil {
		c.badRequest(err)
		return false
	}
	if msg := checkServerRequest(req, h); msg != "" {
		c.writeError("400 Bad Request: "+msg, "400 Bad Request: "+msg)
		return false
	}
	c.g.SetReadDeadline(time.Time{}) // ReadTimeout is not used; the head is in
	req.RemoteAddr = c.remote
	ctx, cancel := context.WithCancelCause(c.ctx)
	if req.ContentLength > 0 && req.ContentLength <= h1WholeBody && int64(c.br.Buffered()+c.g.Held()) >= req.ContentLength {
		ctx = context.WithValue(ctx, wholeBodyKey{}, true) // no read of this body waits for the client
	}
	// The body fills in the trailers of the *Request ReadRequest made: the handler gets that one, with ctx.
	*req = *req.WithContext(ctx)
	c.bw = h1Writers.Get().(*bufio.Writer)
	c.bw.Reset(c.g)
	w := newH1Writer(c, req)
	w.body = c.watchGone(cancel, req)
	handler := c.s.srv.Handler
	if req.RequestURI == "*" && req.Method == http.MethodOptions && !c.s.srv.DisableGeneralOptionsHandler {
		handler = http.HandlerFunc(globalOptions) // net/http's serverHandler answers these itself
	}
	handler.ServeHTTP(w, req)
	c.unwatchGone()
	keep := w.finish()
	cancel(nil)
	c.bw.Reset(nil) // an idle connection holds no write buffer
	h1Writers.Put(c.bw)
	c.bw = nil
	return keep
}

// h1WholeBody is the largest request body the loop tells the handler it holds whole (wholeBody).
const h1WholeBody = h1BufSize

// wholeBodyKey marks the context of a request whose body the loop had whole in its buffer when the handler was
// called: reading it never waits for the client.
type wholeBodyKey struct{}

// wholeBody reports whether ctx is that of a request whose body the loop held whole (wholeBodyKey).
func wholeBody(ctx context.Context) bool {
	_, ok := ctx.Value(wholeBodyKey{}).(bool)
	return ok
}

// The connections' read buffers (held from the first request to the end, given back when a connection ends or
// goes to net/http) and write buffers (held for a request).
var (
	h1Readers = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, h1BufSize) }}
	h1Writers = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, h1BufSize) }}
)

// checkServerRequest is what net/http's server checks of a request beyond its parser; "" when all pass.
func checkServerRequest(req *http.Request, h h1Head) string {
	switch {
	case h.hosts == 0 && req.Method != http.MethodConnect:
		return "missing required Host header"
	case h.hosts == 1 && !httpguts.ValidHostHeader(string(h.host)):
		return "malformed Host header"
	}
	switch _, badName, found := invalidField(req.Header); {
	case !found:
		return ""
	case badName:
		return "invalid header name"
	default:
		return "invalid header value"
	}
}

// badRequest answers a request net/http's server could not read, as it does: nothing when the connection ended
// or timed out (isCommonNetReadError), 501 for a transfer coding it does not know, else 400.
func (c *h1Conn) badRequest(err error) {
	var ne net.Error
	var oe *net.OpError
	switch {
	case err == io.EOF, errors.As(err, &ne) && ne.Timeout(), errors.As(err, &oe) && oe.Op == "read":
		return
	case strings.HasPrefix(err.Error(), "unsupported transfer encoding"):
		c.writeError("501 Not Implemented", "Unsupported transfer encoding")
		return
	}
	c.writeError("400 Bad Request", "400 Bad Request")
}

// writeError writes net/http's answer to a request it cannot read, straight to the connection.
func (c *h1Conn) writeError(status, body string) {
	if c.bw != nil {
		c.bw.Flush()
	}
	io.WriteString(c.g, "HTTP/1.1 "+status+"\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n"+body)
}

// watchGone arms the watch for the client leaving while req runs: after h1GoneAfter, once the request body is read
// to its end, a read in the background ends the request's context when the connection ends (net/http's server
// starts that read at once, for every request). It returns the body it gave req (nil: none), which tells it
// when the body ended.
func (c *h1Conn) watchGone(cancel context.CancelCauseFunc, req *http.Request) *h1Body {
	var body *h1Body
	c.goneMu.Lock()
	c.goneCancel, c.goneDone, c.goneFired = cancel, nil, false
	c.goneBodyOK = req.Body == nil || req.Body == http.NoBody
	if !c.goneBodyOK {
		body = &h1Body{ReadCloser: req.Body, c: c, cl: req.ContentLength}
		req.Body = body
	}
	if c.goneTimer == nil {
		c.goneTimer = time.AfterFunc(h1GoneAfter, c.goneFire)
	} else {
		c.goneTimer.Reset(h1GoneAfter)
	}
	c.goneMu.Unlock()
	return body
}

// goneFire is the timer: the request still runs; start the watch if its body is read.
func (c *h1Conn) goneFire() {
	c.goneMu.Lock()
	defer c.goneMu.Unlock()
	if c.goneCancel == nil {
		return // the request ended meanwhile
	}
	c.goneFired = true
	if c.goneBodyOK && c.goneDone == nil {
		c.startWatchLocked()
	}
}

// bodyEnded is called when the request body reached its end: start the watch if the timer fired already.
func (c *h1Conn) bodyEnded() {
	c.goneMu.Lock()
	defer c.goneMu.Unlock()
	c.goneBodyOK = true
	if c.goneCancel != nil && c.goneFired && c.goneDone == nil {
		c.startWatchLocked()
	}
}

// startWatchLocked starts the read in the background that notices the client leaving: a read that ends in
// anything but data or the deadline unwatchGone sets ends the request's context, as net/http's server does. A
// byte that comes (a pipelined request) stays in the reader.
func (c *h1Conn) startWatchLocked() {
	done, cancel := make(chan struct{}), c.goneCancel
	c.goneDone = done
	go func() {
		defer close(done)
		if _, err := c.br.Peek(1); err != nil {
			var ne net.Error
			if !errors.As(err, &ne) || !ne.Timeout() {
				cancel(context.Canceled)
			}
		}
	}()
}

// unwatchGone ends the watch when the handler returned: stops the timer, and ends a read under way by a read
// deadline in the past, waiting for it.
func (c *h1Conn) unwatchGone() {
	c.goneMu.Lock()
	if c.goneTimer != nil {
		c.goneTimer.Stop()
	}
	done := c.goneDone
	c.goneDone = nil
	c.goneCancel = nil
	c.goneMu.Unlock()
	if done == nil {
		return
	}
	c.g.SetReadDeadline(aLongTimeAgo)
	<-done
	c.g.SetReadDeadline(time.Time{})
}

var aLongTimeAgo = time.Unix(1, 0)

// h1Body tells the connection when the request body reached its end (the reader is then free for the watch).
type h1Body struct {
	io.ReadCloser
	c      *h1Conn
	ended  bool  // io.EOF came: the reader is free for the watch
	sawEOF bool  // as net/http's body: its source ended (io.EOF, or a Content-Length body cut short)
	closed bool  // the handler (or its transport) closed it
	n      int64 // bytes read
	cl     int64 // the declared Content-Length; -1: chunked
}

func (b *h1Body) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n += int64(n)
	if err == io.EOF || (err == io.ErrUnexpectedEOF && b.cl > 0) {
		b.sawEOF = true
	}
	if err == io.EOF && !b.ended {
		b.ended = true
		b.c.bodyEnded()
	}
	return n, err
}

func (b *h1Body) Close() error {
	b.closed = true
	return b.ReadCloser.Close()
}

// h1Writer is a response of the loop: the http.ResponseWriter of net/http's server for HTTP/1.1, with its framing
// (Content-Length for a body that the handler ends within the first 2 KiB, chunked otherwise, trailers, HEAD, 1xx,
// 204 and 304, Date, Content-Type sniffed when absent), Flush and the ResponseController's deadlines. As in
// net/http, the handler's writes go through a 2 KiB buffer (w.w) to the framing writer (h1Frame), which
// writes the head at its first write and the body framed into the connection's writer.
type h1Writer struct {
	c       *h1Conn
	req     *http.Request
	handler http.Header // the handler's header map
	header  http.Header // its copy at WriteHeader (net/http's: later changes are trailers only)
	status  int
	wrote   bool    // WriteHeader ran (a final status)
	body    *h1Body // the request body (nil: none), as the loop handed it over
	w       *bufio.Writer
	frame   h1Frame
	clen    int64 // declared Content-Length; -1 unknown
	written int64
	// closeAfter: the connection ends after this response; fullDuplex: the handler reads the request body while
	// it writes the response; done: the handler returned.
	closeAfter, fullDuplex, done bool
	// linger: the connection ends with the request body not read (more than h1MaxPostHandlerRead left)
	linger bool
	werr   error
}

// h1Frame writes the head at its first write (headWritten), then the body, chunked or not, into the connection's
// writer: net/http's chunkWriter.
type h1Frame struct {
	w           *h1Writer
	headWritten bool
	chunking    bool
	trailers    []string
}

const h1PreBuf = 2 << 10 // net/http's bufferBeforeChunkingSize

var h1PrePool = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, h1PreBuf) }}

func newH1Writer(c *h1Conn, req *http.Request) *h1Writer {
	// Whether the client asked to close is read before the handler runs (it may change the header).
	w := &h1Writer{c: c, req: req, handler: make(http.Header), clen: -1, closeAfter: hasToken(req.Header.Get("Connection"), "close")}
	w.frame.w = w
	w.w = h1PrePool.Get().(*bufio.Writer)
	w.w.Reset(&w.frame)
	return w
}

func (w *h1Writer) Header() http.Header { return w.handler }

// errAfterHandler answers a write to a response whose handler has returned (its buffers are reused by then).
var errAfterHandler = errors.New("meshlet: response written after its handler returned")

func (w *h1Writer) WriteHeader(code int) {
	if w.wrote || w.w == nil {
		return
	}
	if code < 100 || code > 999 {
		panic(fmt.Sprintf("invalid WriteHeader code %v", code))
	}
	if code >= 100 && code <= 199 && code != http.StatusSwitchingProtocols {
		bw := w.c.bw
		writeH1StatusLine(bw, code)
		w.handler.WriteSubset(bw, map[string]bool{"Content-Length": true, "Transfer-Encoding": true})
		bw.WriteString("\r\n")
		w.werrIf(bw.Flush())
		return
	}
	w.wrote, w.status = true, code
	w.header = w.handler.Clone()
	if cl := w.handler.Get("Content-Length"); cl != "" {
		if v, err := strconv.ParseInt(cl, 10, 64); err == nil && v >= 0 {
			w.clen = v
		} else {
			w.c.s.srv.ErrorLog.Printf("http: invalid Content-Length of %q", cl)
			w.handler.Del("Content-Length")
			w.header.Del("Content-Length")
		}
	}
}

func (w *h1Writer) Write(p []byte) (int, error) {
	if w.w == nil {
		return 0, errAfterHandler
	}
	if !w.wrote {
		w.WriteHeader(http.StatusOK)
	}
	if len(p) == 0 {
		return 0, nil
	}
	if !bodyAllowed(w.status) {
		return 0, http.ErrBodyNotAllowed
	}
	w.written += int64(len(p))
	if w.clen != -1 && w.written > w.clen {
		return 0, http.ErrContentLength
	}
	return w.w.Write(p)
}

func (w *h1Writer) werrIf(err error) {
	if err != nil && w.werr == nil {
		w.werr = err
		w.c.g.Close()
	}
}

// Write frames p into the connection's writer, the head first.
func (f *h1Frame) Write(p []byte) (int, error) {
	w := f.w
	if !f.headWritten {
		f.writeHead(p)
	}
	if w.werr != nil {
		return 0, w.werr
	}
	if w.req.Method == http.MethodHead {
		return len(p), nil
	}
	bw := w.c.bw
	if f.chunking {
		var hex [16]byte
		bw.Write(strconv.AppendInt(hex[:0], int64(len(p)), 16))
		bw.WriteString("\r\n")
	}
	n, err := bw.Write(p)
	if f.chunking && err == nil {
		_, err = bw.WriteString("\r\n")
	}
	w.werrIf(err)
	return n, err
}

// writeHead frames the response as net/http's chunkWriter.writeHeader does for an HTTP/1.1 request; p is the start
// of the body (all of it when the handler returned).
func (f *h1Frame) writeHead(p []byte) {
	f.headWritten = true
	w := f.w
	h := w.header
	var exclude map[string]bool
	excl := func(k string) {
		if _, ok := h[k]; !ok {
			return
		}
		if exclude == nil {
			exclude = map[string]bool{}
		}
		exclude[k] = true
	}
	trailers := false
	for k := range h {
		if strings.HasPrefix(k, http.TrailerPrefix) {
			excl(k)
			trailers = true
		}
	}
	for _, v := range h["Trailer"] {
		trailers = true
		for _, k := range strings.Split(v, ",") {
			k = http.CanonicalHeaderKey(strings.TrimSpace(k))
			if k != "" && httpguts.ValidTrailerHeader(k) {
				f.trailers = append(f.trailers, k)
			}
		}
	}
	te := h.Get("Transfer-Encoding")
	hasTE := te != ""
	isHEAD := w.req.Method == http.MethodHead
	var setCL []byte
	if w.done && !trailers && !hasTE && bodyAllowed(w.status) && h.Get("Content-Length") == "" && (!isHEAD || len(p) > 0) {
		w.clen = int64(len(p))
		setCL = strconv.AppendInt(nil, int64(len(p)), 10)
	}
	hasCL := w.clen != -1
	if h.Get("Connection") == "close" || w.c.s.closing.Load() {
		w.closeAfter = true
	}
	// A handler that did not ask for full duplex and wrote its head before reading the request body: as net/http's
	// server, read up to h1MaxPostHandlerRead of the body now, or close after the response.
	if w.req.ContentLength != 0 && !w.closeAfter && !w.fullDuplex {
		if r := w.drainBody(false); r != drained {
			w.closeAfter, w.linger = true, r == tooBig
		}
	}
	setCT := ""
	if bodyAllowed(w.status) {
		_, haveType := h["Content-Type"]
		if h.Get("Content-Encoding") == "" && !haveType && !hasTE && len(p) > 0 {
			setCT = http.DetectContentType(p)
		}
	} else {
		excl("Content-Length")
		excl("Transfer-Encoding")
		if w.status == http.StatusNotModified {
			excl("Content-Type")
		}
	}
	var date []byte
	if _, ok := h["Date"]; !ok {
		date = appendHTTPDate(nil)
	}
	if hasCL && hasTE && te != "identity" {
		w.c.s.srv.ErrorLog.Printf("http: WriteHeader called with both Transfer-Encoding of %q and a Content-Length of %d", te, w.clen)
		excl("Content-Length")
		hasCL = false
	}
	setTE := ""
	switch {
	case isHEAD || !bodyAllowed(w.status):
		excl("Transfer-Encoding")
	case hasCL:
		excl("Transfer-Encoding")
	case hasTE && te == "identity":
		w.closeAfter = true
		excl("Transfer-Encoding")
	default:
		f.chunking = true
		setTE = "chunked"
		if hasTE && te == "chunked" {
			excl("Transfer-Encoding")
		}
	}
	if f.chunking {
		excl("Content-Length")
	}
	setConn := ""
	if w.closeAfter && (w.c.s.closing.Load() || !hasToken(h.Get("Connection"), "close")) {
		excl("Connection")
		setConn = "close"
	}
	bw := w.c.bw
	writeH1StatusLine(bw, w.status)
	w.werrIf(h.WriteSubset(bw, exclude))
	if date != nil { // the order of net/http's extraHeader
		bw.WriteString("Date: ")
		bw.Write(date)
		bw.WriteString("\r\n")
	}
	if setCL != nil {
		bw.WriteString("Content-Length: ")
		bw.Write(setCL)
		bw.WriteString("\r\n")
	}
	for _, kv := range [...][2]string{{"Content-Type", setCT}, {"Connection", setConn}, {"Transfer-Encoding", setTE}} {
		if kv[1] != "" {
			bw.WriteString(kv[0] + ": " + kv[1] + "\r\n")
		}
	}
	bw.WriteString("\r\n")
}

// finish ends the response when the handler returned; it reports whether the connection may serve another request.
func (w *h1Writer) finish() bool {
	w.done = true
	if !w.wrote {
		w.WriteHeader(http.StatusOK)
	}
	w.w.Flush()
	w.w.Reset(nil)
	h1PrePool.Put(w.w)
	w.w = nil
	if !w.frame.headWritten {
		w.frame.writeHead(nil)
	}
	bw := w.c.bw
	if w.frame.chunking {
		bw.WriteString("0\r\n")
		if t := w.finalTrailers(); t != nil {
			t.Write(bw)
		}
		bw.WriteString("\r\n")
	}
	w.werrIf(bw.Flush())
	// What the handler left of the request body (net/http: the body's Close). A read that fails leaves the
	// connection to the next read, as net/http's server does: the guard fails it when the body's framing broke
	// or the handler said the body failed (then a 400 answers, and the connection ends).
	if w.req.ContentLength != 0 && w.werr == nil && !w.closeAfter && w.drainBody(true) == tooBig {
		w.closeAfter, w.linger = true, true
	}
	if w.linger {
		w.c.g.BodyFailed() // the client may still be sending: the guard's lingering close lets it read the answer
	}
	if !w.closeAfter && w.werr == nil && w.body != nil {
		w.body.Close()
	}
	switch {
	case w.closeAfter, w.werr != nil:
		return false
	case w.req.Method != http.MethodHead && w.clen != -1 && bodyAllowed(w.status) && w.clen != w.written:
		return false
	}
	return true
}

// Outcomes of drainBody.
const (
	drained     = iota // the body is read to its end (and maybe closed)
	closedEarly        // it was closed before its end (by the handler, or by a trailer that did not parse)
	tooBig             // more than h1MaxPostHandlerRead is left
	failed             // reading it failed
)

// drainBody reads what is left of the request body as net/http's server does: when the head is written before
// the handler read it all (atFinish false: writeHeader's discard, up to h1MaxPostHandlerRead), or when the handler
// returned (the body's Close). tooBig when more is left, judged first by the declared length: the connection
// ends after the response, and as the client may still be sending, finish has the guard close it with a
// lingering close (the answer is read rather than lost to a reset; net/http's server: closeWriteAndWait). A read
// that fails at the end is left to the next read of the connection, as net/http's server leaves it.
func (w *h1Writer) drainBody(atFinish bool) int {
	b := w.body
	if b == nil {
		return drained
	}
	switch {
	case b.closed:
		if b.sawEOF || atFinish {
			return drained
		}
		return closedEarly
	case atFinish && b.sawEOF:
		return drained
	}
	if b.cl > 0 {
		if left := b.cl - b.n; left > h1MaxPostHandlerRead || (!atFinish && left == h1MaxPostHandlerRead) {
			return tooBig
		}
	}
	limit := int64(h1MaxPostHandlerRead)
	if !atFinish {
		limit++ // writeHeader reads one byte more to tell; Close stops at the limit
	}
	_, err := io.CopyN(io.Discard, b, limit)
	switch {
	case err == nil:
		return tooBig
	case errors.Is(err, http.ErrBodyReadAfterClose) && !b.sawEOF && !atFinish:
		return closedEarly // closed by its own reader: a trailer section that did not parse
	case err == io.EOF, errors.Is(err, http.ErrBodyReadAfterClose), atFinish:
		return drained
	}
	return failed
}

func (w *h1Writer) finalTrailers() http.Header {
	var t http.Header
	for k, vv := range w.handler {
		if kk, ok := strings.CutPrefix(k, http.TrailerPrefix); ok {
			if t == nil {
				t = make(http.Header)
			}
			t[kk] = vv
		}
	}
	for _, k := range w.frame.trailers {
		for _, v := range w.handler[k] {
			if t == nil {
				t = make(http.Header)
			}
			t.Add(k, v)
		}
	}
	return t
}

// Flush writes the head and the body so far to the connection (http.Flusher).
func (w *h1Writer) Flush() { _ = w.FlushError() }

// FlushError is Flush with its error (http.ResponseController).
func (w *h1Writer) FlushError() error {
	if w.w == nil {
		return errAfterHandler
	}
	if !w.wrote {
		w.WriteHeader(http.StatusOK)
	}
	err := w.w.Flush()
	if !w.frame.headWritten {
		w.frame.writeHead(nil)
	}
	if w.werr == nil {
		w.werrIf(w.c.bw.Flush())
	}
	if err == nil {
		err = w.werr
	}
	return err
}

// SetReadDeadline, SetWriteDeadline and EnableFullDuplex are http.ResponseController's.
func (w *h1Writer) SetReadDeadline(t time.Time) error  { return w.c.g.SetReadDeadline(t) }
func (w *h1Writer) SetWriteDeadline(t time.Time) error { return w.c.g.SetWriteDeadline(t) }
func (w *h1Writer) EnableFullDuplex() error            { w.fullDuplex = true; return nil }

func bodyAllowed(status int) bool {
	return !(status >= 100 && status <= 199) && status != http.StatusNoContent && status != http.StatusNotModified
}

func writeH1StatusLine(bw *bufio.Writer, code int) {
	bw.WriteString("HTTP/1.1 ")
	if text := http.StatusText(code); text != "" {
		var num [8]byte
		bw.Write(strconv.AppendInt(num[:0], int64(code), 10))
		bw.WriteByte(' ')
		bw.WriteString(text)
		bw.WriteString("\r\n")
		return
	}
	fmt.Fprintf(bw, "%03d status code %d\r\n", code, code)
}

// appendHTTPDate appends the current time in the Date format, formatted once per second.
func appendHTTPDate(b []byte) []byte {
	return append(b, currentDate().text...)
}

// currentDate is the Date of a response sent now, formatted once a second.
func currentDate() *cachedDate {
	now := time.Now().Unix()
	if d := httpDate.Load(); d != nil && d.sec == now {
		return d
	}
	text := time.Unix(now, 0).UTC().Format(http.TimeFormat)
	d := &cachedDate{sec: now, text: text}
	httpDate.Store(d)
	return d
}

type cachedDate struct {
	sec  int64
	text string
}

var httpDate atomic.Pointer[cachedDate]

// hasToken reports whether token (lower case) appears in v, ASCII case-insensitive, between spaces, commas, tabs
// or the ends: net/http's server's test of Connection values.
func hasToken(v, token string) bool {
	for sp := 0; sp+len(token) <= len(v); sp++ {
		if sp > 0 && !isTokenBoundary(v[sp-1]) {
			continue
		}
		if end := sp + len(token); end != len(v) && !isTokenBoundary(v[end]) {
			continue
		}
		if strings.EqualFold(v[sp:sp+len(token)], token) {
			return true
		}
	}
	return false
}

func isTokenBoundary(b byte) bool { return b == ' ' || b == ',' || b == '\t' }
