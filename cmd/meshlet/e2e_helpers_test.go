package main_test

// Helpers shared by the HTTP, TCP, CLI and lifecycle end-to-end tests: config building, the two-sidecar topology,
// test servers and clients, and label-aware metric lookups.

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"
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

// rewriteConfig replaces the config file of p (for reload tests).
func (p *meshletProc) rewriteConfig(t testing.TB, config string) {
	t.Helper()
	if err := os.WriteFile(p.configPath, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
}

// topology names how the client-side meshlet reaches the app: "sidecar" is client → A → B → app (A's upstream has
// peer: sidecar and B's inbound listener as endpoint); "app" is client → A → app (peer: app).
const (
	topoSidecar = "sidecar"
	topoApp     = "app"
)

// e2eMesh is a started topology. Listen is A's per-upstream listener for upstream "api".
type e2eMesh struct {
	A, B    *meshletProc // B is nil for topoApp
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
	m := &e2eMesh{Listen: freeAddr(t)}
	up := e2eUpstream{Name: "api", Listen: m.Listen, Protocol: protocol}
	switch topo {
	case topoSidecar:
		m.Inbound = freeAddr(t)
		m.BCfg = e2eConfig{Name: "api", Address: appAddr, Protocol: protocol, InboundListen: m.Inbound,
			Admin: freeAddr(t)}
		if opts.b != nil {
			opts.b(&m.BCfg)
		}
		m.B = startMeshlet(t, m.BCfg.Admin, m.BCfg.yaml())
		up.Peer, up.Endpoints = "sidecar", []string{m.Inbound}
	case topoApp:
		up.Peer, up.Endpoints = "app", []string{appAddr}
	default:
		t.Fatalf("unknown topology %q", topo)
	}
	m.ACfg = e2eConfig{Name: "web", Upstreams: []e2eUpstream{up}, Admin: freeAddr(t)}
	if opts.a != nil {
		opts.a(&m.ACfg)
	}
	m.A = startMeshlet(t, m.ACfg.Admin, m.ACfg.yaml())
	return m
}

// startBackend starts an httptest server on loopback. With h2c it accepts HTTP/1.1 and prior-knowledge h2c.
// newConns, if not nil, counts accepted connections.
func startBackend(t testing.TB, h http.Handler, h2c bool, newConns *atomic.Int64) *httptest.Server {
	t.Helper()
	s := httptest.NewUnstartedServer(h)
	if h2c {
		var p http.Protocols
		p.SetHTTP1(true)
		p.SetUnencryptedHTTP2(true)
		s.Config.Protocols = &p
	}
	if newConns != nil {
		s.Config.ConnState = func(_ net.Conn, st http.ConnState) {
			if st == http.StateNew {
				newConns.Add(1)
			}
		}
	}
	s.Start()
	t.Cleanup(s.Close)
	return s
}

// hostOf returns host:port of an httptest server.
func hostOf(s *httptest.Server) string { return s.Listener.Addr().String() }

// countingDialer returns a DialContext that counts dials in n.
func countingDialer(n *atomic.Int64) func(ctx context.Context, network, addr string) (net.Conn, error) {
	var d net.Dialer
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		n.Add(1)
		return d.DialContext(ctx, network, addr)
	}
}

// h1Client is an HTTP/1.1 client with at most one connection per host; dials (may be nil) counts its dials.
func h1Client(dials *atomic.Int64) *http.Client {
	if dials == nil {
		dials = new(atomic.Int64)
	}
	tr := &http.Transport{
		DialContext:         countingDialer(dials),
		MaxConnsPerHost:     1,
		MaxIdleConnsPerHost: 1,
		DisableCompression:  true,
	}
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

// h2cClient is a prior-knowledge HTTP/2 cleartext client; dials (may be nil) counts its dials.
func h2cClient(dials *atomic.Int64) *http.Client {
	if dials == nil {
		dials = new(atomic.Int64)
	}
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	tr := &http.Transport{
		Protocols:          &p,
		DialContext:        countingDialer(dials),
		DisableCompression: true,
	}
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
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

// getBody does a GET and returns status and body.
func getBody(t testing.TB, c *http.Client, url string) (int, string) {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: reading body: %v", url, err)
	}
	return resp.StatusCode, string(b)
}

// metricSum returns the sum of the samples of metric name (exact name, e.g. meshlet_requests_total) whose labels
// include every pair in labels. Unlike metricValue it does not depend on the order of labels in the exposition.
func (p *meshletProc) metricSum(t testing.TB, name string, labels map[string]string) float64 {
	t.Helper()
	_, body := p.adminGet(t, "/metrics")
	var sum float64
	sc := bufio.NewScanner(strings.NewReader(body))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name) || strings.HasPrefix(line, "#") {
			continue
		}
		rest := line[len(name):]
		var lbls map[string]string
		switch {
		case strings.HasPrefix(rest, "{"):
			end := strings.LastIndexByte(rest, '}')
			if end < 0 {
				continue
			}
			lbls = parseLabels(rest[1:end])
			rest = rest[end+1:]
		case strings.HasPrefix(rest, " "):
		default:
			continue // a longer metric name
		}
		if !labelsMatch(lbls, labels) {
			continue
		}
		var v float64
		if _, err := fmt.Sscan(strings.TrimSpace(rest), &v); err == nil {
			sum += v
		}
	}
	return sum
}

func labelsMatch(have, want map[string]string) bool {
	for k, v := range want {
		if hv, ok := have[k]; !ok || hv != v {
			if !(v == "" && !ok) {
				return false
			}
		}
	}
	return true
}

// parseLabels parses `a="x",b="y"` (with \" and \\ escapes in values).
func parseLabels(s string) map[string]string {
	m := map[string]string{}
	for len(s) > 0 {
		eq := strings.IndexByte(s, '=')
		if eq < 0 || eq+1 >= len(s) || s[eq+1] != '"' {
			return m
		}
		key := strings.TrimSpace(s[:eq])
		var val strings.Builder
		i := eq + 2
		for ; i < len(s) && s[i] != '"'; i++ {
			if s[i] == '\\' && i+1 < len(s) {
				i++
				if s[i] == 'n' {
					val.WriteByte('\n')
					continue
				}
			}
			val.WriteByte(s[i])
		}
		m[key] = val.String()
		s = strings.TrimPrefix(s[min(i+1, len(s)):], ",")
	}
	return m
}

// eventually polls cond every 20ms until it returns true or timeout passes; it fails the test with msg then.
func eventually(t testing.TB, timeout time.Duration, msg string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %v: %s", timeout, msg)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// rawRequest writes req (a complete HTTP/1.1 request) on a new connection to addr and returns the parsed response
// with its body read.
func rawRequest(t testing.TB, addr, req string) (*http.Response, string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("reading response to %q: %v", req, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

// dialHeld opens a TCP connection to addr that stays open until the test ends (or the caller closes it).
func dialHeld(t testing.TB, addr string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}
