package proxy

import (
	"errors"
	"net/http"

	"meshlet.dev/meshlet/mtls"
)

// sourcePlaintext is the source label of meshlet_authz_denied_total for a plaintext caller (permissive mode)
// refused because authorization needs an identity; service names cannot contain parentheses.
const sourcePlaintext = "(plaintext)"

// inboundRequest prepares an inbound request for the local app: its path normalized (normalizedRequest) and its
// caller authorized on that path. It returns the request to forward (r itself, or a shallow copy with the
// normalized URL), or false after answering the client itself: 400 for a path that cannot be normalized safely,
// 403 (gRPC: PERMISSION_DENIED) for a caller that may not call.
func (c *cluster) inboundRequest(w *responseWriter, r *http.Request, grpc bool) (*http.Request, bool) {
	in, err := normalizedRequest(r)
	if err != nil {
		var pe *pathError
		if !errors.As(err, &pe) {
			pe = &pathError{refusedPathInvalid, err.Error()}
		}
		c.m.RefusedRequests.WithLabelValues(c.direction, pe.reason).Inc()
		c.refused.refused(c.direction, c.name, r.RemoteAddr, pe.reason, http.StatusBadRequest)
		c.fail(w, r, grpc, http.StatusBadRequest, pe.reason, pe.msg)
		return nil, false
	}
	if !c.authorizeRequest(w, in, grpc) {
		return nil, false
	}
	return in, true
}

// newTLSState returns the proxy's TLS state for opts and the inbound.tls section.
func newTLSState(opts Options, in InboundTLSConfig) *tlsState {
	return &tlsState{src: opts.TLS, minVersion: opts.TLSMinVersion, authz: newAuthorizer(in.Allow),
		rules: opts.Authorizer, allowPlaintext: in.AllowPlaintext}
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

// denied logs one refused caller, rate limited with the refused-request lines of the same log.
func (l *refusedLog) denied(direction, listener, remote, source, why string) {
	if suppressed, ok := l.allow(); ok && l.log != nil {
		l.log.Info("caller denied", "direction", direction, "listener", listener, "remote", remote,
			"source", source, "why", why, "suppressed_since_last", suppressed)
	}
}
