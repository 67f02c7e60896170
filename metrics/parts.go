package metrics

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// The collectors of the sidecar's other parts: Consul discovery and registration (package consul), the admin
// server, and those registered only when their part is configured (RegisterTLS, RegisterAuthzDefault), so that a
// sidecar without TLS or intentions exports none of their series.

// Discovery is the collectors of Consul discovery and registration; package consul fills them (Source, Registrar).
type Discovery struct {
	Updates     *prometheus.CounterVec // service: snapshots received (changes and stale marks)
	Errors      *prometheus.CounterVec // service, reason: failed queries (unreachable, denied, other)
	Endpoints   *prometheus.GaugeVec   // service: healthy endpoints in the latest answer
	Stale       *prometheus.GaugeVec   // service: 1 while the endpoints are the last known ones
	Registered  *prometheus.GaugeVec   // service_id: 1 while this instance is registered
	LastSuccess *Ages                  // service: seconds since Consul last answered, at scrape time
}

// NewDiscovery returns the discovery collectors, not registered (New registers the Metrics' own).
func NewDiscovery() *Discovery {
	return &Discovery{
		Updates: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "meshlet_discovery_updates_total",
			Help: "Snapshots of a service's endpoints received from Consul (changes and stale marks)."}, []string{"service"}),
		Errors: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "meshlet_discovery_watch_errors_total",
			Help: "Failed Consul queries, by reason (unreachable, denied, other)."}, []string{"service", "reason"}),
		Endpoints: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "meshlet_discovery_endpoints",
			Help: "Healthy endpoints of a service in Consul's latest answer."}, []string{"service"}),
		Stale: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "meshlet_discovery_stale",
			Help: "1 while a service's endpoints are the last known ones because Consul cannot be reached."}, []string{"service"}),
		Registered: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "meshlet_discovery_registered",
			Help: "1 while this instance (and its sidecar) is registered with the Consul agent."}, []string{"service_id"}),
		LastSuccess: &Ages{last: map[string]time.Time{}, desc: prometheus.NewDesc(
			"meshlet_discovery_last_success_age_seconds",
			"Seconds since Consul last answered a query for the service.", []string{"service"}, nil)},
	}
}

func (d *Discovery) collectors() []prometheus.Collector {
	return []prometheus.Collector{d.Updates, d.Errors, d.Endpoints, d.Stale, d.Registered, d.LastSuccess}
}

// Ages is a gauge family of ages: each label value has a time, and a scrape reports the seconds since it. Safe
// for concurrent use.
type Ages struct {
	mu   sync.Mutex
	last map[string]time.Time
	desc *prometheus.Desc
}

// Set records at as the time of label value v.
func (a *Ages) Set(v string, at time.Time) {
	a.mu.Lock()
	a.last[v] = at
	a.mu.Unlock()
}

// Delete removes label value v.
func (a *Ages) Delete(v string) {
	a.mu.Lock()
	delete(a.last, v)
	a.mu.Unlock()
}

// Describe implements prometheus.Collector.
func (a *Ages) Describe(ch chan<- *prometheus.Desc) { ch <- a.desc }

// Collect implements prometheus.Collector.
func (a *Ages) Collect(ch chan<- prometheus.Metric) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for v, at := range a.last {
		ch <- prometheus.MustNewConstMetric(a.desc, prometheus.GaugeValue, time.Since(at).Seconds(), v)
	}
}

// Reasons of meshlet_admin_requests_refused_total (package admin).
const (
	AdminRefusedNotLocal    = "not_local"
	AdminRefusedHost        = "host"
	AdminRefusedBrowser     = "browser"
	AdminRefusedContentType = "content_type"
	AdminRefusedDrainToken  = "drain_token" // a remote /drain without the pod's admin.drain_token
)

// NewAdminRefused returns meshlet_admin_requests_refused_total with every reason at 0, not registered.
func NewAdminRefused() *prometheus.CounterVec {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "meshlet_admin_requests_refused_total",
		Help: "Admin requests refused, by reason (not_local, host, browser, content_type).",
	}, []string{"reason"})
	for _, r := range []string{AdminRefusedNotLocal, AdminRefusedHost, AdminRefusedBrowser, AdminRefusedContentType, AdminRefusedDrainToken} {
		c.WithLabelValues(r)
	}
	return c
}

// RegisterTLS registers the certificate collectors, for a sidecar with a tls section: the rotations counter it
// returns (meshlet_tls_rotations_total{result}, both results at 0) and meshlet_tls_certificate_expiry_seconds,
// read from expiry at scrape time.
func (m *Metrics) RegisterTLS(expiry func() float64) *prometheus.CounterVec {
	rotations := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "meshlet_tls_rotations_total",
		Help: "Certificate changes, by result (success; failure: the new certificate did not load and the old one stays).",
	}, []string{"result"})
	rotations.WithLabelValues("success")
	rotations.WithLabelValues("failure")
	m.Registry.MustRegister(rotations, prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "meshlet_tls_certificate_expiry_seconds",
		Help: "Seconds until the leaf certificate expires (negative once expired; 0 before one is loaded).",
	}, expiry))
	return rotations
}

// RegisterAuthzDefault registers meshlet_authz_default_policy{policy}, for a sidecar that follows Consul's
// intentions: at scrape time, 1 for the policy current returns and 0 for the other policies.
func (m *Metrics) RegisterAuthzDefault(policies []string, current func() string) {
	for _, p := range policies {
		m.Registry.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "meshlet_authz_default_policy",
			Help: "Consul's default for callers no intention names, as meshlet knows it: 1 for the current policy " +
				"(unknown: meshlet could not learn it and denies them).",
			ConstLabels: prometheus.Labels{"policy": p},
		}, func() float64 {
			if current() == p {
				return 1
			}
			return 0
		}))
	}
}

// Outcomes of a connection the transparent outbound listener took (meshlet_outbound_connections_total).
const (
	OutboundMesh        = "mesh"        // its original destination is an upstream's address: carried to the upstream
	OutboundPassthrough = "passthrough" // a destination outside the mesh: carried to it unchanged
	OutboundRefused     = "refused"     // refused: outside the mesh with mesh_destinations_only, or meshlet itself
	OutboundDirect      = "direct"      // not redirected: the app called the listener itself (routed by name)
)

// RegisterTransparent registers, for a sidecar whose outbound listener takes redirected connections
// (outbound.transparent), meshlet_outbound_connections_total{outcome} and
// meshlet_outbound_protocol_detections_total{result}, every label value at 0, and returns them.
func (m *Metrics) RegisterTransparent() (outcomes, detections *prometheus.CounterVec) {
	outcomes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "meshlet_outbound_connections_total",
		Help: "Connections the transparent outbound listener took, by outcome: mesh (to an upstream), passthrough " +
			"(outside the mesh, carried to its destination), refused, direct (not redirected; routed by name).",
	}, []string{"outcome"})
	for _, o := range []string{OutboundMesh, OutboundPassthrough, OutboundRefused, OutboundDirect} {
		outcomes.WithLabelValues(o)
	}
	detections = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "meshlet_outbound_protocol_detections_total",
		Help: "Redirected connections to upstreams of protocol auto, by what their first bytes were: http1, http2 " +
			"(served as HTTP), tls, opaque, timeout (nothing within outbound.transparent.detect_timeout; these " +
			"three relayed as TCP), closed (the client left before sending anything).",
	}, []string{"result"})
	for _, r := range DetectResults {
		detections.WithLabelValues(r)
	}
	m.Registry.MustRegister(outcomes, detections)
	return outcomes, detections
}

// DetectResults are the result label values of meshlet_outbound_protocol_detections_total (proxy.Detect*).
var DetectResults = []string{"http1", "http2", "tls", "opaque", "timeout", "closed"}
