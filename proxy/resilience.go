package proxy

import (
	"context"
	"reflect"
	"time"

	"meshlet.dev/meshlet/resilience"
)

// decisionsKept is how many resilience decisions /debug/upstreams shows per upstream.
const decisionsKept = 50

// resState is an upstream's resilience settings and the parts built from them; swapped whole on reload.
type resState struct {
	cfg     resilience.Config
	limiter *resilience.Limiter
	ejector *resilience.Ejector
}

// initResilience builds the retry transport around u, the limiter, the ejector and the decision log.
func (u *upstream) initResilience(cfg resilience.Config) {
	u.decisions = resilience.NewDecisions(decisionsKept)
	policy, err := resilience.NewRetryPolicy(cfg.Retry)
	if err != nil {
		// Validate has already rejected such a config; fall back to no retries rather than fail.
		u.log.Error("bad retry policy", "error", err.Error())
		policy, _ = resilience.NewRetryPolicy(resilience.RetryConfig{MaxAttempts: 1})
	}
	hooks := resilience.Hooks{
		Retried: func(reason string) {
			u.m.Retries.WithLabelValues(u.name, reason).Inc()
			u.decisions.Add("retried", "", reason)
		},
		Suppressed: func(why, reason string) {
			u.m.RetriesSuppressed.WithLabelValues(u.name, why).Inc()
			u.decisions.Add("suppressed", "", why+" (after "+reason+")")
		},
		Exhausted: func(reason string, n int) {
			u.decisions.Add("exhausted", "", reason+" on the last attempt")
		},
	}
	u.retry = resilience.NewRetryTransport(u, policy, resilience.NewBudget(cfg.Retry.Budget), hooks, u.log)
	u.res.Store(&resState{cfg: cfg, limiter: resilience.NewLimiter(cfg.Limits), ejector: resilience.NewEjector(cfg.Outlier)})
	if u.direction == "outbound" {
		u.m.RetryBudget.Set(u.name, func() float64 { return u.retry.Budget().Remaining() })
	}
}

// setResilience applies changed resilience settings. Breakers start afresh (closed) when their settings change.
func (u *upstream) setResilience(cfg resilience.Config) {
	old := u.res.Load()
	if reflect.DeepEqual(old.cfg, cfg) {
		return
	}
	if !reflect.DeepEqual(old.cfg.Retry, cfg.Retry) {
		policy, err := resilience.NewRetryPolicy(cfg.Retry)
		if err == nil {
			b := u.retry.Budget()
			if old.cfg.Retry.Budget != cfg.Retry.Budget {
				b = resilience.NewBudget(cfg.Retry.Budget)
			}
			u.retry.Set(policy, b)
		}
	}
	next := &resState{cfg: cfg, limiter: old.limiter, ejector: old.ejector}
	if !reflect.DeepEqual(old.cfg.Limits, cfg.Limits) {
		next.limiter = resilience.NewLimiter(cfg.Limits)
	}
	breakersChanged := old.cfg.Breaker != cfg.Breaker || old.cfg.Outlier != cfg.Outlier
	if breakersChanged {
		next.ejector = resilience.NewEjector(cfg.Outlier)
	}
	u.res.Store(next)
	if breakersChanged {
		u.mu.Lock()
		for _, st := range u.states {
			u.dropBreaker(st)
			u.addBreaker(st)
		}
		u.mu.Unlock()
	}
}

// addBreaker gives a new endpoint its breaker. Call with u.mu held.
func (u *upstream) addBreaker(st *endpointState) {
	cfg := u.res.Load().cfg.Breaker
	if cfg.Disabled {
		return
	}
	b := resilience.NewBreaker(u.name+"/"+st.ep.ID, cfg, func(from, to string) { u.breakerChanged(st, from, to) })
	st.breaker.Store(b)
	u.m.BreakerEndpoints.WithLabelValues(u.name, resilience.StateClosed).Inc()
}

// dropBreaker removes an endpoint's breaker (the endpoint is gone, or the settings changed), giving back its
// ejection slot. Call with u.mu held.
func (u *upstream) dropBreaker(st *endpointState) {
	b := st.breaker.Swap(nil)
	if b == nil {
		return
	}
	u.m.BreakerEndpoints.WithLabelValues(u.name, b.State()).Dec()
	if e := st.ejected.Swap(nil); e != nil {
		e.Return()
		u.m.EjectedEndpoints.WithLabelValues(u.name).Dec()
	}
}

// breakerChanged follows an endpoint's breaker: an opened breaker ejects the endpoint from load balancing if the
// ejection cap allows; half-open and closed put it back. Called under the breaker's lock: no breaker calls here.
func (u *upstream) breakerChanged(st *endpointState, from, to string) {
	if st.breaker.Load() == nil {
		return // replaced or removed meanwhile
	}
	u.m.BreakerEndpoints.WithLabelValues(u.name, from).Dec()
	u.m.BreakerEndpoints.WithLabelValues(u.name, to).Inc()
	u.m.BreakerTransitions.WithLabelValues(u.name, from, to).Inc()
	switch to {
	case resilience.StateOpen:
		u.decisions.Add("opened", st.ep.ID, "breaker opened after failures")
		ej := u.res.Load().ejector
		if ej.TryEject(len(u.picker.Load().endpoints)) {
			st.ejectedUntil.Store(time.Now().Add(u.res.Load().cfg.Breaker.OpenTimeout).UnixNano())
			st.ejected.Store(ej)
			u.m.Ejections.WithLabelValues(u.name).Inc()
			u.m.EjectedEndpoints.WithLabelValues(u.name).Inc()
			u.decisions.Add("ejected", st.ep.ID, "out of load balancing until its breaker half-opens")
		} else {
			u.decisions.Add("not_ejected", st.ep.ID, "ejection cap reached: stays in load balancing (panic mode)")
		}
	case resilience.StateHalfOpen, resilience.StateClosed:
		if e := st.ejected.Swap(nil); e != nil {
			e.Return()
			u.m.EjectedEndpoints.WithLabelValues(u.name).Dec()
		}
		kind := "closed"
		if to == resilience.StateHalfOpen {
			kind = "half_opened"
		}
		u.decisions.Add(kind, st.ep.ID, "breaker "+to)
	}
}

// acquire takes a slot of the upstream's limiter for one request.
func (u *upstream) acquire(ctx context.Context) (func(), error) {
	return u.res.Load().limiter.Acquire(ctx)
}
