package proxy_test

import (
	"bufio"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"meshlet.dev/meshlet/proxy"
)

// TestExpose: an expose listener forwards its exact paths (query kept) to the app, over HTTP/1.1 or h2c as the
// path says; any other path, an escaped spelling of the path, or an absolute-form request naming another host
// gets 404 and never reaches the app.
func TestExpose(t *testing.T) {
	var mu sync.Mutex
	var seen []string
	app := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = append(seen, r.Proto+" "+r.URL.RequestURI())
		mu.Unlock()
		io.WriteString(w, "app "+r.URL.Path)
	}))
	app.Config.Protocols = new(http.Protocols)
	app.Config.Protocols.SetHTTP1(true)
	app.Config.Protocols.SetUnencryptedHTTP2(true)
	app.Start()
	defer app.Close()
	target := app.Listener.Addr().String()

	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	listen := ln.Addr().String()
	ln.Close()
	e, err := proxy.StartExpose([]proxy.ExposePath{
		{Listen: listen, Path: "/healthz", Target: target},
		{Listen: listen, Path: "/metrics", Target: target},
		{Listen: "127.0.0.1:0", Path: "/grpc.health.v1.Health/Check", Target: target, Protocol: proxy.ProtocolHTTP2},
	}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer e.Shutdown(context.Background())
	addrs := e.Addrs()
	if len(addrs) != 2 || addrs[0] != listen {
		t.Fatalf("listeners %v, want two, the first at %s", addrs, listen)
	}

	get := func(addr, uri string) (int, string) {
		t.Helper()
		resp, err := http.Get("http://" + addr + uri)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	for _, tc := range []struct {
		addr, uri string
		code      int
	}{
		{listen, "/healthz?verbose=1", 200},
		{listen, "/metrics", 200},
		{listen, "/", 404},
		{listen, "/healthz/", 404},
		{listen, "/heal%74hz", 404},
		{listen, "/grpc.health.v1.Health/Check", 404}, // another listener's path
		{addrs[1], "/grpc.health.v1.Health/Check", 200},
	} {
		if code, body := get(tc.addr, tc.uri); code != tc.code || (code == 200 && !strings.HasPrefix(body, "app /")) {
			t.Errorf("GET %s%s: %d %q, want %d", tc.addr, tc.uri, code, body, tc.code)
		}
	}
	conn, err := net.Dial("tcp", listen)
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(conn, "GET http://other.example/healthz HTTP/1.1\r\nHost: other.example\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	conn.Close()
	if err != nil || resp.StatusCode != 404 {
		t.Errorf("absolute-form request: %v %v, want 404", resp, err)
	}

	mu.Lock()
	defer mu.Unlock()
	want := []string{"HTTP/1.1 /healthz?verbose=1", "HTTP/1.1 /metrics", "HTTP/2.0 /grpc.health.v1.Health/Check"}
	if strings.Join(seen, "\n") != strings.Join(want, "\n") {
		t.Errorf("the app saw %q, want %q", seen, want)
	}
}

// TestExposeBindFailure: a listener that cannot be bound is an error, and no other is left open.
func TestExposeBindFailure(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	free, _ := net.Listen("tcp", "127.0.0.1:0")
	freeAddr := free.Addr().String()
	free.Close()
	_, err = proxy.StartExpose([]proxy.ExposePath{{Listen: freeAddr, Path: "/a", Target: "127.0.0.1:1"},
		{Listen: taken.Addr().String(), Path: "/b", Target: "127.0.0.1:1"}}, slog.New(slog.DiscardHandler))
	if err == nil || !strings.Contains(err.Error(), "expose listener") {
		t.Fatalf("error %v, want the bind failure", err)
	}
	ln, err := net.Listen("tcp", freeAddr)
	if err != nil {
		t.Fatalf("the first listener was left open: %v", err)
	}
	ln.Close()
}
