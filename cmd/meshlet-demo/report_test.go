package main

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

const webMetrics = `# HELP meshlet_requests_total Requests.
# TYPE meshlet_requests_total counter
meshlet_requests_total{code_class="2xx",direction="outbound",grpc_code="OK",upstream="api-grpc"} 200
meshlet_requests_total{code_class="5xx",direction="outbound",grpc_code="",upstream="api-http"} 4
# HELP meshlet_request_duration_seconds Duration.
# TYPE meshlet_request_duration_seconds histogram
meshlet_request_duration_seconds_bucket{code_class="2xx",direction="outbound",grpc_code="OK",upstream="api-grpc",le="+Inf"} 200
meshlet_request_duration_seconds_sum{code_class="2xx",direction="outbound",grpc_code="OK",upstream="api-grpc"} 0.5
meshlet_request_duration_seconds_count{code_class="2xx",direction="outbound",grpc_code="OK",upstream="api-grpc"} 200
# HELP meshlet_upstream_errors_total Errors.
# TYPE meshlet_upstream_errors_total counter
meshlet_upstream_errors_total{direction="outbound",reason="connect",upstream="api-http"} 4
meshlet_upstream_errors_total{direction="outbound",reason="timeout",upstream="api-http"} 0
`

func TestPrintMetrics(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		w.Write([]byte(webMetrics))
	}))
	defer srv.Close()

	var out strings.Builder
	admin := strings.TrimPrefix(srv.URL, "http://")
	if err := printMetrics(t.Context(), &out, []sidecar{{"web's meshlet", admin}}); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"web's meshlet  outbound   api-grpc  2xx   OK    200       2.50ms",
		"web's meshlet  outbound   api-http  5xx   -     4         0.00ms",
		"web's meshlet  outbound   api-http  connect  4",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
	if strings.Contains(out.String(), "timeout") {
		t.Errorf("output shows an error counter that is 0:\n%s", out.String())
	}
}
