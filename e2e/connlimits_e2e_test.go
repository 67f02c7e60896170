package e2e_test

// Connection limits of TCP passthrough listeners, and a meshlet that runs out of file descriptors: it refuses new
// client connections (counted, logged) instead of failing, and its admin listener keeps answering.

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"meshlet.dev/meshlet/internal/meshlettest"
	"meshlet.dev/meshlet/proxy"
)

func TestTCPListenerMaxConnections(t *testing.T) {
	echo := meshlettest.StartTCPBackend(t, func(c *net.TCPConn) { io.Copy(c, c) })
	db, admin := meshlettest.FreeAddr(t), meshlettest.FreeAddr(t)
	f := meshlettest.Sidecar("web", admin, proxy.UpstreamConfig{Name: "db", Listen: db, Protocol: "tcp", Endpoints: []string{echo}})
	f.Outbound.Limits.MaxConnections = 3
	m := meshlettest.StartFile(t, f)
	labels := map[string]string{"direction": "outbound", "listener": "db"}
	roundTrip := func(c net.Conn, msg string) error {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.WriteString(c, msg); err != nil {
			return err
		}
		buf := make([]byte, len(msg))
		if _, err := io.ReadFull(c, buf); err != nil {
			return err
		}
		if string(buf) != msg {
			return fmt.Errorf("echo %q, want %q", buf, msg)
		}
		return nil
	}
	dial := func() net.Conn { return meshlettest.DialHeld(t, db) }
	var held []net.Conn
	for i := range 3 {
		c := dial()
		if err := roundTrip(c, fmt.Sprintf("hello %d", i)); err != nil {
			t.Fatalf("connection %d within the limit: %v", i, err)
		}
		held = append(held, c)
	}
	if err := roundTrip(dial(), "fourth"); err == nil {
		t.Fatal("a fourth connection was served beyond max_connections 3")
	}
	if v := m.MetricSum(t, "meshlet_connections_refused_total", labels); v < 1 {
		t.Errorf("meshlet_connections_refused_total%v = %v, want >= 1", labels, v)
	}
	held[0].Close()
	meshlettest.Eventually(t, 5*time.Second, "a slot frees when a connection closes", func() bool {
		return roundTrip(dial(), "again") == nil
	})
	for i, c := range held[1:] {
		if err := roundTrip(c, "still"); err != nil {
			t.Errorf("held connection %d: %v", i+1, err)
		}
	}
}

// TestFileDescriptorExhaustion runs meshlet with 256 open files (ulimit -n): a budget of 128 connections, 96 of
// them for clients. It opens 200 client connections: those within the budget are answered (200, or 503 fd_budget
// when no upstream connection fits any more), the rest are refused at accept (counted and logged), /live, /ready
// and /metrics keep answering, and new connections are served again once the clients close theirs.
func TestFileDescriptorExhaustion(t *testing.T) {
	app := meshlettest.StartBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "ok %s", r.URL.Path)
	}), false, nil)
	api, admin := meshlettest.FreeAddr(t), meshlettest.FreeAddr(t)
	config := meshlettest.Sidecar("web", admin, proxy.UpstreamConfig{Name: "api", Listen: api, Peer: "app",
		Endpoints: []string{meshlettest.HostOf(app)}}).MustYAML(t)
	// ulimit -n sets the soft and the hard limit, so Go's raise of the soft limit at start cannot undo it.
	path := meshlettest.WriteConfig(t, config)
	m := meshlettest.Command(t, path, exec.Command("/bin/sh", "-c", `ulimit -n 256 && exec "$0" "$@"`, meshlettest.Bin(), "run", "-config", path))
	m.Admin = admin
	if err := m.WaitReady(context.Background(), 15*time.Second); err != nil {
		t.Fatalf("not ready: %v\n%s", err, m.Log())
	}
	limits, err := os.ReadFile(fmt.Sprintf("/proc/%d/limits", m.Cmd.Process.Pid))
	if err != nil || !strings.Contains(string(limits), "Max open files            256                  256") {
		t.Fatalf("meshlet's open-file limit is not 256:\n%s%v", limits, err)
	}

	const clients = 200
	conns := make([]net.Conn, 0, clients)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range clients {
		c, err := net.DialTimeout("tcp", api, 5*time.Second)
		if err != nil {
			t.Fatalf("dial: %v", err) // the kernel completes the handshake whatever meshlet does
		}
		conns = append(conns, c)
	}
	// Each connection either is served (a request on it gets 200) or was closed at accept.
	var mu sync.Mutex
	served, budget, refused := 0, 0, 0
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			io.WriteString(c, "GET /held HTTP/1.1\r\nHost: api\r\n\r\n")
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil && resp.StatusCode == http.StatusOK:
				served++
			case err == nil && resp.StatusCode == http.StatusServiceUnavailable && resp.Header.Get("X-Meshlet-Error") == "fd_budget":
				budget++
			case meshlettest.IsTimeout(err):
				t.Errorf("a connection hung: neither served nor refused")
			case err != nil:
				refused++
			default:
				t.Errorf("a connection got %d", resp.StatusCode)
			}
		}()
	}
	wg.Wait()
	t.Logf("%d connections served, %d answered 503 fd_budget, %d refused (client budget 96 of 128)", served, budget, refused)
	// A 503 closes its connection, which lets one more of the waiting clients in: a few more than 96 are answered.
	if served < 16 || refused < clients/4 {
		t.Errorf("served %d, 503 %d, refused %d of %d; want the client budget answered and the rest refused",
			served, budget, refused, clients)
	}
	for _, p := range []string{"/live", "/ready", "/metrics"} {
		if code, _ := m.AdminGet(t, p); code != http.StatusOK {
			t.Errorf("admin %s: %d while client connections are refused", p, code)
		}
	}
	labels := map[string]string{"direction": "outbound", "listener": "api"}
	if v := m.MetricSum(t, "meshlet_connections_refused_total", labels); v < float64(refused) {
		t.Errorf("meshlet_connections_refused_total = %v, want >= the %d refused", v, refused)
	}
	if !strings.Contains(m.Log(), "the file-descriptor budget is full") {
		t.Error("no warning about the file-descriptor budget in the log")
	}
	for _, c := range conns {
		c.Close()
	}
	meshlettest.Eventually(t, 10*time.Second, "new connections served after the clients closed theirs", func() bool {
		c, err := net.DialTimeout("tcp", api, 5*time.Second)
		if err != nil {
			return false
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(c, "GET /after HTTP/1.1\r\nHost: api\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		return err == nil && resp.StatusCode == http.StatusOK
	})
	select {
	case <-m.Exited():
		t.Fatalf("meshlet exited: %v", m.WaitErr())
	default:
	}
}

// TestWriteTimeoutHTTP1: a client that asks for a large response and then reads nothing is disconnected after
// write_timeout (2s here), and its request to the app ends with it.
func TestWriteTimeoutHTTP1(t *testing.T) {
	appDone := make(chan error, 1)
	app := meshlettest.StartBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		chunk := make([]byte, 64<<10)
		var err error
		for i := 0; i < 1024 && err == nil; i++ { // 64 MiB at most
			_, err = w.Write(chunk)
		}
		appDone <- err
	}), false, nil)
	api, admin := meshlettest.FreeAddr(t), meshlettest.FreeAddr(t)
	f := meshlettest.Sidecar("web", admin, proxy.UpstreamConfig{Name: "api", Listen: api, Peer: "app", Endpoints: []string{meshlettest.HostOf(app)}})
	f.Outbound.Limits.WriteTimeout = 2 * time.Second
	m := meshlettest.StartFile(t, f)
	c := meshlettest.DialHeld(t, api)
	defer c.Close()
	c.(*net.TCPConn).SetReadBuffer(4096)
	io.WriteString(c, "GET /big HTTP/1.1\r\nHost: api\r\n\r\n")
	open := map[string]string{"direction": "outbound", "listener": "api"}
	meshlettest.Eventually(t, 5*time.Second, "the connection is open", func() bool { return m.MetricSum(t, "meshlet_connections_open", open) == 1 })
	start := time.Now()
	meshlettest.Eventually(t, 60*time.Second, "the stalled reader's connection closed", func() bool {
		return m.MetricSum(t, "meshlet_connections_open", open) == 0
	})
	t.Logf("closed %v after the request", time.Since(start).Round(10*time.Millisecond))
	select {
	case err := <-appDone:
		if err == nil {
			t.Error("the app wrote all 64 MiB to a client that read nothing")
		}
	case <-time.After(30 * time.Second):
		t.Error("the app's response did not end with the client's connection")
	}
}
