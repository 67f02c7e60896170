package proxy

import (
	"encoding/hex"
	"math/rand/v2"
	"net/http"
	"strings"
)

// HeaderRequestID is the request ID header (Envoy's convention): meshlet adds one to a request that comes
// without, so that the access-log lines of one call can be joined across sidecars; one the caller sent passes
// unchanged.
const HeaderRequestID = "X-Request-Id"

// newRequestID returns a random request ID in the form of a version 4 UUID. It need not be secret, only unique
// enough to join log lines: math/rand/v2's generator, seeded by the runtime, is enough and cheap.
func newRequestID() string {
	var b [16]byte
	hi, lo := rand.Uint64(), rand.Uint64()
	for i := range 8 {
		b[i], b[8+i] = byte(hi>>(56-8*i)), byte(lo>>(56-8*i))
	}
	b[6] = b[6]&0x0f | 0x40 // version 4
	b[8] = b[8]&0x3f | 0x80 // variant 10
	var s [36]byte
	hex.Encode(s[0:8], b[0:4])
	s[8] = '-'
	hex.Encode(s[9:13], b[4:6])
	s[13] = '-'
	hex.Encode(s[14:18], b[6:8])
	s[18] = '-'
	hex.Encode(s[19:23], b[8:10])
	s[23] = '-'
	hex.Encode(s[24:], b[10:])
	return string(s[:])
}

// traceIDs returns the trace and span IDs a request carries, for the access log: from W3C's traceparent
// (version-traceid-parentid-flags), else from B3 (the single b3 header, or X-B3-TraceId and X-B3-SpanId); empty
// when it carries none, or none that reads right. meshlet makes no spans: the span is the caller's.
func traceIDs(h http.Header) (trace, span string) {
	if v := h.Get("Traceparent"); v != "" {
		parts := strings.Split(v, "-")
		if len(parts) >= 4 && len(parts[0]) == 2 && isHexID(parts[1], 32) && isHexID(parts[2], 16) {
			return parts[1], parts[2]
		}
	}
	if v := h.Get("B3"); v != "" {
		parts := strings.Split(v, "-")
		if len(parts) >= 2 && (isHexID(parts[0], 32) || isHexID(parts[0], 16)) && isHexID(parts[1], 16) {
			return parts[0], parts[1]
		}
	}
	trace, span = h.Get("X-B3-Traceid"), h.Get("X-B3-Spanid")
	if (isHexID(trace, 32) || isHexID(trace, 16)) && isHexID(span, 16) {
		return trace, span
	}
	return "", ""
}

// isHexID reports whether s is n lowercase hex digits, not all zero (an invalid ID in both W3C and B3).
func isHexID(s string, n int) bool {
	if len(s) != n {
		return false
	}
	zero := true
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
		zero = zero && c == '0'
	}
	return !zero
}
