package discovery

import "time"

// UpstreamSettings are what Consul's config entries say about calls from one service (the caller) to one
// upstream service; zero fields say nothing. See consul.ConfigEntries.Settings for where each comes from.
type UpstreamSettings struct {
	Protocol       string        // service-defaults/<upstream>.Protocol: http, http2, grpc or tcp
	ConnectTimeout time.Duration // service-defaults/<caller>.UpstreamConfig ConnectTimeoutMs
	// Limits from UpstreamConfig.Limits; nil: not set.
	MaxRequests, MaxPending, MaxConnections *int
	// Passive health from UpstreamConfig.PassiveHealthCheck: MaxFailures, BaseEjectionTime (else Interval),
	// EnforcingConsecutive5xx 0 (BreakerOff), MaxEjectionPercent.
	ConsecutiveFailures uint32
	OpenTimeout         time.Duration
	BreakerOff          bool
	MaxEjectionPercent  int
	// Route is the retry and timeout of service-router/<upstream>'s catch-all route; nil without one.
	Route *RouteSettings
}

// RouteSettings are the retry and timeout settings of a service-router route, in meshlet's terms.
type RouteSettings struct {
	MaxAttempts int           // NumRetries + 1; 1 when the route sets no retry (as Envoy does in Consul's mesh)
	RetryOn     []string      // meshlet retry_on conditions; nil: meshlet's default conditions
	Timeout     time.Duration // RequestTimeout; 0: not set
}
