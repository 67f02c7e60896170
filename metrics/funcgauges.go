package metrics

import (
	"sort"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// FuncGauges is a gauge family whose values are read from functions at scrape time, one per label value: for
// values that are costly to keep current on every request (a retry budget's remainder) but cheap to compute when
// asked. It is a prometheus.Collector; Set and Delete are safe for concurrent use.
type FuncGauges struct {
	desc *prometheus.Desc
	mu   sync.Mutex
	fns  map[string]func() float64
}

// NewFuncGauges returns an empty family with one variable label.
func NewFuncGauges(name, help, label string) *FuncGauges {
	return &FuncGauges{desc: prometheus.NewDesc(name, help, []string{label}, nil), fns: map[string]func() float64{}}
}

// Set makes fn the source of the gauge with label value v, replacing any earlier one.
func (g *FuncGauges) Set(v string, fn func() float64) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.fns[v] = fn
}

// Delete removes the gauge with label value v.
func (g *FuncGauges) Delete(v string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	delete(g.fns, v)
}

// Describe implements prometheus.Collector.
func (g *FuncGauges) Describe(ch chan<- *prometheus.Desc) { ch <- g.desc }

// Collect implements prometheus.Collector.
func (g *FuncGauges) Collect(ch chan<- prometheus.Metric) {
	g.mu.Lock()
	keys := make([]string, 0, len(g.fns))
	for k := range g.fns {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	fns := make([]func() float64, len(keys))
	for i, k := range keys {
		fns[i] = g.fns[k]
	}
	g.mu.Unlock()
	for i, k := range keys {
		ch <- prometheus.MustNewConstMetric(g.desc, prometheus.GaugeValue, fns[i](), k)
	}
}
