package meshlettest

import (
	"errors"
	"io"
	"net"
	"runtime"
	"syscall"
	"testing"
)

// While a Restartable is killed, a dial to it is refused and no other listener can take its port; it starts again
// on the same address, and its cleanup frees the port. (The fallback bind with SO_REUSEADDR, after connections the
// server closed first, keeps the port only from listens on port 0, which a test cannot aim at one port.)
func TestRestartableHoldsPort(t *testing.T) {
	serve := func(l net.Listener) func() {
		done := make(chan struct{})
		go func() {
			defer close(done)
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				go func() { // the client closes first: no TIME_WAIT on the port (holdPort's strict bind)
					io.WriteString(c, "hi")
					io.Copy(io.Discard, c)
					c.Close()
				}()
			}
		}()
		return func() { <-done }
	}
	var addr string
	t.Run("cycle", func(t *testing.T) {
		r := NewRestartable(t, "", serve)
		r.Start(t)
		addr = r.Addr()
		for round := range 3 {
			if b := dialRead(t, addr); b != "hi" {
				t.Fatalf("round %d, started: read %q", round, b)
			}
			r.Kill()
			if _, err := net.Dial("tcp", addr); !errors.Is(err, syscall.ECONNREFUSED) {
				t.Fatalf("round %d, killed: dial %v, want connection refused", round, err)
			}
			if runtime.GOOS == "linux" {
				if ln, err := net.Listen("tcp", addr); err == nil {
					ln.Close()
					t.Fatalf("round %d, killed: another listener took %s", round, addr)
				}
			}
			r.Start(t)
			if r.Addr() != addr {
				t.Fatalf("round %d: restarted on %s, want %s", round, r.Addr(), addr)
			}
		}
		r.Kill()
	})
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("after the test's cleanup, %s is still held: %v", addr, err)
	}
	ln.Close()
}

func dialRead(t *testing.T, addr string) string {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	b := make([]byte, 2)
	if _, err := io.ReadFull(c, b); err != nil {
		t.Fatal(err)
	}
	return string(b)
}
