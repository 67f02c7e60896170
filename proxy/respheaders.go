package proxy

import (
	"errors"
	"fmt"
	"strings"

	"golang.org/x/net/http2"
)

// reasonHeadersTooLarge is the reason (X-Meshlet-Error, meshlet_upstream_errors_total) of a response whose headers
// passed the upstream's max_response_header_bytes.
const reasonHeadersTooLarge = "response_headers_too_large"

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
