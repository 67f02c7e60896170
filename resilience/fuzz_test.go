package resilience

import (
	"strconv"
	"strings"
	"testing"
	"time"
)

// specParseGRPCTimeout parses a grpc-timeout value as the gRPC over HTTP/2 spec defines it
// (TimeoutValue: 1-8 ASCII digits; TimeoutUnit: H M S m u n), independently of the proxy's parser.
func specParseGRPCTimeout(v string) (time.Duration, bool) {
	if len(v) < 2 || len(v) > 9 {
		return 0, false
	}
	digits := v[:len(v)-1]
	for _, c := range digits {
		if c < '0' || c > '9' {
			return 0, false
		}
	}
	n, err := strconv.ParseInt(digits, 10, 64)
	if err != nil {
		return 0, false
	}
	units := map[byte]time.Duration{'H': time.Hour, 'M': time.Minute, 'S': time.Second, 'm': time.Millisecond,
		'u': time.Microsecond, 'n': time.Nanosecond}
	unit, ok := units[v[len(v)-1]]
	if !ok {
		return 0, false
	}
	if n > int64((1<<63-1)/unit) {
		return 1<<63 - 1, true
	}
	return time.Duration(n) * unit, true
}

// FuzzGRPCTimeoutRoundTrip checks that encodeGRPCTimeout always writes a value the spec allows and that it never
// asks for less time than the caller has: parse(encode(d)) >= d.
func FuzzGRPCTimeoutRoundTrip(f *testing.F) {
	for _, d := range []int64{0, -1, 1, 999, 1000, 1001, 99999999, 100000000, 100000001, 99999999999,
		int64(time.Second), int64(99999999 * time.Microsecond), int64(99999999*time.Microsecond) + 1,
		int64(99999999*time.Millisecond) + 1, int64(99999999*time.Second) + 1, int64(99999999 * time.Minute),
		int64(99999999*time.Minute) + 1, 1<<63 - 1, -1 << 63} {
		f.Add(d)
	}
	f.Fuzz(func(t *testing.T, n int64) {
		d := time.Duration(n)
		enc := encodeGRPCTimeout(d)
		got, ok := specParseGRPCTimeout(enc)
		if !ok {
			t.Fatalf("encodeGRPCTimeout(%v) = %q: not a valid grpc-timeout", d, enc)
		}
		if d > 0 && got < d {
			t.Fatalf("encodeGRPCTimeout(%v) = %q = %v: shorter than the caller's deadline", d, enc, got)
		}
		if d <= 0 && got <= 0 {
			t.Fatalf("encodeGRPCTimeout(%v) = %q: a deadline already passed must still be a positive timeout", d, enc)
		}
	})
}

// FuzzRetryCondition checks retry_on parsing: never a panic, an error or a named condition, and an accepted
// status is a 4xx or 5xx.
func FuzzRetryCondition(f *testing.F) {
	for _, s := range []string{CondConnectFailure, CondReset, CondRefusedStream, CondGatewayError, "503", "499",
		"600", "200", "-503", "+503", "0503", "unavailable", "UNAVAILABLE", "resource-exhausted", "resource_exhausted",
		"cancelled", "canceled", "ok", "OK", "deadline_exceeded", "", " ", "5xx", "retriable-4xx", "99999999999999999999",
		"un-available", "\xff", "Ok"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		c, err := parseCondition(s)
		if err != nil {
			if c != (condition{}) {
				t.Fatalf("parseCondition(%q): error %v with a non-zero condition %+v", s, err, c)
			}
			return
		}
		if c.name == "" {
			t.Fatalf("parseCondition(%q) = %+v: no name", s, c)
		}
		if c.status != 0 && (c.status < 400 || c.status > 599) {
			t.Fatalf("parseCondition(%q) accepted status %d", s, c.status)
		}
		if c.isGRPC && (c.grpcCode == 0 || c.grpcCode > 16) {
			t.Fatalf("parseCondition(%q) accepted gRPC code %v", s, c.grpcCode)
		}
		if c.isGRPC && strings.ToLower(s) != c.name {
			t.Fatalf("parseCondition(%q) named the condition %q", s, c.name)
		}
	})
}
