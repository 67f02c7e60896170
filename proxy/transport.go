package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2"
	"google.golang.org/grpc/codes"
)

// transports are the base round trippers of one upstream: HTTP/1.1 and HTTP/2 over cleartext (h2c), each with its
// own connection pool per endpoint. The dial timeout is read from the upstream's current settings at dial time.
// HTTP/2 uses golang.org/x/net/http2, whose errors are exported types (a refused stream can be told from a reset).
type transports struct {
	h1  *http.Transport
	h2c *http2.Transport
}

// Connection-pool settings shared by all upstreams.
const (
	maxIdleConnsPerHost = 256
	idleConnTimeout     = 90 * time.Second
	h2PingInterval      = 15 * time.Second // send a PING on an HTTP/2 connection idle this long
	h2PingTimeout       = 10 * time.Second // and close it if the PING is not answered in time
)

func newTransports(connectTimeout func() time.Duration) *transports {
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		d := net.Dialer{Timeout: connectTimeout(), KeepAlive: 30 * time.Second}
		c, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, &connectError{addr: addr, err: err}
		}
		return c, nil
	}
	h1 := &http.Transport{
		DialContext:         dial,
		MaxIdleConns:        0, // no global cap; the per-host cap bounds each endpoint
		MaxIdleConnsPerHost: maxIdleConnsPerHost,
		IdleConnTimeout:     idleConnTimeout,
		DisableCompression:  true, // pass Accept-Encoding and bodies through untouched
		ForceAttemptHTTP2:   false,
	}
	h1.Protocols = new(http.Protocols)
	h1.Protocols.SetHTTP1(true)
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
	}
	return &transports{h1: h1, h2c: h2}
}

// closeIdle closes idle pooled connections of both transports.
func (t *transports) closeIdle() {
	t.h1.CloseIdleConnections()
	t.h2c.CloseIdleConnections()
}

// connectError is a failure to open a connection to an endpoint: the request never reached it.
type connectError struct {
	addr string
	err  error
}

func (e *connectError) Error() string { return fmt.Sprintf("connect to %s: %v", e.addr, e.err) }
func (e *connectError) Unwrap() error { return e.err }

// isUpgrade reports whether r asks for a protocol upgrade (WebSocket and the like).
func isUpgrade(h http.Header) bool {
	return httpguts.HeaderValuesContainsToken(h["Connection"], "Upgrade") && h.Get("Upgrade") != ""
}

// doneBody wraps a response body so that the endpoint's request ends when the body is fully read or closed.
type doneBody struct {
	io.ReadCloser
	st    *endpointState
	resp  *http.Response // for the gRPC status in the trailers, read at the end
	err   error          // the outcome to record at the end when the body reaches EOF
	grpc  bool
	ended atomic.Bool
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
			b.end(b.err)
		} else if !errors.Is(err, context.Canceled) {
			b.end(err)
		}
	}
	return n, err
}

func (b *doneBody) Close() error {
	err := b.ReadCloser.Close()
	b.end(b.err)
	return err
}

func (b *doneBody) end(err error) {
	if !b.ended.CompareAndSwap(false, true) {
		return
	}
	if err == nil && b.grpc {
		err = grpcFailure(b.resp)
	}
	b.st.finish(err)
}

// grpcFailure returns an error when a gRPC response's status says the server failed (as opposed to the caller's
// mistake, such as InvalidArgument or NotFound, which are not the endpoint's fault).
func grpcFailure(resp *http.Response) error {
	v := resp.Trailer.Get("Grpc-Status")
	if v == "" {
		v = resp.Header.Get("Grpc-Status") // trailers-only response
	}
	if v == "" {
		return nil
	}
	switch code := codes.Code(parseGRPCStatus(v)); code {
	case codes.Unavailable, codes.Internal, codes.Unknown, codes.DataLoss, codes.DeadlineExceeded:
		return fmt.Errorf("grpc status %s", code)
	}
	return nil
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
