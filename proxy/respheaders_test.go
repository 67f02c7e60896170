package proxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/net/http2"

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
		{"http1 far over the limit", false, 0, 1 << 20, true},
		{"h2c far over the limit", true, 0, 1 << 20, true}, // CONTINUATION frames long past the limit
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

// TestH2HeaderGuard: the guard follows frames however the reads split them, refuses a header block whose frames
// pass the limit (slack included) as soon as they do, and counts each block on its own.
func TestH2HeaderGuard(t *testing.T) {
	const limit = 4 << 10
	frames := func(blocks ...[]int) []byte { // each block: the payload sizes of HEADERS and its CONTINUATIONs
		var buf bytes.Buffer
		fr := http2.NewFramer(&buf, nil)
		fr.WriteSettings()
		for i, sizes := range blocks {
			id := uint32(2*i + 1)
			fr.WriteData(id, false, make([]byte, 3000)) // a DATA frame between blocks is not counted
			for j, n := range sizes {
				end := j == len(sizes)-1
				if j == 0 {
					fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: make([]byte, n), EndHeaders: end})
				} else {
					fr.WriteContinuation(id, end, make([]byte, n))
				}
			}
		}
		return buf.Bytes()
	}
	for _, tc := range []struct {
		name     string
		wire     []byte
		tooLarge bool
	}{
		{"blocks within the limit", frames([]int{4096}, []int{2048, 2048, limit + h2BlockSlack - 4096}), false},
		{"one frame over", frames([]int{limit + h2BlockSlack + 1}), true},
		{"continuations over", frames([]int{2048}, []int{2048, 2048, 2048}), true},
	} {
		for _, chunk := range []int{1, 7, 64 << 10} {
			t.Run(fmt.Sprintf("%s/reads of %d", tc.name, chunk), func(t *testing.T) {
				client, server := net.Pipe()
				go func() {
					defer server.Close()
					for b := tc.wire; len(b) > 0; b = b[min(chunk, len(b)):] {
						if _, err := server.Write(b[:min(chunk, len(b))]); err != nil {
							return
						}
					}
				}()
				g := guardH2(client, limit)
				defer g.Close()
				_, err := io.Copy(io.Discard, g)
				var tl *headersTooLargeError
				if got := errors.As(err, &tl); got != tc.tooLarge {
					t.Fatalf("error %v, want too large: %v", err, tc.tooLarge)
				}
			})
		}
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
	p.mu.Lock()
	p.cfg.Upstreams[0].Listen = cfg.Upstreams[0].Listen // the running listener's real address (the proxy has its own copy)
	p.mu.Unlock()
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
