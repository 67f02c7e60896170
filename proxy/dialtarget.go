package proxy

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net/http"

	"meshlet.dev/meshlet/mtls"
)

// dialTarget is what one attempt picked, as the dialer needs it: where to connect and how to secure the
// connection. RoundTrip puts it in the attempt's context and the transports' dial function reads it from there,
// so that a connection is always made for the endpoint that was picked, even when that endpoint has left the
// endpoint list (a Consul update, a reload) between the pick and the dial. A dialTarget is immutable.
//
// The transports pool connections by the host of the request's URL only; RoundTrip sets that host to poolAddr,
// which differs for any two targets that differ in address, TLS requirement or expected identity. So a pooled
// connection serves only requests for a target equal to the one it was dialled for: the same address
// re-registered with another identity, or switching between app and sidecar, gets new connections.
type dialTarget struct {
	from     targetSettings // the settings the target was computed from (a cache key, see targetOf)
	addr     string         // ip:port to connect to
	sidecar  bool           // the endpoint is a sidecar: another meshlet is spoken to over HTTP/2
	foreign  bool           // the sidecar is not a meshlet: spoken to in the upstream's protocol (base)
	tls      bool           // mutual TLS is required; never false for a sidecar of an upstream with TLS
	identity string         // the SPIFFE ID the endpoint must prove; "" means any identity of service
	service  string         // the service the endpoint's identity must name when identity is ""
	sni      string         // the TLS server name sent: Consul's name of the identity's service; "" without one
	poolHost string         // a DNS name for the target, unique to it
	poolAddr string         // poolHost:80: the URL host the transports see, key their pools by and dial
}

// dialTargetKey is the context key of an attempt's *dialTarget.
type dialTargetKey struct{}

// dialTargetFrom returns the target an attempt carries; nil when it carries none.
func dialTargetFrom(ctx context.Context) *dialTarget {
	t, _ := ctx.Value(dialTargetKey{}).(*dialTarget)
	return t
}

// errNoDialTarget fails a connection the transports asked for without a target that matches it: meshlet does
// not know what the connection is for, so it does not make it (fail closed). It is meshlet's fault, not the
// endpoint's: not retried, not counted against it.
var errNoDialTarget error = &internalFault{msg: "meshlet: connection without a matching dial target refused"}

// errNoTLS fails a connection to a sidecar of an upstream whose tls.mode is mtls when this meshlet has no TLS
// (no tls section): it is not made in plaintext instead.
var errNoTLS error = &internalFault{msg: "meshlet: the upstream requires mutual TLS (tls.mode: mtls) but no tls section is configured"}

// internalFault is a failure of meshlet's own invariants: the request fails (502), and the endpoint is not held
// responsible for it.
type internalFault struct{ msg string }

func (e *internalFault) Error() string          { return e.msg }
func (e *internalFault) NotEndpointFault() bool { return true }

// targetSettings are the settings of an upstream that its dial targets are computed from (newDialTarget).
type targetSettings struct{ peer, tlsMode, service string }

func targetSettingsOf(cfg *UpstreamConfig) targetSettings {
	return targetSettings{peer: cfg.Peer, tlsMode: cfg.TLS.Mode, service: cfg.Service}
}

// targetOf returns the dial target of endpoint st under the upstream's settings cfg. It is cached on st for the
// settings it depends on (a reload may change them), so that the hot path computes it once per endpoint and
// settings. The cache key is those settings' values, not cfg: a target kept by an endpoint not called since a
// reload does not keep the previous config alive.
func (c *cluster) targetOf(st *endpointState, cfg *UpstreamConfig) *dialTarget {
	if t := st.target.Load(); t != nil && t.from == targetSettingsOf(cfg) {
		return t
	}
	t := newDialTarget(st, cfg, c.tls != nil)
	st.target.Store(t)
	return t
}

// newDialTarget decides how endpoint st is reached under cfg: an endpoint is a sidecar when the upstream says
// so (peer: sidecar) or discovery does (Meta peer=sidecar), and a foreign one when discovery says it is no
// meshlet (Meta proxy=foreign); a sidecar is reached over mutual TLS when the
// upstream's tls.mode is mtls (its default when this meshlet has TLS: withTLS). Apps are plaintext. A sidecar
// of an upstream whose tls.mode says mtls when this meshlet has no TLS is not dialled at all (clientTLS).
func newDialTarget(st *endpointState, cfg *UpstreamConfig, withTLS bool) *dialTarget {
	t := &dialTarget{from: targetSettingsOf(cfg), addr: st.hostport, sidecar: cfg.Peer == PeerSidecar || isSidecar(&st.ep)}
	t.foreign = t.sidecar && isForeign(&st.ep)
	t.tls = t.sidecar && upstreamTLSMode(cfg.TLS.Mode, withTLS) == mtls.ModeMTLS
	if t.tls {
		t.identity = st.ep.Identity
		if t.identity == "" {
			t.service = cfg.Service
		} else if id, err := mtls.ParseID(t.identity); err == nil {
			t.sni = id.SNI()
		}
	}
	t.poolHost = poolHostOf(t)
	t.poolAddr = t.poolHost + ":80"
	return t
}

// upstreamTLSMode is an upstream's tls.mode with its default applied: mtls when this meshlet has TLS
// (withTLS), else disabled.
func upstreamTLSMode(mode string, withTLS bool) string {
	switch {
	case mode != "":
		return mode
	case withTLS:
		return mtls.ModeMTLS
	}
	return mtls.ModeDisabled
}

// resolveUpstreamTLS applies the default of every upstream's tls.mode (upstreamTLSMode), so that what the
// discovery watch asks for (watchOptions) and how endpoints are dialled agree.
func resolveUpstreamTLS(cfg *Config, withTLS bool) {
	for i := range cfg.Upstreams {
		cfg.Upstreams[i].TLS.Mode = upstreamTLSMode(cfg.Upstreams[i].TLS.Mode, withTLS)
	}
}

// poolHostOf names a target for the connection pools: a DNS name made of a hash of everything that decides what
// a connection to it is (address, sidecar or app, TLS, expected identity), so that different targets never share
// a pooled connection and equal ones always may.
func poolHostOf(t *dialTarget) string {
	h := sha256.New()
	mode := "plain"
	switch {
	case t.tls:
		mode = "mtls"
	case t.sidecar:
		mode = "sidecar"
	}
	if t.foreign {
		mode += "-foreign"
	}
	for _, s := range []string{t.addr, mode, t.identity, t.service, t.sni} {
		h.Write([]byte(s))
		h.Write([]byte{0})
	}
	return "t" + hex.EncodeToString(h.Sum(nil)[:16]) + ".meshlet.invalid"
}

// targetFor checks the target an attempt's dial carries against the pool address the transport dials (addr):
// they must match, or the connection would be pooled under another target's name.
func targetFor(ctx context.Context, addr string) (*dialTarget, error) {
	t := dialTargetFrom(ctx)
	if t == nil || t.poolAddr != addr {
		return nil, errNoDialTarget
	}
	return t, nil
}

// withTarget returns the outbound copy of req for one attempt to target t: its URL names t's pool host, and its
// context carries t for the dial function. The Host header stays what the client sent (or the endpoint's
// address when it sent none).
func withTarget(req *http.Request, t *dialTarget) *http.Request {
	out := req.WithContext(context.WithValue(req.Context(), dialTargetKey{}, t))
	url := *req.URL
	url.Host = t.poolAddr // with its port: the transports would otherwise split it in vain, with an error each time
	out.URL = &url
	if out.Host == "" {
		out.Host = t.addr
	}
	return out
}

// isNoDialTarget reports whether err is a refused connection without a matching target.
func isNoDialTarget(err error) bool { return errors.Is(err, errNoDialTarget) }
