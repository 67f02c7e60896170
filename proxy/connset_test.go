package proxy

import (
	"context"
	"errors"
	"net"
	"os"
	"sync"
	"testing"
	"time"
)

// TestConnSetDrain: drain waits for the counted connections, closes those still open when its context ends, and
// from then on refuses new ones (a connection accepted as the listener closed is not served past the drain).
func TestConnSetDrain(t *testing.T) {
	a, b := net.Pipe()
	defer b.Close()
	var s connSet
	if !s.add(a) {
		t.Fatal("add refused before any drain")
	}
	served := make(chan struct{})
	go func() {
		defer close(served)
		defer s.done(a)
		a.Read(make([]byte, 1)) // until drain closes it
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := s.drain(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("drain = %v, want the context's deadline (it had to close a connection)", err)
	}
	<-served
	c, d := net.Pipe()
	defer c.Close()
	defer d.Close()
	if s.add(c) {
		t.Fatal("add took a connection after drain closed the open ones")
	}
}

// TestTCPShutdownWhileAccepting: a connection accepted just as a tcp listener shuts down is either served and
// closed by the shutdown or refused; it is never left open after Shutdown returns (the accept loop was not waited
// for, and its last connection was counted after the drain's wait had returned).
func TestTCPShutdownWhileAccepting(t *testing.T) {
	echo := startEcho(t)
	release := make(chan struct{})
	var once sync.Once
	testHookAccepted = func() {
		once.Do(func() {
			select {
			case <-release:
			case <-time.After(5 * time.Second):
			}
		})
	}
	defer func() { testHookAccepted = nil }()
	cfg := Config{Service: ServiceConfig{Name: "web"}, Upstreams: []UpstreamConfig{
		{Name: "echo", Listen: "127.0.0.1:0", Protocol: ProtocolTCP, Endpoints: []string{echo}}}}
	p, _ := startProxy(t, cfg) // its cleanup's Shutdown finds the proxy stopped below
	c, err := net.DialTimeout("tcp", p.Addrs()["upstream/echo"], time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		p.Shutdown(ctx)
	}()
	time.Sleep(100 * time.Millisecond) // the shutdown closed the listener and waits (or, before the fix, returned)
	close(release)
	<-stopped
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Read(make([]byte, 1)); errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatal("the connection accepted during the shutdown is still served after Shutdown returned")
	}
}
