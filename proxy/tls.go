package proxy

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"strings"

	"meshlet.dev/meshlet/metrics"
	"meshlet.dev/meshlet/mtls"
	"meshlet.dev/meshlet/proxy/h1guard"
)

// InboundTLSConfig is inbound.tls: how other sidecars must connect, and who may call.
type InboundTLSConfig struct {
	// Mode is mtls (mutual TLS only), permissive (mutual TLS or plaintext, for migration) or disabled.
	// Default: mtls when the tls section is configured, else disabled.
	Mode string `yaml:"mode" json:"mode"`
	// Allow lists the callers that may call this service, as service names or SPIFFE IDs; empty means any
	// identity of the trust domain. A service name means that service in this sidecar's own namespace and admin
	// partition (of the local trust domain, any datacenter); a SPIFFE ID means exactly that identity.
	Allow []string `yaml:"allow" json:"allow"`
	// AllowPlaintext lets plaintext callers (permissive mode: no certificate, so no identity) through when Allow
	// or Consul's intentions decide who may call; they skip authorization. Default false: they are refused (403,
	// gRPC PERMISSION_DENIED, or a closed TCP connection). Without Allow and intentions, plaintext callers pass in
	// permissive mode whatever this says.
	AllowPlaintext bool `yaml:"allow_plaintext" json:"allow_plaintext"`
}

// UpstreamTLSConfig is upstreams[].tls.
type UpstreamTLSConfig struct {
	// Mode is mtls (default when the tls section is configured: sidecar endpoints are called over mutual TLS)
	// or disabled (plaintext to sidecars that do not speak TLS yet). Apps (peer: app) are always plaintext.
	Mode string `yaml:"mode" json:"mode"`
}

func validTLSMode(m string, modes ...string) bool {
	for _, x := range modes {
		if m == x {
			return true
		}
	}
	return false
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

// allowed reports whether id may call the sidecar whose own identity is self; a nil authorizer allows every
// identity of the trust domain. A bare service name matches only a caller of self's namespace and partition.
func (a *authorizer) allowed(id, self mtls.ID) bool {
	if a == nil || a.ids[id.String()] {
		return true
	}
	return a.names[id.Service] && id.Namespace == self.Namespace && id.PartitionName() == self.PartitionName()
}

// Authorizer decides whether a verified caller of the local trust domain may call the local service: r is the
// request with its path normalized (normalizePath; the query as sent), or nil for a new TCP connection. It must
// not block. mtls.Intentions (Consul's intentions) is one, and consul.Intentions, which keeps one current.
type Authorizer interface {
	Allowed(caller mtls.ID, r *http.Request) (bool, string)
}

// tlsState is the proxy's TLS: where certificates come from and the inbound rules.
type tlsState struct {
	src            mtls.Source
	minVersion     string
	authz          *authorizer // inbound.tls.allow; nil: any identity
	rules          Authorizer  // e.g. Consul intentions; nil: none
	allowPlaintext bool        // inbound.tls.allow_plaintext
}

// allowed applies the trust domain, the allow list and the rules, in that order.
func (t *tlsState) allowed(id mtls.ID, r *http.Request) (bool, string) {
	self, ok := t.local(id)
	if !ok {
		return false, "not of the local trust domain"
	}
	if !t.authz.allowed(id, self) {
		return false, "not in inbound.tls.allow"
	}
	if t.rules != nil {
		return t.rules.Allowed(id, r)
	}
	return true, ""
}

// secureInbound wraps the inbound listener in the configured TLS mode.
func (p *Proxy) secureInbound(ln net.Listener, mode string) (net.Listener, error) {
	if p.tls == nil || mode == mtls.ModeDisabled {
		return ln, nil
	}
	cfg, err := mtls.ServerConfig(p.tls.src, p.tls.minVersion)
	if err != nil {
		return nil, err
	}
	failures := p.m.TLSHandshakeFailures
	plaintext := p.m.TLSPlaintext
	plaintextLog := &logLimiter{} // one line a second at most: every connection is in the metric
	return mtls.NewListener(ln, cfg, mode, mtls.ListenerHooks{
		Failed: func(reason string, remote net.Addr, err error) {
			failures.WithLabelValues(metrics.Inbound, reason).Inc()
			p.log.Debug("inbound handshake refused", "reason", reason, "remote", remote.String(), "error", err.Error())
		},
		Plaintext: func(remote net.Addr) {
			plaintext.Inc()
			if suppressed, ok := plaintextLog.allow(); ok {
				p.log.Info("plaintext connection accepted (permissive mode)", "remote", remote.String(),
					"suppressed_since_last", suppressed)
			}
		},
	}), nil
}

// authorizeRequest checks the caller of an inbound request (r, its path normalized) against inbound.tls.allow and
// the rules; a plaintext caller is refused when they decide who may call (plaintextDenied). It answers 403 (gRPC:
// PERMISSION_DENIED) itself and returns false when the caller may not call; every refusal is counted and logged
// (rate limited).
func (c *cluster) authorizeRequest(w *responseWriter, r *http.Request, grpc bool) bool {
	if c.tls == nil {
		return true
	}
	source, why := sourcePlaintext, "plaintext caller: inbound.tls.allow or intentions need an identity (inbound.tls.allow_plaintext is false)"
	if state := h1guard.TLSState(r); state == nil {
		if !c.tls.plaintextDenied() {
			return true
		}
	} else if id, ok := mtls.PeerID(state); !ok {
		source, why = "unknown", "no identity"
	} else {
		var allowed bool
		if allowed, why = c.tls.allowed(id, r); allowed {
			return true
		}
		source = id.Service
	}
	c.m.AuthzDenied.WithLabelValues(source).Inc()
	c.refused.denied(c.direction, c.name, r.RemoteAddr, source, why)
	c.fail(w, r, grpc, http.StatusForbidden, reasonDenied, "caller "+source+" is not allowed to call "+c.name+" ("+why+")")
	return false
}

// authorizeConn checks the caller of an inbound TCP connection; a refused one is closed before any byte flows. A
// plaintext connection is refused when inbound.tls.allow or the rules decide who may call (plaintextDenied).
func (c *cluster) authorizeConn(conn net.Conn) bool {
	if c.tls == nil {
		return true
	}
	source, why := sourcePlaintext, "plaintext caller: inbound.tls.allow or intentions need an identity (inbound.tls.allow_plaintext is false)"
	if tc, ok := conn.(*tls.Conn); !ok {
		if !c.tls.plaintextDenied() {
			return true
		}
	} else {
		cs := tc.ConnectionState()
		id, ok := mtls.PeerID(&cs)
		if !ok {
			source, why = "unknown", "no identity"
		} else {
			var allowed bool
			if allowed, why = c.tls.allowed(id, nil); allowed {
				return true
			}
			source = id.Service
		}
	}
	c.m.AuthzDenied.WithLabelValues(source).Inc()
	c.refused.denied(c.direction, c.name, conn.RemoteAddr().String(), source, why)
	return false
}

// clientTLS returns the TLS config for a connection to target t with ALPN alpn, or nil when the connection is
// plaintext: t is an app, this meshlet has no TLS, or the upstream turned TLS off (t.tls says which, decided
// when the endpoint was picked). A target that requires TLS when this meshlet has none is an error: never
// plaintext.
func (c *cluster) clientTLS(t *dialTarget, alpn string) (*tls.Config, error) {
	if !t.tls {
		return nil, nil
	}
	if c.tls == nil {
		return nil, errNoTLS
	}
	want := func(id mtls.ID) error {
		if t.identity != "" {
			if id.String() != t.identity {
				return fmt.Errorf("endpoint %s is %s, expected %s", t.addr, id, t.identity)
			}
			return nil
		}
		if id.Service != t.service {
			return fmt.Errorf("endpoint %s is %s, expected service %s", t.addr, id, t.service)
		}
		return nil
	}
	return mtls.ClientConfig(c.tls.src, c.tls.minVersion, alpn, want)
}

// secureDial upgrades a new connection to target t to mutual TLS when clientTLS says so. A failed handshake is a
// connect failure: the request never reached the app, and is safe to send elsewhere.
func (c *cluster) secureDial(ctx context.Context, conn net.Conn, t *dialTarget, alpn string) (net.Conn, error) {
	if c.budget != nil {
		var err error
		if conn, err = c.budget.upstreamConn(conn); err != nil {
			return nil, err
		}
	}
	cfg, err := c.clientTLS(t, alpn)
	if err != nil {
		conn.Close()
		return nil, err
	}
	if cfg == nil {
		return conn, nil
	}
	tc := tls.Client(conn, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		conn.Close()
		c.m.TLSHandshakeFailures.WithLabelValues(metrics.Outbound, mtls.Reason(err)).Inc()
		return nil, &connectError{addr: t.addr, err: fmt.Errorf("tls handshake: %w", err)}
	}
	return tc, nil
}
