package proxy

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strings"

	"golang.org/x/net/http2"
)

// headersTooLargeError is an endpoint's response whose headers passed the limit: the endpoint is held responsible
// (it counts against it, its breaker and outlier detection), and the client gets 502 (gRPC: UNAVAILABLE).
type headersTooLargeError struct {
	limit int
	err   error
}

func (e *headersTooLargeError) Error() string {
	return fmt.Sprintf("response headers larger than %d bytes: %v", e.limit, e.err)
}

func (e *headersTooLargeError) Unwrap() error { return e.err }

// classifyHeaderOverflow returns err as a *headersTooLargeError when it is the transports refusing response
// headers over the limit of cfg, else err unchanged. net/http and x/net/http2 give these errors no type of their
// own, so their messages are matched, here only; TestResponseHeaderLimit pins them against both transports.
func classifyHeaderOverflow(err error, cfg *UpstreamConfig) error {
	if isHeaderOverflow(err) {
		return &headersTooLargeError{limit: cfg.MaxResponseHeaderBytes, err: err}
	}
	return err
}

// isHeaderOverflow reports whether err is a transport's refusal of oversized response headers: net/http's
// "server response headers exceeded N bytes" (HTTP/1.1), or an HTTP/2 stream ended because the header list
// passed MaxHeaderListSize (final response or 1xx).
func isHeaderOverflow(err error) bool {
	var se http2.StreamError
	if errors.As(err, &se) && se.Code == http2.ErrCodeProtocol && se.Cause != nil {
		msg := se.Cause.Error()
		return msg == "http2: response header list larger than advertised limit" || msg == "header list too large"
	}
	return strings.Contains(err.Error(), "net/http: server response headers exceeded ")
}

// h2BlockSlack is what a header block's frames may carry beyond the header list they encode (padding, priority
// fields): h2HeaderGuard refuses a block only once its frames pass the limit by more than this, so that a block
// that decodes within the limit is never refused.
const h2BlockSlack = 1 << 10

// h2HeaderGuard is an HTTP/2 connection to an endpoint that ends the connection with a *headersTooLargeError as
// soon as one header block (a HEADERS frame and its CONTINUATION frames) passes the response header limit in
// its encoded size. x/net's HTTP/2 client bounds the decoded header list itself, but ends a connection whose
// endpoint keeps sending CONTINUATION frames past the limit with a bare PROTOCOL_ERROR that does not say why;
// this guard says why first. It reads frame headers only (9 bytes per frame), never copies.
type h2HeaderGuard struct {
	net.Conn
	limit int     // encoded bytes one header block may take, slack included
	hdr   [9]byte // the frame header being read
	nhdr  int     // bytes of hdr read so far
	left  int     // payload bytes of the current frame still to come
	block int     // payload bytes of the header block in progress
	err   error   // sticky: the connection is over
}

// guardH2 wraps an HTTP/2 connection in an h2HeaderGuard for a header limit of limit bytes; a TLS connection
// keeps its ConnectionState (the HTTP/2 client reads it for the response's TLS field).
func guardH2(c net.Conn, limit int) net.Conn {
	g := &h2HeaderGuard{Conn: c, limit: limit + h2BlockSlack}
	if tc, ok := c.(*tls.Conn); ok {
		return &h2HeaderGuardTLS{h2HeaderGuard: g, tc: tc}
	}
	return g
}

// h2HeaderGuardTLS is an h2HeaderGuard over a TLS connection.
type h2HeaderGuardTLS struct {
	*h2HeaderGuard
	tc *tls.Conn
}

// ConnectionState is the TLS connection's.
func (c *h2HeaderGuardTLS) ConnectionState() tls.ConnectionState { return c.tc.ConnectionState() }

// NetConn is the connection under the guard, which reads nothing ahead: the HTTP/2 client's idle reader waits
// for its socket (plainSocket).
func (c *h2HeaderGuard) NetConn() net.Conn { return c.Conn }

func (c *h2HeaderGuard) Read(p []byte) (int, error) {
	if c.err != nil {
		return 0, c.err
	}
	n, err := c.Conn.Read(p)
	if gerr := c.scan(p[:n]); gerr != nil {
		c.err = gerr
		return 0, gerr
	}
	return n, err
}

// HTTP/2 frame types and flags the guard looks at (RFC 9113 section 6).
const (
	h2FrameHeaders      = 0x1
	h2FrameContinuation = 0x9
	h2FlagEndHeaders    = 0x4
)

// scan follows the frames in b (the next bytes read) and fails when a header block passes the limit.
func (c *h2HeaderGuard) scan(b []byte) error {
	for len(b) > 0 {
		if c.left > 0 {
			k := min(c.left, len(b))
			c.left, b = c.left-k, b[k:]
			continue
		}
		k := copy(c.hdr[c.nhdr:], b)
		c.nhdr, b = c.nhdr+k, b[k:]
		if c.nhdr < len(c.hdr) {
			return nil
		}
		c.nhdr = 0
		c.left = int(c.hdr[0])<<16 | int(c.hdr[1])<<8 | int(c.hdr[2])
		switch c.hdr[3] {
		case h2FrameHeaders:
			c.block = c.left
		case h2FrameContinuation:
			c.block += c.left
		default:
			continue
		}
		if c.block > c.limit {
			return &headersTooLargeError{limit: c.limit - h2BlockSlack,
				err: fmt.Errorf("http2: the endpoint sent a header block of over %d bytes", c.block)}
		}
		if c.hdr[4]&h2FlagEndHeaders != 0 {
			c.block = 0
		}
	}
	return nil
}
