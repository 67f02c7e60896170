package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"meshlet.dev/meshlet/proxy/proxytest"
)

// TestResponseHeaderLimit: an endpoint whose response headers pass max_response_header_bytes is refused by both
// transports (HTTP/1.1 and h2c), and the refusal is recognized as such (the transports' errors have no type of
// their own: this pins their messages). The client gets 502 with the reason, the endpoint is held responsible,
// and headers under the limit pass.
func TestResponseHeaderLimit(t *testing.T) {
	for _, tc := range []struct {
		name     string
		h2c      bool
		limit    int // 0: the default
		size     int // the bomb's header bytes
		tooLarge bool
	}{
		{"http1 over the default", false, 0, DefaultMaxResponseHeaderBytes + 4<<10, true},
		{"h2c over the default", true, 0, DefaultMaxResponseHeaderBytes + 4<<10, true},
		{"http1 over a configured limit", false, 8 << 10, 12 << 10, true},
		{"h2c over a configured limit", true, 8 << 10, 12 << 10, true},
		{"http1 under the limit", false, 0, 32 << 10, false},
		{"h2c under the limit", true, 0, 32 << 10, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bomb := proxytest.NewHeaderBomb(t, tc.size, tc.h2c)
			protocol := ProtocolHTTP
			if tc.h2c {
				protocol = ProtocolHTTP2
			}
			uc := UpstreamConfig{Name: "api", Listen: "127.0.0.1:0", Protocol: protocol, Endpoints: []string{bomb.Addr()},
				MaxResponseHeaderBytes: tc.limit}
			uc.Resilience.Retry.MaxAttempts = 1
			p, m := startProxy(t, Config{Service: ServiceConfig{Name: "web"}, Upstreams: []UpstreamConfig{uc}})
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+p.Addrs()["upstream/api"]+"/", nil)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if !tc.tooLarge {
				if resp.StatusCode != 200 || len(resp.Header) < tc.size/1024 {
					t.Fatalf("%d with %d headers, want 200 with the endpoint's headers", resp.StatusCode, len(resp.Header))
				}
				return
			}
			if resp.StatusCode != http.StatusBadGateway || resp.Header.Get("X-Meshlet-Error") != reasonHeadersTooLarge {
				t.Fatalf("%d %q %q, want 502 with X-Meshlet-Error %s", resp.StatusCode, resp.Header.Get("X-Meshlet-Error"),
					body, reasonHeadersTooLarge)
			}
			if n := testutil.ToFloat64(m.UpstreamErrors.WithLabelValues("outbound", "api", reasonHeadersTooLarge)); n != 1 {
				t.Errorf("meshlet_upstream_errors_total{reason=%s} = %v, want 1", reasonHeadersTooLarge, n)
			}
			eps := p.Upstreams()[0].Endpoints
			if len(eps) != 1 || eps[0].Failures != 1 || !strings.Contains(eps[0].LastError, "response headers larger than") {
				t.Errorf("endpoint state %+v, want the failure held against it", eps)
			}
		})
	}
}

// TestIsHeaderOverflow: the classification of the transports' errors, on its own.
func TestIsHeaderOverflow(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{errors.New("net/http: server response headers exceeded 65536 bytes; aborted"), true},
		{fmt.Errorf("net/http: HTTP/1.x transport connection broken: %w",
			errors.New("net/http: server response headers exceeded 65536 bytes; aborted")), true},
		{errors.New("EOF"), false},
		{context.Canceled, false},
	} {
		if got := isHeaderOverflow(tc.err); got != tc.want {
			t.Errorf("isHeaderOverflow(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

// TestResponseHeaderLimitReload: a reload that lowers max_response_header_bytes applies to the next request.
func TestResponseHeaderLimitReload(t *testing.T) {
	bomb := proxytest.NewHeaderBomb(t, 32<<10, false)
	cfg := Config{Service: ServiceConfig{Name: "web"}, Upstreams: []UpstreamConfig{{Name: "api", Listen: "127.0.0.1:0",
		Endpoints: []string{bomb.Addr()}}}}
	p, _ := startProxy(t, cfg)
	cfg.Upstreams[0].Listen = p.Addrs()["upstream/api"]
	get := func() int {
		t.Helper()
		resp, err := http.Get("http://" + cfg.Upstreams[0].Listen + "/")
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := get(); code != 200 {
		t.Fatalf("under the default limit: %d", code)
	}
	cfg.Upstreams[0].MaxResponseHeaderBytes = 8 << 10
	if _, err := p.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	if code := get(); code != http.StatusBadGateway {
		t.Fatalf("after lowering the limit: %d, want 502", code)
	}
}
