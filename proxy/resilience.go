package proxy

import (
	"context"
	"reflect"

	"meshlet.dev/meshlet/resilience"
)

// decisionsKept is how many resilience decisions /debug/upstreams shows per upstream.
const decisionsKept = 50

// resState is an upstream's resilience settings and the parts built from them; swapped whole on reload.
type resState struct {
	cfg     resilience.Config
	limiter *resilience.Limiter
}

// initResilience builds the retry transport around c and the limiter.
func (c *cluster) initResilience(cfg resilience.Config) {
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
	c.res.Store(&resState{cfg: cfg, limiter: resilience.NewLimiter(cfg.Limits)})
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
	next := &resState{cfg: cfg, limiter: old.limiter}
	if !reflect.DeepEqual(old.cfg.Limits, cfg.Limits) {
		next.limiter = resilience.NewLimiter(cfg.Limits)
	}
	c.res.Store(next)
	c.endpoints.setBreakers(cfg.Breaker, cfg.Outlier)
}

// acquire takes a slot of the upstream's limiter for one request.
func (c *cluster) acquire(ctx context.Context) (func(), error) {
	return c.res.Load().limiter.Acquire(ctx)
}
