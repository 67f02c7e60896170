// Package discovery finds the endpoints of upstream services. A Source watches one service and sends a Snapshot
// each time its set of healthy endpoints changes; Static serves endpoints written in the config file.
package discovery

import (
	"context"
	"fmt"
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

// Meta keys and values a source may set on endpoints that are sidecars (Meta "peer" is "sidecar").
const (
	// MetaProxy says what kind of sidecar the endpoint is: ProxyMeshlet, or ProxyForeign for any other proxy of
	// the mesh (Consul's built-in proxy, Envoy, a Connect-native app), which meshlet speaks to in the service's
	// own protocol as Consul's Envoy does, never in meshlet's HTTP/2 between sidecars. Absent: a meshlet.
	MetaProxy    = "proxy"
	ProxyMeshlet = "meshlet"
	ProxyForeign = "foreign"
)

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

// WatchOptions narrow a watch. The zero value means the source's defaults.
type WatchOptions struct {
	// Tag keeps only instances that carry it; empty means the source's default (discovery.consul.tag).
	Tag string
	// Datacenter is where to look; empty means the source's default (discovery.consul.datacenter, else the
	// agent's own).
	Datacenter string
	// MutualTLS says that the caller reaches the service only over mutual TLS (the upstream's tls.mode is mtls):
	// then a source that can offer a service's sidecars or its plain instances (Consul's auto mode) offers only
	// the sidecars, never the plain instances, which speak no TLS and enforce no intentions. False: the plain
	// instances are offered only while the service has no sidecar registered at all, healthy or not.
	MutualTLS bool
	// Filter keeps only the instances its expression matches, in the source's filter language (Consul: a
	// service-resolver subset's Filter); Subset names it for logs and metrics. Empty: every instance.
	Filter, Subset string
}

// OptionsSource is a Source whose watches can be narrowed by WatchOptions. consul.Source implements it; Static
// does not (its endpoints are written out, there is nothing to narrow).
type OptionsSource interface {
	Source
	// WatchWith is Watch narrowed by opts; the same contract otherwise. Watches with different options are
	// different watches.
	WatchWith(ctx context.Context, service string, opts WatchOptions) (<-chan Snapshot, error)
}

// Watch watches service on src, narrowed by opts. A source that implements OptionsSource gets opts; any other
// source gets src.Watch when opts sets nothing but MutualTLS (such a source has no plain instances to leave out),
// and an error when opts sets a tag or a datacenter.
func Watch(ctx context.Context, src Source, service string, opts WatchOptions) (<-chan Snapshot, error) {
	if o, ok := src.(OptionsSource); ok && opts != (WatchOptions{}) {
		return o.WatchWith(ctx, service, opts)
	}
	if opts.Tag != "" || opts.Datacenter != "" || opts.Filter != "" {
		return nil, fmt.Errorf("watch %s: the discovery source does not support tag, datacenter or filter", service)
	}
	return src.Watch(ctx, service)
}

// SendLatest puts snap into the one-slot channel ch, replacing a snapshot the receiver has not taken yet: how a
// Source keeps its promise that a receiver that falls behind misses only intermediate snapshots. Sends to one ch
// must not run concurrently (Static and consul.Source send under their lock).
func SendLatest(ch chan Snapshot, snap Snapshot) {
	for {
		select {
		case ch <- snap:
			return
		default:
		}
		select {
		case <-ch:
		default:
		}
	}
}
