package h1guard

import (
	"bytes"
	"net/http"
)

// parseChunkSize reads a chunk-size line (without its CRLF) exactly as net/http's chunked reader does: trailing
// spaces and tabs are dropped, then everything from the first ';' (the extensions, which net/http discards; any
// byte but CR and LF), and what is left must be 1 to 16 hex digits. A space before the ';' is refused, as
// net/http refuses it. The one difference: a size of 2^62 or more, which nobody can send, is refused here.
func parseChunkSize(line []byte) (uint64, bool) {
	for len(line) > 0 && (line[len(line)-1] == ' ' || line[len(line)-1] == '\t') {
		line = line[:len(line)-1]
	}
	if i := bytes.IndexByte(line, ';'); i >= 0 {
		line = line[:i]
	}
	if len(line) == 0 || len(line) > 16 {
		return 0, false // (size 0: not the size of 2^62)
	}
	var size uint64
	for _, c := range line {
		var d byte
		switch {
		case '0' <= c && c <= '9':
			d = c - '0'
		case 'a' <= c && c <= 'f':
			d = c - 'a' + 10
		case 'A' <= c && c <= 'F':
			d = c - 'A' + 10
		default:
			return 0, false
		}
		size = size<<4 | uint64(d)
	}
	return size, size < 1<<62
}

// headInfo is what the guard needs to know of a checked head: its body's framing.
type headInfo struct {
	chunked bool
	length  int64
}

// parseHead checks a complete head (ending in the empty line): request line, header lines and body framing.
func parseHead(head []byte) (h headInfo, reason string, status int) {
	head = head[:len(head)-2] // the empty line
	nl := bytes.Index(head, []byte("\r\n"))
	if nl <= 0 { // an empty line before the request line
		return h, malformedRequestLine, http.StatusBadRequest
	}
	reqLine, rest := head[:nl], head[nl+2:]
	method, after, ok1 := bytes.Cut(reqLine, []byte(" "))
	target, version, ok2 := bytes.Cut(after, []byte(" "))
	if !ok1 || !ok2 || !isToken(method) || len(target) == 0 || !visible(target) || !visible(version) {
		return h, malformedRequestLine, http.StatusBadRequest
	}
	http10 := string(version) == "HTTP/1.0"
	if !http10 && string(version) != "HTTP/1.1" {
		return h, malformedVersion, http.StatusHTTPVersionNotSupported
	}
	var cls, tes int
	for len(rest) > 0 {
		var line []byte
		line, rest, _ = bytes.Cut(rest, []byte("\r\n"))
		name, value, reason := parseHeaderLine(line)
		if reason != "" {
			return h, reason, http.StatusBadRequest
		}
		switch {
		case EqualFoldASCII(name, "content-length"):
			if cls++; cls > 1 {
				return h, malformedMultipleCL, http.StatusBadRequest
			}
			n, ok := parseContentLength(value)
			if !ok {
				return h, malformedCL, http.StatusBadRequest
			}
			h.length = n
		case EqualFoldASCII(name, "transfer-encoding"):
			if tes++; tes > 1 || !EqualFoldASCII(value, "chunked") {
				return h, malformedTE, http.StatusNotImplemented
			}
			h.chunked = true
		case framingLookalike(name):
			// Content_Length or Transfer_Encoding: net/http takes it for another field and forwards it, and an
			// app that reads '_' as '-' would frame the body otherwise than meshlet's transport did.
			return h, malformedHeaderName, http.StatusBadRequest
		}
	}
	switch {
	case cls > 0 && tes > 0:
		return h, malformedCLAndTE, http.StatusBadRequest
	case tes > 0 && http10:
		// net/http ignores Transfer-Encoding on HTTP/1.0 requests; the app might not.
		return h, malformedTE, http.StatusBadRequest
	}
	return h, "", 0
}

// parseHeaderLine splits "name: value" and checks both; value comes without surrounding whitespace.
func parseHeaderLine(line []byte) (name, value []byte, reason string) {
	if len(line) > 0 && (line[0] == ' ' || line[0] == '\t') {
		return nil, nil, malformedObsFold
	}
	name, value, ok := bytes.Cut(line, []byte(":"))
	if !ok || !isToken(name) {
		return nil, nil, malformedHeaderName
	}
	value = bytes.Trim(value, " \t")
	for _, c := range value {
		if c < ' ' && c != '\t' || c == 0x7f {
			return nil, nil, malformedHeaderValue
		}
	}
	return name, value, ""
}

// framingLookalike reports whether name is Content-Length or Transfer-Encoding with an underscore for a dash.
func framingLookalike(name []byte) bool {
	if len(name) != len("content-length") && len(name) != len("transfer-encoding") ||
		bytes.IndexByte(name, '_') < 0 {
		return false
	}
	var b [len("transfer-encoding")]byte
	n := copy(b[:], name)
	for i := range n {
		if b[i] == '_' {
			b[i] = '-'
		}
	}
	return EqualFoldASCII(b[:n], "content-length") || EqualFoldASCII(b[:n], "transfer-encoding")
}

// parseContentLength reads a Content-Length value: 1 to 18 decimal digits, nothing else.
func parseContentLength(v []byte) (int64, bool) {
	if len(v) == 0 || len(v) > guardMaxContentLenDigs {
		return 0, false
	}
	var n int64
	for _, c := range v {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

// isToken reports whether b is a non-empty RFC 9110 token.
func isToken(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	for _, c := range b {
		if c >= 0x80 || !tokenChars[c] {
			return false
		}
	}
	return true
}

// visible reports whether b has only visible ASCII and obs-text (no controls, no spaces).
func visible(b []byte) bool {
	for _, c := range b {
		if c <= ' ' || c == 0x7f {
			return false
		}
	}
	return true
}

// EqualFoldASCII reports whether b is lower, ASCII letters compared without case (what header names are).
func EqualFoldASCII(b []byte, lower string) bool {
	if len(b) != len(lower) {
		return false
	}
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != lower[i] {
			return false
		}
	}
	return true
}

var tokenChars = func() (t [128]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c] = true
		t[c-'a'+'A'] = true
	}
	for _, c := range "!#$%&'*+-.^_`|~" {
		t[c] = true
	}
	return t
}()
