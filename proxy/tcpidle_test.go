package proxy

import (
	"bytes"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"meshlet.dev/meshlet/internal/syncbuf"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"meshlet.dev/meshlet/metrics"
	"meshlet.dev/meshlet/mtls"
)

// startEcho runs a loopback TCP server that echoes every connection until the client closes it.
func startEcho(t testing.TB) string {
	return startTCPServer(t, func(c net.Conn) { io.Copy(c, c) })
}

// startSink runs a loopback TCP server that reads every connection and never writes.
func startSink(t testing.TB) string {
	return startTCPServer(t, func(c net.Conn) { io.Copy(io.Discard, c) })
}

// startTCPServer runs handle for every connection of a loopback listener (then closes it) until the test ends.
func startTCPServer(t testing.TB, handle func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	open := map[net.Conn]struct{}{}
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			open[c] = struct{}{}
			mu.Unlock()
			wg.Go(func() {
				handle(c)
				c.Close()
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for c := range open {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

// TestTCPIdleTimeout: a TCP-proxied connection with no byte either way for limits.tcp_idle_timeout is closed, and
// its max_connections slot is free again; a connection with bytes in one direction only stays open.
func TestTCPIdleTimeout(t *testing.T) {
	const idle = 300 * time.Millisecond
	cfg := Config{Service: ServiceConfig{Name: "web"},
		Outbound: OutboundConfig{Limits: ListenerLimits{TCPIdleTimeout: idle, MaxConnections: 1}},
		Upstreams: []UpstreamConfig{
			{Name: "echo", Listen: "127.0.0.1:0", Protocol: ProtocolTCP, Endpoints: []string{startEcho(t)}},
			{Name: "sink", Listen: "127.0.0.1:0", Protocol: ProtocolTCP, Endpoints: []string{startSink(t)}},
		}}
	p, _ := startProxy(t, cfg)
	dial := func(t *testing.T, upstream string) net.Conn {
		c, err := net.DialTimeout("tcp", p.Addrs()["upstream/"+upstream], 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	write := func(t *testing.T, c net.Conn, msg string) {
		t.Helper()
		c.SetWriteDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.WriteString(c, msg); err != nil {
			t.Fatal(err)
		}
	}
	// closedAfter waits (10s at most) for the proxy to close c and returns how long after since that was.
	closedAfter := func(t *testing.T, c net.Conn, since time.Time) time.Duration {
		t.Helper()
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err := c.Read(make([]byte, 1))
		if errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatal("the idle connection was not closed")
		}
		return time.Since(since)
	}
	// stillOpen checks that the proxy has not closed c: a read waits for its deadline.
	stillOpen := func(t *testing.T, c net.Conn) {
		t.Helper()
		c.SetReadDeadline(time.Now().Add(idle / 4))
		if _, err := c.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("the connection was closed while bytes flowed: %v", err)
		}
	}
	t.Run("idle connection closed, slot free again", func(t *testing.T) {
		c := dial(t, "echo")
		write(t, c, "hello")
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(c, make([]byte, 5)); err != nil {
			t.Fatal(err)
		}
		last := time.Now()
		if took := closedAfter(t, c, last); took < idle-50*time.Millisecond || took > idle+3*time.Second {
			t.Fatalf("closed %v after the last byte, want about %v", took, idle)
		}
		// max_connections is 1: the closed connection gave its slot back.
		eventuallyEchoes(t, p.Addrs()["upstream/echo"])
	})
	t.Run("bytes one way only keep it open", func(t *testing.T) {
		c := dial(t, "sink") // the sink never answers: only the client's direction moves
		tick := time.NewTicker(idle / 4)
		defer tick.Stop()
		for end := time.Now().Add(4 * idle); time.Now().Before(end); {
			<-tick.C
			write(t, c, ".")
		}
		stillOpen(t, c)
		last := time.Now()
		if took := closedAfter(t, c, last); took > idle+3*time.Second {
			t.Fatalf("closed %v after the last byte, want about %v", took, idle)
		}
	})
}

// eventuallyEchoes dials addr until a connection echoes (the listener's slot is free), 5s at most.
func eventuallyEchoes(t *testing.T, addr string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(time.Second))
		io.WriteString(c, "ping")
		got := make([]byte, 4)
		_, err = io.ReadFull(c, got)
		c.Close()
		if err == nil && string(got) == "ping" {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatal("no connection got through after the idle one was closed")
}

// TestIdleWatchSplice: a transfer that lasts longer than the idle timeout, with bytes flowing all along, is not
// cut: the copies (zero-copy splice between TCP connections) report their progress.
func TestIdleWatchSplice(t *testing.T) {
	const idle = 200 * time.Millisecond
	echo := startEcho(t)
	cfg := Config{Service: ServiceConfig{Name: "web"}, Outbound: OutboundConfig{Limits: ListenerLimits{TCPIdleTimeout: idle}},
		Upstreams: []UpstreamConfig{{Name: "raw", Listen: "127.0.0.1:0", Protocol: ProtocolTCP, Endpoints: []string{echo}}}}
	p, _ := startProxy(t, cfg)
	c, err := net.DialTimeout("tcp", p.Addrs()["upstream/raw"], 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	chunk := bytes.Repeat([]byte("0123456789abcdef"), 4096) // 64 KiB
	var sent, got int
	errc := make(chan error, 1)
	go func() {
		defer close(errc)
		buf := make([]byte, 64<<10)
		for got < 16*len(chunk) {
			n, err := c.Read(buf)
			got += n
			if err != nil {
				errc <- err
				return
			}
		}
	}()
	tick := time.NewTicker(idle / 4)
	defer tick.Stop()
	for range 16 { // 16 chunks, one every idle/4: four timeouts in all
		<-tick.C
		if _, err := c.Write(chunk); err != nil {
			t.Fatalf("after %d bytes: %v", sent, err)
		}
		sent += len(chunk)
	}
	if err := <-errc; err != nil {
		t.Fatalf("echo after %d of %d bytes: %v", got, sent, err)
	}
}

// TestPlaintextLogRateLimited: in permissive mode every plaintext connection is counted, but logged at most once
// a second, with the number of lines left out.
func TestPlaintextLogRateLimited(t *testing.T) {
	pki := newTestPKI(t)
	app := startEcho(t)
	var logs syncbuf.Buffer
	m := metrics.New(prometheus.NewRegistry(), "test")
	p := startProxyOpts(t, Config{Service: ServiceConfig{Name: "api", Address: app, Protocol: ProtocolTCP},
		Inbound: InboundConfig{Listen: "127.0.0.1:0", TLS: InboundTLSConfig{Mode: mtls.ModePermissive}}},
		Options{Logger: slog.New(slog.NewJSONHandler(&logs, nil)), Metrics: m, TLS: pki.source(t, "api")})
	const conns = 30
	start := time.Now()
	for range conns {
		c, err := net.DialTimeout("tcp", p.Addrs()["inbound"], 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(c, "ping")
		got := make([]byte, 4)
		_, err = io.ReadFull(c, got)
		c.Close()
		if err != nil {
			t.Fatalf("plaintext echo: %v", err)
		}
	}
	elapsed := time.Since(start)
	if n := testutil.ToFloat64(m.TLSPlaintext); n != conns {
		t.Errorf("meshlet_tls_plaintext_connections_total = %v, want %d", n, conns)
	}
	lines := strings.Count(logs.String(), "plaintext connection accepted")
	if limit := int(elapsed/time.Second) + 2; lines < 1 || lines > limit {
		t.Fatalf("%d log lines for %d plaintext connections in %v, want 1 to %d", lines, conns, elapsed.Round(time.Millisecond), limit)
	}
}
