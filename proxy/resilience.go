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
func (c *cluster) initResilience(cfg resilience.Config) {
	c.decisions = resilience.NewDecisions(decisionsKept)
	policy, err := resilience.NewRetryPolicy(cfg.Retry)
	if err != nil {
		// Validate has already rejected such a config; fall back to no retries rather than fail.
		c.log.Error("bad retry policy", "error", err.Error())
		policy, _ = resilience.NewRetryPolicy(resilience.RetryConfig{MaxAttempts: 1})
	}
	hooks := resilience.Hooks{
		Retried: func(reason string) {
			c.m.Retries.WithLabelValues(c.name, reason).Inc()
			c.decisions.Add("retried", "", reason)
		},
		Suppressed: func(why, reason string) {
			c.m.RetriesSuppressed.WithLabelValues(c.name, why).Inc()
			c.decisions.Add("suppressed", "", why+" (after "+reason+")")
		},
		Exhausted: func(reason string, n int) {
			c.decisions.Add("exhausted", "", reason+" on the last attempt")
		},
	}
	c.retry = resilience.NewRetryTransport(c, policy, resilience.NewBudget(cfg.Retry.Budget), hooks, c.log)
	c.res.Store(&resState{cfg: cfg, limiter: resilience.NewLimiter(cfg.Limits), ejector: resilience.NewEjector(cfg.Outlier)})
	if c.direction == "outbound" {
		c.m.RetryBudget.Set(c.name, func() float64 { return c.retry.Budget().Remaining() })
	}
}

// setResilience applies changed resilience settings. Breakers start afresh (closed) when their settings change.
func (c *cluster) setResilience(cfg resilience.Config) {
	old := c.res.Load()
	if reflect.DeepEqual(old.cfg, cfg) {
		return
	}
	if !reflect.DeepEqual(old.cfg.Retry, cfg.Retry) {
		policy, err := resilience.NewRetryPolicy(cfg.Retry)
		if err == nil {
			b := c.retry.Budget()
			if old.cfg.Retry.Budget != cfg.Retry.Budget {
				b = resilience.NewBudget(cfg.Retry.Budget)
			}
			c.retry.Set(policy, b)
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
	c.res.Store(next)
	if breakersChanged {
		c.mu.Lock()
		for _, st := range c.states {
			c.dropBreaker(st)
			c.addBreaker(st)
		}
		c.mu.Unlock()
	}
}

// addBreaker gives a new endpoint its breaker. Call with u.mu held.
func (c *cluster) addBreaker(st *endpointState) {
	cfg := c.res.Load().cfg.Breaker
	if cfg.Disabled {
		return
	}
	b := resilience.NewBreaker(c.name+"/"+st.ep.ID, cfg, func(from, to string) { c.breakerChanged(st, from, to) })
	st.breaker.Store(b)
	c.m.BreakerEndpoints.WithLabelValues(c.name, resilience.StateClosed).Inc()
}

// dropBreaker removes an endpoint's breaker (the endpoint is gone, or the settings changed), giving back its
// ejection slot. Call with u.mu held.
func (c *cluster) dropBreaker(st *endpointState) {
	b := st.breaker.Swap(nil)
	if b == nil {
		return
	}
	c.m.BreakerEndpoints.WithLabelValues(c.name, b.State()).Dec()
	if e := st.ejected.Swap(nil); e != nil {
		e.Return()
		c.m.EjectedEndpoints.WithLabelValues(c.name).Dec()
	}
}

// breakerChanged follows an endpoint's breaker: an opened breaker ejects the endpoint from load balancing if the
// ejection cap allows; half-open and closed put it back. Called under the breaker's lock: no breaker calls here.
func (c *cluster) breakerChanged(st *endpointState, from, to string) {
	if st.breaker.Load() == nil {
		return // replaced or removed meanwhile
	}
	c.m.BreakerEndpoints.WithLabelValues(c.name, from).Dec()
	c.m.BreakerEndpoints.WithLabelValues(c.name, to).Inc()
	c.m.BreakerTransitions.WithLabelValues(c.name, from, to).Inc()
	switch to {
	case resilience.StateOpen:
		c.decisions.Add("opened", st.ep.ID, "breaker opened after failures")
		ej := c.res.Load().ejector
		if ej.TryEject(len(c.picker.Load().endpoints)) {
			st.ejectedUntil.Store(time.Now().Add(c.res.Load().cfg.Breaker.OpenTimeout).UnixNano())
			st.ejected.Store(ej)
			c.m.Ejections.WithLabelValues(c.name).Inc()
			c.m.EjectedEndpoints.WithLabelValues(c.name).Inc()
			c.decisions.Add("ejected", st.ep.ID, "out of load balancing until its breaker half-opens")
		} else {
			c.decisions.Add("not_ejected", st.ep.ID, "ejection cap reached: stays in load balancing (panic mode)")
		}
	case resilience.StateHalfOpen, resilience.StateClosed:
		if e := st.ejected.Swap(nil); e != nil {
			e.Return()
			c.m.EjectedEndpoints.WithLabelValues(c.name).Dec()
		}
		kind := "closed"
		if to == resilience.StateHalfOpen {
			kind = "half_opened"
		}
		c.decisions.Add(kind, st.ep.ID, "breaker "+to)
	}
}

// acquire takes a slot of the upstream's limiter for one request.
func (c *cluster) acquire(ctx context.Context) (func(), error) {
	return c.res.Load().limiter.Acquire(ctx)
}
