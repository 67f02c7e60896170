package proxy

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"

	"meshlet.dev/meshlet/metrics"
	"meshlet.dev/meshlet/mtls"
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

// tlsState is the proxy's TLS: where certificates come from and the inbound rules.
type tlsState struct {
	src            mtls.Source
	minVersion     string
	inbound        func() mtls.MeshTLS // Options.InboundTLS; nil: minVersion and Go's defaults
	outbound       func() mtls.MeshTLS // Options.OutboundTLS; likewise
	authz          *authorizer         // inbound.tls.allow; nil: any identity
	rules          Authorizer          // e.g. Consul intentions; nil: none
	allowPlaintext bool                // inbound.tls.allow_plaintext
	peers          *peerCache          // what the latest callers' certificates say
}

// newTLSState returns the proxy's TLS state for opts and the inbound.tls section.
func newTLSState(opts Options, in InboundTLSConfig) *tlsState {
	return &tlsState{src: opts.TLS, minVersion: opts.TLSMinVersion, inbound: opts.InboundTLS, outbound: opts.OutboundTLS, authz: newAuthorizer(in.Allow),
		rules: opts.Authorizer, allowPlaintext: in.AllowPlaintext, peers: newPeerCache()}
}

// secureInbound wraps the inbound listener in the configured TLS mode.
// HTTP listeners (httpInbound) tell an HTTP/1.1 caller that offered ALPN h2 by its first bytes
// (mtls.ListenerHooks.HTTP): Connect-native apps on Consul's connect package do so.
func (p *Proxy) secureInbound(ln net.Listener, mode string, httpInbound bool) (net.Listener, error) {
	if p.tls == nil || mode == mtls.ModeDisabled {
		return ln, nil
	}
	cfg, err := mtls.InboundConfig(p.tls.src, p.tls.minVersion, p.tls.inbound)
	if err != nil {
		return nil, err
	}
	failures := p.m.TLSHandshakeFailures
	plaintext := p.m.TLSPlaintext
	plaintextLog := &logLimiter{} // one line a second at most: every connection is in the metric
	return mtls.NewListener(ln, cfg, mode, mtls.ListenerHooks{
		HTTP: httpInbound,
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
	var mesh mtls.MeshTLS
	if c.tls.outbound != nil {
		mesh = c.tls.outbound()
	}
	cfg, err := mtls.ClientConfigMesh(c.tls.src, c.tls.minVersion, mesh, alpn, want)
	if err != nil {
		return nil, err
	}
	// The name Consul gives the service (what its gateways route by; Envoy sends it too). meshlet's inbound
	// also reads it: a caller that names no server may relay HTTP/1.1 after offering h2 (mtls.ListenerHooks).
	cfg.ServerName = t.sni
	return cfg, nil
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
