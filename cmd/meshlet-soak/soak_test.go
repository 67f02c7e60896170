package main

import (
	"strings"
	"testing"
	"time"
)

// reports builds full intervals with the given RSS (MiB) and goroutines of meshlet A.
func reports(rss []float64, gor []float64) []report {
	var out []report
	for i := range rss {
		r := report{w: newWindow(), rss: map[string]int64{"A": int64(rss[i] * mib)}, gor: map[string]float64{"A": gor[i]}}
		r.rssMin = map[string]int64{"A": r.rss["A"] - mib/2}
		r.gorMin = map[string]float64{"A": gor[i] - 2}
		out = append(out, r)
	}
	return out
}

func TestJudgeMemory(t *testing.T) {
	flat := []float64{30, 30, 30, 30, 30, 30, 30, 30, 30, 30}
	for _, c := range []struct {
		name    string
		rss     []float64
		gor     []float64
		judged  bool
		problem string // a substring of the only problem; "" for none
	}{
		{"too short", []float64{20, 90}, []float64{10, 10}, false, ""},
		{"flat after a warm-up jump", []float64{10, 30, 31, 30, 32, 31, 30, 31, 30, 31}, flat, true, ""},
		{"noise", []float64{28, 30, 33, 29, 34, 31, 35, 30, 33, 32}, flat, true, ""},
		{"slow creep below the trend rule", []float64{30, 30, 30.5, 31, 31.5, 32, 32.5, 33, 33.5, 34}, flat, true, ""},
		{"big growth", []float64{20, 20, 25, 30, 28, 35, 40, 38, 45, 50}, flat, true, "RSS grew from 20.0 to at least 49.5"},
		{"a stall in a short run", []float64{19, 19, 22, 26, 31, 33}, []float64{45, 45, 190, 110, 90, 80}, true, ""},
		{"a stall at the end", []float64{20, 21, 21, 21, 22}, []float64{50, 53, 53, 53, 120}, true, ""},
		{"steady leak", []float64{30, 30, 31.5, 33, 34.5, 36, 37.5, 39, 40.5, 42}, flat, true, "rose in every one of 8 intervals"},
		{"goroutine leak", flat, []float64{40, 40, 60, 80, 100, 120, 140, 160, 180, 200}, true, "goroutines grew from 40 to 198"},
	} {
		t.Run(c.name, func(t *testing.T) {
			v, judged := judgeMemory("A", reports(c.rss, c.gor))
			if judged != c.judged {
				t.Fatalf("judged = %v, want %v", judged, c.judged)
			}
			switch {
			case c.problem == "" && len(v.problems) > 0:
				t.Errorf("problems %q, want none", v.problems)
			case c.problem != "" && (len(v.problems) != 1 || !strings.Contains(v.problems[0], c.problem)):
				t.Errorf("problems %q, want one containing %q", v.problems, c.problem)
			}
		})
	}
}

func TestPercentile(t *testing.T) {
	var d []time.Duration
	for i := 1; i <= 100; i++ {
		d = append(d, time.Duration(i)*time.Millisecond)
	}
	for p, want := range map[float64]time.Duration{50: 50 * time.Millisecond, 99: 99 * time.Millisecond, 100: 100 * time.Millisecond} {
		if got := percentile(d, p); got != want {
			t.Errorf("p%v = %v, want %v", p, got, want)
		}
	}
	if got := percentile(nil, 99); got != 0 {
		t.Errorf("p99 of nothing = %v, want 0", got)
	}
}
