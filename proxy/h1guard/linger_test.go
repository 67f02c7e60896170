package h1guard

import (
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"time"
)

// TestListenerWaitJoinsLingeringCloses closes a connection in doubt while its client still holds it open: the
// lingering close runs (the client reads the half-close), Wait does not return before it ends, and returns once
// the client closes its side.
func TestListenerWaitJoinsLingeringCloses(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := NewListener(inner, Options{MaxHead: 1 << 10})
	defer ln.Close()
	if err := ln.Wait(context.Background()); err != nil {
		t.Fatalf("Wait with no lingering close: %v", err)
	}
	client, err := net.Dial("tcp", inner.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	g := c.(*Conn)
	g.BodyFailed() // a connection closed in doubt lingers
	if err := g.Close(); err != nil {
		t.Fatal(err)
	}
	_ = client.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := client.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("client read %d, %v; want the half-close (EOF)", n, err)
	}
	short, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := ln.Wait(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Wait returned %v while the close still lingers; want the context's deadline", err)
	}
	client.Close()
	done := make(chan error, 1)
	go func() { done <- ln.Wait(context.Background()) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Wait did not return after the lingering close ended")
	}
}
