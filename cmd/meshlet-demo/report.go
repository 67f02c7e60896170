package main

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	dto "github.com/prometheus/client_model/go"

	"meshlet.dev/meshlet/internal/meshlettest"
)

// printLoad prints what the users of web saw.
func printLoad(w io.Writer, r *loadResult, want int) {
	fmt.Fprintf(w, "\nweb answered %d requests in %.1fs: %d ok, %d failed", r.Completed, r.Elapsed.Seconds(), r.OK, r.Failed())
	if r.Completed < want {
		fmt.Fprintf(w, " (interrupted: %d of %d not done)", want-r.Completed, want)
	}
	fmt.Fprintln(w)
	if len(r.Latencies) > 0 {
		fmt.Fprintf(w, "latency of ok requests: p50 %s  p90 %s  p99 %s  max %s\n",
			ms(r.percentile(0.50)), ms(r.percentile(0.90)), ms(r.percentile(0.99)), ms(r.Latencies[len(r.Latencies)-1]))
	}
	errs := slices.SortedFunc(maps.Keys(r.Errors), func(a, b string) int { return cmp.Compare(r.Errors[b], r.Errors[a]) })
	for i, e := range errs {
		if i == 5 {
			fmt.Fprintf(w, "  ... and %d more kinds of error\n", len(errs)-i)
			break
		}
		fmt.Fprintf(w, "  %4d x %s\n", r.Errors[e], e)
	}
	if r.Sample != "" {
		fmt.Fprintf(w, "one answer of web:\n  %s\n", strings.ReplaceAll(strings.TrimSpace(r.Sample), "\n", "\n  "))
	}
}

// sidecar names a meshlet of the demo and where its admin listens.
type sidecar struct{ Name, Admin string }

// requestKey is the label set of meshlet_requests_total, and which of the sidecars counted it.
type requestKey struct {
	Sidecar                                  int
	Direction, Upstream, CodeClass, GRPCCode string
}

// printMetrics prints the request counters and upstream errors of each meshlet, from its /metrics.
func printMetrics(ctx context.Context, w io.Writer, sidecars []sidecar) error {
	counts := map[requestKey]float64{}
	seconds := map[requestKey]float64{}
	var errLines []string
	for i, s := range sidecars {
		fams, err := meshlettest.Scrape(ctx, nil, "http://"+s.Admin+"/metrics")
		if err != nil {
			return err
		}
		key := func(m *dto.Metric) requestKey {
			l := meshlettest.Labels(m)
			return requestKey{i, l["direction"], l["upstream"], l["code_class"], l["grpc_code"]}
		}
		for _, m := range fams["meshlet_requests_total"].GetMetric() {
			counts[key(m)] += m.GetCounter().GetValue()
		}
		for _, m := range fams["meshlet_request_duration_seconds"].GetMetric() {
			seconds[key(m)] += m.GetHistogram().GetSampleSum()
		}
		for _, m := range fams["meshlet_upstream_errors_total"].GetMetric() {
			if v := m.GetCounter().GetValue(); v > 0 {
				l := meshlettest.Labels(m)
				errLines = append(errLines, fmt.Sprintf("  %s\t%s\t%s\t%s\t%.0f", s.Name, l["direction"], l["upstream"], l["reason"], v))
			}
		}
	}

	fmt.Fprintln(w, "\nrequests counted by the meshlets (meshlet_requests_total; avg from meshlet_request_duration_seconds):")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  MESHLET\tDIRECTION\tUPSTREAM\tCODE\tGRPC\tREQUESTS\tAVG")
	keys := slices.SortedFunc(maps.Keys(counts), func(a, b requestKey) int {
		return cmp.Or(cmp.Compare(a.Sidecar, b.Sidecar), cmp.Compare(b.Direction, a.Direction),
			cmp.Compare(a.Upstream, b.Upstream), cmp.Compare(a.CodeClass, b.CodeClass), cmp.Compare(a.GRPCCode, b.GRPCCode))
	})
	for _, k := range keys {
		if counts[k] == 0 {
			continue
		}
		avg := time.Duration(seconds[k] / counts[k] * float64(time.Second))
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t%.0f\t%s\n",
			sidecars[k.Sidecar].Name, k.Direction, k.Upstream, k.CodeClass, cmp.Or(k.GRPCCode, "-"), counts[k], ms(avg))
	}
	tw.Flush()
	if len(keys) == 0 {
		fmt.Fprintln(w, "  (none)")
	}

	if len(errLines) == 0 {
		fmt.Fprintln(w, "upstream errors (meshlet_upstream_errors_total): none")
		return nil
	}
	fmt.Fprintln(w, "upstream errors (meshlet_upstream_errors_total):")
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  MESHLET\tDIRECTION\tUPSTREAM\tREASON\tERRORS")
	for _, l := range errLines {
		fmt.Fprintln(tw, l)
	}
	return tw.Flush()
}

// upstreams is the JSON of GET /debug/upstreams.
type upstreams struct {
	Upstreams []struct {
		Name, Protocol, Listen, Peer, LB string
		Endpoints                        []struct {
			ID                 string
			InFlight           int `json:"in_flight"`
			Requests, Failures int64
			LastError          string `json:"last_error"`
		}
	}
}

// printUpstreams prints one line per upstream endpoint of the sidecar, from its /debug/upstreams.
func printUpstreams(ctx context.Context, w io.Writer, s sidecar) error {
	url := "http://" + s.Admin + "/debug/upstreams"
	body, err := fetch(ctx, url)
	if err != nil {
		return err
	}
	var doc upstreams
	if err := json.Unmarshal([]byte(body), &doc); err != nil {
		return fmt.Errorf("%s: %w", url, err)
	}
	fmt.Fprintf(w, "\n%s, %s (excerpt):\n", s.Name, url)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  UPSTREAM\tPROTOCOL\tLISTEN\tPEER\tLB\tENDPOINT\tREQUESTS\tFAILURES\tIN_FLIGHT\tLAST_ERROR")
	for _, u := range doc.Upstreams {
		for _, e := range u.Endpoints {
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t%s\t%d\t%d\t%d\t%s\n", u.Name, u.Protocol, u.Listen, u.Peer, u.LB,
				e.ID, e.Requests, e.Failures, e.InFlight, cmp.Or(e.LastError, "-"))
		}
	}
	return tw.Flush()
}

// ms formats d in milliseconds with two decimals, e.g. "1.25ms".
func ms(d time.Duration) string { return fmt.Sprintf("%.2fms", float64(d)/float64(time.Millisecond)) }
