package resilience

import (
	"meshlet.dev/meshlet/grpcwire"

	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Why a retry was suppressed: the values of the why label of meshlet_retries_suppressed_total.
const (
	SuppressedBudget   = "budget"   // the retry budget is spent
	SuppressedDeadline = "deadline" // the time left is shorter than the backoff
	SuppressedBody     = "body"     // the request body was too large (or still streaming) to replay
	SuppressedMethod   = "method"   // a non-idempotent request that may have reached the app
)

// RetryPolicy is a validated RetryConfig. It is immutable.
type RetryPolicy struct {
	maxAttempts   int
	perTryTimeout time.Duration
	base, max     time.Duration
	maxBody       int64
	kinds         map[Kind]string
	gatewayError  bool
	statuses      map[int]string
	grpcCodes     map[grpcwire.Code]string
}

// NewRetryPolicy parses cfg (defaults applied).
func NewRetryPolicy(cfg RetryConfig) (*RetryPolicy, error) {
	p := &RetryPolicy{maxAttempts: cfg.MaxAttempts, perTryTimeout: cfg.PerTryTimeout, base: cfg.Backoff.Base,
		max: cfg.Backoff.Max, maxBody: cfg.MaxBodyBytes, kinds: map[Kind]string{}, statuses: map[int]string{},
		grpcCodes: map[grpcwire.Code]string{}}
	for _, s := range cfg.RetryOn {
		c, err := parseCondition(s)
		if err != nil {
			return nil, err
		}
		switch {
		case c.name == CondGatewayError:
			p.gatewayError = true
		case c.status != 0:
			p.statuses[c.status] = c.name
		case c.isGRPC:
			p.grpcCodes[c.grpcCode] = c.name
		default:
			p.kinds[c.kind] = c.name
		}
	}
	return p, nil
}

// match returns the retry_on condition that the outcome of an attempt meets, or "".
// MaxAttempts is how many attempts the policy makes at most.
func (p *RetryPolicy) MaxAttempts() int { return p.maxAttempts }

func (p *RetryPolicy) match(resp *http.Response, err error, perTryExpired bool) string {
	if err != nil {
		k := ClassifyError(err)
		if perTryExpired && k == KindTimeout && p.gatewayError {
			return CondGatewayError
		}
		return p.kinds[k]
	}
	if c, ok := grpcwire.Status(resp); ok && resp.Header.Get(grpcwire.HeaderStatus) != "" {
		// Only a trailers-only response can be retried: the status is known before any byte of it is sent on.
		return p.grpcCodes[c]
	}
	if name, ok := p.statuses[resp.StatusCode]; ok {
		return name
	}
	if p.gatewayError && (resp.StatusCode == 502 || resp.StatusCode == 503 || resp.StatusCode == 504) {
		return CondGatewayError
	}
	return ""
}

// backoff returns the wait before retry number n (1 for the first retry): full jitter over an exponential
// ceiling, or the server's Retry-After on a 429 or 503, each capped at the backoff max.
func (p *RetryPolicy) backoff(n int, resp *http.Response) time.Duration {
	if resp != nil && (resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusServiceUnavailable) {
		if d, ok := retryAfter(resp.Header.Get("Retry-After")); ok {
			return min(d, p.max)
		}
	}
	ceiling := p.max
	if shift := n - 1; shift < 30 && p.base<<shift < p.max {
		ceiling = p.base << shift
	}
	if ceiling <= 0 {
		return 0
	}
	return rand.N(ceiling)
}

func retryAfter(v string) (time.Duration, bool) {
	if v == "" {
		return 0, false
	}
	if s, err := strconv.Atoi(v); err == nil && s >= 0 {
		return time.Duration(s) * time.Second, true
	}
	if t, err := http.ParseTime(v); err == nil {
		return max(0, time.Until(t)), true
	}
	return 0, false
}

// Hooks are told about retry decisions; nil fields are skipped. They must not block.
type Hooks struct {
	Retried    func(reason string)        // a retry was started because of condition reason
	Suppressed func(why, reason string)   // a retry that reason called for was not made, because of why
	Exhausted  func(reason string, n int) // the last attempt failed with reason after n attempts
}

// RetryTransport retries failed attempts through next as its policy allows, within its budget. A response is
// handed on (and never retried after) as soon as its headers are final, so no byte of a retried attempt reaches
// the client. Create it with NewRetryTransport; it is safe for concurrent use.
type RetryTransport struct {
	next   http.RoundTripper
	log    *slog.Logger
	hooks  Hooks
	policy atomic.Pointer[RetryPolicy]
	budget atomic.Pointer[Budget]
}

// NewRetryTransport returns a RetryTransport around next.
func NewRetryTransport(next http.RoundTripper, p *RetryPolicy, b *Budget, hooks Hooks, log *slog.Logger) *RetryTransport {
	t := &RetryTransport{next: next, log: log, hooks: hooks}
	t.Set(p, b)
	return t
}

// Set swaps the policy and budget (a config reload); requests under way keep the ones they started with.
func (t *RetryTransport) Set(p *RetryPolicy, b *Budget) {
	t.policy.Store(p)
	t.budget.Store(b)
}

// Budget returns the budget in use.
func (t *RetryTransport) Budget() *Budget { return t.budget.Load() }

type policyKey struct{}

// WithPolicy returns ctx with p as the retry policy of the request it carries, in place of the transport's (a
// route's own retries); the budget stays the transport's.
func WithPolicy(ctx context.Context, p *RetryPolicy) context.Context {
	return context.WithValue(ctx, policyKey{}, p)
}

// RoundTrip implements http.RoundTripper.
func (t *RetryTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	p, b := t.policy.Load(), t.budget.Load()
	if rp, ok := req.Context().Value(policyKey{}).(*RetryPolicy); ok && rp != nil {
		p = rp
	}
	b.Request()
	grpc := grpcwire.IsGRPC(req.Header)
	if p.maxAttempts <= 1 && p.perTryTimeout == 0 && !grpc {
		return t.next.RoundTrip(req)
	}
	var body *replayBody
	if req.Body != nil && req.Body != http.NoBody && p.maxAttempts > 1 {
		body = &replayBody{src: req.Body, limit: p.maxBody}
	}
	ctx := req.Context()
	deadline, hasDeadline := ctx.Deadline()
	idempotent := idempotentRequest(req)
	for attempt := 1; ; attempt++ {
		actx, cancel := ctx, context.CancelFunc(nil)
		var timer *time.Timer
		var expired atomic.Bool
		if p.perTryTimeout > 0 {
			// The per-try timeout runs until the response headers; the body then streams under the overall
			// deadline only (its context is released when the body is closed).
			actx, cancel = context.WithCancel(ctx)
			timer = time.AfterFunc(p.perTryTimeout, func() { expired.Store(true); cancel() })
		}
		areq := req
		if actx != ctx || body != nil || grpc && hasDeadline {
			areq = req.WithContext(actx) // a copy only when the attempt differs from the request
		}
		if body != nil {
			areq.Body = body.attempt()
			// The transports may resend a request themselves when they know the endpoint never processed it
			// (HTTP/2: a stream above a graceful GOAWAY's last stream ID, or refused): GetBody lets them do so
			// after the body started to go out, which is how a call in flight to a sidecar that begins to shut
			// down still succeeds.
			areq.GetBody = body.getBody
		}
		if grpc && hasDeadline {
			// Propagate what remains of the caller's deadline, not what it was when the call left the app.
			areq.Header = req.Header.Clone()
			areq.Header.Set(grpcwire.HeaderTimeout, grpcwire.EncodeTimeout(time.Until(deadline)))
		}
		resp, err := t.next.RoundTrip(areq)
		perTryExpired := false
		if timer != nil && !timer.Stop() && expired.Load() {
			perTryExpired = true
			discard(resp) // headers that came just as the timer fired: their body is cut off
			resp, err = nil, errPerTryTimeout
		}
		reason := p.match(resp, err, perTryExpired)
		retry := reason != "" && attempt < p.maxAttempts && ctx.Err() == nil
		if retry {
			delay := p.backoff(attempt, resp)
			why := suppression(idempotent || neverReachedApp(resp, err, grpc), body, deadline, hasDeadline, delay, b)
			if why == "" {
				if t.hooks.Retried != nil {
					t.hooks.Retried(reason)
				}
				discard(resp)
				if cancel != nil {
					cancel()
				}
				if !Sleep(ctx, delay) {
					return nil, ctx.Err()
				}
				continue
			}
			if t.hooks.Suppressed != nil {
				t.hooks.Suppressed(why, reason)
			}
		} else if reason != "" && attempt > 1 && t.hooks.Exhausted != nil {
			t.hooks.Exhausted(reason, attempt)
		}
		if cancel != nil {
			if resp != nil {
				resp.Body = &cancelBody{ReadCloser: resp.Body, cancel: cancel}
			} else {
				cancel()
			}
		}
		return resp, err
	}
}

// suppression says why a retry the policy calls for must not be made ("" when it may): a request that may have
// reached the app and is not safe to repeat, a body that cannot be replayed, a deadline shorter than the backoff,
// or a spent budget (taken from b only when everything else allows the retry).
func suppression(safe bool, body *replayBody, deadline time.Time, hasDeadline bool, delay time.Duration, b *Budget) string {
	switch {
	case !safe:
		return SuppressedMethod
	case body != nil && !body.replayable():
		return SuppressedBody
	case hasDeadline && time.Until(deadline) <= delay:
		return SuppressedDeadline
	case !b.TryRetry():
		return SuppressedBudget
	}
	return ""
}

// neverReachedApp reports whether a failed attempt provably did not reach the app, so that even a
// non-idempotent request may be sent again; for gRPC calls, a status the server chose to answer with (a
// trailers-only UNAVAILABLE, say) says the same, as gRPC's own retry policies assume.
func neverReachedApp(resp *http.Response, err error, grpc bool) bool {
	if err != nil {
		k := ClassifyError(err)
		return k == KindConnectFailure || k == KindRefusedStream
	}
	return grpc && resp.Header.Get(grpcwire.HeaderStatus) != ""
}

// idempotentRequest: the methods HTTP defines as idempotent, and any request with an Idempotency-Key.
func idempotentRequest(r *http.Request) bool {
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace, http.MethodPut, http.MethodDelete:
		return true
	}
	return r.Header.Get("Idempotency-Key") != ""
}

// discard drains a little of a response that is being retried and closes it, so its connection can be reused.
func discard(resp *http.Response) {
	if resp == nil {
		return
	}
	io.CopyN(io.Discard, resp.Body, 4<<10)
	resp.Body.Close()
}

// Sleep waits d (nothing when d <= 0) and reports false if ctx ended first: the one wait of every retry loop
// (retries here, the watches and registration of the Consul agent, the admin's profiles).
func Sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// cancelBody releases an attempt's per-try context when its response body is closed.
type cancelBody struct {
	io.ReadCloser
	cancel context.CancelFunc
}

func (b *cancelBody) Close() error {
	err := b.ReadCloser.Close()
	b.cancel()
	return err
}

// errPerTryTimeout is the error of an attempt that ran out of its per-try timeout; it is a DeadlineExceeded.
var errPerTryTimeout = fmt.Errorf("per-try timeout: %w", context.DeadlineExceeded)

// errAttemptOver is what a superseded attempt reads from its request body.
var errAttemptOver = errors.New("request body: attempt is over")

// errNotReplayable is GetBody's answer when the body cannot be sent again.
var errNotReplayable = errors.New("request body cannot be replayed")

// replayBody records a request body as attempts read it, up to a limit, so that a later attempt can read it again
// from the start and then go on with what the client has not sent yet. Only one attempt reads at a time: a new
// attempt supersedes the previous one, whose reads then fail.
type replayBody struct {
	mu       sync.Mutex
	src      io.ReadCloser
	limit    int64
	buf      []byte // all read from src so far, while it fits in limit
	overflow bool   // more than limit was read: the body cannot be replayed
	done     bool   // src returned an error (io.EOF at the end)
	err      error
	reading  bool // a Read on src is under way
	cur      *attemptBody
}

type attemptBody struct {
	rb  *replayBody
	off int
}

// attempt returns a reader for a new attempt, starting at the beginning of the body.
func (rb *replayBody) attempt() io.ReadCloser {
	rb.mu.Lock()
	defer rb.mu.Unlock()
	a := &attemptBody{rb: rb}
	rb.cur = a
	return a
}

// getBody is the attempt's Request.GetBody: the body from its beginning again, while it can be replayed.
// A read on the client's body still under way (the earlier attempt's writer) makes it not replayable, for two
// reads of it must not run at once.
func (rb *replayBody) getBody() (io.ReadCloser, error) {
	if !rb.replayable() {
		return nil, errNotReplayable
	}
	return rb.attempt(), nil
}

// replayable reports whether a new attempt can send the whole body again.
func (rb *replayBody) replayable() bool {
	rb.mu.Lock()
	defer rb.mu.Unlock()
	return !rb.overflow && !rb.reading && (!rb.done || rb.err == io.EOF)
}

func (a *attemptBody) Read(p []byte) (int, error) {
	rb := a.rb
	rb.mu.Lock()
	if rb.cur != a {
		rb.mu.Unlock()
		return 0, errAttemptOver
	}
	if a.off < len(rb.buf) {
		n := copy(p, rb.buf[a.off:])
		a.off += n
		rb.mu.Unlock()
		return n, nil
	}
	if rb.done {
		rb.mu.Unlock()
		return 0, rb.err
	}
	rb.reading = true
	rb.mu.Unlock()
	n, err := rb.src.Read(p)
	rb.mu.Lock()
	defer rb.mu.Unlock()
	rb.reading = false
	if n > 0 {
		if !rb.overflow && int64(len(rb.buf)+n) <= rb.limit {
			rb.buf = append(rb.buf, p[:n]...)
			a.off = len(rb.buf)
		} else {
			rb.overflow, rb.buf = true, nil
		}
	}
	if err != nil {
		rb.done, rb.err = true, err
	}
	return n, err
}

// Close ends this attempt's use of the body; the client's body stays open for the next attempt.
func (a *attemptBody) Close() error {
	rb := a.rb
	rb.mu.Lock()
	defer rb.mu.Unlock()
	if rb.cur == a {
		rb.cur = nil
	}
	return nil
}
