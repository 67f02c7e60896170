package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"meshlet.dev/meshlet/internal/meshlettest"
	"meshlet.dev/meshlet/redirect/redirecttest"
)

// TestInterceptedPath runs the intercepted path beside direct, the explicit listener and their counterparts in the
// namespaces for a short, bounded load, for each protocol: every request succeeds, meshlet counted every one and
// took every connection as a redirected one to the upstream (crossCheck makes anything else a problem), so the
// figure is meshlet's and not the direct path's; and both comparisons with an explicit listener are reported. Root only: it skips with a message
// elsewhere, and fails under CI=true.
func TestInterceptedPath(t *testing.T) {
	redirecttest.NeedRoot(t)
	b := &bench{log: t.Output(), opts: options{meshlet: meshletBin(t), rate: 200, duration: 300 * time.Millisecond,
		warmup: 100 * time.Millisecond, concurrency: 4, timeout: 5 * time.Second,
		protocols: []protocol{protoHTTP1, protoH2C, protoGRPC}, paths: []pathKind{pathDirect, pathOne, pathNetnsDirect, pathNetnsOne, pathIntercepted}}}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	rep := b.run(ctx)
	if problems := rep.problems(); len(problems) > 0 {
		t.Fatalf("problems:\n%s", strings.Join(problems, "\n"))
	}
	for _, r := range rep.Results {
		if r.Path != string(pathIntercepted) {
			continue
		}
		if r.Latency == nil || r.Latency.Count != 60 || r.Throughput == nil || r.Throughput.Requests == 0 || len(r.Meshlets) != 1 {
			t.Fatalf("%s intercepted: latency %+v, throughput %+v, %d meshlets", r.Protocol, r.Latency, r.Throughput, len(r.Meshlets))
		}
		c := r.Meshlets[0].Counted
		if made := int64(r.Latency.Count) + r.Throughput.Requests; c == nil || c.Total < made || c.Redirected["mesh"] == 0 {
			t.Errorf("%s intercepted: meshlet counted %+v for %d requests made in the measured phases", r.Protocol, c, made)
		}
		if r.Meshlets[0].CPUPer1k <= 0 {
			t.Errorf("%s intercepted: no CPU time measured for meshlet", r.Protocol)
		}
	}
	if len(rep.Intercepted) != 6 {
		t.Errorf("intercepted vs explicit: %+v, want two figures per protocol (netns-one, one)", rep.Intercepted)
	}
	for _, f := range rep.Intercepted {
		if f.CPURatio == nil {
			t.Errorf("%s: intercepted vs %s: %+v: no CPU ratio", f.Protocol, f.Explicit, f)
		}
	}
	if out, err := exec.Command("ip", "netns", "list").Output(); err != nil || strings.Contains(string(out), fmt.Sprintf("mlb%d-", os.Getpid())) {
		t.Errorf("network namespaces left after the run (ip netns list: %v):\n%s", err, out)
	}
}

// TestSkippedPath: a path skipped on this machine (the intercepted one without root) is shown as skipped and is
// no problem of the run.
func TestSkippedPath(t *testing.T) {
	rep := &report{Results: []*pathResult{{Protocol: string(protoHTTP1), Path: string(pathIntercepted), Skipped: "needs root"}}}
	if p := rep.problems(); len(p) > 0 {
		t.Errorf("problems: %q", p)
	}
	var out strings.Builder
	writeTable(&out, rep)
	if !strings.Contains(out.String(), "skipped: needs root") {
		t.Errorf("table does not say the path was skipped:\n%s", out.String())
	}
}

// meshletBin is the meshlet binary named by MESHLET_BIN, else one built into the test's directory.
func meshletBin(t *testing.T) string {
	if bin := os.Getenv("MESHLET_BIN"); bin != "" {
		return bin
	}
	bin := filepath.Join(t.TempDir(), "meshlet")
	if out, err := exec.Command("go", "build", "-o", bin, meshlettest.MeshletPkg).CombinedOutput(); err != nil {
		t.Fatalf("building meshlet: %v\n%s", err, out)
	}
	return bin
}
