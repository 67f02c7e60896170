package resilience

import (
	"errors"
	"sync"
	"sync/atomic"
	"time"
)

// Breaker states, as the state label of meshlet_breaker_endpoints.
const (
	StateClosed   = "closed"
	StateHalfOpen = "half_open"
	StateOpen     = "open"
)

// ErrBreakerOpen is returned by Breaker.Allow while the endpoint's breaker is open, or half-open with all its
// probes in flight.
var ErrBreakerOpen = errors.New("circuit breaker open")

// BreakerPolicy is what the breakers of an upstream's endpoints share: the settings of one BreakerConfig, made
// once per upstream rather than per endpoint. Immutable.
type BreakerPolicy struct {
	consecutiveFailures uint32
	failureRatio        float64
	minRequests         uint32
	maxRequests         uint32        // probes let through while half-open; at least 1
	interval            time.Duration // the closed state's window, after which its counts start afresh; 0: never
	timeout             time.Duration // how long the breaker stays open
}

// NewBreakerPolicy returns the policy of cfg's breakers (with gobreaker's readings of zero values: no probe
// count is 1, no positive interval never clears the counts, no positive timeout is 60s).
func NewBreakerPolicy(cfg BreakerConfig) *BreakerPolicy {
	p := &BreakerPolicy{consecutiveFailures: cfg.ConsecutiveFailures, failureRatio: cfg.FailureRatio,
		minRequests: cfg.MinRequests, maxRequests: max(cfg.HalfOpenRequests, 1), interval: max(cfg.Interval, 0),
		timeout: cfg.OpenTimeout}
	if p.timeout <= 0 {
		p.timeout = 60 * time.Second
	}
	return p
}

func (p *BreakerPolicy) readyToTrip(c *breakerCounts) bool {
	if c.consecutiveFailures >= p.consecutiveFailures {
		return true
	}
	return c.requests >= p.minRequests && float64(c.failures) >= p.failureRatio*float64(c.requests)
}

// breakerCounts are a breaker's counts in its current generation (gobreaker.Counts).
type breakerCounts struct {
	requests, successes, failures, exclusions, consecutiveSuccesses, consecutiveFailures uint32
}

// EndpointBreaker is the circuit breaker of one endpoint, kept inline in the endpoint's state: its settings are a
// shared BreakerPolicy, and it allocates nothing, neither when made nor per attempt. It is the state machine of
// github.com/sony/gobreaker/v2's two-step breaker with a fixed window (no BucketPeriod), step for step (see
// TestEndpointBreakerMatchesGobreaker): it opens after ConsecutiveFailures failures in a row or when
// FailureRatio of at least MinRequests requests in Interval failed (requests count every attempt let through,
// excluded ones too); after OpenTimeout it lets HalfOpenRequests probes through, and closes again when as many
// succeed in a row. Its state changes only when it is asked (Allow, Done, State).
//
// The zero value is off: it lets everything through and counts nothing. Start turns it on (closed, counts zero);
// Stop turns it off. Each start and stop begins a new generation: the outcomes of attempts let through before it
// are ignored. Safe for concurrent use.
type EndpointBreaker struct {
	mu         sync.Mutex
	policy     *BreakerPolicy // nil: off
	state      uint8
	generation uint32 // 0 is never a live generation: a BreakerTicket of 0 means "not counted"
	counts     breakerCounts
	expiry     int64 // monotonic nanoseconds (monoNow): the closed window's or the open state's end; noExpiry
}

const (
	bClosed uint8 = iota
	bHalfOpen
	bOpen
)

const noExpiry = int64(^uint64(0) >> 1)

// BreakerTicket is an attempt let through by EndpointBreaker.Allow, to be given back to Done with its outcome.
// The zero ticket (the breaker was off) counts nothing.
type BreakerTicket uint32

var monoEpoch = time.Now()

// monoNow is the monotonic clock in nanoseconds.
func monoNow() int64 { return int64(time.Since(monoEpoch)) }

func breakerStateName(s uint8) string {
	switch s {
	case bOpen:
		return StateOpen
	case bHalfOpen:
		return StateHalfOpen
	default:
		return StateClosed
	}
}

// Start turns the breaker on with policy p, closed with zero counts, whatever it was. wasOn and was tell what it
// was (was is its state after its open timeout is applied, without calling any onChange).
func (b *EndpointBreaker) Start(p *BreakerPolicy) (was string, wasOn bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := monoNow()
	was, wasOn = b.peek(now)
	b.policy, b.state = p, bClosed
	b.newGeneration(now)
	return was, wasOn
}

// Stop turns the breaker off; wasOn and was are as for Start.
func (b *EndpointBreaker) Stop() (was string, wasOn bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	was, wasOn = b.peek(monoNow())
	b.policy, b.state, b.counts = nil, bClosed, breakerCounts{}
	b.nextGeneration()
	return was, wasOn
}

// peek is the state's name as currentState would make it, without changing anything. Call with b.mu held.
func (b *EndpointBreaker) peek(now int64) (string, bool) {
	if b.policy == nil {
		return "", false
	}
	if b.state == bOpen && b.expiry < now {
		return StateHalfOpen, true
	}
	return breakerStateName(b.state), true
}

// Allow asks to send one attempt: ErrBreakerOpen while open, or half-open with all its probes out. Otherwise the
// attempt's outcome must be given to Done with the ticket (the zero ticket when the breaker is off). onChange
// (optional) is called on a state change with the state names, synchronously and under the breaker's lock: it
// must not call the breaker.
func (b *EndpointBreaker) Allow(onChange func(from, to string)) (BreakerTicket, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.policy == nil {
		return 0, nil
	}
	b.currentState(monoNow(), onChange)
	switch {
	case b.state == bOpen:
		return 0, ErrBreakerOpen
	case b.state == bHalfOpen && b.counts.validRequests() >= b.policy.maxRequests:
		return 0, ErrBreakerOpen
	}
	b.counts.requests++
	return BreakerTicket(b.generation), nil
}

// Done records the outcome of an attempt that Allow let through: nil is a success, ErrExcluded (or an error
// wrapping it) neither success nor failure, anything else a failure. Outcomes of an earlier generation are
// ignored. onChange is as for Allow.
func (b *EndpointBreaker) Done(t BreakerTicket, outcome error, onChange func(from, to string)) {
	if t == 0 {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.policy == nil {
		return
	}
	now := monoNow()
	b.currentState(now, onChange)
	if uint32(t) != b.generation {
		return
	}
	c := &b.counts
	switch {
	case errors.Is(outcome, ErrExcluded):
		c.exclusions++
	case outcome == nil:
		c.successes++
		c.consecutiveSuccesses++
		c.consecutiveFailures = 0
		if b.state == bHalfOpen && c.consecutiveSuccesses >= b.policy.maxRequests {
			b.setState(bClosed, now, onChange)
		}
	default:
		switch b.state {
		case bClosed:
			c.failures++
			c.consecutiveFailures++
			c.consecutiveSuccesses = 0
			if b.policy.readyToTrip(c) {
				b.setState(bOpen, now, onChange)
			}
		case bHalfOpen:
			b.setState(bOpen, now, onChange)
		}
	}
}

// State returns "closed", "half_open" or "open"; "" when the breaker is off. onChange is as for Allow (an open
// breaker whose timeout is over half-opens when asked).
func (b *EndpointBreaker) State(onChange func(from, to string)) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.policy == nil {
		return ""
	}
	b.currentState(monoNow(), onChange)
	return breakerStateName(b.state)
}

// currentState applies the passing of time: a closed window that is over starts afresh, an open state that is
// over half-opens. Call with b.mu held and the breaker on.
func (b *EndpointBreaker) currentState(now int64, onChange func(from, to string)) {
	switch b.state {
	case bClosed:
		if b.expiry < now {
			b.newGeneration(now)
		}
	case bOpen:
		if b.expiry < now {
			b.setState(bHalfOpen, now, onChange)
		}
	}
}

func (b *EndpointBreaker) setState(s uint8, now int64, onChange func(from, to string)) {
	if b.state == s {
		return
	}
	prev := b.state
	b.state = s
	b.newGeneration(now)
	if onChange != nil {
		onChange(breakerStateName(prev), breakerStateName(s))
	}
}

func (b *EndpointBreaker) newGeneration(now int64) {
	b.nextGeneration()
	b.counts = breakerCounts{}
	b.expiry = noExpiry
	switch b.state {
	case bClosed:
		if b.policy.interval > 0 {
			b.expiry = now + int64(b.policy.interval)
		}
	case bOpen:
		b.expiry = now + int64(b.policy.timeout)
	}
}

func (b *EndpointBreaker) nextGeneration() {
	b.generation++
	if b.generation == 0 {
		b.generation = 1
	}
}

func (c *breakerCounts) validRequests() uint32 {
	if c.requests < c.exclusions {
		return 0
	}
	return c.requests - c.exclusions
}

// Breaker is a standalone EndpointBreaker with its own policy and state-change hook: Allow before an attempt,
// done with its outcome after. Safe for concurrent use.
type Breaker struct {
	eb       EndpointBreaker
	onChange func(from, to string)
}

// NewBreaker returns a closed breaker; name is for the caller's logs (unused); onChange (optional) is called on
// every state change with the state names, synchronously and under the breaker's lock: it must not call the
// breaker.
func NewBreaker(name string, cfg BreakerConfig, onChange func(from, to string)) *Breaker {
	b := &Breaker{onChange: onChange}
	b.eb.Start(NewBreakerPolicy(cfg))
	return b
}

// Allow asks to send one attempt. done must be called with the attempt's Outcome.
func (b *Breaker) Allow() (done func(error), err error) {
	t, err := b.eb.Allow(b.onChange)
	if err != nil {
		return nil, err
	}
	return func(outcome error) { b.eb.Done(t, outcome, b.onChange) }, nil
}

// State returns "closed", "half_open" or "open".
func (b *Breaker) State() string { return b.eb.State(b.onChange) }

// Ejector caps outlier ejection for one upstream: at most MaxEjectionPercent of the endpoints are out of the
// load balancer's choice at once. Safe for concurrent use.
type Ejector struct {
	percent int
	ejected atomic.Int64
}

// NewEjector returns an ejector for cfg.
func NewEjector(cfg OutlierConfig) *Ejector { return &Ejector{percent: cfg.MaxEjectionPercent} }

// TryEject takes an ejection slot for one of total endpoints; false means the cap is reached and the endpoint
// stays in (panic mode once every endpoint would be out).
func (e *Ejector) TryEject(total int) bool {
	limit := int64(total * e.percent / 100)
	for {
		n := e.ejected.Load()
		if n >= limit {
			return false
		}
		if e.ejected.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

// Return gives back a slot taken by TryEject.
func (e *Ejector) Return() { e.ejected.Add(-1) }

// Ejected is the number of endpoints ejected now.
func (e *Ejector) Ejected() int64 { return e.ejected.Load() }
