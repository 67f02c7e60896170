package resilience

import (
	"strings"
	"testing"
)

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
