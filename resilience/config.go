// Package resilience keeps a failing endpoint from becoming a failing service without turning a blip into a
// storm: retries with conditions, backoff and a retry budget, circuit breakers per endpoint
// (github.com/sony/gobreaker/v2) with capped outlier ejection, concurrency limits, and the classification of
// failures they all share. Every part is on by default with safe settings.
package resilience

import (
	"errors"
	"fmt"
	"slices"
	"time"
)

// Config is an upstream's resilience settings: the retry, circuit_breaker, outlier and limits sections of an
// upstream in the config file. The zero value means the documented defaults.
type Config struct {
	Retry   RetryConfig   `yaml:"retry" json:"retry"`
	Breaker BreakerConfig `yaml:"circuit_breaker" json:"circuit_breaker"`
	Outlier OutlierConfig `yaml:"outlier" json:"outlier"`
	Limits  LimitsConfig  `yaml:"limits" json:"limits"`
}

// RetryConfig says when and how often a failed attempt is tried again.
type RetryConfig struct {
	// MaxAttempts is the number of attempts in all, the first included; 1 turns retries off. Default 3.
	MaxAttempts int `yaml:"max_attempts" json:"max_attempts"`
	// PerTryTimeout bounds each attempt until its response headers; 0 means only the overall timeout applies.
	PerTryTimeout time.Duration `yaml:"per_try_timeout" json:"per_try_timeout"`
	Backoff       BackoffConfig `yaml:"backoff" json:"backoff"`
	// RetryOn lists the conditions: connect-failure, reset, refused-stream, gateway-error (502, 503, 504),
	// HTTP status codes ("429"), and gRPC codes by name ("unavailable", "resource-exhausted", "cancelled", ...).
	// Default: connect-failure, reset, refused-stream, gateway-error, unavailable.
	RetryOn []string `yaml:"retry_on" json:"retry_on"`
	// MaxBodyBytes is how much of a request body is kept to replay it; a request that has sent more is not
	// retried. Default 64 KiB.
	MaxBodyBytes int64        `yaml:"max_body_bytes" json:"max_body_bytes"`
	Budget       BudgetConfig `yaml:"budget" json:"budget"`
}

// BackoffConfig is exponential backoff with full jitter: attempt n waits a random time in [0, min(max, base*2^n)).
type BackoffConfig struct {
	Base time.Duration `yaml:"base" json:"base"` // default 25ms
	Max  time.Duration `yaml:"max" json:"max"`   // default 250ms; also the cap on a Retry-After the server asks for
}

// BudgetConfig caps retries: within Window, retries may add at most Ratio of the requests plus MinPerSecond per
// second of the window. Budgets are per upstream and always on.
type BudgetConfig struct {
	Ratio        float64       `yaml:"ratio" json:"ratio"`                   // default 0.2
	MinPerSecond float64       `yaml:"min_per_second" json:"min_per_second"` // default 10
	Window       time.Duration `yaml:"window" json:"window"`                 // default 10s
}

// BreakerConfig configures the circuit breaker of each endpoint.
type BreakerConfig struct {
	// Disabled turns breakers and outlier ejection off.
	Disabled bool `yaml:"disabled" json:"disabled"`
	// ConsecutiveFailures opens the breaker after this many failures in a row. Default 5.
	ConsecutiveFailures uint32 `yaml:"consecutive_failures" json:"consecutive_failures"`
	// FailureRatio opens the breaker when this share of the requests in Interval failed, once there were at
	// least MinRequests. Default 0.5 with 20 requests in 10s.
	FailureRatio float64       `yaml:"failure_ratio" json:"failure_ratio"`
	MinRequests  uint32        `yaml:"min_requests" json:"min_requests"`
	Interval     time.Duration `yaml:"interval" json:"interval"`
	// OpenTimeout is how long a breaker stays open before it lets probes through (half-open). Default 10s.
	OpenTimeout time.Duration `yaml:"open_timeout" json:"open_timeout"`
	// HalfOpenRequests is the number of probes let through while half-open. Default 1.
	HalfOpenRequests uint32 `yaml:"half_open_requests" json:"half_open_requests"`
}

// OutlierConfig bounds ejection: an endpoint whose breaker opens leaves the load balancer's choice.
type OutlierConfig struct {
	// MaxEjectionPercent is the largest share of an upstream's endpoints ejected at once. Beyond it, and when all
	// would be ejected, traffic goes to every endpoint (panic mode). Default 50.
	MaxEjectionPercent int `yaml:"max_ejection_percent" json:"max_ejection_percent"`
}

// LimitsConfig bounds the load meshlet puts on an upstream. Overflow is answered at once with 503
// (RESOURCE_EXHAUSTED for gRPC). Zero (absent) means the default; a negative value means no limit.
type LimitsConfig struct {
	MaxRequests int `yaml:"max_requests" json:"max_requests"` // concurrent requests; default 1024
	// MaxPending is the number of requests that may wait for a slot; default 1024. Unlike the other limits, 0
	// is a value: no waiting, a request finding every slot busy is refused at once.
	MaxPending     *int `yaml:"max_pending" json:"max_pending"`
	MaxConnections int  `yaml:"max_connections" json:"max_connections"` // HTTP/1.1 connections per endpoint; default 1024
}

// Defaults.
const (
	DefaultMaxAttempts         = 3
	DefaultBackoffBase         = 25 * time.Millisecond
	DefaultBackoffMax          = 250 * time.Millisecond
	DefaultMaxBodyBytes        = 64 << 10
	DefaultBudgetRatio         = 0.2
	DefaultBudgetMinPerSecond  = 10
	DefaultBudgetWindow        = 10 * time.Second
	DefaultConsecutiveFailures = 5
	DefaultFailureRatio        = 0.5
	DefaultMinRequests         = 20
	DefaultBreakerInterval     = 10 * time.Second
	DefaultOpenTimeout         = 10 * time.Second
	DefaultHalfOpenRequests    = 1
	DefaultMaxEjectionPercent  = 50
	DefaultMaxRequests         = 1024
	DefaultMaxPending          = 1024
	DefaultMaxConnections      = 1024
)

// DefaultRetryOn is the retry_on list when none is configured.
var DefaultRetryOn = []string{CondConnectFailure, CondReset, CondRefusedStream, CondGatewayError, "unavailable"}

// defaultRetryOn is the list SetDefaults gives: one for every config (a copy each was 80 bytes per upstream, issue
// 16), apart from DefaultRetryOn so that nothing done to that one changes it. Lists in configs are only read;
// it is clipped, so that an append copies.
var defaultRetryOn = slices.Clip(slices.Clone(DefaultRetryOn))

// SetDefaults fills zero fields.
func (c *Config) SetDefaults() {
	r := &c.Retry
	if r.MaxAttempts == 0 {
		r.MaxAttempts = DefaultMaxAttempts
	}
	if r.Backoff.Base == 0 {
		r.Backoff.Base = DefaultBackoffBase
	}
	if r.Backoff.Max == 0 {
		r.Backoff.Max = max(DefaultBackoffMax, r.Backoff.Base)
	}
	if r.RetryOn == nil {
		r.RetryOn = defaultRetryOn
	}
	if r.MaxBodyBytes == 0 {
		r.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if r.Budget.Ratio == 0 {
		r.Budget.Ratio = DefaultBudgetRatio
	}
	if r.Budget.MinPerSecond == 0 {
		r.Budget.MinPerSecond = DefaultBudgetMinPerSecond
	}
	if r.Budget.Window == 0 {
		r.Budget.Window = DefaultBudgetWindow
	}
	b := &c.Breaker
	if b.ConsecutiveFailures == 0 {
		b.ConsecutiveFailures = DefaultConsecutiveFailures
	}
	if b.FailureRatio == 0 {
		b.FailureRatio = DefaultFailureRatio
	}
	if b.MinRequests == 0 {
		b.MinRequests = DefaultMinRequests
	}
	if b.Interval == 0 {
		b.Interval = DefaultBreakerInterval
	}
	if b.OpenTimeout == 0 {
		b.OpenTimeout = DefaultOpenTimeout
	}
	if b.HalfOpenRequests == 0 {
		b.HalfOpenRequests = DefaultHalfOpenRequests
	}
	if c.Outlier.MaxEjectionPercent == 0 {
		c.Outlier.MaxEjectionPercent = DefaultMaxEjectionPercent
	}
	l := &c.Limits
	if l.MaxRequests == 0 {
		l.MaxRequests = DefaultMaxRequests
	}
	if l.MaxPending == nil {
		n := DefaultMaxPending
		l.MaxPending = &n
	}
	if l.MaxConnections == 0 {
		l.MaxConnections = DefaultMaxConnections
	}
}

// Validate reports every problem, each prefixed with path (e.g. "upstreams[2]") and its field.
func (c *Config) Validate(path string) error {
	var errs []error
	add := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s.%s: %s", path, field, fmt.Sprintf(format, args...)))
	}
	r := c.Retry
	if r.MaxAttempts < 1 {
		add("retry.max_attempts", "must be >= 1")
	}
	if r.MaxAttempts > 10 {
		add("retry.max_attempts", "must be <= 10")
	}
	if r.PerTryTimeout < 0 {
		add("retry.per_try_timeout", "must not be negative")
	}
	if r.Backoff.Base < 0 {
		add("retry.backoff.base", "must not be negative")
	}
	if r.Backoff.Max < r.Backoff.Base {
		add("retry.backoff.max", "must be >= retry.backoff.base")
	}
	for i, cond := range r.RetryOn {
		if _, err := parseCondition(cond); err != nil {
			add(fmt.Sprintf("retry.retry_on[%d]", i), "%v", err)
		}
	}
	if r.MaxBodyBytes < 0 {
		add("retry.max_body_bytes", "must not be negative")
	}
	if r.Budget.Ratio < 0 || r.Budget.Ratio > 10 {
		add("retry.budget.ratio", "must be between 0 and 10")
	}
	if r.Budget.MinPerSecond < 0 {
		add("retry.budget.min_per_second", "must not be negative")
	}
	if r.Budget.Window < time.Second {
		add("retry.budget.window", "must be at least 1s")
	}
	b := c.Breaker
	if b.FailureRatio <= 0 || b.FailureRatio > 1 {
		add("circuit_breaker.failure_ratio", "must be in (0, 1]")
	}
	if b.Interval < 0 {
		add("circuit_breaker.interval", "must not be negative")
	}
	if b.OpenTimeout < 0 {
		add("circuit_breaker.open_timeout", "must not be negative")
	}
	if p := c.Outlier.MaxEjectionPercent; p < 0 || p > 100 {
		add("outlier.max_ejection_percent", "must be between 0 and 100")
	}
	return errors.Join(errs...)
}
