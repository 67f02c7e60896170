package proxy

import (
	"sync"
	"sync/atomic"
	"time"

	"meshlet.dev/meshlet/metrics"
)

// observer holds an upstream's metric children, resolved once so the hot path does no label lookups.
type observer struct {
	m         *metrics.Metrics
	direction string
	name      string
	inFlight  interface {
		Inc()
		Dec()
	}
	rx, tx interface{ Add(float64) }
	errors map[string]interface{ Inc() }
	cells  [5][grpcCodeSlots]atomic.Pointer[cell]

	byCaller   sync.Map   // callerKey → meshlet_requests_total's child for a named caller
	callersMu  sync.Mutex // guards callers
	callers    map[string]bool
	callersCap int // maxCallers; the distinct callers counted by name, then callerOther
}

// maxCallers bounds the caller label values of one cluster's meshlet_requests_total: callers beyond it count as
// callerOther.
const (
	maxCallers  = 100
	callerOther = "other"
)

type callerKey struct {
	caller          string
	class, grpcCode int
}

func newObserver(m *metrics.Metrics, direction, name string) *observer {
	o := &observer{m: m, direction: direction, name: name,
		inFlight: m.RequestsInFlight.WithLabelValues(direction, name),
		rx:       m.ReceivedBytes.WithLabelValues(direction, name),
		tx:       m.SentBytes.WithLabelValues(direction, name),
		errors:   map[string]interface{ Inc() }{},
		callers:  map[string]bool{}, callersCap: maxCallers,
	}
	for _, r := range []string{reasonNoEndpoint, reasonTimeout, reasonConnect, reasonCanceled, reasonOverflow, reasonDenied,
		reasonIdle, reasonOther, reasonHeadersTooLarge} {
		o.errors[r] = m.UpstreamErrors.WithLabelValues(direction, name, r)
	}
	return o
}

// record counts one finished request; caller is the verified caller's service (inbound over mutual TLS), or "".
func (o *observer) record(code int, grpcCode int, d time.Duration, rx, tx int64, caller string) {
	class := code/100 - 1
	if class < 0 || class > 4 {
		class = 4
	}
	c := o.cell(class, grpcCode)
	if caller == "" {
		c.requests.Inc()
	} else {
		o.callerRequests(caller, class, grpcCode).Inc()
	}
	c.duration.Observe(d.Seconds())
	if rx > 0 {
		o.rx.Add(float64(rx))
	}
	if tx > 0 {
		o.tx.Add(float64(tx))
	}
}

// cell is the pair of collectors for one status class and gRPC code.
type cell struct {
	requests interface{ Inc() }
	duration interface{ Observe(float64) }
}

// cell returns the collectors for class (0 for 1xx … 4 for 5xx) and grpcCode (notGRPC or 0…16), creating them
// on first use.
func (o *observer) cell(class, grpcCode int) *cell {
	slot := &o.cells[class][grpcCode+1]
	if c := slot.Load(); c != nil {
		return c
	}
	labels := []string{o.direction, o.name, metrics.CodeClass((class + 1) * 100), grpcCodeName(grpcCode)}
	c := &cell{requests: o.m.Requests.WithLabelValues(append(labels, "")...),
		duration: o.m.RequestDuration.WithLabelValues(labels...)}
	slot.Store(c)
	return c
}

// callerRequests returns meshlet_requests_total's child for a named caller, class and gRPC code, creating it on
// first use; past callersCap distinct callers, a new caller counts as callerOther.
func (o *observer) callerRequests(caller string, class, grpcCode int) interface{ Inc() } {
	k := callerKey{caller, class, grpcCode}
	if c, ok := o.byCaller.Load(k); ok {
		return c.(interface{ Inc() })
	}
	label := caller
	o.callersMu.Lock()
	if !o.callers[caller] {
		if len(o.callers) < o.callersCap {
			o.callers[caller] = true
		} else {
			label = callerOther
		}
	}
	o.callersMu.Unlock()
	c := o.m.Requests.WithLabelValues(o.direction, o.name, metrics.CodeClass((class+1)*100), grpcCodeName(grpcCode), label)
	o.byCaller.Store(k, c) // callers are verified identities of the mesh: as many keys as its services at most
	return c
}
