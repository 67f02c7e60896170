package proxy

// The reasons meshlet gives for the requests it refuses or cannot carry through, in one place. A reason is the
// X-Meshlet-Error header of meshlet's own answer (answer.write) and the reason label of the metric that counts
// it: meshlet_refused_requests_total for the client's input (the guard, the input checks, inbound paths),
// meshlet_upstream_errors_total for what happened on the way to the endpoint (and limits, authorization).

// Refused heads and bodies of HTTP/1.1 requests: the guard's reasons are in package h1guard (reasons.go), whose
// Rejection.Reason the guarded handler counts; their answer says malformed_request.
const refusedUnchecked = "unchecked_request" // net/http read a request the guard did not check

// Other refused input (refused.go, handler.go), counted in meshlet_refused_requests_total.
const (
	refusedBodyTimeout  = "body_read_timeout"
	refusedGRPCTimeout  = "invalid_grpc_timeout"
	refusedGRPCFrame    = "invalid_grpc_frame"
	refusedGRPCTooLarge = "grpc_message_too_large"
	refusedTarget       = "invalid_request_target"
)

// Inbound request paths that cannot be normalized safely (pathnorm.go), counted in
// meshlet_refused_requests_total.
const (
	refusedPathEscapedSlash = "path_escaped_slash" // %2F in the path: one app reads a separator, another does not
	refusedPathBackslash    = "path_backslash"     // \ or %5C: some apps read it as /
	refusedPathInvalid      = "invalid_path"       // not an origin-form path (no leading /), or a broken %-escape
)

// meshlet's own failures on the way to the endpoint: the reason label of meshlet_upstream_errors_total.
const (
	reasonNoEndpoint = "no_endpoint"
	reasonTimeout    = "timeout"
	reasonConnect    = "connect"
	reasonCanceled   = "canceled"
	reasonOverflow   = "overflow" // a limit (max_requests, max_pending) was full
	reasonDenied     = "denied"   // the caller is not allowed (inbound.tls.allow, intentions)
	reasonIdle       = "stream_idle_timeout"
	reasonOther      = "other"
	// reasonHeadersTooLarge: the endpoint's response headers passed max_response_header_bytes.
	reasonHeadersTooLarge = "response_headers_too_large"
	// reasonUnknownUpstream: the name-routed listener has no upstream for the Host (upstream label "").
	reasonUnknownUpstream = "unknown_upstream"
)

// reasonFDBudget: no file descriptor left for a connection to the endpoint (503; X-Meshlet-Error and a rate-limited
// warning, connBudget.warn).
const reasonFDBudget = "fd_budget"

// Reasons of answers that stand for a group above.
const (
	reasonMalformed = "malformed_request" // X-Meshlet-Error of every refused HTTP/1.1 head and of a bad grpc-timeout
	reasonRefused   = "refused"           // access-log error of a request whose client broke its body
)
