package resilience

import (
	"sync"
	"time"
)

// Decision is one resilience event worth showing an operator: a retry made or suppressed, an endpoint's breaker
// opening or closing, an ejection, a limit overflow.
type Decision struct {
	Time     time.Time `json:"time"`
	Kind     string    `json:"kind"` // retried, suppressed, exhausted, opened, half_opened, closed, ejected, overflow
	Endpoint string    `json:"endpoint,omitempty"`
	Reason   string    `json:"reason"`
}

// Decisions keeps the latest decisions of an upstream in a ring. Safe for concurrent use; Add is cheap. The
// ring is made at the first decision: an upstream that never has one costs three words.
type Decisions struct {
	mu sync.Mutex
	n  int
	r  *decisionRing // nil until the first decision
}

// decisionRing is the ring of Decisions.
type decisionRing struct {
	ring []Decision
	next int
	full bool
}

// NewDecisions keeps the latest n decisions.
func NewDecisions(n int) *Decisions { return &Decisions{n: max(n, 1)} }

// Add records a decision now.
func (d *Decisions) Add(kind, endpoint, reason string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.r == nil {
		d.r = &decisionRing{ring: make([]Decision, d.n)}
	}
	r := d.r
	r.ring[r.next] = Decision{Time: time.Now(), Kind: kind, Endpoint: endpoint, Reason: reason}
	r.next = (r.next + 1) % len(r.ring)
	if r.next == 0 {
		r.full = true
	}
}

// Latest returns the decisions kept, newest first.
func (d *Decisions) Latest() []Decision {
	d.mu.Lock()
	defer d.mu.Unlock()
	r := d.r
	if r == nil || r.next == 0 && !r.full {
		return []Decision{}
	}
	n := r.next
	if r.full {
		n = len(r.ring)
	}
	out := make([]Decision, 0, n)
	for i := 1; i <= n; i++ {
		out = append(out, r.ring[(r.next-i+len(r.ring))%len(r.ring)])
	}
	return out
}
