package proxy

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"

	"meshlet.dev/meshlet/resilience"
)

// transports are the base round trippers of one upstream: HTTP/1.1 and HTTP/2 over cleartext (h2c), each with its
// own connection pool per endpoint. The dial timeout is read from the upstream's current settings at dial time.
// HTTP/2 uses golang.org/x/net/http2, whose errors are exported types (a refused stream can be told from a reset).
type transports struct {
	h1        *http.Transport
	h1c       *h1Client // the common HTTP/1.1 requests (h1Eligible)
	h2c       *http2.Transport
	h2        *h2Client // the common HTTP/2 requests (h2Eligible); h2c does the others
	maxHeader int       // the response header limit both enforce, in bytes
}

// Connection-pool settings shared by all upstreams.
const (
	maxIdleConnsPerHost = 256
	idleConnTimeout     = 90 * time.Second
	h2PingInterval      = 15 * time.Second // send a PING on an HTTP/2 connection idle this long
	h2PingTimeout       = 10 * time.Second // and close it if the PING is not answered in time
	// h2EncoderTableSize is the HPACK dynamic table meshlet's HTTP/2 client encodes request headers with: 1 byte,
	// which no entry fits (each takes 32 bytes beyond its name and value), so that no field is indexed (x/net takes
	// 0 for its default, 4096). With a table, every request added its unique fields (X-Request-Id, which meshlet
	// adds itself; trace IDs) and evicted older ones, on both sides of the connection: the map updates, and the
	// stack growth they caused on x/net's per-request goroutine, cost more than literal fields do. Without one,
	// CPU per request fell 10% on both sidecars (h2c, mesh path) and 15% on the client side of HTTP/1.1 calls
	// between sidecars (make bench, alternated runs); the request headers take about a hundred bytes more.
	h2EncoderTableSize = 1
)

// newTransports builds transports whose dial function connects to the target the attempt carries in its context
// (dialtarget.go) and refuses to dial without one. secure, when not nil, turns a fresh connection into a mutual
// TLS one where the target calls for it (alpn is the protocol the transport speaks). maxHeader bounds the
// response headers an endpoint may send, in bytes (0: DefaultMaxResponseHeaderBytes).
func newTransports(connectTimeout func() time.Duration, secure func(ctx context.Context, c net.Conn, t *dialTarget, alpn string) (net.Conn, error), maxHeader int) *transports {
	dialer := func(alpn string) func(ctx context.Context, network, addr string) (net.Conn, error) {
		return func(ctx context.Context, network, addr string) (net.Conn, error) {
			t, err := targetFor(ctx, addr)
			if err != nil {
				return nil, err
			}
			timeout := connectTimeout()
			if d, ok := ctx.Value(connectTimeoutKey{}).(time.Duration); ok {
				timeout = d // a discovery-chain resolver's
			}
			d := net.Dialer{Timeout: timeout, KeepAlive: 30 * time.Second}
			c, err := d.DialContext(ctx, network, t.addr)
			if err != nil {
				return nil, &connectError{addr: t.addr, err: err}
			}
			if secure != nil {
				return secure(ctx, c, t, alpn)
			}
			return c, nil
		}
	}
	if maxHeader <= 0 {
		maxHeader = DefaultMaxResponseHeaderBytes
	}
	dial, dialH2 := dialer("http/1.1"), dialer("h2")
	h1c := &h1Client{dial: dial, maxHeader: int64(maxHeader)}
	h1 := &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			if t, err := targetFor(ctx, addr); err == nil && !t.tls {
				// A plaintext endpoint's connections are counted with h1Client's (limits.max_connections).
				if _, err := h1c.acquire(ctx, addr, false); err != nil {
					return nil, err
				}
				c, err := dial(ctx, network, addr)
				if err != nil {
					h1c.release(addr)
					return nil, err
				}
				return &watchedConn{Conn: c, release: func() { h1c.release(addr) }}, nil
			}
			c, err := dial(ctx, network, addr)
			if _, ok := c.(*tls.Conn); ok || err != nil {
				return c, err // net/http reads a response's TLS state from a *tls.Conn (upgrades between sidecars)
			}
			return &watchedConn{Conn: c}, nil
		},
		MaxIdleConns:           0, // no global cap; the per-host cap bounds each endpoint
		MaxIdleConnsPerHost:    maxIdleConnsPerHost,
		IdleConnTimeout:        idleConnTimeout,
		DisableCompression:     true, // pass Accept-Encoding and bodies through untouched
		ForceAttemptHTTP2:      false,
		MaxResponseHeaderBytes: int64(maxHeader),
	}
	h1.Protocols = new(http.Protocols)
	h1.Protocols.SetHTTP1(true)
	dialH2Guarded := func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dialH2(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return guardH2(c, maxHeader), nil
	}
	h1c.closeOther = h1.CloseIdleConnections
	h2, h2own := newH2Transports(dialH2Guarded, maxHeader)
	return &transports{h1: h1, h1c: h1c, h2c: h2, h2: h2own, maxHeader: maxHeader}
}

// newH2Transports returns x/net's HTTP/2 transport and meshlet's client over it (h2Client), both dialing with
// dial; maxHeader bounds the response header list.
func newH2Transports(dial func(ctx context.Context, network, addr string) (net.Conn, error), maxHeader int) (*http2.Transport, *h2Client) {
	h2 := &http2.Transport{
		AllowHTTP: true,
		DialTLSContext: func(ctx context.Context, network, addr string, _ *tls.Config) (net.Conn, error) {
			return dial(ctx, network, addr)
		},
		DisableCompression: true,
		IdleConnTimeout:    idleConnTimeout,
		ReadIdleTimeout:    h2PingInterval,
		PingTimeout:        h2PingTimeout,
		MaxReadFrameSize:   maxReadFrameSize,
		MaxHeaderListSize:  uint32(maxHeader),
		// Request headers without indexing (h2EncoderTableSize).
		MaxEncoderHeaderTableSize: h2EncoderTableSize,
	}
	return h2, &h2Client{dial: dial, maxHeader: maxHeader, fallback: h2}
}

// newTransports builds the upstream's transports for its settings cfg.
func (c *cluster) newTransports(cfg *UpstreamConfig) *transports {
	tr := newTransports(func() time.Duration { return c.cfg.Load().ConnectTimeout }, c.secureDial, cfg.MaxResponseHeaderBytes)
	if mc := cfg.Resilience.Limits.MaxConnections; mc > 0 {
		tr.h1.MaxConnsPerHost = mc // for endpoints spoken to over TLS, which h1Client does not count
		tr.h1c.maxConns = mc
	}
	return tr
}

// transportSlot holds a cluster's transports, built at the first Load (and again after dropIdle): an upstream that
// is not called holds no transport, TLS settings or pool.
type transportSlot struct {
	p atomic.Pointer[transports]
	c *cluster
}

// Load returns the transports, building them with the cluster's current settings at the first call.
func (s *transportSlot) Load() *transports {
	c := s.c
	c.touch()
	return buildOnce(&c.lazyMu, &s.p, func() *transports { return c.newTransports(c.cfg.Load()) })
}

// Store replaces the transports.
func (s *transportSlot) Store(tr *transports) { s.p.Store(tr) }

// reloadTransports replaces the upstream's transports when a reload changed what they are built with (the
// response header limit): new attempts use new connections; the old pools' idle connections are closed, and
// those still in use close when idle (idleConnTimeout). Transports not built yet will be built with cfg.
func (c *cluster) reloadTransports(old, cfg *UpstreamConfig) {
	if old.MaxResponseHeaderBytes == cfg.MaxResponseHeaderBytes {
		return
	}
	c.lazyMu.Lock()
	prev := c.transport.p.Load()
	if prev != nil {
		c.transport.p.Store(c.newTransports(cfg))
	}
	c.lazyMu.Unlock()
	if prev != nil {
		prev.closeIdle()
	}
}

// closeIdle closes the transports' idle pooled connections.
func (t *transports) closeIdle() {
	t.h1.CloseIdleConnections()
	t.h1c.closeIdleConnections()
	t.h2c.CloseIdleConnections()
	t.h2.closeIdleConnections()
}

// connectError is a failure to open a connection to an endpoint: the request never reached it.
type connectError struct {
	addr string
	err  error
}

func (e *connectError) Error() string { return fmt.Sprintf("connect to %s: %v", e.addr, e.err) }
func (e *connectError) Unwrap() error { return e.err }

// ConnectFailure marks the error for resilience.ClassifyError: the request never reached the endpoint.
func (e *connectError) ConnectFailure() bool { return true }

// isUpgrade reports whether a request with header h asks for a protocol upgrade (WebSocket and the like): the
// reverse proxy's test (upgradeType).
func isUpgrade(h http.Header) bool {
	return upgradeType(h) != ""
}

// doneBody wraps a response body so that the attempt's outcome is recorded (endpoint counts, breaker) when the
// body is fully read or closed: a response is a failure or a success only once its trailers are known.
type doneBody struct {
	io.ReadCloser
	resp      *http.Response
	clientCtx context.Context // the client's own context: when it is done, the outcome says nothing of the endpoint
	end       func(error)     // records the outcome; called once
	ended     atomic.Bool
	// reqBody, when set, is the HTTP/2 request body to close once the response has ended: the HTTP/2 transport's
	// Close waits for its request-body writer, which would otherwise wait for a client that is still allowed to
	// send (a stream the server ended first), and the response's trailers would never be sent (golang/go#80085).
	reqBody io.Closer
}

func (b *doneBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err != nil {
		if err == io.EOF {
			if b.reqBody != nil {
				b.reqBody.Close()
			}
			b.finish(nil)
		} else {
			b.finish(err)
		}
	}
	return n, err
}

func (b *doneBody) Close() error {
	err := b.ReadCloser.Close()
	b.finish(nil)
	return err
}

// finish records the outcome once: readErr if the body broke, else what the status and trailers say.
func (b *doneBody) finish(readErr error) {
	if !b.ended.CompareAndSwap(false, true) {
		return
	}
	var outcome error
	switch {
	case b.clientCtx != nil && b.clientCtx.Err() != nil:
		outcome = resilience.ErrExcluded
	case readErr != nil:
		outcome = resilience.Outcome(nil, readErr)
	default:
		outcome = resilience.Outcome(b.resp, nil)
	}
	b.end(outcome)
}

// bufferPool recycles the 32 KiB copy buffers of httputil.ReverseProxy.
type bufferPool struct{ p sync.Pool }

func (b *bufferPool) Get() []byte {
	if v, ok := b.p.Get().(*[]byte); ok {
		return *v
	}
	return make([]byte, 32*1024)
}

func (b *bufferPool) Put(buf []byte) { b.p.Put(&buf) }

var copyBuffers = &bufferPool{}

// abortableBody is a request body handed to the HTTP/2 transport. When the transport closes it while a Read is
// blocked on the client (the stream failed mid-request, or the endpoint answered an error before reading it all:
// the transport then waits for that Read before RoundTrip or the response body's Close returns), abort ends that
// Read (the client's body is cut; such a request cannot be replayed anyway). A Close with no Read under way (the
// end of the body, or a retry's turn) leaves the client's body alone.
type abortableBody struct {
	io.ReadCloser
	abort   func()
	reading atomic.Int32
}

func (b *abortableBody) Read(p []byte) (int, error) {
	b.reading.Add(1)
	defer b.reading.Add(-1)
	return b.ReadCloser.Read(p)
}

func (b *abortableBody) Close() error {
	err := b.ReadCloser.Close() // first: a Read that starts after it finds the attempt over (resilience)
	if b.reading.Load() > 0 {
		b.abort()
	}
	return err
}

// watchedConn is an HTTP/1.1 connection to an endpoint. While a request is being sent on it, onBroken holds what
// ends a Read blocked on the client's body: net/http's transport, when the connection breaks, waits for its body
// writer before RoundTrip returns, and that writer may wait for a client that sends nothing more.
type watchedConn struct {
	net.Conn
	onBroken atomic.Pointer[func()]
	release  func() // gives back the connection's slot (h1Client.acquire) once closed; nil when not counted
	closed   atomic.Bool
}

func (c *watchedConn) Close() error {
	err := c.Conn.Close()
	if c.release != nil && c.closed.CompareAndSwap(false, true) {
		c.release()
	}
	return err
}

func (c *watchedConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if err != nil {
		if f := c.onBroken.Swap(nil); f != nil {
			(*f)()
		}
	}
	return n, err
}
