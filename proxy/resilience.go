package proxy

import (
	"context"
	"net/http"
	"reflect"
	"sync"
	"sync/atomic"

	"meshlet.dev/meshlet/resilience"
)

// decisionsKept is how many resilience decisions /debug/upstreams shows per upstream.
const decisionsKept = 50

// resState is an upstream's limiter (nil: no limit), built at its first request and replaced whole when a reload
// changes its limits.
type resState struct {
	limiter *resilience.Limiter
}

// initResilience publishes the upstream's retry budget; its limiter and its retry transport are built at its
// first request (limits, retryTransport).
func (c *cluster) initResilience() {
	if c.direction == "outbound" {
		c.m.RetryBudget.Set(c.name, c.retryBudgetRemaining)
	}
}

// retryTransport returns the upstream's retry transport (retrying attempts through c), built with the current
// settings at the first call: an upstream that is never called holds no policy, budget or hooks.
func (c *cluster) retryTransport() *resilience.RetryTransport {
	c.touch()
	return buildOnce(&c.lazyMu, &c.retry, c.newRetryTransport)
}

// newRetryTransport builds the retry transport with the current settings (retryTransport).
func (c *cluster) newRetryTransport() *resilience.RetryTransport {
	cfg := c.cfg.Load().Resilience
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
	return resilience.NewRetryTransport(c, policy, resilience.NewBudget(cfg.Retry.Budget), hooks, c.log)
}

// retryBudgetRemaining is the number of retries the upstream's budget allows now: a fresh budget's before the
// first request.
func (c *cluster) retryBudgetRemaining() float64 {
	if rt := c.retry.Load(); rt != nil {
		return rt.Budget().Remaining()
	}
	return c.cfg.Load().Resilience.Retry.Budget.Reserve()
}

// retryOf is the reverse proxy's transport: the cluster's retry transport, built at the first request.
type retryOf cluster

func (r *retryOf) RoundTrip(req *http.Request) (*http.Response, error) {
	return (*cluster)(r).retryTransport().RoundTrip(req)
}

// setResilience applies changed resilience settings (old: those applied so far) to what is built of them.
// Breakers start afresh (closed) when their settings change. Call after c.cfg holds cfg.
func (c *cluster) setResilience(old, cfg resilience.Config) {
	if reflect.DeepEqual(old, cfg) {
		return
	}
	c.lazyMu.Lock()
	if rt := c.retry.Load(); rt != nil && !reflect.DeepEqual(old.Retry, cfg.Retry) {
		policy, err := resilience.NewRetryPolicy(cfg.Retry)
		if err == nil {
			b := rt.Budget()
			if old.Retry.Budget != cfg.Retry.Budget {
				b = resilience.NewBudget(cfg.Retry.Budget)
			}
			rt.Set(policy, b)
		}
	}
	if c.res.Load() != nil && !reflect.DeepEqual(old.Limits, cfg.Limits) {
		c.res.Store(&resState{limiter: resilience.NewLimiter(cfg.Limits)})
	}
	c.lazyMu.Unlock()
	c.endpoints.setBreakers(cfg.Breaker, cfg.Outlier)
}

// limits returns the upstream's limiter state, built with the current settings at the first call.
func (c *cluster) limits() *resState {
	return buildOnce(&c.lazyMu, &c.res, func() *resState {
		return &resState{limiter: resilience.NewLimiter(c.cfg.Load().Resilience.Limits)}
	})
}

// buildOnce returns p's value, built by build under mu (which whatever replaces or drops it holds too) if p holds
// none yet: the parts of a cluster that only requests need, made at the first.
func buildOnce[T any](mu *sync.Mutex, p *atomic.Pointer[T], build func() *T) *T {
	if v := p.Load(); v != nil {
		return v
	}
	mu.Lock()
	defer mu.Unlock()
	if v := p.Load(); v != nil {
		return v
	}
	v := build()
	p.Store(v)
	return v
}

// acquire takes a slot of the upstream's limiter for one request.
func (c *cluster) acquire(ctx context.Context) (func(), error) {
	return c.limits().limiter.Acquire(ctx)
}
