package main

import (
	"bytes"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"meshlet.dev/meshlet/internal/meshlettest"
)

// The ratio is taken round by round, then the median: a round where the machine was slow for both builds does not
// weigh, and rounds measured by only one build are left out.
func TestPairedRatio(t *testing.T) {
	s := func(cpu ...float64) []vsSample {
		var out []vsSample
		for _, c := range cpu {
			out = append(out, vsSample{CPUus: c})
		}
		return out
	}
	for _, tc := range []struct {
		base, cand  []vsSample
		med, lo, hi float64
	}{
		{s(10, 20, 30), s(11, 18, 33), 1.1, 0.9, 1.1},
		{s(10, 40), s(9, 48), 1.05, 0.9, 1.2},      // even count: the mean of the middle two
		{s(10, 0, 20), s(12, 15, 20), 1.1, 1, 1.2}, // a round without a figure is left out
		{s(10, 10), s(12), 1.2, 1.2, 1.2},          // the candidate's second round did not run
		{nil, s(12), 0, 0, 0},
	} {
		med, lo, hi := pairedRatio(tc.base, tc.cand)
		if !near(med, tc.med) || !near(lo, tc.lo) || !near(hi, tc.hi) {
			t.Errorf("pairedRatio(%v, %v) = %v %v %v, want %v %v %v", tc.base, tc.cand, med, lo, hi, tc.med, tc.lo, tc.hi)
		}
	}
}

func near(a, b float64) bool { return a-b < 1e-9 && b-a < 1e-9 }

func TestVsFlags(t *testing.T) {
	self := os.Args[0] // an executable file
	o, err := parseFlags([]string{"-meshlet", self, "-vs", self}, io.Discard)
	if err != nil || o.vs != self || o.rounds != 5 {
		t.Fatalf("-vs: %+v, %v; want the baseline and 5 rounds", o, err)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-vs", self}, "-vs: needs -meshlet"},
		{[]string{"-meshlet", self, "-vs", self, "-scale"}, "excludes -scale"},
		{[]string{"-meshlet", self, "-vs", self, "-rounds", "0"}, "-rounds: must be in 1..50"},
		{[]string{"-meshlet", self, "-vs", filepath.Join(t.TempDir(), "none")}, "-vs: stat"},
		{[]string{"-meshlet", self, "-vs", t.TempDir()}, "-vs: " /* a directory */},
	} {
		if _, err := parseFlags(tc.args, io.Discard); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: err %v, want one with %q", tc.args, err, tc.want)
		}
	}
}

// TestVsRounds builds meshlet and compares it with itself over two short rounds of the 1-meshlet path: a row per
// protocol with both builds measured each round, a ratio from them, and the same in the JSON.
func TestVsRounds(t *testing.T) {
	if testing.Short() {
		t.Skip("builds meshlet and runs it four times")
	}
	bin := filepath.Join(t.TempDir(), "meshlet")
	if out, err := exec.Command("go", "build", "-o", bin, meshlettest.MeshletPkg).CombinedOutput(); err != nil {
		t.Fatalf("building meshlet: %v\n%s", err, out)
	}
	jsonFile := filepath.Join(t.TempDir(), "vs.json")
	var stdout, stderr bytes.Buffer
	code := run([]string{"-meshlet", bin, "-vs", bin, "-rounds", "2", "-paths", "one", "-protocols", "http1,h2c",
		"-duration", "300ms", "-warmup", "100ms", "-rate", "200", "-pin=false", "-json", jsonFile}, &stdout, &stderr)
	if code != 0 {
		t.Fatalf("exit status %d\nstdout:\n%s\nstderr:\n%s", code, stdout.String(), stderr.String())
	}
	for _, want := range []string{"2 alternated rounds", "HTTP/1.1  1 meshlet", "h2c       1 meshlet"} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, stdout.String())
		}
	}
	b, err := os.ReadFile(jsonFile)
	if err != nil {
		t.Fatal(err)
	}
	var res vsResult
	if err := json.Unmarshal(b, &res); err != nil {
		t.Fatal(err)
	}
	if res.Rounds != 2 || len(res.Rows) != 2 || len(res.Problems) > 0 {
		t.Fatalf("json: %d rounds, %d rows, problems %v; want 2 rounds, 2 rows, none", res.Rounds, len(res.Rows), res.Problems)
	}
	for _, r := range res.Rows {
		if r.Path != "one" || r.Role != "meshlet" || len(r.Baseline) != 2 || len(r.Candidate) != 2 {
			t.Errorf("row %+v: want path one, role meshlet, 2 samples of each build", r.vsKey)
		}
		if r.Ratio <= 0 || r.RatioMin > r.Ratio || r.Ratio > r.RatioMax {
			t.Errorf("row %+v: ratio %v in %v..%v, want a ratio within its spread", r.vsKey, r.Ratio, r.RatioMin, r.RatioMax)
		}
		for _, s := range append(r.Baseline, r.Candidate...) {
			if s.CPUus <= 0 || s.P50us <= 0 {
				t.Errorf("row %+v: sample %+v: want CPU and p50 measured", r.vsKey, s)
			}
		}
	}
}
