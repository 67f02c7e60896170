package proxy

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// The stream idle timer of an HTTP/1.1 request: the client gets 408 stream_idle_timeout and the connection
// closes, counted as idle and not as a client gone; the request before it on the connection is served.
func TestStreamIdleHTTP1(t *testing.T) {
	hang := make(chan struct{})
	t.Cleanup(func() { close(hang) })
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/silent" {
			select {
			case <-hang:
			case <-r.Context().Done():
			}
			return
		}
		io.WriteString(w, "ok")
	}))
	t.Cleanup(app.Close)
	cfg := Config{Service: ServiceConfig{Name: "web"}, Upstreams: []UpstreamConfig{{
		Name: "api", Listen: "127.0.0.1:0", Endpoints: []string{strings.TrimPrefix(app.URL, "http://")}}}}
	cfg.Outbound.Limits.StreamIdleTimeout = 200 * time.Millisecond
	p, m := startProxy(t, cfg)
	for i := range 3 {
		c, err := net.Dial("tcp", p.Addrs()["upstream/api"])
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		br := bufio.NewReader(c)
		start := time.Now()
		io.WriteString(c, "GET /fast HTTP/1.1\r\nHost: api\r\n\r\nGET /silent HTTP/1.1\r\nHost: api\r\n\r\n")
		for j, want := range []int{200, http.StatusRequestTimeout} {
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatalf("round %d, response %d: %v", i, j, err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != want {
				t.Fatalf("round %d, response %d: %d %q, want %d", i, j, resp.StatusCode, b, want)
			}
			if want == http.StatusRequestTimeout && resp.Header.Get("X-Meshlet-Error") != "stream_idle_timeout" {
				t.Fatalf("round %d: X-Meshlet-Error %q, want stream_idle_timeout", i, resp.Header.Get("X-Meshlet-Error"))
			}
		}
		if took := time.Since(start); took < 200*time.Millisecond {
			t.Errorf("round %d: answered after %v, before the idle timeout", i, took)
		}
		if _, err := br.ReadByte(); err != io.EOF {
			t.Errorf("round %d: the connection after 408: %v, want EOF", i, err)
		}
		c.Close()
	}
	if n := testutil.ToFloat64(m.UpstreamErrors.WithLabelValues("outbound", "api", reasonIdle)); n != 3 {
		t.Errorf("errors with reason %s = %v, want 3", reasonIdle, n)
	}
	if n := testutil.ToFloat64(m.UpstreamErrors.WithLabelValues("outbound", "api", reasonCanceled)); n != 0 {
		t.Errorf("errors with reason %s = %v, want 0", reasonCanceled, n)
	}
	if n := testutil.ToFloat64(m.Requests.WithLabelValues("outbound", "api", "4xx", "", "")); n != 3 {
		t.Errorf("4xx requests = %v, want 3", n)
	}
	if n := testutil.ToFloat64(m.Requests.WithLabelValues("outbound", "api", "2xx", "", "")); n != 3 {
		t.Errorf("2xx requests = %v, want 3", n)
	}
}
