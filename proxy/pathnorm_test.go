package proxy

import (
	"bufio"
	"errors"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strings"
	"testing"
)

func TestNormalizePath(t *testing.T) {
	tests := []struct {
		in, want string
		reason   string // refused with this reason; want is then ignored
	}{
		{"/", "/", ""},
		{"", "/", ""},
		{"/a/b", "/a/b", ""},
		{"/a/b/", "/a/b/", ""},
		// The attacker's paths of issue 11.
		{"/public/../admin", "/admin", ""},
		{"/public/%2e%2e/admin", "/admin", ""},
		{"/public/%2E%2E/admin", "/admin", ""},
		{"/public/.%2e/admin", "/admin", ""},
		{"/public/..%2fadmin", "", refusedPathEscapedSlash},
		{"/public/..%2Fadmin", "", refusedPathEscapedSlash},
		{"/public;/../admin", "/admin", ""},
		{"//admin", "/admin", ""},
		{"/./admin", "/admin", ""},
		{"/x/../admin", "/admin", ""},
		{"/x//../admin", "/admin", ""},
		{"/x/..//admin", "/admin", ""},
		// Dot segments (RFC 3986 5.2.4).
		{"/a/b/c/./../../g", "/a/g", ""},
		{"/a/..", "/", ""},
		{"/a/b/..", "/a/", ""},
		{"/a/.", "/a/", ""},
		{"/..", "/", ""},
		{"/../../a", "/a", ""},
		{"/a/...", "/a/...", ""},
		{"/a/.b/..c", "/a/.b/..c", ""},
		// Escapes: unreserved decoded, the others upper case; raw bytes that need it escaped.
		{"/%61dmin", "/admin", ""},
		{"/%7euser", "/~user", ""},
		{"/a%3ab", "/a%3Ab", ""},
		{"/a%20b", "/a%20b", ""},
		{"/%25%32%65", "/%252e", ""},
		{"/a b", "/a%20b", ""},
		{"/caf\xc3\xa9", "/caf%C3%A9", ""},
		{"/a{b}", "/a%7Bb%7D", ""},
		{"/a;b=c,d", "/a;b=c,d", ""},
		// Refused.
		{"/a\\b", "", refusedPathBackslash},
		{"/a%5cb", "", refusedPathBackslash},
		{"/a%5Cb", "", refusedPathBackslash},
		{"/a%2", "", refusedPathInvalid},
		{"/a%zz", "", refusedPathInvalid},
		{"a/b", "", refusedPathInvalid},
		{"*", "", refusedPathInvalid},
	}
	for _, tt := range tests {
		got, err := normalizePath(tt.in)
		var pe *pathError
		switch {
		case tt.reason != "" && (!errors.As(err, &pe) || pe.reason != tt.reason):
			t.Errorf("normalizePath(%q) = %q, %v; want refused with %s", tt.in, got, err, tt.reason)
		case tt.reason == "" && (err != nil || got != tt.want):
			t.Errorf("normalizePath(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
}

// checkNormalForm fails t unless out, normalizePath's answer for in, is a fixed point that every reader sees as
// the same path: normalizing it again changes nothing, net/url writes it back as is, and neither it nor its
// percent-decoded form has an empty segment (but a trailing one), a dot segment or a backslash.
func checkNormalForm(t *testing.T, in, out string) {
	t.Helper()
	again, err := normalizePath(out)
	if err != nil || again != out {
		t.Fatalf("normalizePath(%q) = %q, but normalizePath(%q) = %q, %v", in, out, out, again, err)
	}
	decoded, err := url.PathUnescape(out)
	if err != nil {
		t.Fatalf("normalizePath(%q) = %q, which does not decode: %v", in, out, err)
	}
	if u := (&url.URL{Path: decoded, RawPath: out}); u.EscapedPath() != out {
		t.Fatalf("normalizePath(%q) = %q, which net/url writes %q", in, out, u.EscapedPath())
	}
	for _, p := range []string{out, decoded} {
		if !strings.HasPrefix(p, "/") || strings.Contains(p, "\\") {
			t.Fatalf("normalizePath(%q) = %q (decoded %q): no leading / or a backslash", in, out, decoded)
		}
		segs := strings.Split(p[1:], "/")
		for i, s := range segs {
			if s == "." || s == ".." || s == "" && i < len(segs)-1 {
				t.Fatalf("normalizePath(%q) = %q (decoded %q): segment %d is %q", in, out, decoded, i, s)
			}
		}
	}
}

// TestNormalizePathProperties runs normalizePath over random paths built from the pieces attacks are made of.
func TestNormalizePathProperties(t *testing.T) {
	pieces := []string{"/", "//", ".", "..", "%2e", "%2E", "%2f", "%5c", "\\", ";", "a", "b", "%41", "%7e", "%25",
		"%3b", "%00", " ", "?", "#", "%", "%zz", "~", "é", "{"}
	rng := rand.New(rand.NewPCG(11, 5))
	for range 20000 {
		var b strings.Builder
		b.WriteString("/")
		for range rng.IntN(12) {
			b.WriteString(pieces[rng.IntN(len(pieces))])
		}
		in := b.String()
		out, err := normalizePath(in)
		if err != nil {
			var pe *pathError
			if !errors.As(err, &pe) {
				t.Fatalf("normalizePath(%q): %v is not a *pathError", in, err)
			}
			continue
		}
		checkNormalForm(t, in, out)
	}
}

func FuzzNormalizePath(f *testing.F) {
	for _, s := range []string{"/", "/public/../admin", "/public/%2e%2e/admin", "/public/..%2fadmin", "/public;/../admin",
		"//admin", "/./admin", "/x/../admin", "/a%3ab", "/caf\xc3\xa9", "/a\\b", "/%25%32%65"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		out, err := normalizePath(in)
		if err != nil {
			var pe *pathError
			if !errors.As(err, &pe) {
				t.Fatalf("normalizePath(%q): %v is not a *pathError", in, err)
			}
			return
		}
		checkNormalForm(t, in, out)
	})
}

// TestNormalizedRequest: the request to forward carries the normalized path and the query as sent; the inbound
// request is never modified, and a request already normal is passed through as is.
func TestNormalizedRequest(t *testing.T) {
	tests := []struct {
		method, target string
		wantURI        string // the forwarded request's RequestURI; "" for a refusal
	}{
		{"GET", "/a/b?x=%2F..&y", "/a/b?x=%2F..&y"},
		{"GET", "/public/%2e%2e/admin?q=1", "/admin?q=1"},
		{"GET", "/a%3ab/./c", "/a%3Ab/c"},
		{"GET", "/a{b}", "/a%7Bb%7D"},
		{"OPTIONS", "*", "*"},
		{"GET", "*", ""},
		{"GET", "/a%2fb", ""},
	}
	for _, tt := range tests {
		r, err := http.ReadRequest(bufio.NewReader(strings.NewReader(tt.method + " " + tt.target + " HTTP/1.1\r\nHost: api\r\n\r\n")))
		if err != nil {
			t.Fatalf("%s %s: %v", tt.method, tt.target, err)
		}
		before := *r.URL
		out, err := normalizedRequest(r)
		if *r.URL != before {
			t.Errorf("%s %s: the inbound request's URL changed to %+v", tt.method, tt.target, *r.URL)
		}
		if tt.wantURI == "" {
			if err == nil {
				t.Errorf("%s %s: forwarded as %q, want refused", tt.method, tt.target, out.URL.RequestURI())
			}
			continue
		}
		if err != nil {
			t.Errorf("%s %s: %v", tt.method, tt.target, err)
			continue
		}
		if got := out.URL.RequestURI(); got != tt.wantURI {
			t.Errorf("%s %s: forwarded as %q, want %q", tt.method, tt.target, got, tt.wantURI)
		}
		if tt.wantURI == tt.target && out != r {
			t.Errorf("%s %s: a normal request was copied", tt.method, tt.target)
		}
	}
}

func BenchmarkNormalizePath(b *testing.B) {
	for _, p := range []string{"/api/v1/items/12345", "/api/v1/a%20b/../c"} {
		b.Run(p, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				normalizePath(p)
			}
		})
	}
}
