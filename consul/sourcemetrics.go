package consul

import (
	"errors"
	"time"

	"meshlet.dev/meshlet/metrics"
)

// sourceMetrics fills the discovery collectors (metrics.Discovery).
type sourceMetrics struct{ *metrics.Discovery }

// newSourceMetrics returns the filler of d; nil: collectors of their own, not exported.
func newSourceMetrics(d *metrics.Discovery) *sourceMetrics {
	if d == nil {
		d = metrics.NewDiscovery()
	}
	return &sourceMetrics{d}
}

func (m *sourceMetrics) contact(service string, at time.Time) { m.LastSuccess.Set(service, at) }

func (m *sourceMetrics) published(service string, n int, stale bool) {
	m.Updates.WithLabelValues(service).Inc()
	m.Endpoints.WithLabelValues(service).Set(float64(n))
	s := 0.0
	if stale {
		s = 1
	}
	m.Stale.WithLabelValues(service).Set(s)
}

func (m *sourceMetrics) watchError(service string, err error) {
	reason := "other"
	switch {
	case errors.Is(err, ErrUnreachable):
		reason = "unreachable"
	case errors.Is(err, ErrDenied):
		reason = "denied"
	}
	m.Errors.WithLabelValues(service, reason).Inc()
}

// forget drops the series of a service nobody watches any more.
func (m *sourceMetrics) forget(service string) {
	m.Endpoints.DeleteLabelValues(service)
	m.Stale.DeleteLabelValues(service)
	m.LastSuccess.Delete(service)
}
