package e2e_test

// Helpers shared by the HTTP, TCP, CLI and lifecycle end-to-end tests: config building, the two-sidecar topology,
// test servers and clients, and label-aware metric lookups.

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"math/rand/v2"
	"testing"
	"time"

	"meshlet.dev/meshlet/internal/meshlettest"
	"meshlet.dev/meshlet/proxy"
)

// e2eUpstream is one entry of upstreams in an e2eConfig. Empty fields are left out of the config; endpoints is
// always written (an empty list when there are none).
type e2eUpstream struct {
	Name, Listen, Protocol, Peer, LB, Timeout string
	Endpoints                                 []string
}

// e2eConfig is a meshlet config file. Empty fields are left out of the config; log.level defaults to info,
// drain settings to drain_delay 0s, drain_timeout 5s. Durations are Go duration strings.
type e2eConfig struct {
	Name, Address, Protocol       string // service
	InboundListen, InboundTimeout string
	OutboundListen                string
	Upstreams                     []e2eUpstream
	Admin                         string
	DrainDelay, DrainTimeout      string
	LogLevel                      string
	AccessLog                     bool
}

// file is c as the config types (meshlettest.File).
func (c e2eConfig) file() meshlettest.File {
	var f meshlettest.File
	f.Service.Name, f.Service.Address, f.Service.Protocol = c.Name, c.Address, c.Protocol
	f.Inbound.Listen, f.Inbound.Timeout = c.InboundListen, mustDuration(c.InboundTimeout, "")
	f.Outbound.Listen = c.OutboundListen
	for _, u := range c.Upstreams {
		up := proxy.UpstreamConfig{Name: u.Name, Listen: u.Listen, Protocol: u.Protocol, Peer: u.Peer, LB: u.LB,
			Timeout: mustDuration(u.Timeout, ""), Endpoints: u.Endpoints}
		if up.Endpoints == nil {
			up.Endpoints = []string{}
		}
		f.Upstreams = append(f.Upstreams, up)
	}
	f.Admin.Listen = c.Admin
	f.Log = meshlettest.Log{Level: cmp.Or(c.LogLevel, "info"), AccessLog: c.AccessLog}
	f.Shutdown.DrainDelay = meshlettest.Duration(mustDuration(c.DrainDelay, "0s"))
	f.Shutdown.DrainTimeout = mustDuration(c.DrainTimeout, "5s")
	return f
}

// yaml renders c (meshlettest.File.YAML).
func (c e2eConfig) yaml() string {
	y, err := c.file().YAML()
	if err != nil {
		panic(err) // the config types always marshal
	}
	return y
}

// mustDuration parses s (def when empty; zero when both are empty); a test's bad duration panics.
func mustDuration(s, def string) time.Duration {
	s = cmp.Or(s, def)
	if s == "" {
		return 0
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		panic(err)
	}
	return d
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
