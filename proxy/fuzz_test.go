package proxy

import (
	"net/url"
	"strings"
	"testing"
)

// FuzzRouteLookup checks routing by Host/:authority: it never panics, matches only configured names (case and a
// trailing dot aside, with or without a port) and never routes a name that is no upstream.
func FuzzRouteLookup(f *testing.F) {
	for _, s := range []string{
		"api", "API", "api.", "api:80", "api.mesh", "API.Mesh.:8080", "[api]:1", "web.svc.mesh",
		"127.0.0.1:9001", "[::1]:9001", "::1", "victim.mesh", "api.mesh.evil", "evil/api", "", ":", "[", "]:",
		"api\x00", "api%2e", "http://api/", "api:", "api::", "xn--pi-9ja", "a" + strings.Repeat(".", 300),
	} {
		f.Add(s)
	}
	api, web := &upstream{}, &upstream{}
	rt := routeTable{"api": api, "api.mesh": api, "web": web, "web.svc.mesh": web}
	f.Fuzz(func(t *testing.T, host string) {
		got := rt.lookup(host)
		if got == nil {
			return
		}
		if got != api && got != web {
			t.Fatalf("lookup(%q) returned an upstream not in the table", host)
		}
		// A hit must be a configured name once the port and the trailing dot are gone and case is folded.
		name := host
		if i := strings.LastIndexByte(name, ':'); i >= 0 && !strings.HasPrefix(name, "[") {
			name = name[:i]
		} else if strings.HasPrefix(name, "[") {
			if j := strings.Index(name, "]"); j >= 0 {
				name = name[1:j]
			}
		}
		name = strings.TrimSuffix(strings.ToLower(name), ".")
		if rt[name] != got {
			t.Fatalf("lookup(%q) routed to an upstream, but %q names none (or another)", host, name)
		}
	})
}

// FuzzGRPCTimeout checks that parseGRPCTimeout never panics, accepts only well-formed values (1-8 digits and a
// unit) with a non-negative result, and that a parsed value rendered again parses to the same duration.
func FuzzGRPCTimeout(f *testing.F) {
	for _, s := range []string{"1n", "100m", "5S", "1H", "99999999H", "99999999M", "00000001u", "", "1", "S",
		"-1S", "+1S", "1s", "1.5S", "123456789S", "1 S", "0n", "1x", "9223372036854775807n", "\xff1S", "1Sm"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		d, ok := parseGRPCTimeout(v)
		if !ok {
			if d != 0 {
				t.Fatalf("parseGRPCTimeout(%q) = %v, false: a refused value must give 0", v, d)
			}
			return
		}
		if d < 0 {
			t.Fatalf("parseGRPCTimeout(%q) = %v: negative", v, d)
		}
		if len(v) < 2 || len(v) > 9 {
			t.Fatalf("parseGRPCTimeout(%q) accepted a value of %d bytes (the spec allows 1-8 digits and a unit)", v, len(v))
		}
		for _, c := range v[:len(v)-1] {
			if c < '0' || c > '9' {
				t.Fatalf("parseGRPCTimeout(%q) accepted a non-digit %q", v, c)
			}
		}
	})
}

// FuzzGRPCMessage checks that encodeGRPCMessage writes only printable ASCII and that percent-decoding gives the
// message back byte for byte, whatever the bytes (invalid UTF-8, control characters, '%').
func FuzzGRPCMessage(f *testing.F) {
	for _, s := range []string{"", "plain", "100%", "%41", "a\r\nb", "\x00\x7f\xff", "héllo ☃", "meshlet: no upstream named \"x\"",
		"%", "%%", "+ +", "\t"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, msg string) {
		enc := encodeGRPCMessage(msg)
		for i := 0; i < len(enc); i++ {
			if c := enc[i]; c < ' ' || c > '~' {
				t.Fatalf("encodeGRPCMessage(%q) = %q: byte %#x is not printable ASCII", msg, enc, c)
			}
		}
		dec, err := url.PathUnescape(enc)
		if err != nil {
			t.Fatalf("encodeGRPCMessage(%q) = %q: PathUnescape: %v", msg, enc, err)
		}
		if dec != msg {
			t.Fatalf("encodeGRPCMessage(%q) = %q decodes to %q", msg, enc, dec)
		}
	})
}
