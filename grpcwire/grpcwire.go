// Package grpcwire holds the facts of gRPC's wire format over HTTP/2 that a proxy needs without speaking gRPC
// itself (the "gRPC over HTTP2" protocol document): which requests are gRPC calls, the grpc-timeout encoding,
// the grpc-status code and the percent-encoded grpc-message, and the trailers-only answer. It has no state.
package grpcwire

import (
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Header names of the gRPC protocol, in net/http's canonical form.
const (
	HeaderStatus  = "Grpc-Status"
	HeaderMessage = "Grpc-Message"
	HeaderTimeout = "Grpc-Timeout"
)

// contentType is the content type of gRPC calls, alone or followed by +codec or parameters.
const contentType = "application/grpc"

// IsGRPC reports whether a request with header h is a gRPC call: content type application/grpc, alone or with a
// +suffix or parameters. gRPC-Web (application/grpc-web) is plain HTTP.
func IsGRPC(h http.Header) bool {
	ct := h.Get("Content-Type")
	if !strings.HasPrefix(ct, contentType) {
		return false
	}
	return len(ct) == len(contentType) || ct[len(contentType)] == '+' || ct[len(contentType)] == ';'
}

// ParseTimeout parses a grpc-timeout value: 1 to 8 digits and a unit (H, M, S, m, u, n). A malformed value, or
// one that does not fit a time.Duration, is false.
func ParseTimeout(v string) (time.Duration, bool) {
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

// EncodeTimeout writes d as a grpc-timeout value (at most 8 digits and a unit), rounded up so that the server is
// never asked to give up before the caller does; a d of zero or less (a deadline already past) is "1n".
func EncodeTimeout(d time.Duration) string {
	if d <= 0 {
		return "1n"
	}
	for _, u := range []struct {
		unit time.Duration
		c    string
	}{{time.Nanosecond, "n"}, {time.Microsecond, "u"}, {time.Millisecond, "m"}, {time.Second, "S"}, {time.Minute, "M"}} {
		v := d / u.unit
		if d%u.unit != 0 {
			v++
		}
		if v <= 99999999 {
			return strconv.FormatInt(int64(v), 10) + u.c
		}
	}
	v := d / time.Hour
	if d%time.Hour != 0 {
		v++
	}
	return strconv.FormatInt(int64(min(v, 99999999)), 10) + "H"
}

// Status returns the gRPC status carried by a response's headers (a trailers-only response) or trailers, and
// whether there was one.
func Status(resp *http.Response) (Code, bool) {
	v := resp.Header.Get(HeaderStatus)
	if v == "" && resp.Trailer != nil {
		v = resp.Trailer.Get(HeaderStatus)
	}
	if v == "" {
		return 0, false
	}
	return ParseStatus(v), true
}

// ParseStatus parses a grpc-status value; a missing or malformed one is Unknown, as gRPC clients read it.
func ParseStatus(v string) Code {
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 || n > int(Unauthenticated) {
		return Unknown
	}
	return Code(n)
}

// WriteStatus answers a gRPC call with a trailers-only response: HTTP 200 and the status in the headers, msg
// percent-encoded (EncodeMessage).
func WriteStatus(w http.ResponseWriter, code Code, msg string) {
	h := w.Header()
	h.Set("Content-Type", contentType)
	h.Set(HeaderStatus, strconv.Itoa(int(code)))
	h.Set(HeaderMessage, EncodeMessage(msg))
	w.WriteHeader(http.StatusOK)
}

// EncodeMessage percent-encodes msg for grpc-message, as the protocol asks: bytes outside printable ASCII, and '%'.
func EncodeMessage(msg string) string {
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

// DecodeMessage decodes a percent-encoded grpc-message value (EncodeMessage's inverse), as gRPC clients do: a '%'
// not followed by two hex digits stays as it is.
func DecodeMessage(v string) string {
	if !strings.Contains(v, "%") {
		return v
	}
	var b strings.Builder
	for i := 0; i < len(v); i++ {
		if v[i] == '%' && i+2 < len(v) {
			if hi, lo := unhex(v[i+1]), unhex(v[i+2]); hi >= 0 && lo >= 0 {
				b.WriteByte(byte(hi<<4 | lo))
				i += 2
				continue
			}
		}
		b.WriteByte(v[i])
	}
	return b.String()
}

func unhex(c byte) int {
	switch {
	case c >= '0' && c <= '9':
		return int(c - '0')
	case c >= 'a' && c <= 'f':
		return int(c-'a') + 10
	case c >= 'A' && c <= 'F':
		return int(c-'A') + 10
	}
	return -1
}
