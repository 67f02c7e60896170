package proxy

import "fmt"

// Defaults of the transport settings.
const (
	// DefaultMaxResponseHeaderBytes bounds an endpoint's response headers (upstreams[].max_response_header_bytes,
	// inbound.max_response_header_bytes); Go's own default, 10 MB, lets one endpoint cost that much per request.
	DefaultMaxResponseHeaderBytes = 64 << 10
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
}
