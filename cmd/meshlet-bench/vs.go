package main

import (
	"context"
	"fmt"
	"io"
	"slices"
	"text/tabwriter"
)

// -vs BASELINE measures a change: the paths run with the meshlet under test (-meshlet) and with a baseline build
// (-vs), one after the other, for -rounds rounds, the order swapped every round so that a drift of the machine
// weighs on both alike. What it prints per protocol, path and meshlet (A, B on the mesh path) is the median of
// the rounds' candidate/baseline ratios of CPU per request: each ratio compares two runs a few seconds apart, which
// holds on a shared machine whose absolute figures move by ±15% from one minute to the next. nginx's paths are
// left out (nothing to compare).

// vsKey is one meshlet of one protocol × path.
type vsKey struct {
	Protocol string `json:"protocol"`
	Path     string `json:"path"`
	Role     string `json:"role"` // meshlet, or A and B on the mesh paths
}

// vsSample is one run's figures of one meshlet.
type vsSample struct {
	CPUus       float64 `json:"cpu_us_per_request"`         // the throughput phase's CPU per request
	CPUAtRateUs float64 `json:"cpu_us_per_request_at_rate"` // the open-loop phase's
	Reads       float64 `json:"read_syscalls_per_request"`
	Writes      float64 `json:"write_syscalls_per_request"`
	P50us       float64 `json:"p50_us"` // the path's p50 at the open-loop rate
}

// vsRow is one meshlet's comparison: the samples of each build, round by round, and the median of the rounds'
// CPU ratios (0 when no round measured both).
type vsRow struct {
	vsKey
	Baseline  []vsSample `json:"baseline"`
	Candidate []vsSample `json:"candidate"`
	Ratio     float64    `json:"cpu_ratio_median"` // median of candidate/baseline CPU per request, round by round
	RatioMin  float64    `json:"cpu_ratio_min"`
	RatioMax  float64    `json:"cpu_ratio_max"`
}

// vsResult is -vs's report (-json writes it).
type vsResult struct {
	Baseline  string   `json:"baseline"`
	Candidate string   `json:"candidate"`
	Rounds    int      `json:"rounds"`
	Rows      []*vsRow `json:"rows"`
	Problems  []string `json:"problems,omitempty"`
}

// runVs runs the rounds, prints the comparison and returns the exit status: 1 when a request failed or a path
// could not be measured in any run.
func runVs(ctx context.Context, opts options, stdout, stderr io.Writer) int {
	res := &vsResult{Baseline: opts.vs, Candidate: opts.meshlet}
	opts.paths = slices.DeleteFunc(slices.Clone(opts.paths), isNginx)
	bins := [2]string{opts.vs, opts.meshlet}
	names := [2]string{"baseline", "candidate"}
	rows := map[vsKey]*vsRow{}
	cpus, err := allowedCPUs() // before the first run pins this process to the benchmark's CPUs
	if err != nil {
		cpus = nil // each run says it could not pin
	}
	for r := 0; r < opts.rounds && ctx.Err() == nil; r++ {
		order := [2]int{0, 1}
		if r%2 == 1 {
			order = [2]int{1, 0}
		}
		for _, w := range order {
			fmt.Fprintf(stderr, "meshlet-bench -vs: round %d of %d: %s %s\n", r+1, opts.rounds, names[w], bins[w])
			o := opts
			o.meshlet, o.jsonFile, o.profileDir = bins[w], "", ""
			rep := (&bench{opts: o, log: stderr, cpus: cpus}).run(ctx)
			for _, p := range rep.problems() {
				res.Problems = append(res.Problems, fmt.Sprintf("round %d, %s: %s", r+1, names[w], p))
			}
			for _, pr := range rep.Results {
				for _, m := range pr.Meshlets {
					if m.nginx != nil || pr.Throughput == nil || pr.Latency == nil {
						continue
					}
					k := vsKey{Protocol: pr.Protocol, Path: pr.Path, Role: m.Role}
					row := rows[k]
					if row == nil {
						row = &vsRow{vsKey: k}
						rows[k] = row
						res.Rows = append(res.Rows, row)
					}
					s := vsSample{CPUus: m.CPUPer1k * 1000, CPUAtRateUs: m.CPUPer1kAtRate * 1000, Reads: m.ReadsPerReq,
						Writes: m.WritesPerReq, P50us: pr.Latency.P50us}
					if w == 0 {
						row.Baseline = append(row.Baseline, s)
					} else {
						row.Candidate = append(row.Candidate, s)
					}
				}
			}
		}
	}
	res.Rounds = opts.rounds
	if ctx.Err() != nil {
		res.Problems = append(res.Problems, "interrupted")
	}
	for _, row := range res.Rows {
		row.Ratio, row.RatioMin, row.RatioMax = pairedRatio(row.Baseline, row.Candidate)
	}
	writeVs(stdout, res)
	if opts.jsonFile != "" {
		if err := writeJSONValue(opts.jsonFile, res); err != nil {
			fmt.Fprintln(stderr, "meshlet-bench: writing json:", err)
			return 1
		}
	}
	if len(res.Problems) > 0 {
		writeProblems(stdout, res.Problems)
		return 1
	}
	return 0
}

// pairedRatio returns the median, the least and the greatest of candidate[i]/baseline[i] CPU per request over
// the rounds that measured both (0, 0, 0 without one).
func pairedRatio(baseline, candidate []vsSample) (med, lo, hi float64) {
	var ratios []float64
	for i := range min(len(baseline), len(candidate)) {
		if baseline[i].CPUus > 0 && candidate[i].CPUus > 0 {
			ratios = append(ratios, candidate[i].CPUus/baseline[i].CPUus)
		}
	}
	if len(ratios) == 0 {
		return 0, 0, 0
	}
	slices.Sort(ratios)
	return medianSorted(ratios), ratios[0], ratios[len(ratios)-1]
}

// medianSorted is the median of sorted values (the mean of the middle two for an even count); 0 for none.
func medianSorted(v []float64) float64 {
	n := len(v)
	switch {
	case n == 0:
		return 0
	case n%2 == 1:
		return v[n/2]
	}
	return (v[n/2-1] + v[n/2]) / 2
}

// medianOf is the median of f over samples.
func medianOf(samples []vsSample, f func(vsSample) float64) float64 {
	v := make([]float64, 0, len(samples))
	for _, s := range samples {
		v = append(v, f(s))
	}
	slices.Sort(v)
	return medianSorted(v)
}

// writeVs prints one aligned row per meshlet: medians of each build, the median ratio and its spread.
func writeVs(w io.Writer, res *vsResult) {
	fmt.Fprintf(w, "\nmeshlet-bench -vs: %d alternated rounds\nbaseline:  %s\ncandidate: %s\n\n", res.Rounds, res.Baseline, res.Candidate)
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PROTOCOL\tPATH\tMESHLET\tCPU µs/req baseline\tcandidate\tcandidate/baseline\tround ratios\tat the rate\twrites/req\treads/req\tp50 µs")
	cpu := func(s vsSample) float64 { return s.CPUus }
	wr := func(s vsSample) float64 { return s.Writes }
	rd := func(s vsSample) float64 { return s.Reads }
	p50 := func(s vsSample) float64 { return s.P50us }
	atRate := func(s vsSample) float64 { return s.CPUAtRateUs }
	for _, r := range res.Rows {
		ratio := "-"
		spread := "-"
		if r.Ratio > 0 {
			ratio = fmt.Sprintf("%.3f", r.Ratio)
			spread = fmt.Sprintf("%.3f-%.3f", r.RatioMin, r.RatioMax)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%.1f\t%.1f\t%s\t%s\t%.1f -> %.1f\t%.2f -> %.2f\t%.2f -> %.2f\t%.0f -> %.0f\n",
			protocolInfo[protocol(r.Protocol)].label, pathLabels[pathKind(r.Path)], r.Role,
			medianOf(r.Baseline, cpu), medianOf(r.Candidate, cpu), ratio, spread,
			medianOf(r.Baseline, atRate), medianOf(r.Candidate, atRate),
			medianOf(r.Baseline, wr), medianOf(r.Candidate, wr), medianOf(r.Baseline, rd), medianOf(r.Candidate, rd),
			medianOf(r.Baseline, p50), medianOf(r.Candidate, p50))
	}
	tw.Flush()
	fmt.Fprintln(w, "\ncandidate/baseline: the median of the rounds' ratios of the meshlet's CPU per request in the throughput phase (each round runs both builds, in turn); the other columns are medians of each build's runs (at the rate: CPU µs per request in the open-loop phase).")
}
