package proxy

import (
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Connection limits: each data-plane listener (HTTP and TCP) holds at most its max_connections client connections
// open, and all of them together at most the process's file-descriptor budget. A connection beyond either is
// closed at accept and counted in meshlet_connections_refused_total, so that running out of file descriptors
// degrades to refusing new connections: the admin listener, Consul, the upstream connections and certificate
// reloads keep the descriptors they need.

// fdReserve is how many file descriptors are kept out of the budget for everything but client connections (admin,
// Consul, the log, certificate files, listeners).
const fdReserve = 128

// connBudget counts the client connections open on all data-plane listeners against max.
type connBudget struct {
	max      int64 // 0: no budget (the limit is unknown)
	open     atomic.Int64
	log      *slog.Logger
	lastWarn atomic.Int64 // unix second of the last warning
}

// newConnBudget sizes the budget from the open-file limit: half of what the reserve leaves, since a client
// connection may need an upstream connection too.
func newConnBudget(log *slog.Logger) *connBudget {
	b := &connBudget{log: log}
	if n := openFileLimit(); n > 0 {
		b.max = max((n-fdReserve)/2, 16)
	}
	return b
}

func (b *connBudget) take() bool {
	if b.max == 0 {
		return true
	}
	if b.open.Add(1) > b.max {
		b.open.Add(-1)
		if now := time.Now().Unix(); b.lastWarn.Swap(now) != now {
			b.log.Warn("connection refused: the file-descriptor budget of client connections is full",
				"budget", b.max, "hint", "raise the open-file limit (ulimit -n) or lower max_connections")
		}
		return false
	}
	return true
}

func (b *connBudget) give() {
	if b.max != 0 {
		b.open.Add(-1)
	}
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

// Accept returns the next connection that fits under the limits; it closes the others as they come.
func (l *connLimitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		select {
		case l.slots <- struct{}{}:
			if l.budget.take() {
				return &limitedConn{Conn: c, slots: l.slots, budget: l.budget}, nil
			}
			<-l.slots
		default:
		}
		l.refused.Inc()
		c.Close()
	}
}

// limitedConn gives its slot back when closed (once, however often Close is called).
type limitedConn struct {
	net.Conn
	once   sync.Once
	slots  chan struct{}
	budget *connBudget
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() {
		<-c.slots
		c.budget.give()
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
