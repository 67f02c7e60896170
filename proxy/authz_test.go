package proxy

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"meshlet.dev/meshlet/mtls"
)

// fixedSource is an mtls.Source whose bundle names only an identity and a trust domain: enough to authorize.
type fixedSource struct{ b *mtls.Bundle }

func (s fixedSource) Bundle() *mtls.Bundle { return s.b }

type allowAll struct{}

func (allowAll) Allowed(mtls.ID, *http.Request) (bool, string) { return true, "rules allow" }

// TestInboundAllowIdentity: a bare service name in inbound.tls.allow means that service in this sidecar's own
// namespace and partition; a SPIFFE ID means exactly that identity (written with or without /ap/default/); a
// caller of another trust domain is refused whatever the lists say.
func TestInboundAllowIdentity(t *testing.T) {
	self := mtls.ServiceID("example.mesh", "", "", "api")
	st := &tlsState{src: fixedSource{&mtls.Bundle{ID: self, TrustDomain: "example.mesh"}},
		authz: newAuthorizer([]string{"web", "spiffe://example.mesh/ap/default/ns/team/dc/dc1/svc/batch"})}
	id := func(td, ap, ns, svc string) mtls.ID {
		x := mtls.ServiceID(td, ns, "", svc)
		x.Partition = ap
		return x
	}
	tests := []struct {
		caller mtls.ID
		want   bool
	}{
		{id("example.mesh", "", "default", "web"), true},
		{id("example.mesh", "", "default", "web"), true},
		{mtls.ID{TrustDomain: "example.mesh", Namespace: "default", Datacenter: "dc2", Service: "web"}, true},
		{id("example.mesh", "", "team", "web"), false},
		{id("example.mesh", "eu", "default", "web"), false},
		{id("other.mesh", "", "default", "web"), false},
		{id("example.mesh", "", "team", "batch"), true},
		{id("example.mesh", "", "default", "batch"), false},
		{id("example.mesh", "", "default", "billing"), false},
	}
	for _, tt := range tests {
		if got, why := st.allowed(peerWith(tt.caller), nil); got != tt.want {
			t.Errorf("%s: allowed=%v (%s), want %v", tt.caller, got, why, tt.want)
		}
	}
	// Without an allow list, any identity of the local trust domain, none of another.
	open := &tlsState{src: st.src, rules: allowAll{}}
	if ok, why := open.allowed(peerWith(id("other.mesh", "", "default", "web")), nil); ok {
		t.Errorf("a caller of another trust domain was allowed: %s", why)
	}
	if ok, why := open.allowed(peerWith(id("example.mesh", "", "team", "web")), nil); !ok {
		t.Errorf("a caller of the trust domain was refused without an allow list: %s", why)
	}
}

// peerWith is a caller whose certificate names id.
func peerWith(id mtls.ID) *peerInfo { return &peerInfo{id: id, ok: true, uri: id.String()} }

// TestPlaintextDenied: a plaintext caller is refused when inbound.tls.allow or rules decide who may call, unless
// inbound.tls.allow_plaintext says otherwise.
func TestPlaintextDenied(t *testing.T) {
	tests := []struct {
		allow          []string
		rules          Authorizer
		allowPlaintext bool
		want           bool
	}{
		{nil, nil, false, false},
		{[]string{"web"}, nil, false, true},
		{nil, allowAll{}, false, true},
		{[]string{"web"}, allowAll{}, true, false},
		{nil, nil, true, false},
	}
	for _, tt := range tests {
		st := newTLSState(Options{TLS: fixedSource{}, Authorizer: tt.rules},
			InboundTLSConfig{Allow: tt.allow, AllowPlaintext: tt.allowPlaintext})
		if got := st.plaintextDenied(); got != tt.want {
			t.Errorf("allow=%v rules=%v allow_plaintext=%v: plaintextDenied=%v, want %v", tt.allow, tt.rules != nil,
				tt.allowPlaintext, got, tt.want)
		}
	}
}

// TestInboundStripsClientCert: without mutual TLS nobody's identity is verified, so an X-Forwarded-Client-Cert the
// caller sent never reaches the app; outbound, the app's own headers pass unchanged.
func TestInboundStripsClientCert(t *testing.T) {
	seen := make(chan []string, 2)
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen <- r.Header.Values(HeaderClientCert)
	}))
	defer app.Close()
	p, _ := startProxy(t, Config{Service: ServiceConfig{Name: "api", Address: strings.TrimPrefix(app.URL, "http://")},
		Inbound: InboundConfig{Listen: "127.0.0.1:0"}, Upstreams: []UpstreamConfig{{Name: "app", Listen: "127.0.0.1:0",
			Endpoints: []string{strings.TrimPrefix(app.URL, "http://")}}}})
	for _, tc := range []struct {
		addr string
		want int // values the app sees
	}{{p.Addrs()["inbound"], 0}, {p.Addrs()["upstream/app"], 1}} {
		req, _ := http.NewRequest("GET", "http://"+tc.addr+"/", nil)
		req.Header.Set(HeaderClientCert, "By=spiffe://evil;URI=spiffe://example.mesh/ns/default/dc/dc1/svc/admin")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if got := <-seen; len(got) != tc.want {
			t.Fatalf("via %s the app saw %q", tc.addr, got)
		}
	}
}
