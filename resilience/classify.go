package resilience

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/net/http2"

	"meshlet.dev/meshlet/grpcwire"
)

// Retry conditions that name kinds of failure (retry_on values besides status codes and gRPC code names).
const (
	CondConnectFailure = "connect-failure" // the connection to the endpoint could not be opened
	CondReset          = "reset"           // the connection or stream broke before the response headers
	CondRefusedStream  = "refused-stream"  // the HTTP/2 peer refused the stream: it never saw the request
	CondGatewayError   = "gateway-error"   // 502, 503 or 504 (and a per-try timeout)
)

// Kind is what became of one attempt.
type Kind int

// Kinds of outcome, from the caller's point of view.
const (
	KindOK             Kind = iota // a response the caller should get (any status that is not a failure below)
	KindConnectFailure             // no connection: the request never left meshlet
	KindRefusedStream              // HTTP/2 REFUSED_STREAM: the peer did not process the request
	KindReset                      // connection or stream broke
	KindTimeout                    // meshlet's deadline (overall or per try) passed
	KindCanceled                   // the client went away, or the failure is no fault of the endpoint
	KindServerError                // a 5xx, or a gRPC status that says the server failed
	KindOther                      // any other transport error
)

var kindNames = [...]string{"ok", "connect_failure", "refused_stream", "reset", "timeout", "canceled", "server_error", "other"}

func (k Kind) String() string { return kindNames[k] }

// ClassifyError tells what kind of failure a round trip error is. Errors are told apart by type with errors.Is
// and errors.As, never by their text.
func ClassifyError(err error) Kind {
	if err == nil {
		return KindOK
	}
	var se http2.StreamError
	if errors.As(err, &se) && se.Code == http2.ErrCodeRefusedStream {
		return KindRefusedStream
	}
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Op == "dial" {
		return KindConnectFailure
	}
	var cf interface{ ConnectFailure() bool }
	if errors.As(err, &cf) && cf.ConnectFailure() {
		return KindConnectFailure // e.g. a failed TLS handshake with the endpoint: nothing was sent
	}
	var nf interface{ NotEndpointFault() bool }
	switch {
	case errors.Is(err, context.Canceled):
		return KindCanceled
	case errors.As(err, &nf) && nf.NotEndpointFault():
		// The request failed for a reason that says nothing about the endpoint (the client broke its body;
		// meshlet is out of file descriptors): not retried, not held against it.
		return KindCanceled
	case errors.Is(err, context.DeadlineExceeded):
		return KindTimeout
	}
	var ge http2.GoAwayError
	var ne net.Error
	switch {
	case errors.As(err, &se), errors.As(err, &ge),
		errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE), errors.Is(err, syscall.ECONNABORTED),
		errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, net.ErrClosed):
		return KindReset
	case errors.As(err, &ne) && ne.Timeout():
		return KindTimeout
	}
	return KindOther
}

// ServerFailed reports whether a gRPC code means the server failed (counted against the endpoint), rather than
// the caller's request being wrong.
func ServerFailed(c grpcwire.Code) bool {
	switch c {
	case grpcwire.Unavailable, grpcwire.Internal, grpcwire.Unknown, grpcwire.DataLoss, grpcwire.DeadlineExceeded:
		return true
	}
	return false
}

// Outcome is the failure to report to a circuit breaker for a finished attempt: nil for a success (including the
// caller's own 4xx mistakes), ErrExcluded when it says nothing about the endpoint (the client went away).
func Outcome(resp *http.Response, err error) error {
	if err != nil {
		if ClassifyError(err) == KindCanceled {
			return ErrExcluded
		}
		return err
	}
	if resp.StatusCode >= 500 {
		return fmt.Errorf("status %d", resp.StatusCode)
	}
	if c, ok := grpcwire.Status(resp); ok && ServerFailed(c) {
		return fmt.Errorf("grpc status %s", c)
	}
	return nil
}

// ErrExcluded marks an outcome that must not count for or against an endpoint.
var ErrExcluded = errors.New("outcome excluded: the client went away")

// condition is one parsed retry_on entry.
type condition struct {
	name     string
	kind     Kind          // for failure kinds
	status   int           // for an HTTP status
	grpcCode grpcwire.Code // for a gRPC code
	isGRPC   bool
}

// grpcCodeNames maps retry_on spellings of gRPC codes ("resource-exhausted", "resource_exhausted") to codes.
func grpcCodeByName(name string) (grpcwire.Code, bool) {
	n := strings.ReplaceAll(strings.ReplaceAll(strings.ToLower(name), "-", ""), "_", "")
	for c := grpcwire.OK; c <= grpcwire.Unauthenticated; c++ {
		if strings.ToLower(c.String()) == n {
			return c, true
		}
	}
	if n == "cancelled" {
		return grpcwire.Canceled, true
	}
	return 0, false
}

func parseCondition(s string) (condition, error) {
	switch s {
	case CondConnectFailure:
		return condition{name: s, kind: KindConnectFailure}, nil
	case CondReset:
		return condition{name: s, kind: KindReset}, nil
	case CondRefusedStream:
		return condition{name: s, kind: KindRefusedStream}, nil
	case CondGatewayError:
		return condition{name: s}, nil
	}
	if n, err := strconv.Atoi(s); err == nil {
		if n < 400 || n > 599 {
			return condition{}, fmt.Errorf("status %d: only 4xx and 5xx statuses can be retried", n)
		}
		return condition{name: s, status: n}, nil
	}
	if c, ok := grpcCodeByName(s); ok && c != grpcwire.OK {
		return condition{name: strings.ToLower(s), grpcCode: c, isGRPC: true}, nil
	}
	return condition{}, fmt.Errorf("%q is not a retry condition (connect-failure, reset, refused-stream, gateway-error, a status code such as 503, or a gRPC code such as unavailable)", s)
}
