package e2e_test

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"meshlet.dev/meshlet/internal/meshlettest"
)

// tcpApp is the app for the TCP tests. It reads a one-line command:
//
//	"echo\n"  echoes everything until EOF, then closes
//	"count\n" reads to EOF (the client's half-close), then writes "got N bytes sha S\n" and closes
//
// and always first writes the banner "220 banner\n" (a server-speaks-first protocol).
func tcpApp(c *net.TCPConn) {
	io.WriteString(c, "220 banner\n")
	br := bufio.NewReader(c)
	cmd, err := br.ReadString('\n')
	if err != nil {
		return
	}
	switch cmd {
	case "echo\n":
		io.Copy(c, br)
		c.CloseWrite()
	case "count\n":
		s, n, err := shaReader(br)
		if err != nil {
			fmt.Fprintf(c, "error %v\n", err)
			return
		}
		fmt.Fprintf(c, "got %d bytes sha %s\n", n, s)
		c.CloseWrite()
	}
}

// TestTCPPassthrough runs raw TCP through protocol tcp upstreams: byte-exact echo, half-close in both directions,
// server-speaks-first.
func TestTCPPassthrough(t *testing.T) {
	app := meshlettest.StartTCPBackend(t, tcpApp)
	for _, topo := range bothTopologies {
		t.Run(topo, func(t *testing.T) {
			m := startMesh(t, topo, app, "tcp", meshOpts{})
			dial := func(t *testing.T) (*net.TCPConn, *bufio.Reader) {
				c := meshlettest.DialHeld(t, m.Listen)
				c.SetDeadline(time.Now().Add(20 * time.Second))
				br := bufio.NewReader(c)
				// Server speaks first: the banner arrives before the client sends anything.
				banner, err := br.ReadString('\n')
				if err != nil || banner != "220 banner\n" {
					t.Fatalf("banner: %q %v", banner, err)
				}
				return c.(*net.TCPConn), br
			}
			t.Run("server speaks first", func(t *testing.T) { dial(t) })
			t.Run("echo byte-exact", func(t *testing.T) {
				c, br := dial(t)
				data := randBytes(21, 4<<20)
				errc := make(chan error, 1)
				go func() {
					_, err := c.Write(append([]byte("echo\n"), data...))
					if err == nil {
						err = c.CloseWrite()
					}
					errc <- err
				}()
				got, err := io.ReadAll(br)
				if err != nil {
					t.Fatalf("reading echo after %d bytes: %v", len(got), err)
				}
				if werr := <-errc; werr != nil {
					t.Fatal(werr)
				}
				if !bytes.Equal(got, data) {
					t.Fatalf("echo: got %d bytes sha %s, want %d bytes sha %s", len(got), sha(got), len(data),
						sha(data))
				}
			})
			t.Run("half-close", func(t *testing.T) {
				c, br := dial(t)
				data := randBytes(22, 100_000)
				if _, err := c.Write(append([]byte("count\n"), data...)); err != nil {
					t.Fatal(err)
				}
				if err := c.CloseWrite(); err != nil {
					t.Fatal(err)
				}
				reply, err := br.ReadString('\n')
				if want := fmt.Sprintf("got %d bytes sha %s\n", len(data), sha(data)); err != nil || reply != want {
					t.Fatalf("reply after half-close: %q %v, want %q", reply, err, want)
				}
				rest, err := io.ReadAll(br)
				if err != nil || len(rest) != 0 {
					t.Fatalf("after reply: %q %v, want EOF", rest, err)
				}
			})
			t.Run("concurrent connections", func(t *testing.T) {
				var wg sync.WaitGroup
				errs := make(chan error, 20)
				for i := range 20 {
					wg.Add(1)
					go func() {
						defer wg.Done()
						c, err := net.DialTimeout("tcp", m.Listen, 5*time.Second)
						if err != nil {
							errs <- err
							return
						}
						defer c.Close()
						c.SetDeadline(time.Now().Add(20 * time.Second))
						msg := fmt.Sprintf("echo\nconnection %d %s", i, strings.Repeat("z", i*100))
						go func() { c.Write([]byte(msg)); c.(*net.TCPConn).CloseWrite() }()
						got, err := io.ReadAll(c)
						if want := "220 banner\n" + strings.TrimPrefix(msg, "echo\n"); err != nil || string(got) != want {
							errs <- fmt.Errorf("connection %d: got %q %v", i, got, err)
						}
					}()
				}
				wg.Wait()
				close(errs)
				for err := range errs {
					t.Error(err)
				}
			})
		})
	}
}

// TestTCPUnreachable checks that a TCP upstream whose endpoint refuses connections closes the client connection
// (no hang) and counts a connect error.
func TestTCPUnreachable(t *testing.T) {
	for _, tc := range []struct {
		name      string
		endpoints []string
		reason    string
	}{
		{"refused", []string{meshlettest.FreeAddr(t)}, "connect"},
		{"no endpoints", []string{}, "no_endpoint"},
	} {
		t.Run(tc.name, func(t *testing.T) { testTCPUnreachable(t, tc.endpoints, tc.reason) })
	}
}

func testTCPUnreachable(t *testing.T, endpoints []string, reason string) {
	m := startMesh(t, topoApp, "127.0.0.1:1", "tcp", meshOpts{a: func(c *e2eConfig) {
		c.Upstreams[0].Endpoints = endpoints
	}})
	c := meshlettest.DialHeld(t, m.Listen)
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	got, err := io.ReadAll(c)
	if (err != nil && !errors.Is(err, syscall.ECONNRESET)) || len(got) != 0 {
		t.Fatalf("got %q %v, want the connection closed with no data", got, err)
	}
	meshlettest.Eventually(t, 5*time.Second, "meshlet_upstream_errors_total{reason="+reason+"} == 1", func() bool {
		return m.A.MetricSum(t, "meshlet_upstream_errors_total", map[string]string{"upstream": "api",
			"reason": reason}) == 1
	})
}

// TestTCPReload changes a TCP upstream's endpoint: an open connection keeps working with the old app, new
// connections reach the new one.
func TestTCPReload(t *testing.T) {
	app := func(name string) string {
		return meshlettest.StartTCPBackend(t, func(c *net.TCPConn) {
			io.WriteString(c, name+"\n")
			io.Copy(c, c)
		})
	}
	one, two := app("one"), app("two")
	m := startMesh(t, topoApp, one, "tcp", meshOpts{})
	dial := func() (net.Conn, *bufio.Reader, string) {
		c := meshlettest.DialHeld(t, m.Listen)
		c.SetDeadline(time.Now().Add(15 * time.Second))
		br := bufio.NewReader(c)
		name, err := br.ReadString('\n')
		if err != nil {
			c.Close()
			t.Fatalf("greeting: %v", err)
		}
		return c, br, strings.TrimSpace(name)
	}
	old, oldR, name := dial()
	defer old.Close()
	if name != "one" {
		t.Fatalf("first connection reached %q", name)
	}
	cfg := m.ACfg
	cfg.Upstreams = append([]e2eUpstream(nil), cfg.Upstreams...)
	cfg.Upstreams[0].Endpoints = []string{two}
	m.A.RewriteConfig(t, cfg.yaml())
	if status, body := postReload(t, m.A); status != 200 {
		t.Fatalf("reload: %d %q", status, body)
	}
	meshlettest.Eventually(t, 5*time.Second, "new connections reach the new endpoint", func() bool {
		c, _, name := dial()
		c.Close()
		return name == "two"
	})
	for i := range 3 {
		msg := fmt.Sprintf("still alive %d\n", i)
		if _, err := io.WriteString(old, msg); err != nil {
			t.Fatalf("old connection after reload: %v", err)
		}
		if got, err := oldR.ReadString('\n'); err != nil || got != msg {
			t.Fatalf("old connection after reload: %q %v", got, err)
		}
	}
}
