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
// ring is made at the first decision: an upstream that never has one costs a few words.
type Decisions struct {
	mu   sync.Mutex
	n    int
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
	if d.ring == nil {
		d.ring = make([]Decision, d.n)
	}
	d.ring[d.next] = Decision{Time: time.Now(), Kind: kind, Endpoint: endpoint, Reason: reason}
	d.next = (d.next + 1) % len(d.ring)
	if d.next == 0 {
		d.full = true
	}
}

// Latest returns the decisions kept, newest first.
func (d *Decisions) Latest() []Decision {
	d.mu.Lock()
	defer d.mu.Unlock()
	n := d.next
	if d.full {
		n = len(d.ring)
	}
	if n == 0 {
		return []Decision{}
	}
	out := make([]Decision, 0, n)
	for i := 1; i <= n; i++ {
		out = append(out, d.ring[(d.next-i+len(d.ring))%len(d.ring)])
	}
	return out
}
