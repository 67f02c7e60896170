package e2e_test

// Helpers shared by the HTTP, TCP, CLI and lifecycle end-to-end tests: config building, the two-sidecar topology,
// test servers and clients, and label-aware metric lookups.

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"testing"

	"meshlet.dev/meshlet/internal/meshlettest"
)

// e2eUpstream is one entry of upstreams in an e2eConfig. Empty fields are left out of the YAML.
type e2eUpstream struct {
	Name, Listen, Protocol, Peer, LB, Timeout string
	Endpoints                                 []string
}

// e2eConfig is a meshlet config file. Empty fields are left out of the YAML; drain settings default to
// drain_delay 0s, drain_timeout 5s.
type e2eConfig struct {
	Name, Address, Protocol       string // service
	InboundListen, InboundTimeout string
	OutboundListen                string
	Upstreams                     []e2eUpstream
	Admin                         string
	DrainDelay, DrainTimeout      string
	AccessLog                     bool
}

func (c e2eConfig) yaml() string {
	var b strings.Builder
	fmt.Fprintf(&b, "service:\n  name: %s\n", c.Name)
	if c.Address != "" {
		fmt.Fprintf(&b, "  address: %s\n", c.Address)
	}
	if c.Protocol != "" {
		fmt.Fprintf(&b, "  protocol: %s\n", c.Protocol)
	}
	if c.InboundListen != "" {
		fmt.Fprintf(&b, "inbound:\n  listen: %s\n", c.InboundListen)
		if c.InboundTimeout != "" {
			fmt.Fprintf(&b, "  timeout: %s\n", c.InboundTimeout)
		}
	}
	if c.OutboundListen != "" {
		fmt.Fprintf(&b, "outbound:\n  listen: %s\n", c.OutboundListen)
	}
	if len(c.Upstreams) > 0 {
		b.WriteString("upstreams:\n")
	}
	for _, u := range c.Upstreams {
		fmt.Fprintf(&b, "  - name: %s\n", u.Name)
		for _, kv := range [][2]string{{"listen", u.Listen}, {"protocol", u.Protocol}, {"peer", u.Peer},
			{"lb", u.LB}, {"timeout", u.Timeout}} {
			if kv[1] != "" {
				fmt.Fprintf(&b, "    %s: %s\n", kv[0], kv[1])
			}
		}
		fmt.Fprintf(&b, "    endpoints: [%s]\n", strings.Join(u.Endpoints, ", "))
	}
	fmt.Fprintf(&b, "admin:\n  listen: %s\n", c.Admin)
	fmt.Fprintf(&b, "log:\n  level: info\n  access_log: %v\n", c.AccessLog)
	dd, dt := c.DrainDelay, c.DrainTimeout
	if dd == "" {
		dd = "0s"
	}
	if dt == "" {
		dt = "5s"
	}
	fmt.Fprintf(&b, "shutdown:\n  drain_delay: %s\n  drain_timeout: %s\n", dd, dt)
	return b.String()
}

// topology names how the client-side meshlet reaches the app: "sidecar" is client → A → B → app (A's upstream has
// peer: sidecar and B's inbound listener as endpoint); "app" is client → A → app (peer: app).
const (
	topoSidecar = "sidecar"
	topoApp     = "app"
)

// e2eMesh is a started topology. Listen is A's per-upstream listener for upstream "api".
type e2eMesh struct {
	A, B    *meshlettest.Proc // B is nil for topoApp
	ACfg    e2eConfig
	BCfg    e2eConfig
	Listen  string
	Inbound string // B's inbound listener; "" for topoApp
}

// URL is the base URL of A's upstream listener.
func (m *e2eMesh) URL() string { return "http://" + m.Listen }

// meshOpts tweak the configs of startMesh before they are written.
type meshOpts struct {
	a, b func(*e2eConfig)
}

// startMesh starts the topology topo for one app at appAddr speaking protocol. The client side is service "web"
// with upstream "api" on a per-upstream listener; the server side is service "api".
func startMesh(t testing.TB, topo, appAddr, protocol string, opts meshOpts) *e2eMesh {
	t.Helper()
	m := &e2eMesh{Listen: meshlettest.FreeAddr(t)}
	up := e2eUpstream{Name: "api", Listen: m.Listen, Protocol: protocol}
	switch topo {
	case topoSidecar:
		m.Inbound = meshlettest.FreeAddr(t)
		m.BCfg = e2eConfig{Name: "api", Address: appAddr, Protocol: protocol, InboundListen: m.Inbound,
			Admin: meshlettest.FreeAddr(t)}
		if opts.b != nil {
			opts.b(&m.BCfg)
		}
		m.B = meshlettest.Start(t, m.BCfg.Admin, m.BCfg.yaml())
		up.Peer, up.Endpoints = "sidecar", []string{m.Inbound}
	case topoApp:
		up.Peer, up.Endpoints = "app", []string{appAddr}
	default:
		t.Fatalf("unknown topology %q", topo)
	}
	m.ACfg = e2eConfig{Name: "web", Upstreams: []e2eUpstream{up}, Admin: meshlettest.FreeAddr(t)}
	if opts.a != nil {
		opts.a(&m.ACfg)
	}
	m.A = meshlettest.Start(t, m.ACfg.Admin, m.ACfg.yaml())
	return m
}

// randBytes returns n deterministic pseudo-random bytes.
func randBytes(seed uint64, n int) []byte {
	b := make([]byte, n)
	rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), 7}).Read(b)
	return b
}

// randReader returns a reader of n deterministic pseudo-random bytes (the same bytes as randBytes(seed, n)).
func randReader(seed uint64, n int64) io.Reader {
	return io.LimitReader(rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), 7}), n)
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// shaReader hashes r to EOF and returns the hex digest and byte count.
func shaReader(r io.Reader) (string, int64, error) {
	h := sha256.New()
	n, err := io.Copy(h, r)
	return hex.EncodeToString(h.Sum(nil)), n, err
}
