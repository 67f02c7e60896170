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
	// Redirected is meshlet_outbound_connections_total by outcome (mesh, passthrough, refused, direct): the
	// connections the transparent outbound listener took, on the intercepted path only.
	Redirected map[string]int64 `json:"redirected_connections,omitempty"`
}

// scrapeRequests reads meshlet_requests_total and meshlet_connections_total with direction=direction, and
// meshlet_outbound_connections_total, from the admin /metrics endpoint at admin, through client.
func scrapeRequests(client *http.Client, admin, direction string) (requestCount, error) {
	var rc requestCount
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
	for _, s := range m.Samples("meshlet_outbound_connections_total") {
		if rc.Redirected == nil {
			rc.Redirected = map[string]int64{}
		}
		rc.Redirected[s.Labels["outcome"]] += int64(s.Value)
	}
	return rc, nil
}

// crossCheck compares each meshlet's own request count with the calls the benchmark made on the path,
// polling briefly because meshlet may count a request just after its response was sent. Differences become
// notes: they are meshlet metric bugs, not failed requests. On the intercepted path they are problems instead:
// a request meshlet did not count, or a connection it did not take as a mesh one, may have gone straight to the
// backend, and then the figure would not be meshlet's.
func (b *bench) crossCheck(p protocol, k pathKind, r *pathResult, calls int64) {
	for _, m := range r.Meshlets {
		if m.proc == nil {
			continue // nginx: no metrics of meshlet's
		}
		direction := "outbound"
		if m.Role == "B" {
			direction = "inbound"
		}
		var rc requestCount
		var err error
		for deadline := time.Now().Add(2 * time.Second); ; {
			rc, err = scrapeRequests(m.proc.adminClient(), m.proc.Admin, direction)
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
		if k == pathIntercepted {
			b.checkIntercepted(name, rc, calls)
			continue
		}
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

// checkIntercepted records a problem unless meshlet counted every call as an outbound request and took every
// connection as a redirected one to the upstream (outcome mesh; none passed through, refused or direct).
func (b *bench) checkIntercepted(name string, rc requestCount, calls int64) {
	if rc.Total != calls {
		b.problem(fmt.Sprintf("%s: meshlet counted %d outbound requests, but the benchmark made %d: not every request was intercepted",
			name, rc.Total, calls))
	}
	if rc.Redirected["mesh"] == 0 {
		b.problem(fmt.Sprintf("%s: meshlet_outbound_connections_total %v: want every connection redirected to the upstream (mesh)",
			name, rc.Redirected))
	}
	for _, o := range []string{"passthrough", "refused", "direct"} {
		if rc.Redirected[o] > 0 {
			b.problem(fmt.Sprintf("%s: meshlet_outbound_connections_total{outcome=%q} is %d: want only mesh connections",
				name, o, rc.Redirected[o]))
		}
	}
}
