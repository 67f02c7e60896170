package metrics

import (
	"fmt"
	"math"
	"strings"
	"sync"
	"sync/atomic"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"
)

// Gauges is a gauge family kept small: one float and its key (the label values) per series, exported at scrape time. It
// has the methods of *prometheus.GaugeVec that meshlet calls (WithLabelValues, DeleteLabelValues) and exports the
// same series, for families that every upstream has from its start (meshlet_upstream_endpoints,
// meshlet_breaker_endpoints): a GaugeVec's child costs some 370 bytes (its label pairs, its entry, the metric),
// this one about 70, and an idle upstream is little more than its series (issue 16). It is a
// prometheus.Collector; its methods are safe for concurrent use.
type Gauges struct {
	desc   *prometheus.Desc
	labels int
	mu     sync.RWMutex
	series map[string]*Gauge // by the label values joined with labelSep
}

// labelSep joins label values into a series' key; it cannot occur in valid UTF-8, which label values are.
const labelSep = "\xff"

// Gauge is one series of Gauges: its value and its key, the label values joined with labelSep (split again at
// scrape time: no slice of values kept per series).
type Gauge struct {
	bits atomic.Uint64 // math.Float64bits of the value
	key  string        // the series' key in Gauges.series, its own copy
}

// NewGauges returns an empty family with the variable labels labels.
func NewGauges(name, help string, labels ...string) *Gauges {
	return &Gauges{desc: prometheus.NewDesc(name, help, labels, nil), labels: len(labels), series: map[string]*Gauge{}}
}

// WithLabelValues returns the series of the label values lvs (one per label, in order), creating it at 0 if it
// does not exist. It panics on a wrong number of values or one that is not valid UTF-8, like GaugeVec's.
func (g *Gauges) WithLabelValues(lvs ...string) *Gauge {
	if len(lvs) != g.labels {
		panic("metrics: wrong number of label values for " + g.desc.String())
	}
	key := seriesKey(lvs)
	g.mu.RLock()
	s, ok := g.series[key]
	g.mu.RUnlock()
	if ok {
		return s
	}
	for _, v := range lvs {
		if !utf8.ValidString(v) {
			panic(fmt.Sprintf("metrics: label value %q is not valid UTF-8", v))
		}
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if s, ok := g.series[key]; ok {
		return s
	}
	if len(lvs) == 1 {
		key = strings.Clone(key) // (seriesKey's is the caller's string; a join is new already)
	}
	s = &Gauge{key: key}
	g.series[key] = s
	return s
}

// DeleteLabelValues removes the series of the label values lvs; it reports whether there was one.
func (g *Gauges) DeleteLabelValues(lvs ...string) bool {
	if len(lvs) != g.labels {
		return false
	}
	key := seriesKey(lvs)
	g.mu.Lock()
	defer g.mu.Unlock()
	_, ok := g.series[key]
	delete(g.series, key)
	return ok
}

func seriesKey(lvs []string) string {
	if len(lvs) == 1 {
		return lvs[0]
	}
	return strings.Join(lvs, labelSep)
}

// Describe implements prometheus.Collector.
func (g *Gauges) Describe(ch chan<- *prometheus.Desc) { ch <- g.desc }

// Collect implements prometheus.Collector. The registry sorts the series.
func (g *Gauges) Collect(ch chan<- prometheus.Metric) {
	g.mu.RLock()
	ms := make([]prometheus.Metric, 0, len(g.series))
	for _, s := range g.series {
		ms = append(ms, prometheus.MustNewConstMetric(g.desc, prometheus.GaugeValue, s.Value(), g.values(s.key)...))
	}
	g.mu.RUnlock()
	for _, m := range ms {
		ch <- m
	}
}

// values are the label values of the series of key.
func (g *Gauges) values(key string) []string {
	switch g.labels {
	case 0:
		return nil
	case 1:
		return []string{key}
	}
	return strings.Split(key, labelSep)
}

// Set sets the value.
func (s *Gauge) Set(v float64) { s.bits.Store(math.Float64bits(v)) }

// Add adds d to the value.
func (s *Gauge) Add(d float64) {
	for {
		old := s.bits.Load()
		if s.bits.CompareAndSwap(old, math.Float64bits(math.Float64frombits(old)+d)) {
			return
		}
	}
}

// Sub subtracts d from the value.
func (s *Gauge) Sub(d float64) { s.Add(-d) }

// Inc adds 1.
func (s *Gauge) Inc() { s.Add(1) }

// Dec subtracts 1.
func (s *Gauge) Dec() { s.Add(-1) }

// Value returns the value.
func (s *Gauge) Value() float64 { return math.Float64frombits(s.bits.Load()) }
