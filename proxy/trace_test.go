package proxy

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"meshlet.dev/meshlet/internal/syncbuf"
	"meshlet.dev/meshlet/metrics"
)

// accessLines returns the access-log lines in buf so far, decoded.
func accessLines(buf *syncbuf.Buffer) []map[string]any {
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) == nil && m["msg"] == "access" {
			out = append(out, m)
		}
	}
	return out
}

// startLogged runs a Proxy for cfg with its log (access log on) in buf.
func startLogged(t *testing.T, cfg Config, buf *syncbuf.Buffer) *Proxy {
	t.Helper()
	return startProxyOpts(t, cfg, Options{Logger: slog.New(slog.NewJSONHandler(buf, nil)), AccessLog: true,
		Metrics: metrics.New(prometheus.NewRegistry(), "test")})
}

// TestTraceCorrelation sends calls app → sidecar A → sidecar B → app: the trace headers (W3C and B3) arrive
// unchanged; a call without X-Request-Id gets one (a version-4 UUID), the same at both sidecars and at the app, and
// one the caller sent passes unchanged; both access-log lines carry the request, trace and span IDs.
func TestTraceCorrelation(t *testing.T) {
	seen := make(chan http.Header, 4)
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen <- r.Header.Clone()
	}))
	defer app.Close()
	var logA, logB syncbuf.Buffer
	b := startLogged(t, Config{Service: ServiceConfig{Name: "api", Address: strings.TrimPrefix(app.URL, "http://")},
		Inbound: InboundConfig{Listen: "127.0.0.1:0"}}, &logB)
	a := startLogged(t, Config{Service: ServiceConfig{Name: "web"}, Upstreams: []UpstreamConfig{{Name: "api",
		Listen: "127.0.0.1:0", Peer: PeerSidecar, Endpoints: []string{b.Addrs()["inbound"]}}}}, &logA)
	trace := map[string]string{
		"Traceparent":  "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
		"Tracestate":   "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7",
		"Baggage":      "userId=alice,serverNode=DF%2028",
		"B3":           "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1",
		"X-B3-Traceid": "80f198ee56343ba864fe8b2a57d3eff7",
		"X-B3-Spanid":  "e457b5a2e4d86bd1",
		"X-B3-Sampled": "1",
	}
	for _, sent := range []string{"", "caller-chose-this-id"} {
		req, _ := http.NewRequest("GET", "http://"+a.Addrs()["upstream/api"]+"/x", nil)
		for k, v := range trace {
			req.Header.Set(k, v)
		}
		if sent != "" {
			req.Header.Set(HeaderRequestID, sent)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("status %d", resp.StatusCode)
		}
		got := <-seen
		for k, v := range trace {
			if vs := got[k]; len(vs) != 1 || vs[0] != v {
				t.Fatalf("%s reached the app as %q, sent %q", k, vs, v)
			}
		}
		id := got.Get(HeaderRequestID)
		if len(got[HeaderRequestID]) != 1 || (sent != "" && id != sent) || (sent == "" && !requestIDForm.MatchString(id)) {
			t.Fatalf("X-Request-Id at the app %q (sent %q)", got[HeaderRequestID], sent)
		}
		// Each sidecar logs the call once it is done: wait for the line with this ID.
		for _, log := range []*syncbuf.Buffer{&logA, &logB} {
			var line map[string]any
			for deadline := time.Now().Add(5 * time.Second); line == nil && time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
				for _, l := range accessLines(log) {
					if l["request_id"] == id {
						line = l
					}
				}
			}
			if line == nil {
				t.Fatalf("no access-log line with request_id %q", id)
			}
			if line["trace_id"] != "4bf92f3577b34da6a3ce929d0e0e4736" || line["span_id"] != "00f067aa0ba902b7" {
				t.Fatalf("access log trace_id %v span_id %v, want traceparent's", line["trace_id"], line["span_id"])
			}
		}
	}
}

func TestTraceIDs(t *testing.T) {
	for _, tc := range []struct {
		h           map[string]string
		trace, span string
	}{
		{map[string]string{"Traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}, "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"},
		{map[string]string{"Traceparent": "00-00000000000000000000000000000000-00f067aa0ba902b7-01"}, "", ""}, // all-zero trace ID is invalid
		{map[string]string{"Traceparent": "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"}, "", ""}, // W3C: lowercase only
		{map[string]string{"Traceparent": "garbage", "B3": "a3ce929d0e0e4736-00f067aa0ba902b7-1"}, "a3ce929d0e0e4736", "00f067aa0ba902b7"},
		{map[string]string{"X-B3-Traceid": "a3ce929d0e0e4736", "X-B3-Spanid": "00f067aa0ba902b7"}, "a3ce929d0e0e4736", "00f067aa0ba902b7"},
		{map[string]string{"X-B3-Traceid": "a3ce929d0e0e4736"}, "", ""},
		{map[string]string{}, "", ""},
	} {
		h := http.Header{}
		for k, v := range tc.h {
			h.Set(k, v)
		}
		if trace, span := traceIDs(h); trace != tc.trace || span != tc.span {
			t.Errorf("traceIDs(%v) = %q, %q; want %q, %q", tc.h, trace, span, tc.trace, tc.span)
		}
	}
	seen := map[string]bool{}
	for range 1000 {
		id := newRequestID()
		if !requestIDForm.MatchString(id) || seen[id] {
			t.Fatalf("request ID %q: not a version-4 UUID, or seen before", id)
		}
		seen[id] = true
	}
}
