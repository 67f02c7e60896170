package proxy

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"meshlet.dev/meshlet/metrics"
	"meshlet.dev/meshlet/proxy/h1guard"
	"meshlet.dev/meshlet/redirect"
)

// TransparentConfig is outbound.transparent: the outbound listener takes the connections `meshlet
// redirect-traffic` sends it and carries each by its original destination.
type TransparentConfig struct {
	// Enabled turns it on. Default false: the outbound listener only routes HTTP by name.
	Enabled bool `yaml:"enabled" json:"enabled"`
	// MeshDestinationsOnly refuses a connection to a destination that is no upstream's address. Default false:
	// it passes through to its destination unchanged (counted as passthrough).
	MeshDestinationsOnly bool `yaml:"mesh_destinations_only" json:"mesh_destinations_only"`
	// DetectTimeout bounds how long an upstream of protocol auto waits for a redirected connection's first
	// bytes; a client that sends nothing by then (a server-first protocol) is relayed opaque. Default 1s.
	DetectTimeout time.Duration `yaml:"detect_timeout" json:"detect_timeout"`
	// ConsulServices makes every service of the Consul mesh (every service with a sidecar registered) an
	// upstream, reached at its virtual IPs and its instances' addresses, unless an upstream of the config
	// already is it. Default true with Consul discovery; the sidecar reads it (the proxy sees the upstreams).
	ConsulServices *bool `yaml:"consul_services" json:"consul_services"`
	// SubsetSize is the subset_size of the implicit upstreams (the services of the Consul mesh, which the config
	// does not list and cannot give one): each is called at that many of its endpoints at most. 0 (default): every
	// endpoint.
	SubsetSize int `yaml:"subset_size" json:"subset_size,omitempty"`
}

// address is one entry of upstreams[].addresses: a network (a single IP is a /32 or /128) and a port (0: any).
type address struct {
	prefix netip.Prefix
	port   uint16
}

// parseAddress reads "198.18.0.5", "198.18.0.0/24", "198.18.0.5:80", "[2001:db8::5]:80", "2001:db8::/64".
func parseAddress(s string) (address, error) {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		if ap.Port() == 0 {
			return address{}, fmt.Errorf("%q: port 0", s)
		}
		a := ap.Addr().Unmap()
		return address{netip.PrefixFrom(a, a.BitLen()), ap.Port()}, nil
	}
	if p, err := netip.ParsePrefix(s); err == nil {
		return address{p.Masked(), 0}, nil
	}
	if a, err := netip.ParseAddr(s); err == nil && a.Zone() == "" {
		a = a.Unmap()
		return address{netip.PrefixFrom(a, a.BitLen()), 0}, nil
	}
	return address{}, fmt.Errorf("%q must be an IP, a CIDR or ip:port", s)
}

// CanonicalAddress is one spelling of an upstreams[].addresses entry: two entries that claim the same
// destinations have the same one.
func CanonicalAddress(s string) (string, error) {
	a, err := parseAddress(s)
	if err != nil {
		return "", err
	}
	return a.String(), nil
}

func (a address) String() string {
	if a.port == 0 {
		return a.prefix.String()
	}
	if a.prefix.IsSingleIP() {
		return netip.AddrPortFrom(a.prefix.Addr(), a.port).String()
	}
	return a.prefix.String() + " port " + strconv.Itoa(int(a.port))
}

// addrRoute sends connections to an address to an upstream.
type addrRoute struct {
	address
	entry *upstreamEntry
}

// addrTable finds the cluster of an original destination: the most specific address wins (a port over any port,
// then the longest prefix). It is immutable: a reload builds a new one.
type addrTable []addrRoute

func newAddrTable(ups map[string]*upstreamEntry) addrTable {
	var t addrTable
	for _, e := range ups {
		for _, s := range e.cluster.cfg.Load().Addresses {
			if a, err := parseAddress(s); err == nil { // validated already
				t = append(t, addrRoute{a, e})
			}
		}
	}
	slices.SortFunc(t, func(x, y addrRoute) int {
		if (x.port != 0) != (y.port != 0) {
			if x.port != 0 {
				return -1 // a route with a port first
			}
			return 1
		}
		if c := cmp.Compare(y.prefix.Bits(), x.prefix.Bits()); c != 0 {
			return c
		}
		return cmp.Compare(x.entry.cluster.name, y.entry.cluster.name)
	})
	return t
}

// lookup returns the upstream of dst, or nil when dst is no upstream's.
func (t addrTable) lookup(dst netip.AddrPort) *upstreamEntry {
	a := dst.Addr().Unmap()
	for _, r := range t {
		if (r.port == 0 || r.port == dst.Port()) && r.prefix.Contains(a) {
			return r.entry
		}
	}
	return nil
}

// transparentListener is the outbound listener with outbound.transparent on. It reads each connection's
// original destination and carries it: to the upstream whose address it is (HTTP upstreams through the HTTP
// server below, with the cluster fixed for the connection; TCP upstreams relayed), through to its destination
// when it is outside the mesh (or refused with mesh_destinations_only), and a connection made to the listener
// itself (not redirected) to the name-routed HTTP server. A destination that is one of meshlet's own listeners
// is refused: meshlet never loops.
type transparentListener struct {
	p        *Proxy
	lns      []net.Listener // accept the redirected connections: outbound.listen, and its loopback twin
	http     *httpListener
	conns    *connQueue // the connections handed to http
	outcomes *prometheus.CounterVec
	log      *slog.Logger
	idle     time.Duration // tcp_idle_timeout of relayed and passed-through connections
	meshOnly bool          // outbound.transparent.mesh_destinations_only (changes only on restart)
	detect   time.Duration // outbound.transparent.detect_timeout

	open connSet // relayed and passed-through connections; its wg counts every goroutine of the listener
}

func (p *Proxy) newTransparentListener(lns []net.Listener, lim ListenerLimits) *transparentListener {
	q := newConnQueue(lns[0].Addr())
	t := &transparentListener{p: p, lns: lns, conns: q, outcomes: p.transparentOutcomes, log: p.log,
		idle: lim.TCPIdleTimeout, meshOnly: p.cfg.Outbound.Transparent.MeshDestinationsOnly,
		detect: p.cfg.Outbound.Transparent.DetectTimeout}
	if t.detect <= 0 {
		t.detect = DefaultDetectTimeout
	}
	if t.idle <= 0 {
		t.idle = DefaultTCPIdleTimeout
	}
	t.open.wg.Add(len(lns)) // the HTTP server and the loopback twin's accept loop (serve)
	t.http = p.newHTTPListener(q, metrics.Outbound, "outbound", lim, http.HandlerFunc(p.serveTransparent))
	t.http.srv.ConnContext = func(ctx context.Context, c net.Conn) context.Context {
		ctx = h1guard.ConnContext(ctx, c)
		if g, ok := c.(*h1guard.Conn); ok {
			c = g.Conn
		}
		if rc, ok := c.(*routedConn); ok && rc.cluster != nil {
			ctx = context.WithValue(ctx, routedKey{}, rc.cluster)
		}
		return ctx
	}
	return t
}

// routedConn is a redirected connection handed to the HTTP server with the cluster its destination belongs to
// (nil: routed by name).
type routedConn struct {
	carriedConn
	cluster *cluster
}

// carriedConn wraps an accepted connection to carry a fact about it up to the HTTP server (routedConn,
// appPortConn); the rest passes through: NetConn (for OriginalDst and appPortOf) and CloseWrite (upgraded tunnels,
// the guard's lingering close).
type carriedConn struct{ net.Conn }

// NetConn returns the wrapped connection.
func (c carriedConn) NetConn() net.Conn { return c.Conn }

// CloseWrite half-closes the wrapped connection when it can, and else closes it.
func (c carriedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Conn.Close()
}

type routedKey struct{}

// serveTransparent serves an HTTP request of the transparent listener: on the cluster its connection's original
// destination belongs to, else by name.
func (p *Proxy) serveTransparent(w http.ResponseWriter, r *http.Request) {
	if c, ok := r.Context().Value(routedKey{}).(*cluster); ok {
		c.serveHTTP(w, r, p.accessLog)
		return
	}
	p.serveRouted(w, r)
}

func (t *transparentListener) addr() string { return t.lns[0].Addr().String() }

func (t *transparentListener) closeUnserved() {
	t.closeListeners()
	t.open.wg.Add(-len(t.lns)) // the goroutines serve would have run
}

func (t *transparentListener) closeListeners() {
	for _, ln := range t.lns {
		ln.Close()
	}
}

// serve runs the HTTP server and the accept loops; they were counted in open.wg when t was made, so that a
// shutdown right after the start waits for them too (a WaitGroup's Add must not race with its Wait).
func (t *transparentListener) serve() {
	go func() {
		defer t.open.wg.Done()
		t.http.serve()
	}()
	for _, ln := range t.lns[1:] {
		go func() {
			defer t.open.wg.Done()
			t.accept(ln)
		}()
	}
	t.accept(t.lns[0])
	// The queue is the HTTP server's listener: its Shutdown closes it. Closing it here would race with that
	// shutdown, and the server would report the closed listener as an error.
}

// accept takes connections from ln until it is closed.
func (t *transparentListener) accept(ln net.Listener) {
	acceptEach(ln, "outbound", t.log, func(c net.Conn) {
		t.open.wg.Add(1)
		go func() {
			defer t.open.wg.Done()
			t.take(c)
		}()
	})
}

// take decides where one accepted connection goes.
func (t *transparentListener) take(c net.Conn) {
	dst, err := redirect.OriginalDst(c)
	switch {
	case errors.Is(err, redirect.ErrNotRedirected):
		t.outcomes.WithLabelValues(metrics.OutboundDirect).Inc()
		t.toHTTP(c, nil)
		return
	case err != nil:
		t.refuse(c, "no original destination", err.Error())
		return
	case t.p.isOwnListener(dst):
		t.refuse(c, "destination is meshlet's own listener", dst.String())
		return
	}
	if e := (*t.p.addrs.Load()).lookup(dst); e != nil {
		t.outcomes.WithLabelValues(metrics.OutboundMesh).Inc()
		t.toUpstream(c, e.cluster)
		return
	}
	if t.meshOnly || t.p.meshOnly.Load() {
		t.refuse(c, "destination outside the mesh (outbound.transparent.mesh_destinations_only, or Consul's mesh entry)", dst.String())
		return
	}
	t.outcomes.WithLabelValues(metrics.OutboundPassthrough).Inc()
	defer c.Close()
	if !t.track(c) {
		return
	}
	defer t.untrack(c)
	t.passthrough(c, dst)
}

// toUpstream carries c to cluster cl: relayed (tcp), to the HTTP server (the HTTP family), or by what its first
// bytes say (auto). An implicit upstream becomes active at its first connection.
func (t *transparentListener) toUpstream(c net.Conn, cl *cluster) {
	cl.ensureActive()
	relay := cl.protocol == ProtocolTCP
	if cl.protocol == ProtocolAuto {
		var kind string
		kind, c = detect(c, t.detect)
		t.p.detections.WithLabelValues(kind).Inc()
		if kind == DetectClosed {
			c.Close()
			return
		}
		relay = kind != DetectHTTP1 && kind != DetectHTTP2
	}
	if relay {
		defer c.Close()
		if !t.track(c) {
			return
		}
		defer t.untrack(c)
		cl.relay(c, t.idle, t.log)
		return
	}
	t.toHTTP(c, cl)
}

// toHTTP hands c to the HTTP server, fixed to cluster cl (nil: routed by name).
func (t *transparentListener) toHTTP(c net.Conn, cl *cluster) {
	if !t.conns.put(&routedConn{carriedConn: carriedConn{c}, cluster: cl}) {
		c.Close() // shutting down
	}
}

func (t *transparentListener) refuse(c net.Conn, why, detail string) {
	t.outcomes.WithLabelValues(metrics.OutboundRefused).Inc()
	t.p.refusedLog.connection(metrics.Outbound, "outbound", c.RemoteAddr().String(), why, detail)
	c.Close()
}

// passthrough carries c to its original destination dst unchanged. meshlet's own connection is not redirected
// (redirect-traffic leaves meshlet's UID alone).
func (t *transparentListener) passthrough(c net.Conn, dst netip.AddrPort) {
	d := net.Dialer{Timeout: DefaultConnectTimeout, KeepAlive: 30 * time.Second}
	backend, err := d.Dial("tcp", dst.String())
	if err == nil && t.p.budget != nil {
		backend, err = t.p.budget.upstreamConn(backend) // the file-descriptor budget, as every upstream connection
	}
	if err != nil {
		t.log.Debug("passthrough connect failed", "destination", dst.String(), "error", err.Error())
		return
	}
	defer backend.Close()
	splice(c, backend, t.idle, func() {
		t.log.Debug("passthrough connection idle: closed", "destination", dst.String(), "idle_timeout", t.idle.String())
	})
}

// track records a relayed or passed-through connection while it is open (the HTTP server counts its own in
// meshlet_connections_open and meshlet_connections_total); false: the listener's shutdown already closed the
// open connections, and c is not served. untrack ends what track recorded.
func (t *transparentListener) track(c net.Conn) bool {
	if !t.open.add(c) {
		return false
	}
	t.p.m.Connections.WithLabelValues(metrics.Outbound, "outbound").Inc()
	t.p.m.ConnectionsOpen.WithLabelValues(metrics.Outbound, "outbound").Inc()
	return true
}

func (t *transparentListener) untrack(c net.Conn) {
	t.open.done(c)
	t.p.m.ConnectionsOpen.WithLabelValues(metrics.Outbound, "outbound").Dec()
}

// shutdown stops accepting, shuts the HTTP server down and waits for relayed connections until ctx ends, then
// closes what is left.
func (t *transparentListener) shutdown(ctx context.Context) error {
	t.closeListeners()
	err := t.http.shutdown(ctx)
	return errors.Join(err, t.open.drain(ctx))
}

// SetMeshDestinationsOnly refuses destinations outside the mesh as outbound.transparent.mesh_destinations_only
// does, or stops doing so (the file's setting stays in force either way): Consul's mesh entry's
// TransparentProxy.MeshDestinationsOnly, applied at run time.
func (p *Proxy) SetMeshDestinationsOnly(v bool) { p.meshOnly.Store(v) }

// isOwnListener reports whether dst is one of meshlet's listeners (its port, on a loopback or local address).
func (p *Proxy) isOwnListener(dst netip.AddrPort) bool {
	p.mu.Lock()
	var match bool
	for _, l := range p.listeners {
		if ap, err := netip.ParseAddrPort(l.addr()); err == nil && ap.Port() == dst.Port() {
			match = true
			break
		}
	}
	p.mu.Unlock()
	if !match {
		return false
	}
	a := dst.Addr().Unmap()
	if a.IsLoopback() || a.IsUnspecified() {
		return true
	}
	ifaddrs, err := net.InterfaceAddrs()
	if err != nil {
		return true // cannot tell: refuse
	}
	for _, ia := range ifaddrs {
		if n, ok := ia.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(n.IP); ok && ip.Unmap() == a {
				return true
			}
		}
	}
	return false
}

// connQueue is a net.Listener whose connections are handed to it (put) rather than accepted from a socket.
type connQueue struct {
	addr   net.Addr
	ch     chan net.Conn
	closed chan struct{}
	once   sync.Once
}

func newConnQueue(addr net.Addr) *connQueue {
	return &connQueue{addr: addr, ch: make(chan net.Conn), closed: make(chan struct{})}
}

// put hands c to Accept; false once the queue is closed.
func (q *connQueue) put(c net.Conn) bool {
	select {
	case q.ch <- c:
		return true
	case <-q.closed:
		return false
	}
}

func (q *connQueue) Accept() (net.Conn, error) {
	select {
	case c := <-q.ch:
		return c, nil
	case <-q.closed:
		return nil, net.ErrClosed
	}
}

func (q *connQueue) Close() error {
	q.once.Do(func() { close(q.closed) })
	return nil
}

func (q *connQueue) Addr() net.Addr { return q.addr }

// loopbackTwin listens on the other loopback address (::1 for 127.0.0.1, and back) at the port of ln, when ln
// listens on a loopback address: the rules redirect IPv6 connections to ::1 and IPv4 ones to 127.0.0.1. nil when
// ln is on another address, or the twin cannot listen (a host without IPv6: no IPv6 connection is redirected).
func loopbackTwin(ln net.Listener, log *slog.Logger) net.Listener {
	ap, err := netip.ParseAddrPort(ln.Addr().String())
	if err != nil || !ap.Addr().IsLoopback() {
		return nil
	}
	twin := netip.IPv6Loopback()
	if ap.Addr().Is6() && !ap.Addr().Is4In6() {
		twin = netip.AddrFrom4([4]byte{127, 0, 0, 1})
	}
	l, err := net.Listen("tcp", netip.AddrPortFrom(twin, ap.Port()).String())
	if err != nil {
		log.Warn("transparent outbound: no listener on the other loopback address; connections of its family are not taken",
			"address", netip.AddrPortFrom(twin, ap.Port()).String(), "error", err.Error())
		return nil
	}
	return l
}
