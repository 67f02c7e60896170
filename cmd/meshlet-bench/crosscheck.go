package main

import (
	"context"
	"fmt"
	"net/http"
	"sync/atomic"
	"time"

	"meshlet.dev/meshlet/internal/meshlettest"
)

// countingCaller counts every call made through it, successful or not.
type countingCaller struct {
	caller
	n atomic.Int64
}

func (c *countingCaller) call(ctx context.Context) error {
	c.n.Add(1)
	return c.caller.call(ctx)
}

// requestCount is what a meshlet's metrics say about the path's direction.
type requestCount struct {
	Total  int64 `json:"total"`   // meshlet_requests_total
	Non2xx int64 `json:"non_2xx"` // of those, code_class other than 2xx or a grpc_code other than "" and OK
	// Connections is meshlet_connections_total: client connections accepted. For B it shows whether A
	// multiplexes (h2c: a handful) or opens a connection per concurrent request.
	Connections int64 `json:"connections"`
}

// scrapeRequests reads meshlet_requests_total and meshlet_connections_total with direction=direction from
// the admin /metrics endpoint.
func scrapeRequests(admin, direction string) (requestCount, error) {
	var rc requestCount
	client := &http.Client{Timeout: 2 * time.Second}
	defer client.CloseIdleConnections()
	m, err := meshlettest.Scrape(context.Background(), client, "http://"+admin+"/metrics")
	if err != nil {
		return rc, err
	}
	for _, s := range m.Samples("meshlet_requests_total") {
		if s.Labels["direction"] != direction {
			continue
		}
		rc.Total += int64(s.Value)
		if grpc := s.Labels["grpc_code"]; s.Labels["code_class"] != "2xx" || (grpc != "" && grpc != "OK") {
			rc.Non2xx += int64(s.Value)
		}
	}
	for _, s := range m.Samples("meshlet_connections_total") {
		if s.Labels["direction"] == direction {
			rc.Connections += int64(s.Value)
		}
	}
	return rc, nil
}

// crossCheck compares each meshlet's own request count with the calls the benchmark made on the path,
// polling briefly because meshlet may count a request just after its response was sent. Differences become
// notes: they are meshlet metric bugs, not failed requests.
func (b *bench) crossCheck(p protocol, k pathKind, r *pathResult, calls int64) {
	for _, m := range r.Meshlets {
		direction := "outbound"
		if m.Role == "B" {
			direction = "inbound"
		}
		var rc requestCount
		var err error
		for deadline := time.Now().Add(2 * time.Second); ; {
			rc, err = scrapeRequests(m.proc.Admin, direction)
			if (err == nil && rc.Total >= calls) || time.Now().After(deadline) {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		name := fmt.Sprintf("%s %s, %s", protocolInfo[p].label, pathLabels[k], m.proc.Name)
		if err != nil {
			b.note(fmt.Sprintf("%s: reading /metrics: %v", name, err))
			continue
		}
		m.Counted = &rc
		if rc.Total != calls {
			b.note(fmt.Sprintf("%s: meshlet_requests_total{direction=%q} sums to %d, but the benchmark made %d requests",
				name, direction, rc.Total, calls))
		}
		if rc.Non2xx > 0 && r.Errors == 0 {
			b.note(fmt.Sprintf("%s: meshlet_requests_total{direction=%q} has %d non-2xx/non-OK requests, but every request succeeded",
				name, direction, rc.Non2xx))
		}
	}
}
