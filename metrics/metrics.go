// Package metrics holds meshlet's Prometheus collectors. Everything is registered on an injected registry; there
// is no global state. Labels are service-level only (direction, upstream, status class, gRPC code), never per
// request path or per endpoint, so a scrape stays small however much traffic flows.
package metrics

import (
	"net/http"
	"runtime"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Directions of traffic, the values of the direction label.
const (
	Inbound  = "inbound"
	Outbound = "outbound"
)

// Metrics is the set of meshlet's collectors. Create it with New; all fields are safe for concurrent use.
type Metrics struct {
	Registry *prometheus.Registry

	Requests         *prometheus.CounterVec   // direction, upstream, code_class, grpc_code
	RequestDuration  *prometheus.HistogramVec // direction, upstream, code_class, grpc_code
	RequestsInFlight *prometheus.GaugeVec     // direction, upstream
	ConnectionsOpen  *prometheus.GaugeVec     // direction, listener
	Connections      *prometheus.CounterVec   // direction, listener
	ReceivedBytes    *prometheus.CounterVec   // direction, upstream
	SentBytes        *prometheus.CounterVec   // direction, upstream
	Endpoints        *Gauges                  // upstream
	UpstreamErrors   *prometheus.CounterVec   // direction, upstream, reason
	ConfigReloads    *prometheus.CounterVec   // result
	Ready            prometheus.Gauge

	Retries            *prometheus.CounterVec // upstream, reason
	RetriesSuppressed  *prometheus.CounterVec // upstream, why
	RetryBudget        *FuncGauges            // upstream
	BreakerEndpoints   *Gauges                // upstream, state
	BreakerTransitions *prometheus.CounterVec // upstream, from, to
	Ejections          *prometheus.CounterVec // upstream
	EjectedEndpoints   *prometheus.GaugeVec   // upstream
	LimitOverflows     *prometheus.CounterVec // upstream, limit
	ConnectionsRefused *prometheus.CounterVec // direction, listener: closed at accept beyond max_connections
	RefusedRequests    *prometheus.CounterVec // direction, reason: refused because of what the client sent

	TLSHandshakeFailures *prometheus.CounterVec // direction, reason
	TLSPlaintext         prometheus.Counter
	AuthzDenied          *prometheus.CounterVec // source

	RouteRequests *prometheus.CounterVec // upstream, route, code_class: requests by discovery-chain route
	ChainRefused  *prometheus.GaugeVec   // upstream: 1 while its discovery chain is refused

	Discovery    *Discovery             // Consul discovery and registration (parts.go)
	AdminRefused *prometheus.CounterVec // reason: admin requests refused (parts.go)
}

// New creates the collectors and registers them, with the Go runtime and process collectors, on reg.
// version is reported by meshlet_build_info.
func New(reg *prometheus.Registry, version string) *Metrics {
	m := &Metrics{
		Registry: reg,
		Requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshlet_requests_total",
			Help: "HTTP and gRPC requests proxied, by direction, upstream, status class, gRPC status code and caller (inbound over mutual TLS: the caller's service, at most 100 per upstream, then \"other\"; else empty).",
		}, []string{"direction", "upstream", "code_class", "grpc_code", "caller"}),
		RequestDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "meshlet_request_duration_seconds",
			Help:    "Time from the request's arrival to the end of its response, in seconds.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"direction", "upstream", "code_class", "grpc_code"}),
		RequestsInFlight: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "meshlet_requests_in_flight",
			Help: "Requests being proxied now.",
		}, []string{"direction", "upstream"}),
		ConnectionsOpen: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "meshlet_connections_open",
			Help: "Client connections open on meshlet's listeners.",
		}, []string{"direction", "listener"}),
		Connections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshlet_connections_total",
			Help: "Client connections accepted on meshlet's listeners.",
		}, []string{"direction", "listener"}),
		ConnectionsRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshlet_connections_refused_total",
			Help: "Client connections closed at accept because the listener already had its max_connections open.",
		}, []string{"direction", "listener"}),
		RefusedRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshlet_refused_requests_total",
			Help: "Requests meshlet refused because of what the client sent (smuggling shapes, invalid headers, oversized heads, broken or stalled bodies, invalid gRPC framing, oversized gRPC messages, invalid grpc-timeout, inbound paths with an escaped slash, a backslash or no leading slash), by direction and reason.",
		}, []string{"direction", "reason"}),
		ReceivedBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshlet_received_bytes_total",
			Help: "Bytes received from clients (request bodies; TCP streams), by direction and upstream.",
		}, []string{"direction", "upstream"}),
		SentBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshlet_sent_bytes_total",
			Help: "Bytes sent to clients (response bodies; TCP streams), by direction and upstream.",
		}, []string{"direction", "upstream"}),
		Endpoints: NewGauges("meshlet_upstream_endpoints", "Endpoints known for each upstream.", "upstream"),
		UpstreamErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshlet_upstream_errors_total",
			Help: "Requests and connections meshlet failed itself, by reason (no_endpoint, timeout, connect, canceled, other).",
		}, []string{"direction", "upstream", "reason"}),
		ConfigReloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshlet_config_reloads_total",
			Help: "Config reloads, by result (success, failure).",
		}, []string{"result"}),
		Ready: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "meshlet_ready",
			Help: "1 when meshlet answers /ready with 200.",
		}),
	}
	m.Retries = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "meshlet_retries_total",
		Help: "Retries started, by upstream and the retry_on condition that called for them.",
	}, []string{"upstream", "reason"})
	m.RetriesSuppressed = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "meshlet_retries_suppressed_total",
		Help: "Retries a condition called for but meshlet did not make, by why (budget, deadline, body, method).",
	}, []string{"upstream", "why"})
	m.RetryBudget = NewFuncGauges("meshlet_retry_budget_remaining",
		"Retries the upstream's retry budget allows now.", "upstream")
	m.BreakerEndpoints = NewGauges("meshlet_breaker_endpoints",
		"Endpoints by circuit breaker state (closed, half_open, open).", "upstream", "state")
	m.BreakerTransitions = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "meshlet_breaker_transitions_total",
		Help: "Circuit breaker state changes of the upstream's endpoints.",
	}, []string{"upstream", "from", "to"})
	m.Ejections = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "meshlet_outlier_ejections_total",
		Help: "Endpoints taken out of load balancing because their breaker opened.",
	}, []string{"upstream"})
	m.EjectedEndpoints = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "meshlet_outlier_ejected_endpoints",
		Help: "Endpoints out of load balancing now.",
	}, []string{"upstream"})
	m.LimitOverflows = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "meshlet_limit_overflows_total",
		Help: "Requests refused at once because a limit was full, by limit (requests, pending).",
	}, []string{"upstream", "limit"})
	m.TLSHandshakeFailures = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "meshlet_tls_handshake_failures_total",
		Help: "Mutual TLS handshakes that failed, by direction and reason (unknown_ca, bad_identity, expired, no_cert, plaintext, other).",
	}, []string{"direction", "reason"})
	m.TLSPlaintext = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "meshlet_tls_plaintext_connections_total",
		Help: "Plaintext connections accepted by the inbound listener in permissive mode.",
	})
	m.AuthzDenied = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "meshlet_authz_denied_total",
		Help: "Inbound calls refused by authorization, by the caller's service name (unknown without an identity; (plaintext) for a plaintext caller refused because inbound.tls.allow or intentions need an identity).",
	}, []string{"source"})
	reg.MustRegister(m.TLSHandshakeFailures, m.TLSPlaintext, m.AuthzDenied)
	m.Discovery, m.AdminRefused = NewDiscovery(), NewAdminRefused()
	reg.MustRegister(m.Discovery.collectors()...)
	reg.MustRegister(m.AdminRefused)
	m.RouteRequests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "meshlet_route_requests_total",
		Help: "Requests of upstreams with a discovery chain (Consul's service-router), by route (its index in the chain, never the path) and status class.",
	}, []string{"upstream", "route", "code_class"})
	m.ChainRefused = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "meshlet_discovery_chain_refused",
		Help: "1 while an upstream's discovery chain asks what meshlet cannot honour (the reasons are in /debug/upstreams); the last applied routing stays.",
	}, []string{"upstream"})
	reg.MustRegister(m.RouteRequests, m.ChainRefused)
	reg.MustRegister(m.Retries, m.RetriesSuppressed, m.RetryBudget, m.BreakerEndpoints, m.BreakerTransitions,
		m.Ejections, m.EjectedEndpoints, m.LimitOverflows)
	buildInfo := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "meshlet_build_info",
		Help:        "Always 1; labels name the build.",
		ConstLabels: prometheus.Labels{"version": version, "goversion": runtime.Version()},
	})
	buildInfo.Set(1)
	reg.MustRegister(m.Requests, m.RequestDuration, m.RequestsInFlight, m.ConnectionsOpen, m.Connections, m.ConnectionsRefused,
		m.RefusedRequests,
		m.ReceivedBytes, m.SentBytes, m.Endpoints, m.UpstreamErrors, m.ConfigReloads, m.Ready, buildInfo,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	for _, r := range []string{"success", "failure"} {
		m.ConfigReloads.WithLabelValues(r)
	}
	return m
}

// Handler serves the registry in the Prometheus exposition format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{Registry: m.Registry})
}

// CodeClass returns "1xx" … "5xx" for an HTTP status code.
func CodeClass(code int) string {
	switch {
	case code >= 500:
		return "5xx"
	case code >= 400:
		return "4xx"
	case code >= 300:
		return "3xx"
	case code >= 200:
		return "2xx"
	default:
		return "1xx"
	}
}
