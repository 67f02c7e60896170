package e2e_test

// Request heads that never end (issue 11, item 14), against a real meshlet: the memory that all unfinished heads
// of a direction hold is bounded by max_pending_header_bytes; the heads it cannot hold are refused with 503, and
// closing the held connections gives the memory back. (`make heads` measures the same at 10,000 connections.)

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"meshlet.dev/meshlet/internal/meshlettest"
	"meshlet.dev/meshlet/proxy"
)

func TestPendingHeadsBudget(t *testing.T) {
	app := meshlettest.StartBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "ok") }), false, nil)
	a := meshlettest.FreeAddrs(t, 2)
	// max_header_bytes 4 KiB, and 16 KiB for all unfinished heads: a few connections' buffers (4 to 8 KiB each).
	f := meshlettest.Sidecar("web", a[1], proxy.UpstreamConfig{Name: "api", Listen: a[0], Protocol: "http", Endpoints: []string{meshlettest.HostOf(app)}})
	f.Outbound.Limits = proxy.ListenerLimits{MaxHeaderBytes: 4096, MaxPendingHeaderBytes: 16384}
	m := meshlettest.StartFile(t, f)
	head := "GET /held HTTP/1.1\r\nHost: api\r\nX-Pad: " + strings.Repeat("p", 3000) // never ends
	var held []net.Conn
	refused := 0
	for i := range 8 {
		c := meshlettest.DialHeld(t, a[0])
		io.WriteString(c, head)
		c.SetReadDeadline(time.Now().Add(time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			if meshlettest.IsTimeout(err) {
				held = append(held, c) // meshlet holds the head, waiting for the rest
				continue
			}
			t.Fatalf("connection %d: %v", i, err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("X-Meshlet-Error") != "malformed_request" {
			t.Fatalf("connection %d: %d %q, want 503 malformed_request", i, resp.StatusCode, resp.Header.Get("X-Meshlet-Error"))
		}
		refused++
	}
	if len(held) < 2 || len(held) > 4 || refused != 8-len(held) {
		t.Fatalf("held %d and refused %d of 8 unfinished heads, want 2 to 4 held (16 KiB of 4 to 8 KiB buffers)",
			len(held), refused)
	}
	labels := map[string]string{"direction": "outbound", "reason": "header_budget"}
	if v := m.MetricSum(t, "meshlet_refused_requests_total", labels); v != float64(refused) {
		t.Errorf("meshlet_refused_requests_total%v = %v, want %d", labels, v, refused)
	}
	for _, c := range held {
		c.Close()
	}
	meshlettest.Eventually(t, 10*time.Second, "a whole request is served once the held heads are gone", func() bool {
		resp, body := meshlettest.RawRequest(t, a[0], "GET /after HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n")
		return resp.StatusCode == http.StatusOK && body == "ok"
	})
}
