// Package discovery finds the endpoints of upstream services. A Source watches one service and sends a Snapshot
// each time its set of healthy endpoints changes; Static serves endpoints written in the config file.
package discovery

import (
	"context"
	"net/netip"
	"time"
)

// Endpoint is one instance of a service, as a proxy reaches it.
type Endpoint struct {
	// ID is stable for the life of the instance; proxies key per-endpoint state on it.
	ID string
	// Addr is where the instance (or its sidecar) listens.
	Addr netip.AddrPort
	// Identity is the SPIFFE ID the instance proves with its certificate; empty when unknown.
	Identity string
	// Weight is the relative share of traffic; 0 means 1.
	Weight int
	// Meta carries source-specific labels; nil when there are none.
	Meta map[string]string
}

// Snapshot is the complete set of endpoints of a service at one moment.
type Snapshot struct {
	Service   string
	Endpoints []Endpoint
	// Index orders snapshots from one source; it grows with each change.
	Index uint64
	// Stale is true when the source has lost contact with where the endpoints come from (Consul unreachable):
	// the endpoints are the last ones known, kept until contact returns. Static snapshots are never stale.
	Stale bool
	// LastContact is when the source last heard from where the endpoints come from; zero for sources that have
	// no such thing (Static).
	LastContact time.Time
}

// Source watches services.
type Source interface {
	// Watch sends the current snapshot of service as soon as it is known and a new one on every change. The
	// channel is closed when ctx ends. A receiver that falls behind only ever misses intermediate snapshots,
	// never the latest one. Watch does not block.
	Watch(ctx context.Context, service string) (<-chan Snapshot, error)
}
