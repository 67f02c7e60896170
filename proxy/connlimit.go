package proxy

import (
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"meshlet.dev/meshlet/grpcwire"
)

// Connection limits: each data-plane listener (HTTP and TCP) holds at most its max_connections client connections
// open, and all connections meshlet accepts or opens to endpoints together at most the process's file-descriptor
// budget: the open-file limit less a reserve. Client connections may take three quarters of the budget, so that
// upstream connections always have a share. A client connection beyond a limit is closed at accept and counted in
// meshlet_connections_refused_total; an upstream connection beyond the budget fails at once (503 / UNAVAILABLE,
// not held against the endpoint). So running out of file descriptors degrades to refusing, and the admin
// listener, Consul, the log and certificate reloads keep the descriptors they need.

// fdReserve is how many file descriptors are kept out of the budget for everything but client and upstream
// connections (admin, Consul, the log, certificate files, listeners).
const fdReserve = 128

// errFDBudget fails an upstream connection that the file-descriptor budget has no room for.
var errFDBudget error = &clientFault{answer{reason: reasonFDBudget, status: http.StatusServiceUnavailable, code: grpcwire.Unavailable,
	msg: "meshlet: out of file descriptors for upstream connections (raise the open-file limit)"}}

// connBudget counts connections against the file-descriptor budget.
type connBudget struct {
	max       int64 // all connections; 0: no budget (the limit is unknown)
	clientMax int64 // client connections
	open      atomic.Int64
	clients   atomic.Int64
	log       *slog.Logger
	lastWarn  atomic.Int64 // unix second of the last warning
}

func newConnBudget(log *slog.Logger) *connBudget {
	b := &connBudget{log: log}
	if n := openFileLimit(); n > 0 {
		b.max = max(n-fdReserve, 32)
		b.clientMax = b.max * 3 / 4
	}
	return b
}

// take counts a new connection (a client's, or one to an endpoint) if the budget has room for it.
func (b *connBudget) take(client bool) bool {
	if b.max == 0 {
		return true
	}
	if client && b.clients.Add(1) > b.clientMax {
		b.clients.Add(-1)
		b.warn("client")
		return false
	}
	if b.open.Add(1) > b.max {
		b.open.Add(-1)
		if client {
			b.clients.Add(-1)
		}
		b.warn("upstream")
		return false
	}
	return true
}

func (b *connBudget) give(client bool) {
	if b.max == 0 {
		return
	}
	b.open.Add(-1)
	if client {
		b.clients.Add(-1)
	}
}

func (b *connBudget) warn(kind string) {
	if now := time.Now().Unix(); b.lastWarn.Swap(now) != now {
		b.log.Warn("connection refused: the file-descriptor budget is full", "connection", kind,
			"budget", b.max, "client_budget", b.clientMax,
			"hint", "raise the open-file limit (ulimit -n) or lower max_connections")
	}
}

// upstreamConn counts a connection meshlet opened to an endpoint, or closes it and fails when the budget is full.
func (b *connBudget) upstreamConn(c net.Conn) (net.Conn, error) {
	if !b.take(false) {
		c.Close()
		return nil, errFDBudget
	}
	return &limitedConn{Conn: c, budget: b}, nil
}

// connLimitListener accepts at most cap(slots) connections open at once, within the process budget; one beyond
// that is closed at accept and counted in refused.
type connLimitListener struct {
	net.Listener
	slots   chan struct{}
	budget  *connBudget
	refused interface{ Inc() }
}

func newConnLimitListener(ln net.Listener, max int, budget *connBudget, refused interface{ Inc() }) *connLimitListener {
	return &connLimitListener{Listener: ln, slots: make(chan struct{}, max), budget: budget, refused: refused}
}

// twin returns a listener for ln that shares l's slots and budget: the two together accept at most cap(slots)
// connections at once.
func (l *connLimitListener) twin(ln net.Listener) *connLimitListener {
	return &connLimitListener{Listener: ln, slots: l.slots, budget: l.budget, refused: l.refused}
}

// Accept returns the next connection that fits under the limits; it closes the others as they come.
func (l *connLimitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		select {
		case l.slots <- struct{}{}:
			if l.budget.take(true) {
				return &limitedConn{Conn: c, slots: l.slots, budget: l.budget, client: true}, nil
			}
			<-l.slots
		default:
		}
		l.refused.Inc()
		c.Close()
	}
}

// limitedConn gives its listener slot (client connections) and its share of the budget back when closed (once,
// however often Close is called).
type limitedConn struct {
	net.Conn
	once   sync.Once
	slots  chan struct{} // nil for upstream connections
	budget *connBudget
	client bool
}

// NetConn returns the connection c counts (redirect.OriginalDst reads the socket through it).
func (c *limitedConn) NetConn() net.Conn { return c.Conn }

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() {
		if c.slots != nil {
			<-c.slots
		}
		c.budget.give(c.client)
	})
	return err
}

// CloseWrite passes a TCP half-close through.
func (c *limitedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// unlimited returns the connection under a limitedConn, for copies that use its io.ReaderFrom (splice).
func unlimited(c net.Conn) net.Conn {
	if l, ok := c.(*limitedConn); ok {
		return l.Conn
	}
	return c
}
