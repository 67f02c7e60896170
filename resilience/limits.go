package resilience

import (
	"context"
	"errors"
	"sync/atomic"
)

// Limit names, the limit label of meshlet_limit_overflows_total.
const (
	LimitRequests = "requests"
	LimitPending  = "pending"
)

// OverflowError is returned when a limit is full; Limit says which.
type OverflowError struct{ Limit string }

func (e *OverflowError) Error() string { return "limit reached: max " + e.Limit }

// ErrOverflow matches any OverflowError with errors.Is.
var ErrOverflow = errors.New("limit reached")

// Is makes errors.Is(err, ErrOverflow) true for overflows.
func (e *OverflowError) Is(target error) bool { return target == ErrOverflow }

// Limiter bounds the concurrent requests to an upstream (MaxRequests) and the requests waiting for a slot
// (MaxPending); beyond both, Acquire fails at once. A nil *Limiter (no limit) lets everything through.
type Limiter struct {
	slots      chan struct{}
	pending    atomic.Int64
	maxPending int64
}

// NewLimiter returns a limiter for cfg, or nil when MaxRequests is negative (no limit).
func NewLimiter(cfg LimitsConfig) *Limiter {
	if cfg.MaxRequests < 0 {
		return nil
	}
	mp := int64(DefaultMaxPending)
	if cfg.MaxPending != nil {
		mp = int64(*cfg.MaxPending)
	}
	if mp < 0 {
		mp = 1 << 62
	}
	return &Limiter{slots: make(chan struct{}, cfg.MaxRequests), maxPending: mp}
}

// Acquire takes a slot, waiting (as one of at most MaxPending) until one is free or ctx ends. release must be
// called once when the request is over.
func (l *Limiter) Acquire(ctx context.Context) (release func(), err error) {
	if l == nil {
		return func() {}, nil
	}
	select {
	case l.slots <- struct{}{}:
		return l.release, nil
	default:
	}
	if l.maxPending == 0 {
		return nil, &OverflowError{Limit: LimitRequests}
	}
	if l.pending.Add(1) > l.maxPending {
		l.pending.Add(-1)
		return nil, &OverflowError{Limit: LimitPending}
	}
	defer l.pending.Add(-1)
	if cap(l.slots) == 0 {
		return nil, &OverflowError{Limit: LimitRequests}
	}
	select {
	case l.slots <- struct{}{}:
		return l.release, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (l *Limiter) release() { <-l.slots }

// InUse is the number of requests holding a slot.
func (l *Limiter) InUse() int {
	if l == nil {
		return 0
	}
	return len(l.slots)
}
