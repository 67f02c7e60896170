package proxy

import (
	"fmt"
	"time"
)

// Defaults of the transport settings: response header limits and the TCP idle timeout.
const (
	// DefaultMaxResponseHeaderBytes bounds an endpoint's response headers (upstreams[].max_response_header_bytes,
	// inbound.max_response_header_bytes); Go's own default, 10 MB, lets one endpoint cost that much per request.
	DefaultMaxResponseHeaderBytes = 64 << 10
	// DefaultTCPIdleTimeout closes TCP-proxied connections idle this long (limits.tcp_idle_timeout).
	DefaultTCPIdleTimeout = time.Hour
)

// Bounds of max_response_header_bytes: the same as max_header_bytes.
const (
	minResponseHeaderBytes = 1 << 10
	maxResponseHeaderBytes = 16 << 20
)

// setTransportDefaults fills the zero transport settings of c with their defaults.
func (c *Config) setTransportDefaults() {
	if c.Inbound.MaxResponseHeaderBytes == 0 {
		c.Inbound.MaxResponseHeaderBytes = DefaultMaxResponseHeaderBytes
	}
	for i := range c.Upstreams {
		if c.Upstreams[i].MaxResponseHeaderBytes == 0 {
			c.Upstreams[i].MaxResponseHeaderBytes = DefaultMaxResponseHeaderBytes
		}
	}
	for _, l := range []*ListenerLimits{&c.Inbound.Limits, &c.Outbound.Limits} {
		if l.TCPIdleTimeout == 0 {
			l.TCPIdleTimeout = DefaultTCPIdleTimeout
		}
	}
}

// validateTransport reports the problems of c's transport settings, each with its field path.
func (c *Config) validateTransport(add func(string, string, ...any)) {
	checkHeaderLimit := func(path string, n int) {
		if n < minResponseHeaderBytes || n > maxResponseHeaderBytes {
			add(path, "%d must be between %d and %d", n, minResponseHeaderBytes, maxResponseHeaderBytes)
		}
	}
	checkHeaderLimit("inbound.max_response_header_bytes", c.Inbound.MaxResponseHeaderBytes)
	for i, u := range c.Upstreams {
		checkHeaderLimit(fmt.Sprintf("upstreams[%d].max_response_header_bytes", i), u.MaxResponseHeaderBytes)
	}
	if c.Inbound.Limits.TCPIdleTimeout < 0 {
		add("inbound.limits.tcp_idle_timeout", "must not be negative")
	}
	if c.Outbound.Limits.TCPIdleTimeout < 0 {
		add("outbound.limits.tcp_idle_timeout", "must not be negative")
	}
}
