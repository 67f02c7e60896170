package proxy

import (
	"errors"
	"io"
	"net"
	"os"
	"time"
)

// Protocol detection (protocol: auto) for redirected connections: the first bytes the client sends tell HTTP/1.x
// (a request line's method and a space), the HTTP/2 connection preface, a TLS ClientHello, or something else. A
// client that sends nothing within the detection timeout speaks a server-first protocol (SMTP, MySQL, ...): its
// connection is opaque. Whatever was read is handed on in front of the rest of the stream.

// Detection results (the result label of meshlet_outbound_protocol_detections_total).
const (
	DetectHTTP1   = "http1"
	DetectHTTP2   = "http2"
	DetectTLS     = "tls"
	DetectOpaque  = "opaque"  // bytes that are none of the above
	DetectTimeout = "timeout" // nothing (or too little to tell) within the detection timeout: opaque
	DetectClosed  = "closed"  // the client closed or failed before sending anything
)

// DefaultDetectTimeout is outbound.transparent.detect_timeout's default.
const DefaultDetectTimeout = time.Second

const h2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// httpMethods are the request-line starts read as HTTP/1.x; another method is relayed opaque (it still arrives).
var httpMethods = []string{"GET ", "HEAD ", "POST ", "PUT ", "DELETE ", "CONNECT ", "OPTIONS ", "TRACE ", "PATCH "}

// classify tells what b, the first bytes of a stream, are; "" when more bytes are needed.
func classify(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	if n := min(len(b), len(h2Preface)); string(b[:n]) == h2Preface[:n] {
		if n == len(h2Preface) {
			return DetectHTTP2
		}
		// "PRI " is no method of ours: nothing else starts like the preface.
		return ""
	}
	if b[0] == 0x16 { // TLS handshake record
		if len(b) < 2 {
			return ""
		}
		if b[1] == 0x03 {
			return DetectTLS
		}
		return DetectOpaque
	}
	undecided := false
	for _, m := range httpMethods {
		n := min(len(b), len(m))
		if string(b[:n]) == m[:n] {
			if n == len(m) {
				return DetectHTTP1
			}
			undecided = true
		}
	}
	if undecided {
		return ""
	}
	return DetectOpaque
}

// detect reads from c until classify can tell or timeout passes, and returns the result with a connection that
// reads the consumed bytes first. With DetectClosed the connection is of no further use.
func detect(c net.Conn, timeout time.Duration) (string, net.Conn) {
	if err := c.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		return DetectClosed, c
	}
	buf := make([]byte, 0, len(h2Preface))
	result := ""
	for result == "" {
		n, err := c.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if result = classify(buf); result != "" {
			break
		}
		if err != nil {
			switch {
			case len(buf) == 0 && !errors.Is(err, os.ErrDeadlineExceeded):
				return DetectClosed, c
			case errors.Is(err, os.ErrDeadlineExceeded):
				result = DetectTimeout
			default:
				result = DetectOpaque // a few bytes, then the end: relay what came
			}
		}
	}
	if err := c.SetReadDeadline(time.Time{}); err != nil {
		return DetectClosed, c
	}
	if len(buf) == 0 {
		return result, c
	}
	return result, &replayConn{carriedConn: carriedConn{c}, head: buf}
}

// replayConn reads head before the rest of its connection.
type replayConn struct {
	carriedConn
	head []byte
}

func (c *replayConn) Read(p []byte) (int, error) {
	if len(c.head) > 0 {
		n := copy(p, c.head)
		c.head = c.head[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

// WriteTo lets io.Copy hand the rest to the connection's own WriteTo (splice on Linux) once head is out.
func (c *replayConn) WriteTo(w io.Writer) (int64, error) {
	var total int64
	if len(c.head) > 0 {
		n, err := w.Write(c.head)
		total += int64(n)
		c.head = c.head[n:]
		if err != nil {
			return total, err
		}
	}
	n, err := io.Copy(w, c.Conn)
	return total + n, err
}
