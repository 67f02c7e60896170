package main

// Redaction of what the admin listener shows (/debug/config, /debug/upstreams): credentials must not leave the
// process through a view meant for debugging. Any doubt redacts.

import (
	"encoding/json"
	"net/url"
	"strings"
	"unicode"
)

// redacted replaces a secret in a view.
const redacted = "<redacted>"

// secretWords are the words of a key that hold a secret wherever they appear in the key (accessToken, DB_PASSWORD,
// x-api-key, client_secret, authorization). Matched against the key's words, and, for the longer ones, inside
// words too (dbpassword, apitoken).
var (
	secretWords = map[string]bool{
		"token": true, "secret": true, "password": true, "passwd": true, "pwd": true, "passphrase": true,
		"key": true, "apikey": true, "credential": true, "cred": true, "auth": true, "authorization": true,
		"cookie": true, "bearer": true, "jwt": true, "private": true, "privatekey": true, "signature": true,
		"session": true, "sessionid": true,
	}
	secretSubstrings = []string{"token", "secret", "passw", "passwd", "credential", "apikey", "privatekey", "authoriz"}
	// pathWords end a key that names a file holding a secret, not the secret (tls.key_file, token_file).
	pathWords = map[string]bool{"file": true, "path": true, "dir": true}
)

// secretKey reports whether a map key looks like it holds a secret.
func secretKey(k string) bool {
	words := keyWords(k)
	if len(words) == 0 {
		return false
	}
	if pathWords[words[len(words)-1]] {
		return false
	}
	for _, w := range words {
		if secretWords[w] || secretWords[strings.TrimSuffix(w, "s")] {
			return true
		}
		for _, s := range secretSubstrings {
			if strings.Contains(w, s) {
				return true
			}
		}
	}
	return false
}

// keyWords splits a key into lower-case words at non-letters and digits and at lower-to-upper case changes
// (accessToken: access, token).
func keyWords(k string) []string {
	var words []string
	var cur []rune
	flush := func() {
		if len(cur) > 0 {
			words = append(words, strings.ToLower(string(cur)))
			cur = cur[:0]
		}
	}
	prev := rune(0)
	for _, r := range k {
		switch {
		case !unicode.IsLetter(r) && !unicode.IsDigit(r):
			flush()
		case unicode.IsUpper(r) && unicode.IsLower(prev):
			flush()
			cur = append(cur, r)
		default:
			cur = append(cur, r)
		}
		prev = r
	}
	flush()
	return words
}

// redactTree redacts, in place, a tree of map[string]any, []any and scalars (decoded JSON or YAML): the value of
// every key that looks secret (a whole subtree included), the userinfo of URLs and the values of query
// parameters that look secret, in every string. It returns the tree (a string is returned redacted).
func redactTree(v any) any {
	switch t := v.(type) {
	case map[string]any:
		for k, x := range t {
			if secretKey(k) && !empty(x) {
				t[k] = redacted
				continue
			}
			t[k] = redactTree(x)
		}
	case []any:
		for i, x := range t {
			t[i] = redactTree(x)
		}
	case string:
		return redactString(t)
	}
	return v
}

// empty is a value with nothing to hide: nil, "", an empty map or list. It stays as it is, so that the view still
// says a setting is unset.
func empty(v any) bool {
	switch t := v.(type) {
	case nil:
		return true
	case string:
		return t == ""
	case map[string]any:
		return len(t) == 0
	case []any:
		return len(t) == 0
	}
	return false
}

// redactString hides credentials in s: a URL's userinfo (scheme://user:pass@host → scheme://<redacted>@host),
// the userinfo of an address without a scheme (user:pass@host:port), and the values of query parameters that look
// secret (?token=…). Other strings are returned as they are.
func redactString(s string) string {
	rest, scheme := s, ""
	if i := strings.Index(s, "://"); i > 0 {
		scheme, rest = s[:i+3], s[i+3:]
	}
	end := strings.IndexAny(rest, "/?#")
	if end < 0 {
		end = len(rest)
	}
	if at := strings.LastIndexByte(rest[:end], '@'); at >= 0 && (scheme != "" || strings.Contains(rest[:at], ":")) &&
		!strings.ContainsAny(rest[:end], " \t\r\n") {
		rest = redacted + rest[at:]
	}
	return scheme + redactQuery(rest)
}

// redactQuery redacts the values of query parameters that look secret in the part of a URL after its scheme.
func redactQuery(rest string) string {
	q := strings.IndexByte(rest, '?')
	if q < 0 {
		return rest
	}
	query, frag := rest[q+1:], ""
	if h := strings.IndexByte(query, '#'); h >= 0 {
		query, frag = query[:h], query[h:]
	}
	parts := strings.Split(query, "&")
	changed := false
	for i, p := range parts {
		name, _, hasValue := strings.Cut(p, "=")
		if dn, err := url.QueryUnescape(name); err == nil {
			name = dn
		}
		if hasValue && secretKey(name) {
			parts[i] = p[:strings.IndexByte(p, '=')+1] + url.QueryEscape(redacted)
			changed = true
		}
	}
	if !changed {
		return rest
	}
	return rest[:q+1] + strings.Join(parts, "&") + frag
}

// redactedView renders v (any JSON-encodable value, e.g. /debug/upstreams) as a JSON tree with redactTree
// applied: endpoint metadata from Consul can hold anything a registration put there.
func redactedView(v any) any {
	b, err := json.Marshal(v)
	if err != nil {
		return map[string]string{"error": err.Error()}
	}
	var tree any
	if err := json.Unmarshal(b, &tree); err != nil {
		return map[string]string{"error": err.Error()}
	}
	return redactTree(tree)
}
