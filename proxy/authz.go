package proxy

import (
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"strings"

	"meshlet.dev/meshlet/mtls"
	"meshlet.dev/meshlet/proxy/h1guard"
)

// sourcePlaintext is the source label of meshlet_authz_denied_total for a plaintext caller (permissive mode)
// refused because authorization needs an identity; service names cannot contain parentheses.
const sourcePlaintext = "(plaintext)"

// inboundRequest prepares an inbound request for the local app: its path normalized (normalizedRequest) and its
// caller authorized on that path. It returns the request to forward (r itself, or a shallow copy with the
// normalized URL) and the caller's verified identity (nil without one), or false after answering the client
// itself: 400 for a path that cannot be normalized safely, 403 (gRPC: PERMISSION_DENIED) for a caller that may
// not call.
func (c *cluster) inboundRequest(w *responseWriter, r *http.Request, grpc bool) (*http.Request, *peerInfo, bool) {
	in, err := normalizedRequest(r)
	if err != nil {
		var pe *pathError
		if !errors.As(err, &pe) {
			pe = &pathError{refusedPathInvalid, err.Error()}
		}
		c.m.RefusedRequests.WithLabelValues(c.direction, pe.reason).Inc()
		c.refused.refused(c.direction, c.name, r.RemoteAddr, pe.reason, http.StatusBadRequest)
		c.fail(w, r, grpc, http.StatusBadRequest, pe.reason, pe.msg)
		return nil, nil, false
	}
	peer, ok := c.authorizeRequest(w, in, grpc)
	if !ok {
		return nil, nil, false
	}
	return in, peer, true
}

// authorizeRequest checks the caller of an inbound request (r, its path normalized) against inbound.tls.allow and
// the rules (decideCaller). It answers 403 (gRPC: PERMISSION_DENIED) itself and returns false when the caller may
// not call; every refusal is counted and logged (rate limited). An allowed caller comes with its verified identity
// (nil without one).
func (c *cluster) authorizeRequest(w *responseWriter, r *http.Request, grpc bool) (*peerInfo, bool) {
	d := c.decideCaller(h1guard.TLSState(r), r)
	if d.allowed {
		return d.peer, true
	}
	c.deny(r.RemoteAddr, d)
	c.fail(w, r, grpc, http.StatusForbidden, reasonDenied, "caller "+d.source+" is not allowed to call "+c.name+" ("+d.why+")")
	return nil, false
}

// authorizeConn checks the caller of an inbound TCP connection (decideCaller); a refused one is closed before any
// byte flows.
func (c *cluster) authorizeConn(conn net.Conn) bool {
	var state *tls.ConnectionState
	if tc, ok := conn.(*tls.Conn); ok {
		cs := tc.ConnectionState()
		state = &cs
	}
	d := c.decideCaller(state, nil)
	if !d.allowed {
		c.deny(conn.RemoteAddr().String(), d)
	}
	return d.allowed
}

// deny counts and logs (rate limited) a caller refused by decideCaller.
func (c *cluster) deny(remote string, d callerDecision) {
	c.m.AuthzDenied.WithLabelValues(d.source).Inc()
	c.refused.denied(c.direction, c.name, remote, d.source, d.why)
}

// callerDecision is decideCaller's answer.
type callerDecision struct {
	allowed bool
	peer    *peerInfo // the caller's verified identity (peer.ok); nil without TLS or for a plaintext caller
	source  string    // refused: meshlet_authz_denied_total's source label
	why     string    // refused: the reason
}

// decideCaller decides whether an inbound caller may call: state is its TLS state (nil: plaintext), r its request
// with the path normalized (nil: a TCP connection). Without TLS every caller may; a plaintext caller may unless
// inbound.tls.allow or the rules decide who may call (plaintextDenied); a TLS caller needs an identity that the
// trust domain, the allow list and the rules let through.
func (c *cluster) decideCaller(state *tls.ConnectionState, r *http.Request) callerDecision {
	if c.tls == nil {
		return callerDecision{allowed: true}
	}
	if state == nil {
		if !c.tls.plaintextDenied() {
			return callerDecision{allowed: true}
		}
		return callerDecision{source: sourcePlaintext,
			why: "plaintext caller: inbound.tls.allow or intentions need an identity (inbound.tls.allow_plaintext is false)"}
	}
	peer := c.tls.peers.of(state)
	if peer == nil || !peer.ok {
		return callerDecision{source: "unknown", why: "no identity"}
	}
	allowed, why := c.tls.allowed(peer, r)
	return callerDecision{allowed: allowed, peer: peer, source: peer.id.Service, why: why}
}

// authorizer decides whether a verified caller may call the local service (inbound.tls.allow).
type authorizer struct {
	names map[string]bool // service names, in this sidecar's namespace and partition
	ids   map[string]bool // full SPIFFE IDs, in their canonical form (mtls.ID.String)
}

func newAuthorizer(allow []string) *authorizer {
	if len(allow) == 0 {
		return nil
	}
	a := &authorizer{names: map[string]bool{}, ids: map[string]bool{}}
	for _, e := range allow {
		if strings.HasPrefix(e, "spiffe://") {
			if id, err := mtls.ParseID(e); err == nil {
				e = id.String() // e.g. /ap/default/ is the default partition, written without /ap/
			}
			a.ids[e] = true
		} else {
			a.names[e] = true
		}
	}
	return a
}

// allowed reports whether the caller peer may call the sidecar whose own identity is self; a nil authorizer
// allows every identity of the trust domain. A bare service name matches only a caller of self's namespace and
// partition.
func (a *authorizer) allowed(peer *peerInfo, self mtls.ID) bool {
	if a == nil || a.ids[peer.uri] {
		return true
	}
	id := peer.id
	return a.names[id.Service] && id.Namespace == self.Namespace && id.PartitionName() == self.PartitionName()
}

// Authorizer decides whether a verified caller of the local trust domain may call the local service: r is the
// request with its path normalized (normalizePath; the query as sent), or nil for a new TCP connection. It must
// not block. mtls.Intentions (Consul's intentions) is one, and consul.Intentions, which keeps one current.
type Authorizer interface {
	Allowed(caller mtls.ID, r *http.Request) (bool, string)
}

// allowed applies the trust domain, the allow list and the rules, in that order, to the caller peer.
func (t *tlsState) allowed(peer *peerInfo, r *http.Request) (bool, string) {
	self, ok := t.local(peer.id)
	if !ok {
		return false, "not of the local trust domain"
	}
	if !t.authz.allowed(peer, self) {
		return false, "not in inbound.tls.allow"
	}
	if t.rules != nil {
		return t.rules.Allowed(peer.id, r)
	}
	return true, ""
}

// plaintextDenied reports whether a caller without an identity (plaintext, permissive mode) is refused: when
// inbound.tls.allow or intentions decide who may call, unless inbound.tls.allow_plaintext says otherwise.
func (t *tlsState) plaintextDenied() bool {
	return !t.allowPlaintext && (t.authz != nil || t.rules != nil)
}

// local checks that id is of the local trust domain (the handshake checks it too) and returns this sidecar's
// own identity, which gives a bare service name of inbound.tls.allow its namespace and partition.
func (t *tlsState) local(id mtls.ID) (mtls.ID, bool) {
	b := t.src.Bundle()
	if b == nil || id.TrustDomain != b.TrustDomain {
		return mtls.ID{}, false
	}
	return b.ID, true
}

// HeaderClientCert tells the app who called (Envoy's X-Forwarded-Client-Cert, which apps and frameworks parse):
// on inbound requests over mutual TLS, By (this sidecar's SPIFFE ID), Hash (the hex SHA-256 of the caller's leaf
// certificate) and URI (the caller's SPIFFE ID). meshlet removes any the caller sent, with or without TLS.
const HeaderClientCert = "X-Forwarded-Client-Cert"

// clientCertHeader is the X-Forwarded-Client-Cert value of an inbound request whose caller authorization
// verified as peer (its leaf certificate's hash and SPIFFE ID): "" without one (plaintext, or no TLS at all).
func (c *cluster) clientCertHeader(peer *peerInfo) string {
	if c.tls == nil || peer == nil || !peer.ok {
		return ""
	}
	b := c.tls.src.Bundle()
	if b == nil {
		return ""
	}
	return "By=" + b.ID.String() + ";Hash=" + peer.hash + ";URI=" + peer.uri
}

// denied logs one refused caller, rate limited with the refused-request lines of the same log.
func (l *refusedLog) denied(direction, listener, remote, source, why string) {
	if suppressed, ok := l.allow(); ok && l.log != nil {
		l.log.Info("caller denied", "direction", direction, "listener", listener, "remote", remote,
			"source", source, "why", why, "suppressed_since_last", suppressed)
	}
}
