package h1guard

import "errors"

// Reasons the guard refuses a request for (Rejection.Reason; the proxy counts them as the reason label of
// meshlet_refused_requests_total, and answers them with X-Meshlet-Error: malformed_request).
const (
	malformedRequestLine  = "invalid_request_line"
	malformedVersion      = "unsupported_version"
	malformedLineEnd      = "bare_cr_lf"
	malformedObsFold      = "obs_fold"
	malformedHeaderName   = "invalid_header_name"
	malformedHeaderValue  = "invalid_header_value"
	malformedCLAndTE      = "content_length_and_transfer_encoding"
	malformedMultipleCL   = "multiple_content_length"
	malformedCL           = "invalid_content_length"
	malformedTE           = "unsupported_transfer_encoding"
	malformedHeadTooLarge = "headers_too_large"
	malformedChunk        = "invalid_chunked_body"
	refusedHeadBudget     = "header_budget" // every byte of the direction's Budget is held: 503
)

// ReasonBrokenBody is the reason of a request whose chunked body broke its framing (the body's reads end with
// ErrMalformedBody).
const ReasonBrokenBody = malformedChunk

// ErrMalformedBody ends the body of a request whose chunked framing is broken; the connection is not reused.
var ErrMalformedBody = errors.New("meshlet: malformed chunked request body")
