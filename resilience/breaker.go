package resilience

import (
	"errors"
	"sync/atomic"

	"github.com/sony/gobreaker/v2"
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

// Breaker is the circuit breaker of one endpoint, a gobreaker two-step breaker: Allow before an attempt, done
// with its outcome after. It opens after ConsecutiveFailures failures in a row or when FailureRatio of at least
// MinRequests requests in Interval failed; after OpenTimeout it lets HalfOpenRequests probes through, and closes
// again when they succeed. Safe for concurrent use.
type Breaker struct {
	cb *gobreaker.TwoStepCircuitBreaker[struct{}]
}

// BreakerPolicy is the gobreaker settings of one BreakerConfig, which the breakers of an upstream's endpoints
// share (their trip and exclusion functions are made once, not per endpoint). Immutable.
type BreakerPolicy struct {
	st gobreaker.Settings
}

// NewBreakerPolicy returns the policy of cfg's breakers.
func NewBreakerPolicy(cfg BreakerConfig) *BreakerPolicy {
	return &BreakerPolicy{st: gobreaker.Settings{
		MaxRequests: cfg.HalfOpenRequests,
		Interval:    cfg.Interval,
		Timeout:     cfg.OpenTimeout,
		ReadyToTrip: func(c gobreaker.Counts) bool {
			if c.ConsecutiveFailures >= cfg.ConsecutiveFailures {
				return true
			}
			return c.Requests >= cfg.MinRequests && float64(c.TotalFailures) >= cfg.FailureRatio*float64(c.Requests)
		},
		IsExcluded: func(err error) bool { return errors.Is(err, ErrExcluded) },
	}}
}

// NewBreaker returns a closed breaker; onChange (optional) is called on every state change with the state names,
// synchronously and under the breaker's lock: it must not call the breaker.
func NewBreaker(name string, cfg BreakerConfig, onChange func(from, to string)) *Breaker {
	return NewPolicyBreaker(NewBreakerPolicy(cfg), name, onChange)
}

// NewPolicyBreaker is NewBreaker with a policy shared by many breakers; name only names it in gobreaker ("" is
// fine: meshlet reports state changes through onChange).
func NewPolicyBreaker(p *BreakerPolicy, name string, onChange func(from, to string)) *Breaker {
	st := p.st
	st.Name = name
	if onChange != nil {
		st.OnStateChange = func(_ string, from, to gobreaker.State) { onChange(stateName(from), stateName(to)) }
	}
	return &Breaker{cb: gobreaker.NewTwoStepCircuitBreaker[struct{}](st)}
}

func stateName(s gobreaker.State) string {
	switch s {
	case gobreaker.StateOpen:
		return StateOpen
	case gobreaker.StateHalfOpen:
		return StateHalfOpen
	default:
		return StateClosed
	}
}

// Allow asks to send one attempt. done must be called with the attempt's Outcome.
func (b *Breaker) Allow() (done func(error), err error) {
	done, err = b.cb.Allow()
	if err != nil {
		return nil, ErrBreakerOpen
	}
	return done, nil
}

// State returns "closed", "half_open" or "open".
func (b *Breaker) State() string { return stateName(b.cb.State()) }

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
