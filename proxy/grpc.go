package proxy

import (
	"net/http"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc/codes"

	"meshlet.dev/meshlet/resilience"
)

// notGRPC stands for "no gRPC status" where a gRPC code is expected.
const notGRPC = -1

// grpcCodeSlots is the number of gRPC code values meshlet tells apart: notGRPC and codes 0…16.
const grpcCodeSlots = 18

// isGRPC reports whether r is a gRPC call (gRPC-Web is treated as plain HTTP).
func isGRPC(r *http.Request) bool { return resilience.IsGRPC(r.Header) }

// grpcCodeName returns the label value of a gRPC code: "" for notGRPC, else the code's name ("OK", "Unavailable").
func grpcCodeName(code int) string {
	if code == notGRPC {
		return ""
	}
	return codes.Code(code).String()
}

// parseGRPCTimeout parses the grpc-timeout header: at most 8 digits and a unit (H, M, S, m, u, n).
func parseGRPCTimeout(v string) (time.Duration, bool) {
	if len(v) < 2 || len(v) > 9 || v[0] < '0' || v[0] > '9' { // digits only: ParseInt would take a sign
		return 0, false
	}
	n, err := strconv.ParseInt(v[:len(v)-1], 10, 64)
	if err != nil || n < 0 {
		return 0, false
	}
	var unit time.Duration
	switch v[len(v)-1] {
	case 'H':
		unit = time.Hour
	case 'M':
		unit = time.Minute
	case 'S':
		unit = time.Second
	case 'm':
		unit = time.Millisecond
	case 'u':
		unit = time.Microsecond
	case 'n':
		unit = time.Nanosecond
	default:
		return 0, false
	}
	if n > int64((1<<63-1)/unit) {
		return 0, false
	}
	return time.Duration(n) * unit, true
}

// grpcCodeForHTTP maps the HTTP status meshlet would have answered to the gRPC code it answers instead.
func grpcCodeForHTTP(status int) codes.Code {
	switch status {
	case http.StatusGatewayTimeout:
		return codes.DeadlineExceeded
	case http.StatusNotFound, http.StatusMethodNotAllowed:
		return codes.Unimplemented
	case http.StatusBadRequest:
		return codes.Internal
	case http.StatusTooManyRequests:
		return codes.ResourceExhausted
	case http.StatusForbidden:
		return codes.PermissionDenied
	default:
		return codes.Unavailable
	}
}

// writeGRPCStatus answers a gRPC call with a trailers-only response: HTTP 200 and the status in the headers.
func writeGRPCStatus(w http.ResponseWriter, code codes.Code, msg string) {
	h := w.Header()
	h.Set("Content-Type", "application/grpc")
	h.Set("Grpc-Status", strconv.Itoa(int(code)))
	h.Set("Grpc-Message", encodeGRPCMessage(msg))
	w.WriteHeader(http.StatusOK)
}

// encodeGRPCMessage percent-encodes msg as the gRPC over HTTP/2 spec asks: bytes outside printable ASCII and '%'.
func encodeGRPCMessage(msg string) string {
	const hex = "0123456789ABCDEF"
	var b strings.Builder
	for i := 0; i < len(msg); i++ {
		c := msg[i]
		if c >= ' ' && c <= '~' && c != '%' {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('%')
		b.WriteByte(hex[c>>4])
		b.WriteByte(hex[c&15])
	}
	return b.String()
}
