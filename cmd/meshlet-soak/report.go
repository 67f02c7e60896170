package main

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"
)

// report is one interval's figures.
type report struct {
	at      time.Duration // end of the interval since the start of the load
	w       *window
	rss     map[string]int64   // median VmRSS of the interval's samples, bytes, by meshlet (A, B0, ...)
	rssMin  map[string]int64   // the lowest of them
	gor     map[string]float64 // median go_goroutines of the interval's samples, by meshlet
	gorMin  map[string]float64 // the lowest of them
	gen     map[string]int     // the instance's generation at the end of the interval
	retries float64            // A's meshlet_retries_total at the end of the interval (cumulative)
	partial bool               // the remainder after the last full interval
}

const mib = 1 << 20

func (s *soak) printHeader() {
	var b strings.Builder
	fmt.Fprintf(&b, "%8s %8s %6s %8s %8s %8s %8s %7s |", "time", "requests", "errors", "p50", "p99", "grpc p99", "http p99", "retries")
	for _, n := range s.names() {
		fmt.Fprintf(&b, " %8s", "RSS "+n)
	}
	b.WriteString(" MiB |")
	for _, n := range s.names() {
		fmt.Fprintf(&b, " %5s", "gr "+n)
	}
	fmt.Fprintln(s.out, b.String())
}

// addReport closes an interval: it takes the RSS and goroutine samples, scrapes A's retries, and prints a row.
func (s *soak) addReport(w *window, partial bool) {
	r := report{at: time.Since(s.start).Round(time.Second), w: w, rss: map[string]int64{}, rssMin: map[string]int64{},
		gor: map[string]float64{}, gorMin: map[string]float64{}, gen: map[string]int{}, partial: partial}
	s.mu.Lock()
	for n, samples := range s.rss {
		r.rss[n] = median(samples)
		r.rssMin[n] = slices.Min(samples)
	}
	for n, samples := range s.gor {
		r.gor[n] = float64(median(samples))
		r.gorMin[n] = float64(slices.Min(samples))
	}
	s.rss, s.gor = map[string][]int64{}, map[string][]int64{}
	s.mu.Unlock()
	m := s.mesh
	m.mu.Lock()
	for _, in := range m.instances {
		r.gen[in.name] = in.gen
	}
	m.mu.Unlock()
	if t, err := m.a.metrics(); err == nil {
		r.retries = t.Sum("meshlet_retries_total", nil)
	}
	prevRetries := 0.0
	if len(s.reports) > 0 {
		prevRetries = s.reports[len(s.reports)-1].retries
	}
	s.reports = append(s.reports, r)

	req, errs := w.total()
	all := w.all()
	var b strings.Builder
	at := r.at.String()
	if r.partial {
		at = "+" + at
	}
	fmt.Fprintf(&b, "%8s %8d %6d %8s %8s %8s %8s %7.0f |", at, req, errs, ms(percentile(all, 50)), ms(percentile(all, 99)),
		ms(percentile(sorted(w.lat["grpc"]), 99)), ms(percentile(sorted(append(w.lat["http-get"], w.lat["http-post"]...)), 99)),
		r.retries-prevRetries)
	for _, n := range s.names() {
		if v, ok := r.rss[n]; ok {
			fmt.Fprintf(&b, " %8.1f", float64(v)/mib)
		} else {
			fmt.Fprintf(&b, " %8s", "-")
		}
	}
	b.WriteString("     |")
	for _, n := range s.names() {
		if g, ok := r.gor[n]; ok {
			fmt.Fprintf(&b, " %5.0f", g)
		} else {
			fmt.Fprintf(&b, " %5s", "-")
		}
	}
	fmt.Fprintln(s.out, b.String())
	for _, c := range slices.Sorted(maps.Keys(w.errors)) {
		fmt.Fprintf(s.out, "%8s   error %6d× %s (first at %s, %s)\n", "", w.errors[c], c,
			w.first[c].Sub(s.start).Round(time.Millisecond), w.first[c].UTC().Format("15:04:05.000"))
	}
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2fms", float64(d)/float64(time.Millisecond)) }

func sorted(d []time.Duration) []time.Duration {
	d = slices.Clone(d)
	slices.Sort(d)
	return d
}

func median(v []int64) int64 {
	if len(v) == 0 {
		return 0
	}
	v = slices.Clone(v)
	slices.Sort(v)
	return v[len(v)/2]
}

// memVerdict is the memory judgement of one long-lived meshlet.
type memVerdict struct {
	name        string
	base, final int64 // median RSS of the first interval after warm-up and of the last full interval
	finalMin    int64 // the lowest RSS sample of the last full interval
	baseG       float64
	finalG      float64
	problems    []string
}

// judgeMemory decides whether a meshlet that ran the whole time (A, B0) grew without bound. The first interval
// is warm-up (connection pools, TLS sessions, the heap reaching its steady size); the base is the median RSS
// of the first interval after it. The load's concurrency is bounded (maxInFlight), so a stall (a busy machine)
// can raise RSS by a bounded amount only, and Go returns freed memory to the system within minutes; a leak
// grows with the requests served, without end. Failures:
//   - the lowest RSS of the last full interval above 1.5× the base + 10 MiB (the lowest, so that a
//     transient peak at the end does not count);
//   - with at least 6 intervals after warm-up (the default 10m run has 9), a median RSS that rose in every one
//     of them, by more than 20% + 4 MiB in all: a steady leak too slow for the first rule (a few hundred bytes
//     per request at 200/s), while noise and a stall do not rise interval after interval;
//   - the lowest goroutine count of the last interval above 2× the base (median) + 50: a goroutine leaked per
//     connection or per reload (the lowest, since requests in flight during a stall hold goroutines too).
//
// With fewer than three full intervals there is nothing after warm-up to compare, and nothing is judged.
func judgeMemory(name string, reports []report) (memVerdict, bool) {
	v := memVerdict{name: name}
	var full []report
	for _, r := range reports {
		if !r.partial {
			full = append(full, r)
		}
	}
	if len(full) < 3 {
		return v, false
	}
	post := full[1:]
	first, last := post[0], post[len(post)-1]
	v.base, v.final, v.finalMin = first.rss[name], last.rss[name], last.rssMin[name]
	v.baseG, v.finalG = first.gor[name], last.gorMin[name]
	if v.base == 0 || v.final == 0 {
		v.problems = append(v.problems, "no RSS samples")
		return v, true
	}
	if limit := v.base*3/2 + 10*mib; v.finalMin > limit {
		v.problems = append(v.problems, fmt.Sprintf("RSS grew from %.1f to at least %.1f MiB in the last interval (limit 1.5× + 10 MiB = %.1f MiB)",
			float64(v.base)/mib, float64(v.finalMin)/mib, float64(limit)/mib))
	}
	rising := len(post) >= 6
	for i := 1; i < len(post); i++ {
		if post[i].rss[name] <= post[i-1].rss[name] {
			rising = false
		}
	}
	if rising && v.final > v.base*6/5+4*mib {
		v.problems = append(v.problems, fmt.Sprintf("RSS rose in every one of %d intervals after warm-up, from %.1f to %.1f MiB",
			len(post)-1, float64(v.base)/mib, float64(v.final)/mib))
	}
	if v.finalG > 2*v.baseG+50 {
		v.problems = append(v.problems, fmt.Sprintf("goroutines grew from %.0f to %.0f (limit 2× + 50)", v.baseG, v.finalG))
	}
	return v, true
}

// summary prints the totals and the verdict; it reports whether the run passed.
func (s *soak) summary() bool {
	total := newWindow()
	for _, r := range s.reports {
		for k, n := range r.w.requests {
			total.requests[k] += n
		}
		for k, n := range r.w.errors {
			total.errors[k] += n
		}
		for k, l := range r.w.lat {
			total.lat[k] = append(total.lat[k], l...)
		}
	}
	req, errs := total.total()
	all := total.all()
	fmt.Fprintf(s.out, "\nsummary: %d requests (gRPC %d, HTTP GET %d, HTTP POST %d), %d errors; latency p50 %s p99 %s p99.9 %s max %s\n",
		req, total.requests["grpc"], total.requests["http-get"], total.requests["http-post"], errs,
		ms(percentile(all, 50)), ms(percentile(all, 99)), ms(percentile(all, 99.9)), ms(percentile(all, 100)))
	for _, c := range slices.Sorted(maps.Keys(total.errors)) {
		fmt.Fprintf(s.out, "  error %d× %s (unexpected: no error is expected)\n", total.errors[c], c)
	}
	if errs > 0 {
		s.failures = append(s.failures, fmt.Sprintf("%d requests failed (see errors by cause)", errs))
	}
	m := s.mesh
	if m == nil || len(s.reports) == 0 {
		return s.verdict()
	}
	expected := float64(s.opts.rate) * s.opts.duration.Seconds()
	if float64(req) < 0.8*expected && len(s.failures) == 0 {
		s.failures = append(s.failures, fmt.Sprintf("the load fell behind: %d requests of %.0f scheduled", req, expected))
	}
	fmt.Fprintf(s.out, "events: %d churns, %d reloads of A (SIGHUP), %d certificate rotations\n", m.churns, m.reloads, m.rotations)
	var served []string
	for _, in := range m.instances {
		served = append(served, fmt.Sprintf("%s %d (%d generations)", in.name, in.served.Load(), in.gen))
		if in.served.Load() == 0 && len(s.failures) == 0 {
			s.failures = append(s.failures, "instance "+in.name+" never served a request")
		}
	}
	fmt.Fprintf(s.out, "served by instance: %s\n", strings.Join(served, ", "))
	if n := s.load.skipped.Load(); n > 0 {
		fmt.Fprintf(s.out, "load: %d requests not sent (%d in flight already, or the generator stalled)\n", n, maxInFlight)
	}
	if t := s.finalA; t != nil {
		var reasons []string
		for _, r := range []string{"no_endpoint", "connect", "timeout", "canceled", "overflow", "other", "unknown_upstream"} {
			if v := t.Sum("meshlet_upstream_errors_total", map[string]string{"reason": r}); v > 0 {
				reasons = append(reasons, fmt.Sprintf("%s %.0f", r, v))
			}
		}
		fmt.Fprintf(s.out, "meshlet A: retries %.0f, upstream errors %.0f %v, reloads ok %.0f failed %.0f, tls rotations ok %.0f failed %.0f\n",
			t.Sum("meshlet_retries_total", nil), t.Sum("meshlet_upstream_errors_total", nil), reasons,
			t.Sum("meshlet_config_reloads_total", map[string]string{"result": "success"}),
			t.Sum("meshlet_config_reloads_total", map[string]string{"result": "failure"}),
			t.Sum("meshlet_tls_rotations_total", map[string]string{"result": "success"}),
			t.Sum("meshlet_tls_rotations_total", map[string]string{"result": "failure"}))
	}
	for _, name := range []string{"A", "B0"} {
		v, judged := judgeMemory(name, s.reports)
		if !judged {
			fmt.Fprintf(s.out, "memory %s: not judged (fewer than 3 full intervals)\n", name)
			continue
		}
		fmt.Fprintf(s.out, "memory %s: RSS %.1f → %.1f MiB, goroutines %.0f → %.0f (first interval after warm-up, median → last, lowest)\n",
			name, float64(v.base)/mib, float64(v.final)/mib, v.baseG, v.finalG)
		for _, p := range v.problems {
			s.failures = append(s.failures, "memory "+name+": "+p)
		}
	}
	for _, p := range m.procs() {
		warns := logWarnings(p.LogPath) // the file has every generation of the instance
		for _, msg := range slices.Sorted(maps.Keys(warns)) {
			fmt.Fprintf(s.out, "log of meshlet %s: WARN %d× %q\n", strings.Split(p.name, "#")[0], warns[msg], msg)
		}
		if lines, n := logErrors(p.LogPath, 3); n > 0 {
			fmt.Fprintf(s.out, "log of meshlet %s: %d ERROR lines, e.g.:\n    %s\n", p.name, n, strings.Join(lines, "\n    "))
		}
	}
	return s.verdict()
}

func (s *soak) verdict() bool {
	for _, f := range s.failures {
		fmt.Fprintf(s.out, "FAILED: %s\n", f)
	}
	return len(s.failures) == 0
}
