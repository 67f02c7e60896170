package proxy

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"sync"
	"time"

	"meshlet.dev/meshlet/resilience"
)

// tcpProxy carries opaque byte streams from its listener to the upstream's endpoints. Half-close is passed on:
// when one side stops writing, the other side's write half is closed and the opposite direction goes on.
type tcpProxy struct {
	cluster   *cluster
	ln        net.Listener
	direction string
	label     string
	log       *slog.Logger
	idle      time.Duration // limits.tcp_idle_timeout; 0: DefaultTCPIdleTimeout
	conns     connSet
}

func newTCPProxy(u *cluster, ln net.Listener, direction, label string, log *slog.Logger, idle time.Duration) *tcpProxy {
	if idle <= 0 {
		idle = DefaultTCPIdleTimeout
	}
	t := &tcpProxy{cluster: u, ln: ln, direction: direction, label: label, log: log, idle: idle}
	t.conns.wg.Add(1) // the accept loop (serve), counted before it runs so that a shutdown right after waits for it
	return t
}

// serve accepts connections until the listener is closed. Errors such as running out of file descriptors pause
// accepting briefly instead of ending it.
func (t *tcpProxy) serve() {
	defer t.conns.wg.Done()
	open := t.cluster.m.ConnectionsOpen.WithLabelValues(t.direction, t.label)
	total := t.cluster.m.Connections.WithLabelValues(t.direction, t.label)
	acceptEach(t.ln, t.label, t.log, func(c net.Conn) {
		// Counted while the accept loop's own count holds the WaitGroup above zero: a shutdown waits for it.
		if !t.conns.add(c) {
			c.Close() // accepted as the shutdown closed the last connections
			return
		}
		total.Inc()
		open.Inc()
		go func() {
			defer t.conns.done(c)
			defer open.Dec()
			t.handle(c)
		}()
	})
}

// testHookAccepted, when set (by tests, before the listener starts), runs after each Accept, before the connection
// is taken.
var testHookAccepted func()

// acceptEach hands each connection ln accepts to take until ln is closed. Errors such as running out of file
// descriptors pause accepting (5 ms, doubling up to 1 s) instead of ending it.
func acceptEach(ln net.Listener, label string, log *slog.Logger, take func(net.Conn)) {
	var delay time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			log.Warn("accept failed", "listener", label, "error", err, "retry_in", delay)
			time.Sleep(delay)
			continue
		}
		delay = 0
		if testHookAccepted != nil {
			testHookAccepted()
		}
		take(c)
	}
}

// handle proxies one client connection: inbound, its caller authorized first.
func (t *tcpProxy) handle(client net.Conn) {
	defer client.Close()
	if t.direction == "inbound" && !t.cluster.authorizeConn(client) {
		t.log.Debug("tcp caller refused by inbound.tls.allow", "remote", client.RemoteAddr().String())
		return
	}
	t.cluster.relay(client, t.idle, t.log)
}

// relay carries client's connection to an endpoint of the cluster and copies bytes both ways until either side
// closes or nothing moves for idle. A failed connect is tried on other endpoints (up to three attempts), since
// nothing has been sent yet. It does not close client.
func (c *cluster) relay(client net.Conn, idle time.Duration, log *slog.Logger) {
	var backend net.Conn
	var lastErr error
	var tried []*endpointState // for choose to avoid them
	for attempt := 0; attempt < 3 && backend == nil; attempt++ {
		st, end, err := c.endpoints.choose(tried)
		if err != nil {
			lastErr = err
			break
		}
		tried = append(tried, st)
		cfg := c.cfg.Load()
		tgt := c.targetOf(st, cfg)
		if port := appPortOf(client); port != 0 {
			if tgt = c.appPorts[port]; tgt == nil {
				end(resilience.ErrExcluded)
				lastErr = errNoDialTarget // cannot happen: the listener admits only service.ports
				break
			}
		}
		d := net.Dialer{Timeout: cfg.ConnectTimeout, KeepAlive: 30 * time.Second}
		conn, err := d.Dial("tcp", tgt.addr)
		if err == nil {
			ctx, cancel := context.WithTimeout(context.Background(), cfg.ConnectTimeout)
			conn, err = c.secureDial(ctx, conn, tgt, "")
			cancel()
		} else {
			err = &connectError{addr: tgt.addr, err: err}
		}
		if err != nil {
			// A connect failure counts against the endpoint and its breaker; a full descriptor budget does not.
			end(resilience.Outcome(nil, err))
			lastErr = err
			continue
		}
		backend = conn
		defer end(nil)
	}
	if backend == nil {
		reason := reasonConnect
		if errors.Is(lastErr, ErrNoEndpoint) {
			reason = reasonNoEndpoint
		}
		c.observe().failed(reason)
		log.Debug("tcp connection refused", "upstream", c.name, "error", lastErr)
		return
	}
	defer backend.Close()
	rx, tx := splice(client, backend, idle, func() {
		log.Debug("tcp connection idle: closed", "upstream", c.name, "remote", client.RemoteAddr().String(),
			"idle_timeout", idle.String())
	})
	c.observe().bytes(rx, tx)
}

// splice copies bytes both ways between client and backend until both directions end; when nothing moved either
// way for idle, it closes both (onIdle says so first). rx counts the bytes from client, tx those to it.
func splice(client, backend net.Conn, idle time.Duration, onIdle func()) (rx, tx int64) {
	w := newIdleWatch(idle, func() {
		onIdle()
		client.Close()
		backend.Close()
	})
	defer w.stop()
	done := make(chan struct{})
	go func() {
		rx = pipe(backend, client, w)
		close(done)
	}()
	tx = pipe(client, backend, w)
	<-done
	return rx, tx
}

// shutdown stops accepting and waits for open connections to end until ctx ends, then closes them.
func (t *tcpProxy) shutdown(ctx context.Context) error {
	t.ln.Close()
	return t.conns.drain(ctx)
}

// connSet is a listener's open connections and the goroutines serving them, for its shutdown. The zero value is
// ready.
type connSet struct {
	wg     sync.WaitGroup // the goroutines serving the connections (and whatever else the owner counts)
	mu     sync.Mutex
	open   map[net.Conn]struct{}
	closed bool // drain closed the open connections: no more are taken
}

// add counts c and the goroutine that will serve it (which calls done); false, when drain already closed the open
// connections, means c must be closed instead of served.
func (s *connSet) add(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	if s.open == nil {
		s.open = map[net.Conn]struct{}{}
	}
	s.open[c] = struct{}{}
	s.wg.Add(1)
	return true
}

// done ends what add counted for c.
func (s *connSet) done(c net.Conn) {
	s.mu.Lock()
	delete(s.open, c)
	s.mu.Unlock()
	s.wg.Done()
}

// drain waits for the goroutines until ctx ends, then closes the connections still open and waits for the
// goroutines again; ctx's error tells that it had to close some.
func (s *connSet) drain(ctx context.Context) error {
	done := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
	}
	s.mu.Lock()
	s.closed = true
	for c := range s.open {
		c.Close()
	}
	s.mu.Unlock()
	<-done
	return ctx.Err()
}
