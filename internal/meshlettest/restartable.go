package meshlettest

import (
	"net"
	"sync"
	"testing"
	"time"
)

// Restartable is a server that a test can kill, as if its process died (listener closed, every connection it
// accepted reset), and start again on the same address. While killed, a dial to it is refused and its port stays
// bound, so that another server of the test binary cannot take it (on Linux: holdPort). serve serves the listener
// it is given until the function it returns is called, which stops it and waits for its goroutines.
type Restartable struct {
	serve func(net.Listener) (stop func())

	mu    sync.Mutex
	addr  string
	ln    net.Listener
	conns map[net.Conn]struct{} // nil while killed
	stop  func()
	hold  func() // while killed: releases the port (holdPort)
}

// NewRestartable returns a Restartable for serve on addr ("": a new loopback port when it first starts), not yet
// started; it is killed when the test ends.
func NewRestartable(t testing.TB, addr string, serve func(net.Listener) (stop func())) *Restartable {
	r := &Restartable{serve: serve, addr: addr}
	t.Cleanup(func() {
		r.Kill()
		r.mu.Lock()
		defer r.mu.Unlock()
		r.release()
	})
	return r
}

// Start serves on r's address. A restart may find the port briefly busy: it tries again every 20 ms, 100 times at
// most.
func (r *Restartable) Start(t testing.TB) {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	r.release()
	addr := r.addr
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	var ln net.Listener
	var err error
	for range 100 {
		if ln, err = net.Listen("tcp", addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("starting a server on %s: %v", addr, err)
	}
	r.addr, r.ln, r.conns = ln.Addr().String(), ln, map[net.Conn]struct{}{}
	r.stop = r.serve(&restartableListener{Listener: ln, r: r})
}

// Kill closes the listener and resets every connection, then stops the server and holds its port. Idempotent.
func (r *Restartable) Kill() {
	r.mu.Lock()
	if r.conns == nil {
		r.mu.Unlock()
		return
	}
	r.ln.Close()
	for c := range r.conns {
		if tc, ok := c.(*net.TCPConn); ok {
			tc.SetLinger(0) // close sends RST, as for a killed process
		}
		c.Close()
	}
	r.conns = nil
	stop := r.stop
	r.mu.Unlock()
	stop()
	// The listener's socket closes once its Accept has returned (stop waited for it). Then hold the port: a dial is
	// refused, and no other server of the test takes it meanwhile.
	hold := holdPort(r.Addr())
	r.mu.Lock()
	r.hold = hold
	r.mu.Unlock()
}

// release frees the port that Kill held, if any. mu held.
func (r *Restartable) release() {
	if r.hold != nil {
		r.hold()
		r.hold = nil
	}
}

// Addr is the address r serves on ("" before a first start on a new port).
func (r *Restartable) Addr() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.addr
}

// restartableListener records the connections of its server so that Kill can reset them.
type restartableListener struct {
	net.Listener
	r *Restartable
}

func (l *restartableListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	l.r.mu.Lock()
	defer l.r.mu.Unlock()
	if l.r.conns == nil {
		c.Close()
		return nil, net.ErrClosed
	}
	l.r.conns[c] = struct{}{}
	return c, nil
}
