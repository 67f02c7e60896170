// Package consul is meshlet's home for talking to a Consul agent: the discovery source of upstream endpoints
// (Source, with health queries; Config is the discovery.consul section), Consul's config entries (ConfigEntries),
// the registration of the service and its sidecar (Registrar), a sidecar's own connect-proxy registration read and
// followed for meshlet run -sidecar-for (SidecarFor, ParseSidecar), and the one blocking-query loop and backoff
// that every watch of the agent follows (Watch: health, config entries, the Connect CA source, intentions, the
// sidecar's registration with hash-based blocking) and every other retry of the agent (Backoff: registration, the
// default intention policy, the first read of the sidecar's registration).
package consul

import (
	"context"
	"math/rand/v2"
	"time"

	"github.com/hashicorp/consul/api"

	"meshlet.dev/meshlet/resilience"
)

// Timings of the blocking-query loop (Consul's rules for blocking queries: rate-limit, back off on errors).
const (
	// MinInterval is the least time between two queries of one loop.
	MinInterval = 100 * time.Millisecond
	// BackoffMin is the first wait after an error, before jitter; BackoffMax is the longest.
	BackoffMin = 200 * time.Millisecond
	BackoffMax = 5 * time.Second
	// DefaultWait is the wait time of a blocking query when the caller sets none (Consul's own default).
	DefaultWait = 5 * time.Minute
)

// Options shape the queries of a Watch.
type Options struct {
	// Wait is how long the agent may hold each query (api.QueryOptions.WaitTime); 0 means DefaultWait.
	Wait time.Duration
	// Datacenter is asked of every query; "" means the agent's.
	Datacenter string
}

// Fetch runs one blocking query with q (its WaitIndex, WaitTime, Datacenter and context set by Watch), takes in
// its answer, and returns the answer's index (api.QueryMeta.LastIndex).
type Fetch func(q *api.QueryOptions) (index uint64, err error)

// Watch runs fetch as a loop of blocking queries until ctx ends, by Consul's rules: at most one query per
// MinInterval; each query may last its wait time, Consul's jitter (wait/16) and 5 s before it counts as a dead
// connection; an index that went backwards (a restored snapshot, a new leader) or an error starts again from
// index 0 (a restarted agent may have a smaller index); an index of 0 is never sent back as is (1 keeps the next
// query blocking). After an error, failed (nil: nothing) is told the error and how long the loop waits before it
// tries again (Backoff, growing with each error in a row). Watch returns when ctx ends.
func Watch(ctx context.Context, o Options, fetch Fetch, failed func(err error, retryIn time.Duration)) {
	wait := o.Wait
	if wait <= 0 {
		wait = DefaultWait
	}
	var index uint64
	failures := 0
	var last time.Time
	for {
		if !resilience.Sleep(ctx, MinInterval-time.Since(last)) {
			return
		}
		last = time.Now()
		qctx, cancel := context.WithTimeout(ctx, wait+wait/16+5*time.Second)
		next, err := fetch((&api.QueryOptions{WaitIndex: index, WaitTime: wait, Datacenter: o.Datacenter}).WithContext(qctx))
		cancel()
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			failures++
			index = 0
			delay := Backoff(failures)
			if failed != nil {
				failed(err, delay)
			}
			if !resilience.Sleep(ctx, delay) {
				return
			}
			continue
		}
		failures = 0
		switch {
		case next < index:
			index = 0
		case next == 0:
			index = 1
		default:
			index = next
		}
	}
}

// watchChanges runs Watch with the agent's default wait and no datacenter until ctx ends, for a fetch that only
// stores its answer: fetch runs the query and returns the answer's index; changed is called after the first
// answer and whenever the index moves; failed is told of each error before the loop backs off.
func watchChanges(ctx context.Context, fetch Fetch, changed func(), failed func(error)) {
	answered := false
	Watch(ctx, Options{}, func(q *api.QueryOptions) (uint64, error) {
		next, err := fetch(q)
		if err != nil {
			return 0, err
		}
		if next == 0 {
			next = 1
		}
		if !answered || next != q.WaitIndex {
			answered = true
			changed()
		}
		return next, nil
	}, func(err error, _ time.Duration) { failed(err) })
}

// Backoff is the wait before retry n (1-based) of a request to the agent: exponential from BackoffMin to
// BackoffMax, with the upper half jittered so that many sidecars do not retry in step.
func Backoff(n int) time.Duration {
	d := BackoffMax
	if n < 16 {
		n = max(n, 1)
		d = min(BackoffMin<<(n-1), BackoffMax)
	}
	return d/2 + rand.N(d/2+1)
}
