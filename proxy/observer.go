package proxy

import (
	"sync"
	"sync/atomic"
	"time"

	"meshlet.dev/meshlet/metrics"
)

// observer holds an upstream's metric children, resolved once so the hot path does no label lookups. They are
// made at the upstream's first request or connection (series): an idle upstream has no series of its own (issue
// 16: its children, histograms above all, were most of an idle upstream's memory).
type observer struct {
	m          *metrics.Metrics
	direction  string
	name       string
	callersCap int // maxCallers; the distinct callers counted by name, then callerOther
	set        atomic.Pointer[series]
}

// series are an observer's children, made together at its first use.
type series struct {
	inFlight interface {
		Inc()
		Dec()
	}
	rx, tx interface{ Add(float64) }
	errors map[string]interface{ Inc() }
	cells  [5][grpcCodeSlots]atomic.Pointer[cell]

	byCaller  sync.Map   // callerKey → meshlet_requests_total's child for a named caller
	callersMu sync.Mutex // guards callers
	callers   map[string]bool
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
	return &observer{m: m, direction: direction, name: name, callersCap: maxCallers}
}

// series returns the observer's children, making them at the first call.
func (o *observer) series() *series {
	if s := o.set.Load(); s != nil {
		return s
	}
	m, direction, name := o.m, o.direction, o.name
	s := &series{
		inFlight: m.RequestsInFlight.WithLabelValues(direction, name),
		rx:       m.ReceivedBytes.WithLabelValues(direction, name),
		tx:       m.SentBytes.WithLabelValues(direction, name),
		errors:   map[string]interface{ Inc() }{},
		callers:  map[string]bool{},
	}
	for _, r := range []string{reasonNoEndpoint, reasonTimeout, reasonConnect, reasonCanceled, reasonOverflow, reasonDenied,
		reasonIdle, reasonOther, reasonHeadersTooLarge} {
		s.errors[r] = m.UpstreamErrors.WithLabelValues(direction, name, r)
	}
	if !o.set.CompareAndSwap(nil, s) {
		return o.set.Load() // another first use won; its children are the same ones
	}
	return s
}

// begin and end count a request in flight.
func (o *observer) begin() { o.series().inFlight.Inc() }
func (o *observer) end()   { o.series().inFlight.Dec() }

// failed counts a request or connection meshlet failed itself for reason (one of the reasons series knows;
// another is not counted).
func (o *observer) failed(reason string) {
	if n, ok := o.series().errors[reason]; ok {
		n.Inc()
	}
}

// bytes counts the bytes of a TCP connection: rx from the client, tx to it.
func (o *observer) bytes(rx, tx int64) {
	s := o.series()
	s.rx.Add(float64(rx))
	s.tx.Add(float64(tx))
}

// record counts one finished request; caller is the verified caller's service (inbound over mutual TLS), or "".
func (o *observer) record(code int, grpcCode int, d time.Duration, rx, tx int64, caller string) {
	class := code/100 - 1
	if class < 0 || class > 4 {
		class = 4
	}
	s := o.series()
	c := o.cell(s, class, grpcCode)
	if caller == "" {
		c.requests.Inc()
	} else {
		o.callerRequests(s, caller, class, grpcCode).Inc()
	}
	c.duration.Observe(d.Seconds())
	if rx > 0 {
		s.rx.Add(float64(rx))
	}
	if tx > 0 {
		s.tx.Add(float64(tx))
	}
}

// cell is the pair of collectors for one status class and gRPC code.
type cell struct {
	requests interface{ Inc() }
	duration interface{ Observe(float64) }
}

// cell returns the collectors for class (0 for 1xx … 4 for 5xx) and grpcCode (notGRPC or 0…16), creating them
// on first use.
func (o *observer) cell(s *series, class, grpcCode int) *cell {
	slot := &s.cells[class][grpcCode+1]
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
func (o *observer) callerRequests(s *series, caller string, class, grpcCode int) interface{ Inc() } {
	k := callerKey{caller, class, grpcCode}
	if c, ok := s.byCaller.Load(k); ok {
		return c.(interface{ Inc() })
	}
	label := caller
	s.callersMu.Lock()
	if !s.callers[caller] {
		if len(s.callers) < o.callersCap {
			s.callers[caller] = true
		} else {
			label = callerOther
		}
	}
	s.callersMu.Unlock()
	c := o.m.Requests.WithLabelValues(o.direction, o.name, metrics.CodeClass((class+1)*100), grpcCodeName(grpcCode), label)
	s.byCaller.Store(k, c) // callers are verified identities of the mesh: as many keys as its services at most
	return c
}
