package proxy

import (
	"net/http"
	"net/url"
	"strings"
)

// pathError is why normalizePath refused a path: the reason label and a message for the client.
type pathError struct {
	reason string
	msg    string
}

func (e *pathError) Error() string { return e.msg }

// normalizePath returns the normal form of an escaped request path (as on the request line, without the query),
// the way Envoy normalizes it for Consul's L7 intentions since CVE-2024-10005, so that authorization and the app
// read the same path:
//
//  1. percent-escapes of unreserved characters (RFC 3986 2.3: A-Z a-z 0-9 - . _ ~) are decoded, the others are
//     written with upper-case hex digits, and bytes that may not appear raw in a path are escaped;
//  2. runs of slashes are merged into one;
//  3. dot segments are removed (RFC 3986 5.2.4), those written %2E too.
//
// The result is a fixed point: normalizePath(normalizePath(p)) == normalizePath(p), with no "." or ".." segment and
// no empty segment but a trailing one, before and after percent-decoding. An escaped slash (%2F), a backslash (raw
// or %5C), a path without a leading slash and a broken escape are refused with a *pathError (fail closed: readers
// disagree on what they mean). The empty path is "/".
func normalizePath(escaped string) (string, error) {
	if escaped == "" {
		return "/", nil
	}
	if escaped[0] != '/' {
		return "", &pathError{refusedPathInvalid, "the request path must start with /"}
	}
	if pathIsNormal(escaped) {
		return escaped, nil // the common case: no allocation
	}
	var b strings.Builder
	b.Grow(len(escaped) + 8)
	for i := 0; i < len(escaped); i++ {
		c := escaped[i]
		switch {
		case c == '%':
			if i+2 >= len(escaped) || !isHex(escaped[i+1]) || !isHex(escaped[i+2]) {
				return "", &pathError{refusedPathInvalid, "broken %-escape in the request path"}
			}
			v := unhex(escaped[i+1])<<4 | unhex(escaped[i+2])
			i += 2
			switch {
			case v == '/':
				return "", &pathError{refusedPathEscapedSlash, "escaped slash (%2F) in the request path"}
			case v == '\\':
				return "", &pathError{refusedPathBackslash, "backslash (%5C) in the request path"}
			case isUnreserved(v):
				b.WriteByte(v)
			default:
				writeEscaped(&b, v)
			}
		case c == '\\':
			return "", &pathError{refusedPathBackslash, "backslash in the request path"}
		case isPathChar(c):
			if c == '/' && b.Len() > 0 && strings.HasSuffix(b.String(), "/") {
				continue // merge slashes
			}
			b.WriteByte(c)
		default:
			writeEscaped(&b, c)
		}
	}
	return removeDotSegments(b.String()), nil
}

// pathIsNormal reports whether p (starting with /) is already its own normal form: only characters allowed raw
// in a path, no %-escape, no empty segment but a trailing one, no dot segment.
func pathIsNormal(p string) bool {
	segStart := 1
	for i := 1; i <= len(p); i++ {
		if i < len(p) {
			c := p[i]
			if c != '/' {
				if c == '%' || c == '\\' || !isPathChar(c) {
					return false
				}
				continue
			}
		}
		switch p[segStart:i] {
		case ".", "..":
			return false
		case "":
			if i < len(p) {
				return false // an empty segment before another: //
			}
		}
		segStart = i + 1
	}
	return true
}

// removeDotSegments removes the "." and ".." segments of p (starting with /, slashes merged), as RFC 3986 5.2.4
// does: a path that ends with a dot segment keeps a trailing slash; ".." above the root stays at the root.
func removeDotSegments(p string) string {
	if !strings.Contains(p, "/.") {
		return p
	}
	segs := strings.Split(p[1:], "/")
	out := make([]string, 0, len(segs))
	trailing := false
	for i, s := range segs {
		last := i == len(segs)-1
		switch s {
		case ".":
			trailing = trailing || last
		case "..":
			if len(out) > 0 {
				out = out[:len(out)-1]
			}
			trailing = trailing || last
		default:
			out = append(out, s)
		}
	}
	r := "/" + strings.Join(out, "/")
	if trailing && len(out) > 0 {
		r += "/"
	}
	return r
}

// isUnreserved reports whether c is an unreserved character of RFC 3986 2.3.
func isUnreserved(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '.' ||
		c == '_' || c == '~'
}

// isPathChar reports whether c may appear unescaped in a path (RFC 3986 3.3: unreserved, sub-delims, ':', '@',
// and '/'). Every such byte is one net/url writes raw too, so a normalized path is its own EscapedPath.
func isPathChar(c byte) bool { return pathChars[c] }

var pathChars = func() (t [256]bool) {
	for c := range 256 {
		t[c] = isUnreserved(byte(c)) || strings.IndexByte("!$&'()*+,;=:@/", byte(c)) >= 0
	}
	return t
}()

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case c >= 'a':
		return c - 'a' + 10
	case c >= 'A':
		return c - 'A' + 10
	}
	return c - '0'
}

func writeEscaped(b *strings.Builder, c byte) {
	const hex = "0123456789ABCDEF"
	b.WriteByte('%')
	b.WriteByte(hex[c>>4])
	b.WriteByte(hex[c&15])
}

// escapedPath returns the path of u as the client sent it. net/url keeps the original in RawPath unless it is the
// default escaping of Path; EscapedPath would re-escape Path instead when RawPath holds a byte it would escape,
// losing the difference between / and %2F.
func escapedPath(u *url.URL) string {
	if u.RawPath != "" {
		return u.RawPath
	}
	return u.EscapedPath()
}

// normalizedRequest returns r with its path normalized (normalizePath), as a shallow copy with its own URL when
// the path changes, or r itself: the inbound request is never modified. The query is kept as sent. An OPTIONS *
// request keeps its "*". A path that cannot be normalized safely is a *pathError.
func normalizedRequest(r *http.Request) (*http.Request, error) {
	if r.URL.Opaque != "" {
		return nil, &pathError{refusedPathInvalid, "opaque request target"}
	}
	if r.Method == http.MethodOptions && r.URL.Path == "*" && r.URL.RawPath == "" {
		return r, nil
	}
	raw := escapedPath(r.URL)
	norm, err := normalizePath(raw)
	if err != nil {
		return nil, err
	}
	if norm == raw {
		return r, nil
	}
	decoded, err := url.PathUnescape(norm)
	if err != nil {
		return nil, &pathError{refusedPathInvalid, "broken %-escape in the request path"}
	}
	out := r.WithContext(r.Context())
	u := *r.URL
	u.Path, u.RawPath = decoded, ""
	if strings.IndexByte(norm, '%') >= 0 {
		u.RawPath = norm
	}
	out.URL = &u
	return out, nil
}
