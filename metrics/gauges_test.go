package metrics

import (
	"fmt"
	"runtime"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestGaugesLikeGaugeVec: the same calls on Gauges and on a GaugeVec of the same name export the same series.
func TestGaugesLikeGaugeVec(t *testing.T) {
	g := NewGauges("meshlet_test_endpoints", "Endpoints by state.", "upstream", "state")
	v := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "meshlet_test_endpoints", Help: "Endpoints by state."},
		[]string{"upstream", "state"})
	type gauge interface {
		Set(float64)
		Inc()
		Dec()
		Add(float64)
		Sub(float64)
	}
	ops := []func(with func(lvs ...string) gauge, del func(lvs ...string) bool){
		func(with func(...string) gauge, _ func(...string) bool) { with("api", "closed").Inc() },
		func(with func(...string) gauge, _ func(...string) bool) { with("api", "closed").Inc() },
		func(with func(...string) gauge, _ func(...string) bool) { with("api", "closed").Dec() },
		func(with func(...string) gauge, _ func(...string) bool) { with("api", "open").Inc() },
		func(with func(...string) gauge, _ func(...string) bool) { with("web", "closed").Set(7) },
		func(with func(...string) gauge, _ func(...string) bool) { with("web", "closed").Add(0.5) },
		func(with func(...string) gauge, _ func(...string) bool) { with("web", "closed").Sub(2) },
		func(with func(...string) gauge, _ func(...string) bool) { with("gone", "closed").Set(1) },
		func(_ func(...string) gauge, del func(...string) bool) { del("gone", "closed") },
		func(_ func(...string) gauge, del func(...string) bool) { del("never", "closed") },
		func(with func(...string) gauge, _ func(...string) bool) { with("a|b", "c").Set(3) },
		func(with func(...string) gauge, _ func(...string) bool) { with("a", "b|c").Set(4) },
	}
	for _, op := range ops {
		op(func(lvs ...string) gauge { return g.WithLabelValues(lvs...) }, g.DeleteLabelValues)
		op(func(lvs ...string) gauge { return v.WithLabelValues(lvs...) }, v.DeleteLabelValues)
	}
	if g.DeleteLabelValues("api") || v.DeleteLabelValues("api") {
		t.Fatal("a delete with too few label values deleted something")
	}
	for _, lvs := range [][]string{{"api"}, {"a\xffb", "c"}} {
		for name, with := range map[string]func(...string){
			"Gauges": func(lvs ...string) { g.WithLabelValues(lvs...) }, "GaugeVec": func(lvs ...string) { v.WithLabelValues(lvs...) }} {
			func() {
				defer func() {
					if recover() == nil {
						t.Errorf("%s.WithLabelValues(%q) did not panic", name, lvs)
					}
				}()
				with(lvs...)
			}()
		}
	}
	var got, want strings.Builder
	for _, c := range []struct {
		c   prometheus.Collector
		out *strings.Builder
	}{{g, &got}, {v, &want}} {
		reg := prometheus.NewPedanticRegistry()
		reg.MustRegister(c.c)
		n, err := testutil.GatherAndCount(reg)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(c.out, "%d series\n", n)
		if err := testutil.GatherAndCompare(reg, strings.NewReader("")); err != nil {
			c.out.WriteString(err.Error()) // the exposition, as the difference from nothing
		}
	}
	if got.String() != want.String() {
		t.Fatalf("Gauges export:\n%s\nGaugeVec exports:\n%s", got.String(), want.String())
	}
}

// TestGaugesSmall: a series of Gauges costs well under a GaugeVec child's ~370 bytes (issue 16: every upstream
// has two such series from its start).
func TestGaugesSmall(t *testing.T) {
	const n = 20000
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("upstream-%05d", i)
	}
	heap := func() uint64 {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	before := heap()
	g := NewGauges("meshlet_test_endpoints", "Endpoints.", "upstream", "state")
	for _, name := range names {
		g.WithLabelValues(name, "closed").Inc()
	}
	per := float64(heap()-before) / n
	runtime.KeepAlive(g)
	if per > 100 {
		t.Fatalf("%.0f bytes per series, want at most 100", per)
	}
	t.Logf("%.0f bytes per series", per)
}
