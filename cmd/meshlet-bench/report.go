package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
)

// report is everything one run measured; it is what -json writes.
type report struct {
	Meta     meta          `json:"meta"`
	Results  []*pathResult `json:"results"`
	Problems []string      `json:"problems,omitempty"` // failures outside requests: meshlet exits, setup
	Notes    []string      `json:"notes,omitempty"`    // worth a look, not failures (meshlet warnings)
	// Intercepted compares the intercepted path with the explicit listener (1 meshlet), per protocol where both
	// were measured.
	Intercepted []interceptFigure `json:"intercepted_vs_explicit,omitempty"`
	// VsNginx compares 1 meshlet and 2 meshlets mTLS with nginx, per protocol where nginx was measured.
	VsNginx []nginxFigure `json:"vs_nginx,omitempty"`
}

// interceptFigure compares, for one protocol, the intercepted path with an explicit listener: the added p50 of
// each (its p50 minus the baseline's) and meshlet's CPU time per request in the throughput phase, each with its
// ratio intercepted/explicit (absent when the explicit figure is not positive). Explicit netns-one (baseline
// netns-direct) is the explicit listener in the same namespaces: only the redirection differs. Explicit one
// (baseline direct) is the host's explicit listener, as the table shows it.
type interceptFigure struct {
	Protocol               string   `json:"protocol"`
	Explicit               string   `json:"explicit"` // the explicit path: netns-one or one
	Baseline               string   `json:"baseline"` // netns-direct or direct
	AddedP50usIntercepted  float64  `json:"added_p50_us_intercepted"`
	AddedP50usExplicit     float64  `json:"added_p50_us_explicit"`
	AddedP50Ratio          *float64 `json:"added_p50_ratio,omitempty"`
	CPUusPerReqIntercepted float64  `json:"cpu_us_per_request_intercepted"`
	CPUusPerReqExplicit    float64  `json:"cpu_us_per_request_explicit"`
	CPURatio               *float64 `json:"cpu_ratio,omitempty"`
}

type meta struct {
	GoVersion      string `json:"go_version"`
	OSArch         string `json:"os_arch"`
	CPUs           int    `json:"cpus"`
	GOMAXPROCS     int    `json:"gomaxprocs"`
	Date           string `json:"date"`
	Meshlet        string `json:"meshlet,omitempty"`
	MeshletVersion string `json:"meshlet_version,omitempty"`
	Rate           int    `json:"rate"`
	Duration       string `json:"duration"`
	Warmup         string `json:"warmup"`
	Concurrency    int    `json:"concurrency"`
	BodyBytes      int    `json:"body_bytes"`
	PostBytes      int    `json:"post_bytes,omitempty"` // -post: the request body of HTTP/1.1 and h2c requests
	Quick          bool   `json:"quick"`
	LoadStart      string `json:"loadavg_start"`           // /proc/loadavg 1, 5, 15 minutes, before the run
	LoadEnd        string `json:"loadavg_end"`             // and after it
	Pinning        string `json:"pinning"`                 // which CPUs the proxies and the benchmark ran on
	Nginx          string `json:"nginx_version,omitempty"` // the reference peer's version, when it ran
}

// pathResult is one protocol × path.
type pathResult struct {
	Protocol    string           `json:"protocol"`
	Path        string           `json:"path"` // direct, one, two
	Target      string           `json:"target,omitempty"`
	Failed      string           `json:"failed,omitempty"`  // why the path could not be measured
	Skipped     string           `json:"skipped,omitempty"` // why the path was not run here (not a failure)
	Latency     *latencyStats    `json:"latency,omitempty"`
	AddedP50us  *float64         `json:"added_p50_us,omitempty"` // latency p50 minus direct's
	AddedP99us  *float64         `json:"added_p99_us,omitempty"`
	Throughput  *throughputStats `json:"throughput,omitempty"`
	RatioDirect *float64         `json:"throughput_vs_direct,omitempty"`
	Meshlets    []*meshletStats  `json:"meshlets,omitempty"`
	Errors      int64            `json:"errors"` // failed requests in every phase
	// BackendConns is how many connections the backend accepted during this path's phases: about the
	// concurrency when connections are reused, far more when the caller (or meshlet) churns them.
	BackendConns int64        `json:"backend_connections"`
	ErrorCauses  []errorCount `json:"error_causes,omitempty"`
}

// meshletStats is one meshlet process on a path.
type meshletStats struct {
	Role           string  `json:"role"` // meshlet (1-meshlet path), A (app side) or B (backend side)
	PID            int     `json:"pid"`
	RSSIdleKiB     int64   `json:"rss_idle_kib"` // VmRSS once ready, before any request
	RSSLoadKiB     int64   `json:"rss_load_kib"` // VmRSS at the end of the throughput phase
	HWMKiB         int64   `json:"rss_peak_kib"` // VmHWM at the end of the throughput phase
	CPUSeconds     float64 `json:"cpu_seconds_throughput"`
	CPUPer1k       float64 `json:"cpu_seconds_per_1k_requests"`         // in the throughput phase
	CPUPer1kAtRate float64 `json:"cpu_seconds_per_1k_requests_at_rate"` // in the open-loop phase
	// ReadsPerReq and WritesPerReq are the read and write syscalls per request in the throughput phase (from
	// /proc/PID/io); 0 when they could not be read.
	ReadsPerReq  float64 `json:"read_syscalls_per_request"`
	WritesPerReq float64 `json:"write_syscalls_per_request"`
	LogLines     int     `json:"log_lines"`    // lines logged at level warn
	StopSeconds  float64 `json:"stop_seconds"` // from SIGTERM to exit
	// Counted is the meshlet's own meshlet_requests_total for the path's direction (outbound for the
	// 1-meshlet path and A, inbound for B), read after the path's phases.
	Counted *requestCount `json:"metrics_requests,omitempty"`
	proc    *meshletProc
	// nginx is the nginx of the nginx path (proc is nil then); extra are processes whose resources are added to
	// PID's (nginx's worker).
	nginx *nginxProc
	extra []int
}

func (r *pathResult) addErrors(phase string, t *errorTally) {
	n, causes := t.snapshot(phase)
	r.Errors += n
	r.ErrorCauses = append(r.ErrorCauses, causes...)
}

// compare fills in the differences to the direct path d.
func (r *pathResult) compare(d *pathResult) {
	if r == d {
		one := 1.0
		r.RatioDirect = &one
		return
	}
	if r.Latency != nil && d.Latency != nil && r.Latency.Count > 0 && d.Latency.Count > 0 {
		p50 := round1(r.Latency.P50us - d.Latency.P50us)
		p99 := round1(r.Latency.P99us - d.Latency.P99us)
		r.AddedP50us, r.AddedP99us = &p50, &p99
	}
	if r.Throughput != nil && d.Throughput != nil && d.Throughput.RPS > 0 {
		ratio := math.Round(r.Throughput.RPS/d.Throughput.RPS*1000) / 1000
		r.RatioDirect = &ratio
	}
}

func round1(f float64) float64 { return math.Round(f*10) / 10 }

// problems lists everything that makes this run a failure: request errors, unmeasured paths, process trouble.
func (rep *report) problems() []string {
	var out []string
	for _, r := range rep.Results {
		name := protocolInfo[protocol(r.Protocol)].label + " " + pathLabels[pathKind(r.Path)]
		if r.Failed != "" {
			out = append(out, fmt.Sprintf("%s: not measured: %s", name, r.Failed))
		}
		if r.Errors > 0 {
			var causes []string
			for _, c := range r.ErrorCauses {
				causes = append(causes, fmt.Sprintf("%d× %s (%s)", c.Count, c.Error, c.Phase))
			}
			out = append(out, fmt.Sprintf("%s: %d failed request(s): %s", name, r.Errors, strings.Join(causes, "; ")))
		}
	}
	return append(out, rep.Problems...)
}

// writeTable prints the header and one aligned row per protocol × path.
func writeTable(w io.Writer, rep *report) {
	m := rep.Meta
	fmt.Fprintf(w, "\nmeshlet-bench  %s %s  %d CPUs (GOMAXPROCS %d)  %s\n", m.GoVersion, m.OSArch, m.CPUs, m.GOMAXPROCS, m.Date)
	if m.Meshlet != "" {
		fmt.Fprintf(w, "meshlet: %s (%s)\n", m.Meshlet, m.MeshletVersion)
	} else {
		fmt.Fprintln(w, "meshlet: none given (-meshlet): direct path only")
	}
	fmt.Fprintf(w, "load average before %s, after %s", m.LoadStart, m.LoadEnd)
	if busy(m.LoadStart, m.CPUs) || busy(m.LoadEnd, m.CPUs) {
		fmt.Fprint(w, "  (more runnable work than CPUs: other work competes with this run, numbers are noisy)")
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "latency: open loop at %d req/s for %s, measured from each request's scheduled time; "+
		"throughput: closed loop, %d workers for %s; body %d B%s; pinning: %s\n\n",
		m.Rate, m.Duration, m.Concurrency, m.Duration, m.BodyBytes, postNote(m.PostBytes), m.Pinning)

	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	// Padded to a fixed width, the text columns come out left-aligned in the right-aligned table.
	pathWidth := 0
	for _, l := range pathLabels {
		pathWidth = max(pathWidth, len(l))
	}
	fmt.Fprintf(tw, "PROTOCOL\t%-*s\tp50 ms\tp99 ms\tp99.9 ms\t+p50 ms\t+p99 ms\treq/s\tvs direct\terrors\tRSS idle MiB\tRSS load MiB\tCPU s/1k req\tsyscalls/req r+w\t\n", pathWidth, "PATH")
	for _, r := range rep.Results {
		cols := []string{fmt.Sprintf("%-8s", protocolInfo[protocol(r.Protocol)].label), fmt.Sprintf("%-*s", pathWidth, pathLabels[pathKind(r.Path)])}
		if r.Skipped != "" {
			cols = append(cols, "-", "-", "-", "-", "-", "-", "-", "-", "-", "-", "-", "-")
			fmt.Fprintln(tw, strings.Join(cols, "\t")+"\t  skipped: "+r.Skipped)
			continue
		}
		if r.Failed != "" && r.Latency == nil {
			cols = append(cols, "-", "-", "-", "-", "-", "-", "-", fmt.Sprint(r.Errors), "-", "-", "-", "-")
			fmt.Fprintln(tw, strings.Join(cols, "\t")+"\t  FAILED")
			continue
		}
		cols = append(cols, latencyCols(r)...)
		cols = append(cols, throughputCols(r)...)
		cols = append(cols, fmt.Sprint(r.Errors))
		cols = append(cols, resourceCols(r.Meshlets)...)
		fmt.Fprintln(tw, strings.Join(cols, "\t")+"\t")
	}
	tw.Flush()
	fmt.Fprintln(w, "\n+p50/+p99: the path's percentile minus direct's. vs direct: throughput ratio. "+
		"2 meshlets: resource columns are A/B (A: app-side sidecar, B: backend-side sidecar).\n"+
		"RSS load: VmRSS after the throughput phase. CPU s/1k req: utime+stime per 1000 requests in the throughput phase. "+
		"syscalls/req r+w: read and write calls per request in the throughput phase (syscr/syscw of /proc/PID/io; "+
		"recv/send-family calls, nginx's reads, are not counted).\n"+
		"nginx: master+worker added up.")
	writeIntercepted(w, rep)
	writeVsNginx(w, rep)
	writeLagNote(w, rep.Results)
	for _, n := range rep.Notes {
		fmt.Fprintln(w, "note:", n)
	}
}

// busy reports whether the 1-minute load average in loadavg exceeds cpus.
func busy(loadavg string, cpus int) bool {
	f := strings.Fields(loadavg)
	if len(f) == 0 {
		return false
	}
	l, err := strconv.ParseFloat(f[0], 64)
	return err == nil && l > float64(cpus)
}

// loadAvg returns the first three fields of /proc/loadavg, or "unknown".
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if f := strings.Fields(string(b)); err == nil && len(f) >= 3 {
		return strings.Join(f[:3], " ")
	}
	return "unknown"
}

// writeLagNote says when the generator itself sent late (it was short of CPU): the latency percentiles
// include that delay, for direct as much as for the meshlet paths.
func writeLagNote(w io.Writer, results []*pathResult) {
	var late []string
	for _, r := range results {
		if r.Latency != nil && r.Latency.LagP99us > 1000 {
			late = append(late, fmt.Sprintf("%s %s %.1f ms", protocolInfo[protocol(r.Protocol)].label,
				pathLabels[pathKind(r.Path)], r.Latency.LagP99us/1000))
		}
	}
	if len(late) > 0 {
		fmt.Fprintf(w, "note: the load generator was short of CPU and sent late (p99 behind schedule: %s); "+
			"latency percentiles include that delay.\n", strings.Join(late, ", "))
	}
}

func latencyCols(r *pathResult) []string {
	l := r.Latency
	if l == nil || l.Count == 0 {
		return []string{"-", "-", "-", "-", "-"}
	}
	return []string{fmtMs(l.P50us), fmtMs(l.P99us), fmtMs(l.P999us), fmtAdded(r.AddedP50us), fmtAdded(r.AddedP99us)}
}

func throughputCols(r *pathResult) []string {
	if r.Throughput == nil {
		return []string{"-", "-"}
	}
	ratio := "-"
	if r.RatioDirect != nil {
		ratio = fmt.Sprintf("%.2f", *r.RatioDirect)
	}
	return []string{fmt.Sprintf("%.0f", r.Throughput.RPS), ratio}
}

// resourceCols renders RSS idle, RSS at load, CPU per 1k requests and syscalls per request, one value per process
// joined by "/".
func resourceCols(ms []*meshletStats) []string {
	if len(ms) == 0 {
		return []string{"-", "-", "-", "-"}
	}
	var idle, load, cpu, sys []string
	for _, m := range ms {
		idle = append(idle, fmtMiB(m.RSSIdleKiB))
		load = append(load, fmtMiB(m.RSSLoadKiB))
		if m.RSSLoadKiB == 0 { // not sampled: the process was gone
			cpu = append(cpu, "-")
		} else {
			cpu = append(cpu, fmt.Sprintf("%.3f", m.CPUPer1k))
		}
		if m.ReadsPerReq == 0 && m.WritesPerReq == 0 {
			sys = append(sys, "-")
		} else {
			sys = append(sys, fmt.Sprintf("%.1f+%.1f", m.ReadsPerReq, m.WritesPerReq))
		}
	}
	return []string{strings.Join(idle, "/"), strings.Join(load, "/"), strings.Join(cpu, "/"), strings.Join(sys, "/")}
}

func fmtMiB(kib int64) string {
	if kib == 0 {
		return "-"
	}
	return fmt.Sprintf("%.1f", float64(kib)/1024)
}

func fmtMs(usec float64) string { return fmt.Sprintf("%.3f", usec/1000) }

func fmtAdded(usec *float64) string {
	if usec == nil {
		return "-"
	}
	return fmt.Sprintf("%+.3f", *usec/1000)
}

// writeProblems prints the run's failures so that nobody mistakes it for a clean run.
func writeProblems(w io.Writer, problems []string) {
	bar := strings.Repeat("!", 78)
	fmt.Fprintf(w, "\n%s\n!!! THIS RUN HAD %d PROBLEM(S): the numbers above are not a clean measurement\n", bar, len(problems))
	for _, p := range problems {
		fmt.Fprintln(w, "!!! -", p)
	}
	fmt.Fprintln(w, bar)
}

// writeJSON writes rep to path, indented.
func writeJSON(path string, rep *report) error { return writeJSONValue(path, rep) }

// writeJSONValue writes v to path as indented JSON.
func writeJSONValue(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// compareIntercepted fills rep.Intercepted: per protocol, the intercepted path against netns-one and against one,
// where the explicit path, its baseline and the intercepted path were measured.
func (rep *report) compareIntercepted() {
	byKey := map[[2]string]*pathResult{}
	for _, r := range rep.Results {
		byKey[[2]string{r.Protocol, r.Path}] = r
	}
	for _, r := range rep.Results {
		if r.Path != string(pathIntercepted) || !oneMeshletMeasured(r) {
			continue
		}
		for _, c := range []struct{ explicit, baseline pathKind }{{pathNetnsOne, pathNetnsDirect}, {pathOne, pathDirect}} {
			e, base := byKey[[2]string{r.Protocol, string(c.explicit)}], byKey[[2]string{r.Protocol, string(c.baseline)}]
			if !oneMeshletMeasured(e) || base == nil || base.Latency == nil || base.Latency.Count == 0 {
				continue
			}
			f := interceptFigure{Protocol: r.Protocol, Explicit: string(c.explicit), Baseline: string(c.baseline),
				AddedP50usIntercepted:  round1(r.Latency.P50us - base.Latency.P50us),
				AddedP50usExplicit:     round1(e.Latency.P50us - base.Latency.P50us),
				CPUusPerReqIntercepted: round1(r.Meshlets[0].CPUPer1k * 1000),
				CPUusPerReqExplicit:    round1(e.Meshlets[0].CPUPer1k * 1000)}
			f.AddedP50Ratio = ratio(f.AddedP50usIntercepted, f.AddedP50usExplicit)
			f.CPURatio = ratio(f.CPUusPerReqIntercepted, f.CPUusPerReqExplicit)
			rep.Intercepted = append(rep.Intercepted, f)
		}
	}
}

// oneMeshletMeasured reports whether r is a path of one meshlet with a latency and a CPU figure.
func oneMeshletMeasured(r *pathResult) bool {
	return r != nil && r.Latency != nil && r.Latency.Count > 0 && len(r.Meshlets) == 1 && r.Meshlets[0].CPUPer1k > 0
}

// ratio returns a/b to two decimals, or nil when b is not positive.
func ratio(a, b float64) *float64 {
	if b <= 0 {
		return nil
	}
	r := math.Round(a/b*100) / 100
	return &r
}

// writeIntercepted prints the intercepted path against the explicit listeners, one line per protocol and
// explicit path.
func writeIntercepted(w io.Writer, rep *report) {
	if len(rep.Intercepted) == 0 {
		return
	}
	fmt.Fprintln(w, "\nintercepted (app calls the backend's address; nftables redirects it to meshlet's transparent outbound listener)\n"+
		"vs explicit (app calls meshlet's upstream listener on 127.0.0.1), same run: +p50 against the baseline, CPU as meshlet's\n"+
		"utime+stime per request in the throughput phase. 1 meshlet netns: the explicit listener in intercepted's namespaces.")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "PROTOCOL\t%-33s\t+p50 µs intercepted\t+p50 µs explicit\tratio\tCPU µs/req intercepted\tCPU µs/req explicit\tratio\t\n", "EXPLICIT (BASELINE)")
	for _, f := range rep.Intercepted {
		against := fmt.Sprintf("%s (%s)", pathLabels[pathKind(f.Explicit)], pathLabels[pathKind(f.Baseline)])
		fmt.Fprintf(tw, "%-8s\t%-33s\t%.1f\t%.1f\t%s\t%.1f\t%.1f\t%s\t\n", protocolInfo[protocol(f.Protocol)].label, against,
			f.AddedP50usIntercepted, f.AddedP50usExplicit, fmtRatio(f.AddedP50Ratio),
			f.CPUusPerReqIntercepted, f.CPUusPerReqExplicit, fmtRatio(f.CPURatio))
	}
	tw.Flush()
	fmt.Fprintln(w, "intercepted, direct netns, 1 meshlet netns: the client and meshlet (UID 5995; meshlet redirect-traffic) in a network "+
		"namespace, the backend in a second one across a veth pair; the other paths run on the host's loopback.")
}

func fmtRatio(r *float64) string {
	if r == nil {
		return "-"
	}
	return fmt.Sprintf("%.2f", *r)
}

// postNote says what -post made of HTTP requests; "" for GETs.
func postNote(n int) string {
	if n == 0 {
		return ""
	}
	return fmt.Sprintf(" (HTTP/1.1 and h2c: POST with a %d B body)", n)
}
