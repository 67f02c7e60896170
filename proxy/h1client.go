package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http/httpguts"
)

// meshlet's own HTTP/1.1 client (issue 16). net/http's Transport gives every pooled connection two goroutines
// (writeLoop, readLoop), hands each request to the first and its response from the second, and keeps a read
// pending on every idle connection. For the common requests to an app endpoint (plaintext, no upgrade, no body
// or a small one the HTTP/1.1 loop holds whole: h1Eligible), h1Client does the exchange on the caller's goroutine
// instead: it writes the request with net/http's own writer (Request.Write, the bytes net/http's Transport
// sends), reads the response with http.ReadResponse, and hands the connection back to its pool when the response
// ends; an idle connection holds no goroutine and no buffer. What it does around that is net/http's
// Transport's: the header size limit, 1xx responses (to the request's httptrace), which connections are reused,
// the resend of a request on a reused connection the endpoint had closed, cancellation, and the errors
// (FuzzH1ClientAgreement holds the two to the same responses and errors). Every other request goes to net/http's
// Transport.

// h1Client is the HTTP/1.1 client of one upstream's transports: a pool of idle connections per endpoint (the
// request URL's host, which names the dial target: dialtarget.go), and the count of the connections open to each
// plaintext endpoint, its own and net/http's Transport's together (acquire), which maxConns bounds.
type h1Client struct {
	dial      func(ctx context.Context, network, addr string) (net.Conn, error)
	maxHeader int64 // response header limit, in bytes (1xx responses and the final one together)
	maxConns  int   // connections per endpoint, both clients together; 0: no limit
	// closeOther closes net/http's Transport's idle connections, whose slots a request waiting for one may take.
	closeOther func()

	mu        sync.Mutex
	hosts     map[string]*h1cHost
	closeIdle bool // CloseIdleConnections was called: connections that end a response close
}

// h1cLookAfter is how long a connection is idle before it is looked at (connAlive: one system call) when it is
// taken from the pool: the endpoint may have closed it, or sent bytes no request asked for. net/http's Transport
// learns of either at once, from the read it keeps pending on every idle connection (a goroutine each); h1Client
// does not look at a connection used again sooner, which is under load, when a look per request would cost about
// 3% of a request's CPU (make bench, one hop). An endpoint closing a connection within that time of a response
// without saying so (Connection: close) meets the request sent next, as net/http's Transport does when the two
// cross: a request that may be sent twice (isReplayable) is sent again on another connection, another fails.
const h1cLookAfter = 5 * time.Millisecond

// h1cHost is what h1Client keeps for one endpoint.
type h1cHost struct {
	idle    []*h1cConn // most recently used last
	open    int        // connections open or being dialled, h1Client's and net/http's
	waiters []*h1cWaiter
}

// h1cWaiter is a request waiting for a connection slot (open is at maxConns): it is handed an idle connection
// (wantsConn: an h1Client request) or nil, the slot of a connection that closed, to dial with.
type h1cWaiter struct {
	ch        chan *h1cConn // buffered: the hand-over never waits
	wantsConn bool
}

// h1Eligible reports whether req, bound for target t, is one h1Client sends: not an upgrade nor CONNECT, to an
// endpoint spoken to in plaintext, and without a body, or with one of at most h1WholeBody bytes that the HTTP/1.1
// loop held whole when the request came (whole: reading it never waits for the client, so that it is read before
// the request is written, and written with its head).
func h1Eligible(req *http.Request, t *dialTarget, whole bool) bool {
	return (req.Body == nil || req.Body == http.NoBody || whole && req.ContentLength > 0 && req.ContentLength <= h1WholeBody) &&
		!t.tls && req.Method != http.MethodConnect && req.Header["Upgrade"] == nil && req.URL.Scheme == "http"
}

// closeIdleConnections closes the idle connections, and from then on every connection when its response ends
// (net/http's Transport.CloseIdleConnections).
func (c *h1Client) closeIdleConnections() {
	c.mu.Lock()
	c.closeIdle = true
	var idle []*h1cConn
	for _, h := range c.hosts {
		for _, pc := range h.idle {
			pc.idle = false
		}
		idle = append(idle, h.idle...)
		h.idle = nil
	}
	c.mu.Unlock()
	for _, pc := range idle {
		pc.timer.Stop()
		pc.close()
	}
}

// acquire returns an idle connection to key when wantsConn (the most recently used first; looked at first when
// idle for h1cLookAfter), or else takes a slot for a new connection (nil): at once while fewer than maxConns are
// open, by closing the oldest idle connection of h1Client, or else by waiting for a slot or, when wantsConn, a
// connection that ends its response. The wait is bounded by ctx alone, as net/http's Transport's.
func (c *h1Client) acquire(ctx context.Context, key string, wantsConn bool) (*h1cConn, error) {
	nudged := false
	for {
		c.mu.Lock()
		h := c.hosts[key]
		if h == nil {
			if c.hosts == nil {
				c.hosts = make(map[string]*h1cHost)
			}
			h = &h1cHost{}
			c.hosts[key] = h
		}
		c.closeIdle = false // a connection is wanted again (net/http's Transport does the same)
		if wantsConn && len(h.idle) > 0 {
			pc := h.idle[len(h.idle)-1]
			h.idle[len(h.idle)-1] = nil
			h.idle = h.idle[:len(h.idle)-1]
			pc.idle = false
			c.mu.Unlock()
			pc.timer.Stop()
			if time.Since(pc.idleAt) >= h1cLookAfter && !connAlive(pc.conn) {
				pc.close()
				continue
			}
			pc.reused = true
			return pc, nil
		}
		if c.maxConns <= 0 || h.open < c.maxConns {
			h.open++
			c.mu.Unlock()
			return nil, nil
		}
		if len(h.idle) > 0 { // a net/http request: the slot of h1Client's oldest idle connection
			pc := h.idle[0]
			h.idle = slices.Delete(h.idle, 0, 1)
			pc.idle = false
			c.mu.Unlock()
			pc.timer.Stop()
			pc.closeKeepSlot()
			return nil, nil
		}
		if !nudged && c.closeOther != nil {
			// net/http's idle connections may hold the slots: close them (they give their slots back) and look again.
			c.mu.Unlock()
			c.closeOther()
			nudged = true
			continue
		}
		w := &h1cWaiter{ch: make(chan *h1cConn, 1), wantsConn: wantsConn}
		h.waiters = append(h.waiters, w)
		c.mu.Unlock()
		select {
		case pc := <-w.ch:
			if pc != nil {
				pc.reused = true
			}
			return pc, nil
		case <-ctx.Done():
			c.mu.Lock()
			i := slices.Index(h.waiters, w)
			if i >= 0 {
				h.waiters = slices.Delete(h.waiters, i, i+1)
			}
			c.mu.Unlock()
			if i < 0 { // handed over as ctx ended: hand it on
				if pc := <-w.ch; pc != nil {
					c.put(pc)
				} else {
					c.release(key)
				}
			}
			return nil, context.Cause(ctx)
		}
	}
}

// release gives back the slot of a connection to key that closed or was not made: to the first waiter, if any.
func (c *h1Client) release(key string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	h := c.hosts[key]
	if h == nil {
		return // cannot happen: every slot was taken by acquire
	}
	if len(h.waiters) > 0 {
		w := h.waiters[0]
		h.waiters = slices.Delete(h.waiters, 0, 1)
		w.ch <- nil
		return
	}
	h.open--
	if h.open <= 0 && len(h.idle) == 0 {
		delete(c.hosts, key)
	}
}

// getConn returns an idle connection to key or a new one.
func (c *h1Client) getConn(ctx context.Context, key string) (*h1cConn, error) {
	pc, err := c.acquire(ctx, key, true)
	if pc != nil || err != nil {
		return pc, err
	}
	conn, err := c.dial(ctx, "tcp", key)
	if err != nil {
		c.release(key)
		if ctx.Err() != nil {
			return nil, context.Cause(ctx)
		}
		return nil, err
	}
	return &h1cConn{client: c, key: key, conn: conn}, nil
}

// put makes pc idle, hands it to a waiting request, or closes it when the pool is full or closing.
func (c *h1Client) put(pc *h1cConn) {
	if pc.br != nil {
		h1Readers.Put(pc.br)
		pc.br = nil
	}
	pc.nwrite = 0
	c.mu.Lock()
	h := c.hosts[pc.key]
	if len(h.waiters) > 0 {
		w := h.waiters[0]
		h.waiters = slices.Delete(h.waiters, 0, 1)
		c.mu.Unlock()
		if w.wantsConn {
			w.ch <- pc
		} else {
			pc.closeKeepSlot()
			w.ch <- nil
		}
		return
	}
	if c.closeIdle || len(h.idle) >= maxIdleConnsPerHost {
		c.mu.Unlock()
		pc.close()
		return
	}
	h.idle = append(h.idle, pc)
	pc.idle = true
	pc.idleAt = time.Now()
	if pc.timer == nil {
		pc.timer = time.AfterFunc(idleConnTimeout, pc.idleExpired)
	} else {
		pc.timer.Reset(idleConnTimeout)
	}
	c.mu.Unlock()
}

// idleExpired closes pc if it is still idle and has been for idleConnTimeout (the timer of an earlier idle period
// may fire late).
func (pc *h1cConn) idleExpired() {
	c := pc.client
	c.mu.Lock()
	if !pc.idle || time.Since(pc.idleAt) < idleConnTimeout {
		c.mu.Unlock()
		return
	}
	pc.idle = false
	if h := c.hosts[pc.key]; h != nil {
		if i := slices.Index(h.idle, pc); i >= 0 {
			h.idle = slices.Delete(h.idle, i, i+1)
		}
	}
	c.mu.Unlock()
	pc.close()
}

// h1cConn is one connection to an endpoint.
type h1cConn struct {
	client *h1Client
	key    string
	conn   net.Conn
	br     *bufio.Reader // from h1Readers while a response is read; nil while idle
	reused bool          // it served a response before this request

	readLimit int64 // bytes left to read before the response headers must end
	sawEOF    bool  // a read returned io.EOF
	nwrite    int64 // bytes written to conn

	canceled atomic.Bool // the request's context ended: conn's deadline is in the past
	closed   atomic.Bool

	// Guarded by client.mu.
	idle   bool
	idleAt time.Time
	timer  *time.Timer // closes the connection when it has been idle for idleConnTimeout
}

func (pc *h1cConn) Read(p []byte) (int, error) {
	if pc.readLimit <= 0 {
		return 0, fmt.Errorf("read limit of %d bytes exhausted", pc.client.maxHeader)
	}
	if int64(len(p)) > pc.readLimit {
		p = p[:pc.readLimit]
	}
	n, err := pc.conn.Read(p)
	if err == io.EOF {
		pc.sawEOF = true
	}
	pc.readLimit -= int64(n)
	return n, err
}

func (pc *h1cConn) Write(p []byte) (int, error) {
	n, err := pc.conn.Write(p)
	pc.nwrite += int64(n)
	return n, err
}

// interrupt ends the exchange under way: the request's context is done.
func (pc *h1cConn) interrupt() {
	pc.canceled.Store(true)
	pc.conn.SetDeadline(aLongTimeAgo)
}

// close closes the connection for good and gives back its slot; its read buffer, which a response body may still
// refer to, is not reused.
func (pc *h1cConn) close() {
	if pc.closeKeepSlot() {
		pc.client.release(pc.key)
	}
}

// closeKeepSlot closes the connection, whose slot its caller hands on; it reports whether it was open.
func (pc *h1cConn) closeKeepSlot() bool {
	if !pc.closed.CompareAndSwap(false, true) {
		return false
	}
	pc.br = nil
	pc.conn.Close()
	return true
}

// nothingWrittenError is a failure to write a request of which no byte went out (net/http's).
type nothingWrittenError struct{ error }

func (e nothingWrittenError) Unwrap() error { return e.error }

// peekError is a failure to read the first byte of a response (net/http's transportReadFromServerError).
type peekError struct{ error }

func (e peekError) Unwrap() error { return e.error }

// roundTrip sends req, which h1Eligible admitted, and returns the endpoint's response. A request that failed on
// a reused connection before the endpoint could have seen it (nothing written), or before any byte of a response
// when it may be sent twice (isReplayable), is sent again on another connection, as net/http's Transport does:
// the endpoint closed an idle connection as the request went out.
func (c *h1Client) roundTrip(req *http.Request) (*http.Response, error) {
	if err := checkClientRequest(req); err != nil {
		return nil, err
	}
	ctx := req.Context()
	replayable := isReplayable(req)
	var body []byte // a request body, read whole first (h1Eligible)
	hasBody := req.Body != nil && req.Body != http.NoBody
	if hasBody {
		// One byte past the declared length, so that Request.Write tells a body longer than declared, as it
		// does for net/http's Transport.
		body = make([]byte, req.ContentLength+1)
		n, err := io.ReadFull(req.Body, body)
		req.Body.Close() // as net/http's Transport does once it has sent the body
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			err = nil
		}
		if err != nil {
			return nil, err
		}
		body = body[:n]
	}
	for {
		if ctx.Err() != nil {
			return nil, context.Cause(ctx)
		}
		pc, err := c.getConn(ctx, req.URL.Host)
		if err != nil {
			return nil, err
		}
		send := req
		if hasBody {
			// A body in memory goes out with the head, in one write (net/http writes the head first for any other).
			send = new(http.Request)
			*send = *req
			send.Body = io.NopCloser(bytes.NewReader(body))
		}
		resp, err := pc.exchange(send)
		if err == nil {
			return resp, nil
		}
		var nw nothingWrittenError
		var pe peekError
		switch {
		case errors.As(err, &nw):
			if pc.reused && (!hasBody || req.GetBody != nil) {
				continue
			}
			return nil, nw.error
		case errors.As(err, &pe):
			if pc.reused && replayable {
				continue
			}
			return nil, pe.error
		}
		return nil, err
	}
}

// checkClientRequest is what net/http's Transport checks of a request before it sends it.
func checkClientRequest(req *http.Request) error {
	if msg := invalidHeader(req.Header); msg != "" {
		return fmt.Errorf("net/http: invalid header %s", msg)
	}
	if msg := invalidHeader(req.Trailer); msg != "" {
		return fmt.Errorf("net/http: invalid trailer %s", msg)
	}
	if req.Method != "" && !httpguts.ValidHeaderFieldName(req.Method) { // a token, as header names are
		return fmt.Errorf("net/http: invalid method %q", req.Method)
	}
	if req.URL.Host == "" {
		return errors.New("http: no Host in request URL")
	}
	// What Request.Write refuses before it writes a byte (net/http's Transport then tries every idle connection
	// in turn, each closed as it fails, before a new one refuses it too).
	host := req.Host
	if host == "" {
		host = req.URL.Host
	}
	if h, err := httpguts.PunycodeHostPort(host); err != nil {
		return err
	} else if !httpguts.ValidHostHeader(h) {
		return errors.New("http: invalid Host header")
	}
	if strings.ContainsFunc(req.URL.RequestURI(), func(r rune) bool { return r < ' ' || r == 0x7f }) {
		return errors.New("net/http: can't write control character in Request.URL")
	}
	return nil
}

// invalidHeader names the first invalid field of h, as net/http's Transport does; "" when all are valid.
func invalidHeader(h http.Header) string {
	switch k, badName, found := invalidField(h); {
	case !found:
		return ""
	case badName:
		return fmt.Sprintf("field name %q", k)
	default:
		return fmt.Sprintf("field value for %q", k) // not the value: it may be a secret
	}
}

// invalidField finds a field of h whose name (badName) or one of whose values is not valid HTTP, the check both
// net/http's server and its Transport make of every field; found is false when all are valid.
func invalidField(h http.Header) (name string, badName, found bool) {
	for k, vv := range h {
		if !httpguts.ValidHeaderFieldName(k) {
			return k, true, true
		}
		for _, v := range vv {
			if !httpguts.ValidHeaderFieldValue(v) {
				return k, false, true
			}
		}
	}
	return "", false, false
}

// isReplayable reports whether req may be sent twice (net/http's Request.isReplayable): an idempotent method, or a
// request marked as safe to repeat, without a body or with one its sender can give again (GetBody).
func isReplayable(req *http.Request) bool {
	if req.Body != nil && req.Body != http.NoBody && req.GetBody == nil {
		return false
	}
	switch req.Method {
	case "", http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
		return true
	}
	_, ik := req.Header["Idempotency-Key"]
	_, xik := req.Header["X-Idempotency-Key"]
	return ik || xik
}

// exchange writes req on pc and reads its response (net/http's persistConn.roundTrip, writeLoop and readLoop).
// The connection is closed on any failure; it returns to the pool when the response ends.
func (pc *h1cConn) exchange(req *http.Request) (*http.Response, error) {
	ctx := req.Context()
	stop := context.AfterFunc(ctx, pc.interrupt)
	fail := func(err error) (*http.Response, error) {
		stop()
		pc.close()
		if pc.canceled.Load() {
			return nil, context.Cause(ctx)
		}
		return nil, err
	}

	bw := h1Writers.Get().(*bufio.Writer)
	bw.Reset(pc)
	err := req.Write(bw)
	if err == nil {
		err = bw.Flush()
	}
	bw.Reset(nil)
	h1Writers.Put(bw)
	if err != nil {
		if pc.nwrite == 0 {
			return fail(nothingWrittenError{err})
		}
		return fail(fmt.Errorf("net/http: HTTP/1.x transport connection broken: %w", err))
	}

	pc.readLimit = pc.client.maxHeader
	pc.br = h1Readers.Get().(*bufio.Reader)
	pc.br.Reset(pc)
	if _, err := pc.br.Peek(1); err != nil {
		return fail(peekError{err})
	}
	trace := httptrace.ContextClientTrace(ctx)
	var resp *http.Response
	for {
		resp, err = http.ReadResponse(pc.br, req)
		if err != nil {
			if pc.readLimit <= 0 {
				err = fmt.Errorf("net/http: server response headers exceeded %d bytes; aborted", pc.client.maxHeader)
			}
			return fail(err)
		}
		if code := resp.StatusCode; code >= 100 && code <= 199 && code != http.StatusSwitchingProtocols {
			if trace != nil && trace.Got1xxResponse != nil {
				if err := trace.Got1xxResponse(code, textproto.MIMEHeader(resp.Header)); err != nil {
					return fail(err)
				}
				// The 1xx response went to the caller, which bounds how many it takes: the limit starts again.
				pc.readLimit = pc.client.maxHeader
			}
			continue
		}
		break
	}
	pc.readLimit = math.MaxInt64 // no limit for the body

	if resp.StatusCode == http.StatusSwitchingProtocols && isUpgrade(resp.Header) {
		// The caller owns the connection from now on (net/http's readWriteCloserBody); cancellation no longer
		// closes it.
		if !stop() {
			return fail(nil)
		}
		resp.Body = &h1cSwitched{br: pc.br, Conn: pc.conn}
		return resp, nil
	}
	keep := !resp.Close && !req.Close && resp.StatusCode >= 200
	if req.Method == http.MethodHead || resp.ContentLength == 0 {
		pc.end(stop, keep)
		return resp, nil
	}
	resp.Body = &h1cBody{pc: pc, body: resp.Body, stop: stop, keep: keep, ctx: ctx}
	return resp, nil
}

// end ends pc's exchange: it goes back to the pool when keep and the connection is still whole (not cancelled,
// not closed by the endpoint, no bytes beyond the response), else it is closed. It reports whether it went back.
func (pc *h1cConn) end(stop func() bool, keep bool) bool {
	if stopped := stop(); stopped && keep && !pc.sawEOF && pc.br.Buffered() == 0 {
		pc.client.put(pc)
		return true
	}
	pc.close()
	return false
}

// h1cBody is the body of a response read by h1Client (net/http's bodyEOFSignal): its connection goes back to the
// pool at its end, and is closed when it is closed before its end or fails.
type h1cBody struct {
	pc   *h1cConn
	body io.ReadCloser
	stop func() bool
	keep bool
	ctx  context.Context

	mu     sync.Mutex
	closed bool
	rerr   error // the first error a Read returned
	ended  bool
}

var errReadOnClosedResBody = errors.New("http: read on closed response body")

func (b *h1cBody) Read(p []byte) (int, error) {
	b.mu.Lock()
	closed, rerr := b.closed, b.rerr
	b.mu.Unlock()
	if closed {
		return 0, errReadOnClosedResBody
	}
	if rerr != nil {
		return 0, rerr
	}
	n, err := b.body.Read(p)
	if err != nil {
		b.mu.Lock()
		defer b.mu.Unlock()
		if b.rerr == nil {
			b.rerr = err
		}
		err = b.endLocked(err)
	}
	return n, err
}

func (b *h1cBody) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil
	}
	b.closed = true
	if b.rerr != io.EOF {
		// Before the end: the connection is closed, not read to the end of the response.
		b.endLocked(errReadOnClosedResBody)
		return nil
	}
	return b.endLocked(b.body.Close())
}

// endLocked ends the exchange once, at err (io.EOF: the response ended), and returns the error the reader sees.
func (b *h1cBody) endLocked(err error) error {
	if b.ended {
		return err
	}
	b.ended = true
	if err == io.EOF {
		b.pc.end(b.stop, b.keep)
		return err
	}
	b.stop()
	b.pc.close()
	if err != errReadOnClosedResBody && b.pc.canceled.Load() {
		return context.Cause(b.ctx)
	}
	return err
}

// h1cSwitched is the body of a 101 response that switched protocols: the connection, read from its buffer first.
type h1cSwitched struct {
	br *bufio.Reader
	net.Conn
}

func (b *h1cSwitched) Read(p []byte) (int, error) {
	if b.br != nil {
		if n := b.br.Buffered(); n > 0 {
			if len(p) > n {
				p = p[:n]
			}
			return b.br.Read(p)
		}
		b.br = nil
	}
	return b.Conn.Read(p)
}
