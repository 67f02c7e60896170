package discovery

import (
	"errors"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// consulMetrics are the discovery collectors. They live here rather than in package metrics so that the
// discovery package stays a leaf; they register on the registry the sidecar passes in (ConsulOptions.Registerer).
type consulMetrics struct {
	updates    *prometheus.CounterVec // service
	errors     *prometheus.CounterVec // service, reason
	endpoints  *prometheus.GaugeVec   // service
	stale      *prometheus.GaugeVec   // service
	registered *prometheus.GaugeVec   // service_id
	age        *ageCollector
}

func newConsulMetrics(reg prometheus.Registerer) *consulMetrics {
	m := &consulMetrics{
		updates: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "meshlet_discovery_updates_total",
			Help: "Snapshots of a service's endpoints received from Consul (changes and stale marks)."}, []string{"service"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "meshlet_discovery_watch_errors_total",
			Help: "Failed Consul queries, by reason (unreachable, denied, other)."}, []string{"service", "reason"}),
		endpoints: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "meshlet_discovery_endpoints",
			Help: "Healthy endpoints of a service in Consul's latest answer."}, []string{"service"}),
		stale: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "meshlet_discovery_stale",
			Help: "1 while a service's endpoints are the last known ones because Consul cannot be reached."}, []string{"service"}),
		registered: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "meshlet_discovery_registered",
			Help: "1 while this instance (and its sidecar) is registered with the Consul agent."}, []string{"service_id"}),
		age: &ageCollector{last: map[string]time.Time{}, desc: prometheus.NewDesc(
			"meshlet_discovery_last_success_age_seconds",
			"Seconds since Consul last answered a query for the service.", []string{"service"}, nil)},
	}
	if reg != nil {
		reg.MustRegister(m.updates, m.errors, m.endpoints, m.stale, m.registered, m.age)
	}
	return m
}

func (m *consulMetrics) contact(service string, at time.Time) { m.age.set(service, at) }

func (m *consulMetrics) published(service string, n int, stale bool) {
	m.updates.WithLabelValues(service).Inc()
	m.endpoints.WithLabelValues(service).Set(float64(n))
	s := 0.0
	if stale {
		s = 1
	}
	m.stale.WithLabelValues(service).Set(s)
}

func (m *consulMetrics) watchError(service string, err error) {
	reason := "other"
	switch {
	case errors.Is(err, ErrConsulUnreachable):
		reason = "unreachable"
	case errors.Is(err, ErrConsulDenied):
		reason = "denied"
	}
	m.errors.WithLabelValues(service, reason).Inc()
}

// forget drops the series of a service nobody watches any more.
func (m *consulMetrics) forget(service string) {
	m.endpoints.DeleteLabelValues(service)
	m.stale.DeleteLabelValues(service)
	m.age.forget(service)
}

// ageCollector reports the age of the last successful contact per service at scrape time.
type ageCollector struct {
	mu   sync.Mutex
	last map[string]time.Time
	desc *prometheus.Desc
}

func (a *ageCollector) set(service string, at time.Time) {
	a.mu.Lock()
	a.last[service] = at
	a.mu.Unlock()
}

func (a *ageCollector) forget(service string) {
	a.mu.Lock()
	delete(a.last, service)
	a.mu.Unlock()
}

func (a *ageCollector) Describe(ch chan<- *prometheus.Desc) { ch <- a.desc }

func (a *ageCollector) Collect(ch chan<- prometheus.Metric) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for s, at := range a.last {
		ch <- prometheus.MustNewConstMetric(a.desc, prometheus.GaugeValue, time.Since(at).Seconds(), s)
	}
}
