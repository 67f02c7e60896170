package proxy

import (
	"context"
	"net/http"
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

// initResilience sets the upstream's resilience settings: its limiter now, its retry transport at its first request
// (retryTransport).
func (c *cluster) initResilience(cfg resilience.Config) {
	c.res.Store(&resState{cfg: cfg, limiter: resilience.NewLimiter(cfg.Limits)})
	if c.direction == "outbound" {
		c.m.RetryBudget.Set(c.name, c.retryBudgetRemaining)
	}
}

// retryTransport returns the upstream's retry transport (retrying attempts through c), built with the current
// settings at the first call: an upstream that is never called holds no policy, budget or hooks.
func (c *cluster) retryTransport() *resilience.RetryTransport {
	if rt := c.retry.Load(); rt != nil {
		return rt
	}
	c.lazyMu.Lock()
	defer c.lazyMu.Unlock()
	if rt := c.retry.Load(); rt != nil {
		return rt
	}
	cfg := c.res.Load().cfg
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
	rt := resilience.NewRetryTransport(c, policy, resilience.NewBudget(cfg.Retry.Budget), hooks, c.log)
	c.retry.Store(rt)
	return rt
}

// retryBudgetRemaining is the number of retries the upstream's budget allows now: a fresh budget's before the
// first request.
func (c *cluster) retryBudgetRemaining() float64 {
	if rt := c.retry.Load(); rt != nil {
		return rt.Budget().Remaining()
	}
	return resilience.NewBudget(c.res.Load().cfg.Retry.Budget).Remaining()
}

// retryOf is the reverse proxy's transport: the cluster's retry transport, built at the first request.
type retryOf cluster

func (r *retryOf) RoundTrip(req *http.Request) (*http.Response, error) {
	return (*cluster)(r).retryTransport().RoundTrip(req)
}

// setResilience applies changed resilience settings. Breakers start afresh (closed) when their settings change.
func (c *cluster) setResilience(cfg resilience.Config) {
	c.lazyMu.Lock()
	old := c.res.Load()
	if reflect.DeepEqual(old.cfg, cfg) {
		c.lazyMu.Unlock()
		return
	}
	if rt := c.retry.Load(); rt != nil && !reflect.DeepEqual(old.cfg.Retry, cfg.Retry) {
		policy, err := resilience.NewRetryPolicy(cfg.Retry)
		if err == nil {
			b := rt.Budget()
			if old.cfg.Retry.Budget != cfg.Retry.Budget {
				b = resilience.NewBudget(cfg.Retry.Budget)
			}
			rt.Set(policy, b)
		}
	}
	next := &resState{cfg: cfg, limiter: old.limiter}
	if !reflect.DeepEqual(old.cfg.Limits, cfg.Limits) {
		next.limiter = resilience.NewLimiter(cfg.Limits)
	}
	c.res.Store(next) // under lazyMu: a retry transport built from now on has these settings
	c.lazyMu.Unlock()
	c.endpoints.setBreakers(cfg.Breaker, cfg.Outlier)
}

// acquire takes a slot of the upstream's limiter for one request.
func (c *cluster) acquire(ctx context.Context) (func(), error) {
	return c.res.Load().limiter.Acquire(ctx)
}
