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
	"net/http/httptrace"
	"net/textproto"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// h2Client is meshlet's own HTTP/2 client for the common requests (h2Eligible: no body, or one held whole in
// memory): the request's HEADERS and DATA go out in one write from the caller's goroutine, and the connection's
// reader hands the response to it, with no goroutine per request (x/net's client starts one for each, and writes
// the HEADERS and the body in a write each). What it does is x/net's ClientConn, function by function (the header
// block as httpcommon.EncodeHeaders writes it, the response as handleResponse reads it, flow control, trailers,
// 1xx, GOAWAY, RST_STREAM, the errors and their types); whatever it does not do goes to x/net's Transport
// (fallback): a request whose header block or body x/net would refuse or check, or that does not fit the
// connection's windows, and a stream the endpoint refused or did not process (x/net retries those itself).
type h2Client struct {
	dial      func(ctx context.Context, network, addr string) (net.Conn, error)
	maxHeader int               // the response header list limit (SETTINGS_MAX_HEADER_LIST_SIZE)
	fallback  http.RoundTripper // x/net's Transport

	mu    sync.Mutex
	hosts map[string]*h2cHost
}

// h2cHost is the connections to one endpoint.
type h2cHost struct {
	conns   []*h2cConn
	dialing chan struct{} // closed when the dial under way ends; nil when none is
}

// Settings of meshlet's HTTP/2 client, as x/net's Transport has them for meshlet (newTransports).
const (
	h2cStreamWindow        = 4 << 20              // x/net's MaxReceiveBufferPerStream default
	h2cConnWindow          = 1 << 30              // x/net's MaxReceiveBufferPerConnection default
	h2cInitialMaxStreams   = 100                  // until the server's SETTINGS say (x/net's initialMaxConcurrentStreams)
	h2cDefaultMaxStreams   = 1000                 // when its first SETTINGS do not (x/net's defaultMaxConcurrentStreams)
	h2cMaxWholeBody        = 64 << 10             // the largest body sent by h2Client
	h2cDefaultUserAgent    = "Go-http-client/2.0" // x/net's, for a request without User-Agent
	h2cUnprocessedAttempts = 1                    // a stream not processed is tried once more, then by x/net
)

// useH2Client: the common HTTP/2 requests go through h2Client (MESHLET_H2_CLIENT=go: all through x/net's).
var useH2Client = os.Getenv("MESHLET_H2_CLIENT") != "go"

// errH2Fallback: the request is x/net's to send (nothing of it was sent).
var errH2Fallback = errors.New("meshlet http2: left to x/net")

// errH2Unprocessed: the endpoint did not process the stream (REFUSED_STREAM, or above a GOAWAY's last stream).
var errH2Unprocessed = errors.New("meshlet http2: stream not processed")

// errH2Refused: the endpoint refused the stream (REFUSED_STREAM): x/net sends it again, on its own terms.
var errH2Refused = errors.New("meshlet http2: stream refused")

var errH2ClosedResponseBody = errors.New("http2: response body closed")

// h2Eligible reports whether h2Client sends req: not CONNECT or an upgrade, no Expect, no trailers, and a body
// that is nil or whole (its bytes all here: reading them never waits for the client).
func h2Eligible(req *http.Request, whole bool) bool {
	if !useH2Client || req.Method == http.MethodConnect || req.Close || len(req.Trailer) > 0 ||
		req.Header["Upgrade"] != nil || req.Header["Expect"] != nil || req.Header[":protocol"] != nil {
		return false
	}
	return req.Body == nil || req.Body == http.NoBody || whole
}

// readWhole reads a whole body (h2Eligible) to its end: false if it holds more than h2cMaxWholeBody or fails
// (what was read is then in b, for x/net).
func readWhole(body io.Reader) (b []byte, ok bool) {
	var buf [512]byte
	b = buf[:0:len(buf)]
	for {
		if len(b) == cap(b) {
			if len(b) > h2cMaxWholeBody {
				return b, false
			}
			b = slices.Grow(b, len(b))
		}
		n, err := body.Read(b[len(b):cap(b)])
		b = b[:len(b)+n]
		if err == io.EOF {
			return b, len(b) <= h2cMaxWholeBody
		}
		if err != nil {
			return b, false
		}
	}
}

// roundTrip sends req (h2Eligible) and returns its response, as x/net's Transport.RoundTrip would.
func (cl *h2Client) roundTrip(req *http.Request) (*http.Response, error) {
	var body []byte
	hasBody := req.Body != nil && req.Body != http.NoBody
	if hasBody {
		var ok bool
		body, ok = readWhole(req.Body)
		if !ok {
			return cl.fallback.RoundTrip(replayWith(req, body, false))
		}
		req.Body.Close() // the transport closes the body it was given
	}
	fallback := func() (*http.Response, error) {
		if !hasBody {
			return cl.fallback.RoundTrip(req)
		}
		return cl.fallback.RoundTrip(replayWith(req, body, true))
	}
	if !sendable(req, body, hasBody) {
		return fallback()
	}
	ctx := req.Context()
	for attempt := 0; ; attempt++ {
		c, err := cl.conn(ctx, req.URL.Host)
		if err != nil {
			return nil, err
		}
		resp, err := c.roundTrip(req, body, hasBody)
		switch {
		case err == errH2Fallback, err == errH2Refused,
			err == errH2Unprocessed && attempt >= h2cUnprocessedAttempts:
			return fallback()
		case err == errH2Unprocessed:
			continue // on another connection
		}
		return resp, err
	}
}

// sendable reports whether h2Client sends req itself: a request x/net would refuse or write otherwise (its
// checks of the host, the path, the header fields, the body's length against its Content-Length) is x/net's
// to answer, before a connection is dialed for it.
func sendable(req *http.Request, body []byte, hasBody bool) bool {
	if req.URL == nil {
		return false
	}
	if hasBody && req.ContentLength > 0 && req.ContentLength != int64(len(body)) {
		return false
	}
	host := req.Host
	if host == "" {
		host = req.URL.Host
	}
	if !isASCII(host) || !httpguts.ValidHostHeader(host) {
		return false // x/net's Punycode conversion or its error
	}
	path := req.URL.RequestURI()
	if !(len(path) > 0 && path[0] == '/' || path == "*") {
		return false
	}
	for k, vv := range req.Header {
		if !httpguts.ValidHeaderFieldName(k) {
			return false
		}
		switch {
		case asciiEqualFold(k, "connection"), asciiEqualFold(k, "transfer-encoding"), asciiEqualFold(k, "upgrade"):
			return false // x/net drops or refuses these by value
		}
		for _, v := range vv {
			if !httpguts.ValidHeaderFieldValue(v) {
				return false
			}
		}
	}
	return true
}

// replayWith is req with body (what was read of its own) as its body: the whole of it when complete, else
// followed by the rest of its own.
func replayWith(req *http.Request, body []byte, complete bool) *http.Request {
	r := new(http.Request)
	*r = *req
	if complete {
		r.Body = io.NopCloser(bytes.NewReader(body))
		r.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
		return r
	}
	rest := r.Body
	r.Body = &prefixBody{Reader: io.MultiReader(bytes.NewReader(body), rest), c: rest}
	return r
}

// prefixBody is what was read of a body, then the rest of it.
type prefixBody struct {
	io.Reader
	c io.Closer
}

func (b *prefixBody) Close() error { return b.c.Close() }

// conn returns a connection to addr that can take one more stream (reserved on it), dialing one if none can.
func (cl *h2Client) conn(ctx context.Context, addr string) (*h2cConn, error) {
	for {
		cl.mu.Lock()
		h := cl.hosts[addr]
		if h == nil {
			if cl.hosts == nil {
				cl.hosts = make(map[string]*h2cHost)
			}
			h = &h2cHost{}
			cl.hosts[addr] = h
		}
		for _, c := range h.conns {
			if c.reserve() {
				cl.mu.Unlock()
				return c, nil
			}
		}
		if wait := h.dialing; wait != nil {
			cl.mu.Unlock()
			select {
			case <-wait:
				continue
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		done := make(chan struct{})
		h.dialing = done
		cl.mu.Unlock()
		c, err := cl.newConn(ctx, addr)
		cl.mu.Lock()
		h.dialing = nil
		close(done)
		if err != nil {
			if len(h.conns) == 0 {
				delete(cl.hosts, addr)
			}
			cl.mu.Unlock()
			return nil, err
		}
		h.conns = append(h.conns, c)
		ok := c.reserve()
		cl.mu.Unlock()
		if ok {
			return c, nil
		}
	}
}

// forget takes a connection that can take no more streams out of the pool.
func (cl *h2Client) forget(c *h2cConn) {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	h := cl.hosts[c.key]
	if h == nil {
		return
	}
	if i := slices.Index(h.conns, c); i >= 0 {
		h.conns = slices.Delete(h.conns, i, i+1)
	}
	if len(h.conns) == 0 && h.dialing == nil {
		delete(cl.hosts, c.key)
	}
}

// closeIdleConnections closes the connections without streams (x/net's CloseIdleConnections).
func (cl *h2Client) closeIdleConnections() {
	cl.mu.Lock()
	var all []*h2cConn
	for _, h := range cl.hosts {
		all = append(all, h.conns...)
	}
	cl.mu.Unlock()
	for _, c := range all {
		c.closeIfIdle()
	}
}

// h2cConn is one connection of h2Client. Its reader goroutine (readLoop) reads and handles the frames; the
// callers write their requests' frames themselves. mu guards everything below it.
type h2cConn struct {
	cl   *h2Client
	key  string
	nc   net.Conn
	tls  *tls.ConnectionState
	fr   *http2.Framer // the reader's; it reads br through bufIn
	hdrs *h2Headers    // reads the header blocks from fr
	// Owned by the reader. br is the read buffer, given back to its pool while the connection waits with no
	// stream (idleWait; nil also while the reader moves to a new goroutine, waitMoved); sock is the plain socket
	// it then waits for (nil for TLS: its records are read ahead of the socket, so it waits in a read of one
	// byte, waitData); bigRead: fr read a frame larger than h2BigFrame, whose buffer it keeps (a new Framer drops
	// it when the connection goes idle).
	br      *bufio.Reader
	sock    syscall.Conn
	bigRead bool
	// one holds the byte a TLS connection's idle wait read (pending), which br reads first, then pendingErr,
	// the error that read returned (h2cPending).
	one        [1]byte
	pending    bool
	pendingErr error
	waiting    atomic.Bool  // the reader waits in idleWait, its buffers given back (for the tests to see)
	moves      atomic.Int64 // the reader moved to a new goroutine (idleWait)

	mu                sync.Mutex
	streams           map[uint32]*h2cStream
	nextID            uint32
	reserved          int // streams taken by callers and not opened yet
	maxStreams        uint32
	peerMaxFrame      uint32
	peerInitialWindow int32
	peerMaxHeaderList uint64
	sendWindow        int32
	inflow            h2Inflow
	seenSettings      bool
	wantSettingsAck   bool
	goAway            *http2.GoAwayFrame
	goAwayCode        http2.ErrCode // the first error code of the GOAWAYs received
	goAwayDebug       string
	doNotReuse        bool
	closed            bool
	enc               *hpack.Encoder
	hbuf              bytes.Buffer
	out               []byte
	flushing          bool
	werr              error
	idleSince         time.Time
	readSome          bool // a frame was read since the health check last looked
	pingSent          time.Time
	timer             *time.Timer
}

// h2cStream is one request and its response; guarded by its connection's mu.
type h2cStream struct {
	c          *h2cConn
	id         uint32
	isHead     bool
	sendWindow int32
	inflow     h2Inflow
	ready      chan struct{} // closed when the response (res) or an error (err) is in
	done       chan struct{} // closed when the stream leaves the connection; nil unless waited for
	res        *http.Response
	err        error // the stream ended with it (before its response: RoundTrip's error)
	pastHeaders, pastTrailers,
	readClosed bool // the response ended (END_STREAM)
	body        *h2Pipe
	bytesRemain int64
	trailer     http.Header
	readErr     error
	stopCtx     func() bool
	got1xx      func(int, textproto.MIMEHeader) error
	headerSize  int64
}

// newConn dials addr and starts the connection: its preface, SETTINGS and connection window go out at once.
func (cl *h2Client) newConn(ctx context.Context, addr string) (*h2cConn, error) {
	nc, err := cl.dial(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	c := &h2cConn{cl: cl, key: addr, nc: nc, nextID: 1, maxStreams: h2cInitialMaxStreams, peerMaxFrame: 16 << 10,
		peerInitialWindow: 65535, peerMaxHeaderList: 0xffffffffffffffff, sendWindow: 65535, wantSettingsAck: true,
		idleSince: time.Now(), streams: map[uint32]*h2cStream{}}
	c.inflow.avail = h2cConnWindow + 65535
	if cs, ok := nc.(interface{ ConnectionState() tls.ConnectionState }); ok {
		st := cs.ConnectionState()
		c.tls = &st
	}
	c.br = h1Readers.Get().(*bufio.Reader)
	c.br.Reset(h2cPending{c})
	if c.tls == nil {
		c.sock = plainSocket(nc)
	}
	c.newFramer()
	c.hdrs = newH2Headers(hpack.NewDecoder(4096, nil), uint32(cl.maxHeader))
	c.enc = hpack.NewEncoder(&c.hbuf)
	c.enc.SetMaxDynamicTableSizeLimit(h2EncoderTableSize)
	b := append([]byte(nil), http2.ClientPreface...)
	b = appendH2Settings(b, []http2.Setting{
		{ID: http2.SettingEnablePush, Val: 0},
		{ID: http2.SettingInitialWindowSize, Val: h2cStreamWindow},
		{ID: http2.SettingMaxFrameSize, Val: maxReadFrameSize},
		{ID: http2.SettingMaxHeaderListSize, Val: uint32(cl.maxHeader)},
	})
	b = appendH2WindowUpdate(b, 0, h2cConnWindow)
	if _, err := nc.Write(b); err != nil {
		nc.Close()
		return nil, err
	}
	c.timer = time.AfterFunc(h2PingInterval, c.healthCheck)
	go c.readLoop()
	return c, nil
}

// reserve takes a stream on c if it can open one more. cl.mu held.
func (c *h2cConn) reserve() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.usableLocked() {
		return false
	}
	c.reserved++
	return true
}

func (c *h2cConn) usableLocked() bool {
	return !c.closed && c.goAway == nil && !c.doNotReuse && c.werr == nil &&
		uint64(len(c.streams)+c.reserved) < uint64(c.maxStreams) && c.nextID < 1<<31-2*uint32(c.reserved+1)
}

// roundTrip sends req (its body whole in body) on a stream reserved on c and waits for its response.
func (c *h2cConn) roundTrip(req *http.Request, body []byte, hasBody bool) (*http.Response, error) {
	ctx := req.Context()
	c.mu.Lock()
	c.reserved--
	if c.closed || c.werr != nil || c.goAway != nil {
		c.mu.Unlock()
		return nil, errH2Unprocessed
	}
	contentLength := int64(0)
	if hasBody {
		contentLength = req.ContentLength
		if contentLength == 0 {
			contentLength = -1
		}
		if int64(len(body)) > int64(c.sendWindow) || int64(len(body)) > int64(c.peerInitialWindow) {
			c.mu.Unlock()
			return nil, errH2Fallback // x/net's to send as the windows open
		}
	}
	if err := ctx.Err(); err != nil {
		c.mu.Unlock()
		return nil, err
	}
	c.hbuf.Reset()
	if !c.encodeHeaders(req, contentLength) {
		c.mu.Unlock()
		return nil, errH2Fallback
	}
	st := &h2cStream{c: c, id: c.nextID, isHead: req.Method == http.MethodHead,
		sendWindow: c.peerInitialWindow, ready: make(chan struct{})}
	st.inflow.avail = h2cStreamWindow
	if trace := httptrace.ContextClientTrace(ctx); trace != nil {
		st.got1xx = trace.Got1xxResponse
	}
	c.nextID += 2
	c.streams[st.id] = st
	hdrs := c.hbuf.Bytes()
	endStream := !hasBody
	first := true
	for len(hdrs) > 0 {
		chunk := hdrs[:min(len(hdrs), int(c.peerMaxFrame))]
		hdrs = hdrs[len(chunk):]
		t := http2.FrameContinuation
		if first {
			t = http2.FrameHeaders
		}
		c.out = appendH2HeaderFrame(c.out, t, st.id, chunk, first && endStream, len(hdrs) == 0)
		first = false
	}
	if hasBody {
		c.sendWindow -= int32(len(body))
		st.sendWindow -= int32(len(body))
		for b := body; ; {
			chunk := b[:min(len(b), int(c.peerMaxFrame))]
			b = b[len(chunk):]
			c.out = appendH2Data(c.out, st.id, len(b) == 0, chunk)
			if len(b) == 0 {
				break
			}
		}
	}
	c.flushLocked()
	c.mu.Unlock()

	select {
	case <-st.ready:
	case <-ctx.Done():
		c.mu.Lock()
		if st.res == nil && st.err == nil {
			c.abortLocked(st, ctx.Err(), http2.ErrCodeCancel)
			c.flushLocked()
		}
		c.mu.Unlock()
		<-st.ready
	}
	// res is set before ready is closed and never after; err, when res is nil, before it too (an abort after
	// the response's headers leaves res to the caller, its body ending with the error).
	res := st.res
	if res == nil {
		return nil, st.err
	}
	res.Request = req
	res.TLS = c.tls
	if res.Body == http.NoBody && !hasBody {
		// x/net waits for the stream's end (a HEAD's answer may still end with an error).
		c.mu.Lock()
		if _, open := c.streams[st.id]; open && st.done == nil {
			st.done = make(chan struct{})
		}
		done := st.done
		c.mu.Unlock()
		if done != nil {
			select {
			case <-done:
			case <-ctx.Done():
				c.mu.Lock()
				c.abortLocked(st, ctx.Err(), http2.ErrCodeCancel)
				c.flushLocked()
				c.mu.Unlock()
				return nil, ctx.Err()
			}
		}
	}
	if st.body != nil {
		c.mu.Lock()
		if st.err == nil && !st.readClosed {
			st.stopCtx = context.AfterFunc(ctx, func() {
				c.mu.Lock()
				c.abortLocked(st, ctx.Err(), http2.ErrCodeCancel)
				c.flushLocked()
				c.mu.Unlock()
			})
		}
		c.mu.Unlock()
	}
	return res, nil
}

// encodeHeaders writes the header block of req (sendable) into c.hbuf as x/net's httpcommon.EncodeHeaders does;
// false: one over the endpoint's SETTINGS_MAX_HEADER_LIST_SIZE, which x/net refuses. mu held.
func (c *h2cConn) encodeHeaders(req *http.Request, contentLength int64) bool {
	host := req.Host
	if host == "" {
		host = req.URL.Host
	}
	path := req.URL.RequestURI()
	method := req.Method
	if method == "" {
		method = http.MethodGet
	}
	sendCL := contentLength > 0 || contentLength == 0 && (method == "POST" || method == "PUT" || method == "PATCH")
	var size uint64
	enumerate := func(f func(name, value string)) {
		f(":authority", host)
		f(":method", method)
		f(":path", path)
		f(":scheme", req.URL.Scheme)
		didUA := false
		for k, vv := range req.Header {
			switch {
			case asciiEqualFold(k, "host"), asciiEqualFold(k, "content-length"),
				asciiEqualFold(k, "proxy-connection"), asciiEqualFold(k, "keep-alive"):
				continue
			case asciiEqualFold(k, "user-agent"):
				didUA = true
				if len(vv) < 1 || vv[0] == "" {
					continue
				}
				vv = vv[:1]
			case asciiEqualFold(k, "cookie"):
				for _, v := range vv {
					for {
						p := strings.IndexByte(v, ';')
						if p < 0 {
							break
						}
						f("cookie", v[:p])
						p++
						for p+1 <= len(v) && v[p] == ' ' {
							p++
						}
						v = v[p:]
					}
					if len(v) > 0 {
						f("cookie", v)
					}
				}
				continue
			}
			for _, v := range vv {
				f(k, v)
			}
		}
		if sendCL {
			f("content-length", strconv.FormatInt(contentLength, 10))
		}
		if !didUA {
			f("user-agent", h2cDefaultUserAgent)
		}
	}
	enumerate(func(name, value string) { size += uint64(hpack.HeaderField{Name: name, Value: value}.Size()) })
	if size > c.peerMaxHeaderList {
		return false // x/net's ErrRequestHeaderListSize
	}
	enumerate(func(name, value string) {
		name, _ = lowerHeader(name) // a valid field name is ASCII
		c.enc.WriteField(hpack.HeaderField{Name: name, Value: value})
	})
	return true
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

// asciiEqualFold is strings.EqualFold for ASCII (x/net's).
func asciiEqualFold(s, t string) bool {
	if len(s) != len(t) {
		return false
	}
	for i := 0; i < len(s); i++ {
		a, b := s[i], t[i]
		if 'A' <= a && a <= 'Z' {
			a += 'a' - 'A'
		}
		if 'A' <= b && b <= 'Z' {
			b += 'a' - 'A'
		}
		if a != b {
			return false
		}
	}
	return true
}

// flushLocked writes the queued frames (h2Conn's flushLocked). mu held; released while writing.
func (c *h2cConn) flushLocked() {
	if c.flushing {
		return
	}
	if c.werr != nil {
		c.out = nil
		return
	}
	c.flushing = true
	for len(c.out) > 0 && c.werr == nil {
		b := c.out
		c.out = nil
		c.mu.Unlock()
		_, err := c.nc.Write(b)
		c.mu.Lock()
		if c.out == nil {
			c.out = b[:0]
		}
		if err != nil && c.werr == nil {
			c.werr = err
			c.nc.Close() // the reader ends the streams
		}
	}
	c.flushing = false
	if len(c.out) == 0 && cap(c.out) > 16<<10 {
		c.out = nil
	}
}

// abortLocked ends st with err; code: the RST_STREAM to send (the peer has not ended the stream), or 0 for none.
func (c *h2cConn) abortLocked(st *h2cStream, err error, code http2.ErrCode) {
	if st.err != nil {
		return
	}
	st.err = err
	if st.body != nil {
		st.body.closeWithError(err, nil) // what came before it is still read
	}
	if st.res == nil {
		close(st.ready)
	}
	if _, ok := c.streams[st.id]; ok && code != 0 && !c.closed {
		c.out = appendH2RSTStream(c.out, st.id, code)
	}
	c.forgetLocked(st)
}

// forgetLocked removes st from the connection's streams.
func (c *h2cConn) forgetLocked(st *h2cStream) {
	if _, ok := c.streams[st.id]; !ok {
		return
	}
	delete(c.streams, st.id)
	if st.stopCtx != nil {
		st.stopCtx()
	}
	if st.done != nil {
		close(st.done)
	}
	if len(c.streams) == 0 {
		c.idleSince = time.Now()
		if c.goAway != nil || c.doNotReuse {
			c.closeLocked()
		}
	}
}

// closeLocked closes the connection; the reader ends its streams.
func (c *h2cConn) closeLocked() {
	if !c.closed {
		c.closed = true
		c.nc.Close()
	}
}

func (c *h2cConn) closeIfIdle() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.streams) == 0 && c.reserved == 0 {
		c.closeLocked()
	}
}

// healthCheck runs every h2PingInterval: a connection from which nothing was read meanwhile gets a PING (x/net's
// ReadIdleTimeout), and is closed if the PING is not answered within h2PingTimeout; one idle for idleConnTimeout
// is closed.
func (c *h2cConn) healthCheck() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return
	}
	now := time.Now()
	next := h2PingInterval
	switch {
	case len(c.streams) == 0 && c.reserved == 0 && now.Sub(c.idleSince) >= idleConnTimeout:
		c.closeLocked()
		return
	case !c.pingSent.IsZero():
		if now.Sub(c.pingSent) >= h2PingTimeout {
			c.closeLocked()
			return
		}
		next = h2PingTimeout - now.Sub(c.pingSent)
	case !c.readSome:
		c.pingSent = now
		c.out = appendH2Ping(c.out, false, h2cHealthPing)
		c.flushLocked()
		next = h2PingTimeout
	}
	c.readSome = false
	c.timer.Reset(next)
}

var h2cHealthPing = [8]byte{'m', 'e', 's', 'h', 'l', 'e', 't', 0}

// readLoop reads the connection's frames until it fails, then ends its streams (x/net's readLoop and cleanup).
func (c *h2cConn) readLoop() {
	err := c.readFrames()
	if err == errH2cMove {
		c.moves.Add(1)
		go c.waitMoved()
		return
	}
	c.mu.Lock()
	if ce, ok := err.(http2.ConnectionError); ok && c.werr == nil && !c.closed {
		c.out = appendH2GoAway(c.out, 0, http2.ErrCode(ce))
		c.flushLocked()
	}
	if c.goAway != nil && isEOFOrNetReadError(err) {
		err = http2.GoAwayError{LastStreamID: c.goAway.LastStreamID, ErrCode: c.goAwayCode, DebugData: c.goAwayDebug}
	} else if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	c.closeLocked()
	c.timer.Stop()
	for _, st := range c.streams {
		if !st.readClosed {
			c.abortLocked(st, err, 0)
		}
	}
	c.mu.Unlock()
	c.cl.forget(c)
}

func isEOFOrNetReadError(err error) bool {
	if err == io.EOF {
		return true
	}
	ne, ok := err.(*net.OpError)
	return ok && ne.Op == "read"
}

func (c *h2cConn) readFrames() error {
	for {
		if c.idleWait() {
			return errH2cMove
		}
		f, err := c.hdrs.readFrame(c.fr)
		if f != nil && f.Header().Length > h2BigFrame {
			c.bigRead = true
		}
		if err != nil {
			var se http2.StreamError
			if errors.As(err, &se) {
				c.mu.Lock()
				if st := c.streams[se.StreamID]; st != nil {
					if se.Cause == nil {
						se.Cause = c.fr.ErrorDetail()
					}
					c.abortLocked(st, se, se.Code)
					c.flushLocked()
				}
				c.mu.Unlock()
				continue
			}
			return err
		}
		c.mu.Lock()
		c.readSome = true
		err = c.processFrame(f)
		c.flushLocked()
		c.mu.Unlock()
		if err != nil {
			return err
		}
	}
}

// newFramer makes the reader's Framer, anew after a large frame: a Framer keeps the buffer of the largest frame
// it read.
func (c *h2cConn) newFramer() {
	c.fr = http2.NewFramer(nil, bufIn{&c.br})
	c.fr.SetMaxReadFrameSize(maxReadFrameSize)
	c.bigRead = false
}

// errH2cMove ends readFrames for the reader to go on in a new goroutine (idleWait).
var errH2cMove = errors.New("the reader moves to a new goroutine")

// h2cIdleMove is how long an idle connection's reader waits on the stack it grew before it moves to a new
// goroutine, whose stack holds only the wait: the garbage collector leaves a waiting goroutine at least 4 KiB of
// the stack it grew (it shrinks a stack only to four times what is used plus 800 bytes), a new one keeps 2 KiB.
const h2cIdleMove = 250 * time.Millisecond

// idleWait is the reader's, before each frame: a connection with no stream and nothing buffered waits for data
// (waitData) holding no read or write buffer, no header fields and no large frame buffer (what an idle connection
// to an upstream costs is what it keeps while waiting; the server's connections do the same, park). A request
// sent meanwhile makes the connection readable when its answer comes. A wait longer than h2cIdleMove ends with
// true: the reader moves to a new goroutine, which waits on (waitMoved). A connection that is neither TLS nor on
// a socket meshlet can see (net.Pipe in tests) reads as before.
func (c *h2cConn) idleWait() (move bool) {
	if c.sock == nil && c.tls == nil || c.br.Buffered() > 0 || c.pending || c.pendingErr != nil {
		return false // a byte an earlier wait read (waitMoved's) is still to be read
	}
	c.mu.Lock()
	idle := len(c.streams) == 0 && c.reserved == 0
	if idle && !c.flushing && len(c.out) == 0 {
		c.out, c.hbuf = nil, bytes.Buffer{} // the write buffers too (the encoder writes to &c.hbuf)
	}
	c.mu.Unlock()
	if !idle {
		return false
	}
	c.hdrs.release()
	if c.bigRead {
		c.newFramer()
	}
	c.br.Reset(nil)
	h1Readers.Put(c.br)
	c.br = nil
	c.waiting.Store(true)
	c.nc.SetReadDeadline(time.Now().Add(h2cIdleMove))
	err := c.waitData()
	c.nc.SetReadDeadline(time.Time{})
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return true // br stays nil: the new goroutine waits on (waitMoved)
	}
	c.takeReadBuffer()
	return false
}

// waitData waits until the connection has something to read: its plain socket readable, or, over TLS (whose
// records are read ahead of the socket), one byte read through the connection, kept for the read buffer with the
// read's error (pending, pendingErr). It returns the read deadline's error, when that is what ended the wait.
func (c *h2cConn) waitData() error {
	if c.sock != nil {
		return waitReadable(c.sock)
	}
	n, err := c.nc.Read(c.one[:])
	if errors.Is(err, os.ErrDeadlineExceeded) {
		if n == 0 {
			return err // crypto/tls keeps a record read in part: the next read goes on with it
		}
		err = nil // the deadline was the wait's own
	}
	c.pending, c.pendingErr = n > 0, err
	return nil
}

// h2cPending is what the read buffer reads: the byte an idle wait read over TLS and its error first, then the
// connection.
type h2cPending struct{ c *h2cConn }

func (p h2cPending) Read(b []byte) (int, error) {
	c := p.c
	if c.pending {
		if len(b) == 0 {
			return 0, nil
		}
		b[0], c.pending = c.one[0], false
		return 1, nil
	}
	if err := c.pendingErr; err != nil {
		c.pendingErr = nil
		return 0, err
	}
	return c.nc.Read(b)
}

// waitMoved is the reader moved off the stack it grew (idleWait): it waits for data in frames of its own (for a
// plain socket, small enough for the new goroutine's first stack), then reads on.
func (c *h2cConn) waitMoved() {
	c.waitData()
	c.takeReadBuffer()
	c.readLoop()
}

// takeReadBuffer gives the reader a read buffer again after a wait.
func (c *h2cConn) takeReadBuffer() {
	c.waiting.Store(false)
	c.br = h1Readers.Get().(*bufio.Reader)
	c.br.Reset(h2cPending{c})
}

// plainSocket returns the socket under nc's wrappers (those that give it by NetConn), or nil when a layer is TLS
// (its records are read ahead of the socket) or none is a socket: the HTTP/2 client's idle wait and h1Client's
// look at an idle connection (connAlive) watch it.
func plainSocket(nc net.Conn) syscall.Conn {
	for {
		if _, ok := nc.(interface{ ConnectionState() tls.ConnectionState }); ok {
			return nil
		}
		if sc, ok := nc.(syscall.Conn); ok {
			return sc
		}
		u, ok := nc.(interface{ NetConn() net.Conn })
		if !ok {
			return nil
		}
		nc = u.NetConn()
	}
}

// processFrame handles a frame read (mu held).
func (c *h2cConn) processFrame(f http2.Frame) error {
	switch f := f.(type) {
	case *http2.MetaHeadersFrame:
		return c.processHeaders(f)
	case *http2.DataFrame:
		return c.processData(f)
	case *http2.GoAwayFrame:
		code := f.ErrCode
		if c.goAway != nil && c.goAway.ErrCode != http2.ErrCodeNo {
			code = c.goAway.ErrCode // x/net keeps the first error
		}
		c.goAway = f
		c.goAwayCode = code
		c.goAwayDebug = string(f.DebugData())
		for id, st := range c.streams {
			switch {
			case id <= f.LastStreamID:
			case id == 1 && code != http2.ErrCodeNo:
				// x/net does not send a connection's first stream again after an error GOAWAY.
				c.abortLocked(st, fmt.Errorf("http2: Transport received GOAWAY from server ErrCode:%v", code), 0)
			default:
				c.abortLocked(st, errH2Unprocessed, 0)
			}
		}
		if len(c.streams) == 0 {
			c.closeLocked()
		}
		go c.cl.forget(c)
	case *http2.RSTStreamFrame:
		st := c.streams[f.StreamID]
		if st == nil {
			return nil
		}
		if f.ErrCode == http2.ErrCodeProtocol {
			c.doNotReuse = true
			go c.cl.forget(c)
		}
		if f.ErrCode == http2.ErrCodeRefusedStream && st.res == nil {
			c.abortLocked(st, errH2Refused, 0) // x/net retries it, as it does its own
			return nil
		}
		c.abortLocked(st, http2.StreamError{StreamID: st.id, Code: f.ErrCode, Cause: errH2FromPeer}, 0)
	case *http2.SettingsFrame:
		return c.processSettings(f)
	case *http2.PingFrame:
		if f.IsAck() {
			if f.Data == h2cHealthPing {
				c.pingSent = time.Time{}
			}
			return nil
		}
		c.out = appendH2Ping(c.out, true, f.Data)
	case *http2.WindowUpdateFrame:
		if f.StreamID == 0 {
			if !addWindow(&c.sendWindow, int32(f.Increment)) {
				return http2.ConnectionError(http2.ErrCodeFlowControl)
			}
			return nil
		}
		st := c.streams[f.StreamID]
		if st != nil && !addWindow(&st.sendWindow, int32(f.Increment)) {
			c.abortLocked(st, http2.StreamError{StreamID: st.id, Code: http2.ErrCodeFlowControl}, http2.ErrCodeFlowControl)
		}
	case *http2.PushPromiseFrame:
		return http2.ConnectionError(http2.ErrCodeProtocol) // push is off (SETTINGS_ENABLE_PUSH 0)
	}
	return nil
}

// errH2FromPeer is the Cause of a StreamError the endpoint sent (x/net's errFromPeer, which is not exported).
var errH2FromPeer = errors.New("received from peer")

func (c *h2cConn) processSettings(f *http2.SettingsFrame) error {
	if f.IsAck() {
		if c.wantSettingsAck {
			c.wantSettingsAck = false
			return nil
		}
		return http2.ConnectionError(http2.ErrCodeProtocol)
	}
	seenMaxStreams := false
	err := f.ForeachSetting(func(s http2.Setting) error {
		if err := s.Valid(); err != nil {
			return err
		}
		switch s.ID {
		case http2.SettingMaxFrameSize:
			c.peerMaxFrame = s.Val
		case http2.SettingMaxConcurrentStreams:
			c.maxStreams = s.Val
			seenMaxStreams = true
		case http2.SettingMaxHeaderListSize:
			c.peerMaxHeaderList = uint64(s.Val)
		case http2.SettingInitialWindowSize:
			delta := int32(s.Val) - c.peerInitialWindow
			for _, st := range c.streams {
				if !addWindow(&st.sendWindow, delta) {
					return http2.ConnectionError(http2.ErrCodeFlowControl)
				}
			}
			c.peerInitialWindow = int32(s.Val)
		case http2.SettingHeaderTableSize:
			c.enc.SetMaxDynamicTableSize(s.Val)
		}
		return nil
	})
	if err != nil {
		return err
	}
	if !c.seenSettings {
		if !seenMaxStreams {
			c.maxStreams = h2cDefaultMaxStreams
		}
		c.seenSettings = true
	}
	c.out = appendH2FrameHeader(c.out, 0, http2.FrameSettings, http2.FlagSettingsAck, 0)
	return nil
}

// processHeaders is x/net's: a response's header block, a 1xx, or its trailers.
func (c *h2cConn) processHeaders(f *http2.MetaHeadersFrame) error {
	st := c.streams[f.StreamID]
	if st == nil || st.err != nil {
		return nil // a stream meshlet ended (its response may still come)
	}
	if st.readClosed {
		c.abortLocked(st, http2.StreamError{StreamID: st.id, Code: http2.ErrCodeProtocol,
			Cause: errors.New("protocol error: headers after END_STREAM")}, http2.ErrCodeProtocol)
		return nil
	}
	if st.pastHeaders {
		return c.processTrailers(st, f)
	}
	st.pastHeaders = true
	res, err := c.handleResponse(st, f)
	if err != nil {
		if _, ok := err.(http2.ConnectionError); ok {
			return err
		}
		c.abortLocked(st, http2.StreamError{StreamID: st.id, Code: http2.ErrCodeProtocol, Cause: err}, http2.ErrCodeProtocol)
		return nil
	}
	if res == nil {
		return nil // a 1xx
	}
	st.res = res
	close(st.ready)
	if f.StreamEnded() {
		c.endStream(st)
	}
	return nil
}

// handleResponse is x/net's; (nil, nil): a 1xx, handled.
func (c *h2cConn) handleResponse(st *h2cStream, f *http2.MetaHeadersFrame) (*http.Response, error) {
	if f.Truncated {
		return nil, errH2ResponseHeaderListSize
	}
	status := f.PseudoValue("status")
	if status == "" {
		return nil, errors.New("malformed response from server: missing status pseudo header")
	}
	statusCode, err := strconv.Atoi(status)
	if err != nil {
		return nil, errors.New("malformed response from server: malformed non-numeric status pseudo header")
	}
	regular := f.RegularFields()
	strs := make([]string, len(regular))
	header := make(http.Header, len(regular))
	res := &http.Response{Proto: "HTTP/2.0", ProtoMajor: 2, Header: header, StatusCode: statusCode,
		Status: status + " " + http.StatusText(statusCode)}
	for _, hf := range regular {
		key := http.CanonicalHeaderKey(hf.Name)
		if key == "Trailer" {
			if res.Trailer == nil {
				res.Trailer = make(http.Header)
			}
			foreachHeaderElement(hf.Value, func(v string) { res.Trailer[http.CanonicalHeaderKey(v)] = nil })
			continue
		}
		if vv := header[key]; vv == nil && len(strs) > 0 {
			vv, strs = strs[:1:1], strs[1:]
			vv[0] = hf.Value
			header[key] = vv
		} else {
			header[key] = append(vv, hf.Value)
		}
	}
	if statusCode >= 100 && statusCode <= 199 {
		if f.StreamEnded() {
			return nil, errors.New("1xx informational response with END_STREAM flag")
		}
		if fn := st.got1xx; fn != nil {
			// The trace's function writes to the client: not under mu.
			c.mu.Unlock()
			err := fn(statusCode, textproto.MIMEHeader(header))
			c.mu.Lock()
			if err != nil {
				return nil, err
			}
		} else {
			for _, h := range f.Fields {
				st.headerSize += int64(h.Size())
			}
			if st.headerSize > int64(c.cl.maxHeader) {
				return nil, errors.New("header list too large")
			}
		}
		st.pastHeaders = false
		return nil, nil
	}
	for _, k := range h2ConnHeaders { // the connection-specific fields (x/net's connHeaders)
		delete(res.Header, k)
	}
	res.ContentLength = -1
	if clens, ok := res.Header["Content-Length"]; ok {
		conflicting := slices.ContainsFunc(clens[1:], func(cl string) bool { return cl != clens[0] })
		cl, err := strconv.ParseUint(clens[0], 10, 63)
		if conflicting || err != nil {
			delete(res.Header, "Content-Length")
		} else {
			res.Header["Content-Length"] = clens[:1]
			res.ContentLength = int64(cl)
		}
	}
	if res.ContentLength < 0 && f.StreamEnded() && !st.isHead {
		res.ContentLength = 0
	}
	if st.isHead {
		res.Body = http.NoBody
		return res, nil
	}
	if f.StreamEnded() {
		if res.ContentLength > 0 {
			res.Body = h2cMissingBody{}
		} else {
			res.Body = http.NoBody
		}
		return res, nil
	}
	st.body = &h2Pipe{expected: res.ContentLength}
	st.body.wait.L = &c.mu
	st.bytesRemain = res.ContentLength
	res.Body = &h2cBody{st: st}
	return res, nil
}

var errH2ResponseHeaderListSize = errors.New("http2: response header list larger than advertised limit")

// h2cMissingBody is the body of a response that declared a length and ended at once (x/net's missingBody).
type h2cMissingBody struct{}

func (h2cMissingBody) Close() error             { return nil }
func (h2cMissingBody) Read([]byte) (int, error) { return 0, io.ErrUnexpectedEOF }

func (c *h2cConn) processTrailers(st *h2cStream, f *http2.MetaHeadersFrame) error {
	if st.pastTrailers {
		return http2.ConnectionError(http2.ErrCodeProtocol)
	}
	st.pastTrailers = true
	if !f.StreamEnded() || len(f.PseudoFields()) > 0 {
		return http2.ConnectionError(http2.ErrCodeProtocol)
	}
	trailer := make(http.Header)
	for _, hf := range f.RegularFields() {
		key := http.CanonicalHeaderKey(hf.Name)
		trailer[key] = append(trailer[key], hf.Value)
	}
	st.trailer = trailer
	c.endStream(st)
	return nil
}

// endStream: the response ended (END_STREAM); its body reads io.EOF after its data, the trailers copied first.
func (c *h2cConn) endStream(st *h2cStream) {
	if st.readClosed {
		return
	}
	st.readClosed = true
	if st.body != nil {
		st.body.closeWithError(io.EOF, func() {
			for k, vv := range st.trailer {
				if st.res.Trailer == nil {
					st.res.Trailer = make(http.Header)
				}
				st.res.Trailer[k] = vv
			}
		})
	}
	c.forgetLocked(st) // the request was sent whole
}

func (c *h2cConn) processData(f *http2.DataFrame) error {
	st := c.streams[f.StreamID]
	data := f.Data()
	if st == nil || st.err != nil {
		if f.StreamID >= c.nextID {
			return http2.ConnectionError(http2.ErrCodeProtocol) // a stream never opened
		}
		// A stream meshlet ended: its window comes back.
		if f.Length > 0 {
			if f.Length > uint32(c.inflow.avail) {
				return http2.ConnectionError(http2.ErrCodeFlowControl)
			}
			c.inflow.avail -= int32(f.Length)
			if n := c.inflow.add(int(f.Length)); n > 0 {
				c.out = appendH2WindowUpdate(c.out, 0, uint32(n))
			}
		}
		return nil
	}
	if st.readClosed || !st.pastHeaders {
		c.abortLocked(st, http2.StreamError{StreamID: st.id, Code: http2.ErrCodeProtocol}, http2.ErrCodeProtocol)
		return nil
	}
	if f.Length > 0 {
		if st.isHead && len(data) > 0 {
			c.abortLocked(st, http2.StreamError{StreamID: st.id, Code: http2.ErrCodeProtocol}, http2.ErrCodeProtocol)
			return nil
		}
		if !takeInflows(&c.inflow, &st.inflow, f.Length) {
			return http2.ConnectionError(http2.ErrCodeFlowControl)
		}
		refund := int(f.Length) - len(data) // padding: given back now
		didReset := false
		if len(data) > 0 && (st.body == nil || !st.body.write(data)) {
			didReset = true
			refund += len(data)
		}
		if n := c.inflow.add(refund); n > 0 {
			c.out = appendH2WindowUpdate(c.out, 0, uint32(n))
		}
		if !didReset {
			if n := st.inflow.add(refund); n > 0 {
				c.out = appendH2WindowUpdate(c.out, st.id, uint32(n))
			}
		}
	}
	if f.StreamEnded() {
		c.endStream(st)
	}
	return nil
}

// h2cBody is a response's body (x/net's transportResponseBody).
type h2cBody struct {
	st     *h2cStream
	closed bool
}

func (b *h2cBody) Read(p []byte) (int, error) {
	st := b.st
	c := st.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if st.readErr != nil {
		return 0, st.readErr
	}
	pipe := st.body
	var n int
	var err error
	for {
		if pipe.breakErr != nil {
			err = pipe.breakErr
			break
		}
		if pipe.n > 0 {
			n = pipe.read(p)
			break
		}
		if pipe.err != nil {
			err = pipe.err
			if fn := pipe.onErr; fn != nil {
				pipe.onErr = nil
				fn()
			}
			break
		}
		pipe.wait.Wait()
	}
	if st.bytesRemain != -1 {
		if int64(n) > st.bytesRemain {
			n = int(st.bytesRemain)
			if err == nil {
				err = errors.New("net/http: server replied with more than declared Content-Length; truncated")
				c.abortLocked(st, err, http2.ErrCodeCancel)
				c.flushLocked()
			}
			st.readErr = err
			return n, err
		}
		st.bytesRemain -= int64(n)
		if err == io.EOF && st.bytesRemain > 0 {
			err = io.ErrUnexpectedEOF
			st.readErr = err
			return n, err
		}
	}
	if n == 0 {
		return 0, err
	}
	if k := c.inflow.add(n); k > 0 {
		c.out = appendH2WindowUpdate(c.out, 0, uint32(k))
	}
	if err == nil {
		if k := st.inflow.add(n); k > 0 && !st.readClosed {
			c.out = appendH2WindowUpdate(c.out, st.id, uint32(k))
		}
	}
	if len(c.out) > 0 {
		c.flushLocked()
	}
	return n, err
}

func (b *h2cBody) Close() error {
	st := b.st
	c := st.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if b.closed {
		return nil
	}
	b.closed = true
	unread := st.body.len()
	st.body.breakWithError(errH2ClosedResponseBody)
	if !st.readClosed {
		c.abortLocked(st, errH2ClosedResponseBody, http2.ErrCodeCancel)
	} else if st.stopCtx != nil {
		st.stopCtx()
	}
	if unread > 0 {
		if k := c.inflow.add(unread); k > 0 {
			c.out = appendH2WindowUpdate(c.out, 0, uint32(k))
		}
	}
	c.flushLocked()
	return nil
}
