package meshlettest

import (
	"strings"
	"testing"
)

func TestMetricsSum(t *testing.T) {
	m, err := ParseMetrics(strings.NewReader(`# HELP meshlet_config_reloads_total Config reloads.
# TYPE meshlet_config_reloads_total counter
meshlet_config_reloads_total{result="failure"} 1
meshlet_config_reloads_total{result="success"} 7
meshlet_config_reloads_total_extra 100
meshlet_upstream_endpoints{upstream="soak-grpc"} 3
meshlet_upstream_endpoints{upstream="soak-http"} 2
meshlet_requests_total{direction="outbound",grpc_code="",code_class="2xx"} 5
meshlet_requests_total{direction="outbound",code_class="5xx",message="a \"b\"\n"} 2
# TYPE meshlet_request_duration_seconds histogram
meshlet_request_duration_seconds_bucket{direction="inbound",le="0.1"} 3
meshlet_request_duration_seconds_bucket{direction="inbound",le="+Inf"} 4
meshlet_request_duration_seconds_sum{direction="inbound"} 0.5
meshlet_request_duration_seconds_count{direction="inbound"} 4
go_goroutines 42
`))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		want map[string]string
		sum  float64
	}{
		{"meshlet_config_reloads_total", nil, 8},
		{"meshlet_config_reloads_total", map[string]string{"result": "success"}, 7},
		{"meshlet_upstream_endpoints", map[string]string{"upstream": "soak-http"}, 2},
		{"meshlet_upstream_endpoints", map[string]string{"upstream": "soak"}, 0},
		{"go_goroutines", nil, 42},
		{"meshlet_requests_total", map[string]string{"grpc_code": ""}, 7},
		{"meshlet_requests_total", map[string]string{"message": "a \"b\"\n"}, 2},
		{"meshlet_request_duration_seconds_count", map[string]string{"direction": "inbound"}, 4},
		{"meshlet_request_duration_seconds_sum", nil, 0.5},
		{"meshlet_request_duration_seconds_bucket", map[string]string{"le": "0.1"}, 3},
		{"meshlet_request_duration_seconds", nil, 0},
		{"meshlet_absent", nil, 0},
	} {
		if got := m.Sum(c.name, c.want); got != c.sum {
			t.Errorf("Sum(%s, %v) = %v, want %v", c.name, c.want, got, c.sum)
		}
	}
}
