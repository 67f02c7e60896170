package admin

// Who may use which admin endpoint. The admin listener may face the network (in Kubernetes it listens on the pod
// IP, which the kubelet probes and Prometheus scrapes), and a developer's browser can reach a meshlet on loopback:
// a web page can send it simple cross-origin requests, and DNS rebinding can point a page's own name at it.
//
//   - open: GET /live, /ready, /metrics and the index answer anyone, whatever the Host (probes and scrapes use
//     the pod IP or a DNS name).
//   - view: GET /debug/config and /debug/upstreams answer requests addressed to an allowed Host only.
//   - mutate: POST /debug/reload and /quitquitquit answer local clients only, addressed to an allowed Host, that
//     are not a browser (no Origin, no Sec-Fetch-*) and carry no body type an HTML form or a simple
//     cross-origin request can have.
//   - drain: GET and POST /drain answer local clients, and remote ones (the kubelet runs the app's preStop
//     httpGet from the node, not from the pod) that carry the pod's admin.drain_token in X-Meshlet-Drain-Token:
//     without it, any pod that reaches the admin port could take every instance of the mesh out of rotation.
//     Injection puts a random token per pod in the hook and in the sidecar's config; without one, remote callers
//     are refused. Like mutate, addressed to an allowed Host, not a browser, no form body type. It never widens
//     what the other levels allow.

import (
	"crypto/subtle"
	"fmt"
	"mime"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"meshlet.dev/meshlet/metrics"
)

// access is how much an endpoint is guarded.
type access int

const (
	accessView      access = iota + 1 // Host checked
	accessMutate                      // local client, Host, not a browser, no form body type
	accessLocalView                   // local client, Host: views that say more than a remote caller may learn
	accessDrain                       // local client or the drain token, Host, not a browser, no form body type: /drain
)

// Reasons an admin request is refused: the reason label of meshlet_admin_requests_refused_total.
const (
	RefusedNotLocal    = metrics.AdminRefusedNotLocal    // a mutating endpoint called from another host or pod
	RefusedHost        = metrics.AdminRefusedHost        // a Host that is not an IP address, localhost or an allowed name
	RefusedBrowser     = metrics.AdminRefusedBrowser     // a mutating request with Origin or Sec-Fetch-* (a web page's)
	RefusedContentType = metrics.AdminRefusedContentType // a mutating request with a body type a web page can send cross-origin
	RefusedDrainToken  = metrics.AdminRefusedDrainToken  // a remote /drain without the right admin.drain_token
)

// formTypes are the Content-Types of CORS simple requests: what an HTML form or a no-cors fetch can send to any
// origin without a preflight.
var formTypes = map[string]bool{"application/x-www-form-urlencoded": true, "multipart/form-data": true, "text/plain": true}

// guard wraps h with the checks of a; a refused request gets a status and a message that says why.
func (s *Server) guard(a access, h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if (a == accessMutate || a == accessLocalView) && !localClient(r) {
			s.refuse(w, r, RefusedNotLocal, http.StatusForbidden, fmt.Sprintf(
				"%s answers local clients only (loopback, or this host's or pod's own address); %s is not one",
				r.URL.Path, remoteHost(r)))
			return
		}
		if a == accessDrain && !localClient(r) && !s.drainTokenOK(r) {
			msg := fmt.Sprintf("%s from %s refused: a remote caller must send admin.drain_token in %s "+
				"(the injected preStop hook does)", r.URL.Path, remoteHost(r), HeaderDrainToken)
			if s.cfg.DrainToken == "" {
				msg = fmt.Sprintf("%s from %s refused: it answers local clients only, as admin.drain_token is not set",
					r.URL.Path, remoteHost(r))
			}
			s.refuse(w, r, RefusedDrainToken, http.StatusForbidden, msg)
			return
		}
		if !s.allowedHost(r.Host) {
			s.refuse(w, r, RefusedHost, http.StatusForbidden, fmt.Sprintf(
				"Host %q refused: %s answers requests addressed to an IP address, localhost or admin.listen's host "+
					"only (DNS rebinding protection); admin.allowed_hosts adds names", r.Host, r.URL.Path))
			return
		}
		if a == accessMutate || a == accessDrain {
			if h := browserHeader(r.Header); h != "" {
				s.refuse(w, r, RefusedBrowser, http.StatusForbidden, fmt.Sprintf(
					"%s %s refused: it carries %s, as a browser's request does (a web page must not stop, drain or "+
						"reconfigure meshlet); send it with curl or another non-browser client", r.Method, r.URL.Path, h))
				return
			}
			if ct, ok := simpleContentType(r.Header); !ok {
				s.refuse(w, r, RefusedContentType, http.StatusUnsupportedMediaType, fmt.Sprintf(
					"%s %s refused: Content-Type %q is one a web page can send cross-origin; send no body "+
						"(curl -X POST URL) or Content-Type: application/json", r.Method, r.URL.Path, ct))
				return
			}
		}
		h(w, r)
	}
}

// drainTokenOK reports whether r carries admin.drain_token (never true when none is set).
func (s *Server) drainTokenOK(r *http.Request) bool {
	got := r.Header.Get(HeaderDrainToken)
	return s.cfg.DrainToken != "" && subtle.ConstantTimeCompare([]byte(got), []byte(s.cfg.DrainToken)) == 1
}

// allowedHost reports whether a Host header names this admin listener in a way DNS rebinding cannot forge: an IP
// literal, localhost (or a name under .localhost, which browsers resolve to loopback themselves), admin.listen's
// host, or a name of admin.allowed_hosts. An empty Host is refused.
func (s *Server) allowedHost(hostport string) bool {
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.ToLower(strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")), ".")
	if host == "" {
		return false
	}
	if _, err := netip.ParseAddr(host); err == nil {
		return true
	}
	return host == "localhost" || strings.HasSuffix(host, ".localhost") || s.hosts[host]
}

// browserHeader returns the first header that only a browser sends (Origin, Sec-Fetch-*), or "".
func browserHeader(h http.Header) string {
	if _, ok := h["Origin"]; ok {
		return "Origin"
	}
	for k := range h {
		if strings.HasPrefix(k, "Sec-Fetch-") {
			return k
		}
	}
	return ""
}

// simpleContentType returns the request's Content-Type and false when it is one of a CORS simple request (or
// unparseable, or given twice); no Content-Type, or an empty one, is fine.
func simpleContentType(h http.Header) (string, bool) {
	vs := h.Values("Content-Type")
	if len(vs) == 0 || (len(vs) == 1 && strings.TrimSpace(vs[0]) == "") {
		return "", true
	}
	if len(vs) > 1 {
		return strings.Join(vs, ", "), false
	}
	mt, _, err := mime.ParseMediaType(vs[0])
	return vs[0], err == nil && !formTypes[mt]
}

// localClient reports whether the request comes from this host or pod: a loopback address, or the very address
// it was sent to (a process in the same network namespace calling the pod IP).
func localClient(r *http.Request) bool {
	host, _, _ := net.SplitHostPort(r.RemoteAddr)
	ip := net.ParseIP(host)
	if ip == nil {
		return false
	}
	if ip.IsLoopback() {
		return true
	}
	local, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
	if !ok {
		return false
	}
	lhost, _, _ := net.SplitHostPort(local.String())
	return ip.Equal(net.ParseIP(lhost))
}

func remoteHost(r *http.Request) string {
	if h, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		return h
	}
	return strconv.Quote(r.RemoteAddr)
}

// refuse answers code with msg, counts the refusal and logs it (at most one line a second).
func (s *Server) refuse(w http.ResponseWriter, r *http.Request, reason string, code int, msg string) {
	s.refused.WithLabelValues(reason).Inc()
	if ok, left := s.logLimit.allow(time.Now()); ok {
		s.log.Warn("admin request refused", "reason", reason, "method", r.Method, "path", r.URL.Path,
			"remote", r.RemoteAddr, "host", r.Host, "error", msg, "lines_left_out", left)
	}
	http.Error(w, "admin: "+msg, code)
}

// logLimiter lets one line through per second and counts the lines it held back. The zero value is ready.
type logLimiter struct {
	mu      sync.Mutex
	last    time.Time
	skipped int
}

// allow reports whether a line may be logged at now, and how many were left out since the last one.
func (l *logLimiter) allow(now time.Time) (bool, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.last.IsZero() && now.Sub(l.last) < time.Second {
		l.skipped++
		return false, 0
	}
	left := l.skipped
	l.last, l.skipped = now, 0
	return true, left
}
