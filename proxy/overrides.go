package proxy

import "meshlet.dev/meshlet/discovery"

// WithDiscovered returns c with the settings that s (Consul's config entries) gives filled into the fields c
// leaves unset: call it on an upstream as written in the config file, before SetDefaults, so that what the file
// says wins and the entries take the place of meshlet's defaults. Protocol applies among http, http2 and grpc
// (a running upstream switches transports in place); tcp is never taken from an entry. A zero s returns c
// unchanged.
func (c UpstreamConfig) WithDiscovered(s discovery.UpstreamSettings) UpstreamConfig {
	if c.Protocol == "" && s.Protocol != "" && s.Protocol != ProtocolTCP {
		c.Protocol = s.Protocol
	}
	if c.ConnectTimeout == 0 {
		c.ConnectTimeout = s.ConnectTimeout
	}
	if r := s.Route; r != nil {
		if c.Timeout == 0 {
			c.Timeout = r.Timeout
		}
		if c.Resilience.Retry.MaxAttempts == 0 {
			c.Resilience.Retry.MaxAttempts = r.MaxAttempts
		}
		if c.Resilience.Retry.RetryOn == nil && r.RetryOn != nil {
			c.Resilience.Retry.RetryOn = append([]string(nil), r.RetryOn...)
		}
	}
	l := &c.Resilience.Limits
	if l.MaxRequests == 0 && s.MaxRequests != nil {
		l.MaxRequests = *s.MaxRequests
	}
	if l.MaxPending == nil && s.MaxPending != nil {
		n := *s.MaxPending
		l.MaxPending = &n
	}
	if l.MaxConnections == 0 && s.MaxConnections != nil {
		l.MaxConnections = *s.MaxConnections
	}
	b := &c.Resilience.Breaker
	if b.ConsecutiveFailures == 0 {
		b.ConsecutiveFailures = s.ConsecutiveFailures
	}
	if b.OpenTimeout == 0 {
		b.OpenTimeout = s.OpenTimeout
	}
	b.Disabled = b.Disabled || s.BreakerOff
	if c.Resilience.Outlier.MaxEjectionPercent == 0 {
		c.Resilience.Outlier.MaxEjectionPercent = s.MaxEjectionPercent
	}
	return c
}
