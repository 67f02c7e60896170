package discovery

import (
	"errors"
	"time"

	"meshlet.dev/meshlet/metrics"
)

// consulMetrics fills the discovery collectors (metrics.Discovery).
type consulMetrics struct{ *metrics.Discovery }

// newConsulMetrics returns the filler of d; nil: collectors of their own, not exported.
func newConsulMetrics(d *metrics.Discovery) *consulMetrics {
	if d == nil {
		d = metrics.NewDiscovery()
	}
	return &consulMetrics{d}
}

func (m *consulMetrics) contact(service string, at time.Time) { m.LastSuccess.Set(service, at) }

func (m *consulMetrics) published(service string, n int, stale bool) {
	m.Updates.WithLabelValues(service).Inc()
	m.Endpoints.WithLabelValues(service).Set(float64(n))
	s := 0.0
	if stale {
		s = 1
	}
	m.Stale.WithLabelValues(service).Set(s)
}

func (m *consulMetrics) watchError(service string, err error) {
	reason := "other"
	switch {
	case errors.Is(err, ErrConsulUnreachable):
		reason = "unreachable"
	case errors.Is(err, ErrConsulDenied):
		reason = "denied"
	}
	m.Errors.WithLabelValues(service, reason).Inc()
}

// forget drops the series of a service nobody watches any more.
func (m *consulMetrics) forget(service string) {
	m.Endpoints.DeleteLabelValues(service)
	m.Stale.DeleteLabelValues(service)
	m.LastSuccess.Delete(service)
}
