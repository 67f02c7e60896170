package resilience

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/http2"
)

func TestClassifyError(t *testing.T) {
	dial := &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}
	tests := []struct {
		err  error
		want Kind
	}{
		{nil, KindOK},
		{dial, KindConnectFailure},
		{fmt.Errorf("connect: %w", dial), KindConnectFailure},
		{http2.StreamError{Code: http2.ErrCodeRefusedStream}, KindRefusedStream},
		{fmt.Errorf("x: %w", http2.StreamError{Code: http2.ErrCodeRefusedStream}), KindRefusedStream},
		{http2.StreamError{Code: http2.ErrCodeInternal}, KindReset},
		{http2.GoAwayError{ErrCode: http2.ErrCodeNo}, KindReset},
		{&net.OpError{Op: "read", Err: syscall.ECONNRESET}, KindReset},
		{io.ErrUnexpectedEOF, KindReset},
		{context.Canceled, KindCanceled},
		{context.DeadlineExceeded, KindTimeout},
		{errors.New("something else"), KindOther},
	}
	for _, tt := range tests {
		if got := ClassifyError(tt.err); got != tt.want {
			t.Errorf("ClassifyError(%v) = %v, want %v", tt.err, got, tt.want)
		}
	}
}

func TestParseConditions(t *testing.T) {
	for _, ok := range []string{"connect-failure", "reset", "refused-stream", "gateway-error", "429", "503",
		"unavailable", "resource-exhausted", "RESOURCE_EXHAUSTED", "cancelled", "deadline-exceeded"} {
		if _, err := parseCondition(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "5xx", "200", "ok", "teapot", "999"} {
		if _, err := parseCondition(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// scripted is a RoundTripper that answers attempt i with script[i] and records what each attempt sent.
type scripted struct {
	script []func(*http.Request) (*http.Response, error)
	bodies []string
	n      atomic.Int32
}

func (s *scripted) RoundTrip(r *http.Request) (*http.Response, error) {
	i := int(s.n.Add(1)) - 1
	if r.Body != nil {
		b, _ := io.ReadAll(r.Body)
		s.bodies = append(s.bodies, string(b))
	}
	return s.script[min(i, len(s.script)-1)](r)
}

func status(code int, h ...string) func(*http.Request) (*http.Response, error) {
	return func(r *http.Request) (*http.Response, error) {
		resp := &http.Response{StatusCode: code, Header: http.Header{}, Body: io.NopCloser(strings.NewReader("")), Request: r}
		for i := 0; i+1 < len(h); i += 2 {
			resp.Header.Set(h[i], h[i+1])
		}
		return resp, nil
	}
}

func fail(err error) func(*http.Request) (*http.Response, error) {
	return func(*http.Request) (*http.Response, error) { return nil, err }
}

func newTestRetry(t *testing.T, next http.RoundTripper, edit func(*Config)) (*RetryTransport, *[]string) {
	cfg := Config{}
	cfg.Retry.Backoff = BackoffConfig{Base: time.Millisecond, Max: 2 * time.Millisecond}
	if edit != nil {
		edit(&cfg)
	}
	cfg.SetDefaults()
	if err := cfg.Validate("u"); err != nil {
		t.Fatal(err)
	}
	p, err := NewRetryPolicy(cfg.Retry)
	if err != nil {
		t.Fatal(err)
	}
	var events []string
	hooks := Hooks{
		Retried:    func(reason string) { events = append(events, "retried:"+reason) },
		Suppressed: func(why, reason string) { events = append(events, "suppressed:"+why) },
	}
	return NewRetryTransport(next, p, NewBudget(cfg.Retry.Budget), hooks, nil), &events
}

func TestRetryDecisions(t *testing.T) {
	refused := &net.OpError{Op: "dial", Err: syscall.ECONNREFUSED}
	reset := &net.OpError{Op: "read", Err: syscall.ECONNRESET}
	grpcUnavailable := status(200, "Content-Type", "application/grpc", "Grpc-Status", "14")
	tests := []struct {
		name     string
		method   string
		grpc     bool
		body     string
		script   []func(*http.Request) (*http.Response, error)
		edit     func(*Config)
		attempts int
		status   int // final status; 0 means an error
		events   string
	}{
		{"success", "GET", false, "", []func(*http.Request) (*http.Response, error){status(200)}, nil, 1, 200, ""},
		{"503 then ok", "GET", false, "", []func(*http.Request) (*http.Response, error){status(503), status(200)}, nil, 2, 200, "retried:gateway-error"},
		{"connect failure twice then ok", "GET", false, "", []func(*http.Request) (*http.Response, error){fail(refused), fail(refused), status(200)}, nil, 3, 200, "retried:connect-failure retried:connect-failure"},
		{"max attempts", "GET", false, "", []func(*http.Request) (*http.Response, error){status(502)}, nil, 3, 502, "retried:gateway-error retried:gateway-error"},
		{"4xx not retried", "GET", false, "", []func(*http.Request) (*http.Response, error){status(404)}, nil, 1, 404, ""},
		{"500 not a gateway error", "GET", false, "", []func(*http.Request) (*http.Response, error){status(500)}, nil, 1, 500, ""},
		{"explicit 500", "GET", false, "", []func(*http.Request) (*http.Response, error){status(500), status(200)}, func(c *Config) { c.Retry.RetryOn = []string{"500"} }, 2, 200, "retried:500"},
		{"POST reset not retried", "POST", false, "x", []func(*http.Request) (*http.Response, error){fail(reset), status(200)}, nil, 1, 0, "suppressed:method"},
		{"POST 503 not retried", "POST", false, "x", []func(*http.Request) (*http.Response, error){status(503), status(200)}, nil, 1, 503, "suppressed:method"},
		{"POST connect failure retried", "POST", false, "payload", []func(*http.Request) (*http.Response, error){fail(refused), status(200)}, nil, 2, 200, "retried:connect-failure"},
		{"POST with Idempotency-Key", "POST", false, "x", []func(*http.Request) (*http.Response, error){status(503), status(200)}, nil, 2, 200, "retried:gateway-error"},
		{"gRPC unavailable retried", "POST", true, "msg", []func(*http.Request) (*http.Response, error){grpcUnavailable, status(200, "Content-Type", "application/grpc")}, nil, 2, 200, "retried:unavailable"},
		{"gRPC internal not retried", "POST", true, "msg", []func(*http.Request) (*http.Response, error){status(200, "Content-Type", "application/grpc", "Grpc-Status", "13")}, nil, 1, 200, ""},
		{"retries off", "GET", false, "", []func(*http.Request) (*http.Response, error){status(503)}, func(c *Config) { c.Retry.MaxAttempts = 1 }, 1, 503, ""},
		{"body too large", "PUT", false, strings.Repeat("b", 100), []func(*http.Request) (*http.Response, error){status(503), status(200)}, func(c *Config) { c.Retry.MaxBodyBytes = 10 }, 1, 503, "suppressed:body"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			next := &scripted{script: tt.script}
			rt, events := newTestRetry(t, next, tt.edit)
			var body io.Reader
			if tt.body != "" {
				body = strings.NewReader(tt.body)
			}
			req, _ := http.NewRequest(tt.method, "http://api/x", body)
			if tt.grpc {
				req.Header.Set("Content-Type", "application/grpc")
			}
			if strings.Contains(tt.name, "Idempotency") {
				req.Header.Set("Idempotency-Key", "k1")
			}
			resp, err := rt.RoundTrip(req)
			if got := int(next.n.Load()); got != tt.attempts {
				t.Errorf("attempts %d, want %d", got, tt.attempts)
			}
			if tt.status == 0 {
				if err == nil {
					t.Errorf("want an error, got status %d", resp.StatusCode)
				}
			} else if err != nil || resp.StatusCode != tt.status {
				t.Errorf("got %v, %v; want status %d", resp, err, tt.status)
			}
			if got := strings.Join(*events, " "); got != tt.events {
				t.Errorf("events %q, want %q", got, tt.events)
			}
			for i, b := range next.bodies {
				if b != tt.body && !(tt.events == "suppressed:body") {
					t.Errorf("attempt %d sent body %q, want %q", i+1, b, tt.body)
				}
			}
		})
	}
}

func TestRetryBudgetStopsStorm(t *testing.T) {
	next := &scripted{script: []func(*http.Request) (*http.Response, error){status(503)}}
	rt, events := newTestRetry(t, next, func(c *Config) {
		c.Retry.Budget = BudgetConfig{Ratio: 0.2, MinPerSecond: 0.1, Window: 10 * time.Second}
	})
	const requests = 200
	for range requests {
		req, _ := http.NewRequest("GET", "http://api/", nil)
		resp, err := rt.RoundTrip(req)
		if err != nil || resp.StatusCode != 503 {
			t.Fatalf("%v %v", resp, err)
		}
	}
	retries := int(next.n.Load()) - requests
	// 20% of 200 requests plus the reserve of 1 (0.1/s over 10 s).
	if retries > 41 || retries < 30 {
		t.Fatalf("%d retries for %d failing requests; the budget allows about 41", retries, requests)
	}
	if !strings.Contains(strings.Join(*events, " "), "suppressed:budget") {
		t.Fatal("no suppression recorded")
	}
}

func TestRetryRespectsDeadline(t *testing.T) {
	next := &scripted{script: []func(*http.Request) (*http.Response, error){status(503, "Retry-After", "1")}}
	rt, events := newTestRetry(t, next, func(c *Config) { c.Retry.Backoff = BackoffConfig{Base: 10 * time.Millisecond, Max: time.Second} })
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://api/", nil)
	start := time.Now()
	resp, err := rt.RoundTrip(req)
	if err != nil || resp.StatusCode != 503 || next.n.Load() != 1 {
		t.Fatalf("%v %v after %d attempts", resp, err, next.n.Load())
	}
	if time.Since(start) > 150*time.Millisecond {
		t.Fatalf("waited %v for a retry that could not fit the deadline", time.Since(start))
	}
	if got := strings.Join(*events, " "); got != "suppressed:deadline" {
		t.Fatalf("events %q", got)
	}
}

func TestReplayBody(t *testing.T) {
	src := io.NopCloser(bytes.NewReader([]byte("hello, world")))
	rb := &replayBody{src: src, limit: 64}
	a1 := rb.attempt()
	buf := make([]byte, 5)
	n, _ := a1.Read(buf)
	if string(buf[:n]) != "hello" || !rb.replayable() {
		t.Fatalf("first read %q", buf[:n])
	}
	a1.Close()
	a2 := rb.attempt()
	all, err := io.ReadAll(a2)
	if err != nil || string(all) != "hello, world" {
		t.Fatalf("replay read %q, %v", all, err)
	}
	if _, err := a1.Read(buf); !errors.Is(err, errAttemptOver) {
		t.Fatalf("a superseded attempt read: %v", err)
	}
	a3 := rb.attempt()
	if all, _ := io.ReadAll(a3); string(all) != "hello, world" {
		t.Fatalf("second replay %q", all)
	}
	big := &replayBody{src: io.NopCloser(strings.NewReader(strings.Repeat("x", 100))), limit: 10}
	io.ReadAll(big.attempt())
	if big.replayable() {
		t.Fatal("a body over the limit must not be replayable")
	}
}

func TestBreakerOpensAndRecovers(t *testing.T) {
	var transitions []string
	b := NewBreaker("t", BreakerConfig{ConsecutiveFailures: 3, FailureRatio: 0.5, MinRequests: 100,
		Interval: time.Minute, OpenTimeout: 50 * time.Millisecond, HalfOpenRequests: 1},
		func(from, to string) { transitions = append(transitions, from+">"+to) })
	for range 3 {
		done, err := b.Allow()
		if err != nil {
			t.Fatal(err)
		}
		done(errors.New("boom"))
	}
	if _, err := b.Allow(); !errors.Is(err, ErrBreakerOpen) {
		t.Fatalf("after 3 failures Allow = %v, want ErrBreakerOpen", err)
	}
	// A client that went away does not count.
	deadline := time.Now().Add(2 * time.Second)
	for b.State() != StateHalfOpen {
		if time.Now().After(deadline) {
			t.Fatal("breaker never half-opened")
		}
		time.Sleep(5 * time.Millisecond)
	}
	done, err := b.Allow()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Allow(); !errors.Is(err, ErrBreakerOpen) {
		t.Fatal("a second probe was let through while half-open")
	}
	done(nil)
	if b.State() != StateClosed {
		t.Fatalf("state %s after a good probe", b.State())
	}
	want := "closed>open open>half_open half_open>closed"
	if got := strings.Join(transitions, " "); got != want {
		t.Fatalf("transitions %q, want %q", got, want)
	}
	for range 10 {
		done, _ := b.Allow()
		done(ErrExcluded)
	}
	if b.State() != StateClosed {
		t.Fatal("excluded outcomes opened the breaker")
	}
}

func TestLimiter(t *testing.T) {
	one, zero := 1, 0
	noQueue := NewLimiter(LimitsConfig{MaxRequests: 1, MaxPending: &zero})
	r0, _ := noQueue.Acquire(context.Background())
	if _, err := noQueue.Acquire(context.Background()); !errors.Is(err, ErrOverflow) || err.(*OverflowError).Limit != LimitRequests {
		t.Fatalf("max_pending 0: %v, want a requests overflow at once", err)
	}
	r0()
	l := NewLimiter(LimitsConfig{MaxRequests: 2, MaxPending: &one})
	r1, _ := l.Acquire(context.Background())
	r2, _ := l.Acquire(context.Background())
	got := make(chan error, 1)
	go func() {
		r, err := l.Acquire(context.Background())
		if err == nil {
			r()
		}
		got <- err
	}()
	deadline := time.Now().Add(2 * time.Second)
	for l.pending.Load() != 1 {
		if time.Now().After(deadline) {
			t.Fatal("third request never queued")
		}
		time.Sleep(time.Millisecond)
	}
	if _, err := l.Acquire(context.Background()); !errors.Is(err, ErrOverflow) {
		t.Fatalf("fourth request: %v, want overflow", err)
	}
	r1()
	if err := <-got; err != nil {
		t.Fatalf("queued request: %v", err)
	}
	r2()
	if l.InUse() != 0 {
		t.Fatalf("%d in use after all released", l.InUse())
	}
	var none *Limiter
	if r, err := none.Acquire(context.Background()); err != nil {
		t.Fatal(err)
	} else {
		r()
	}
}

func TestPerTryTimeout(t *testing.T) {
	slow := func(r *http.Request) (*http.Response, error) {
		select {
		case <-r.Context().Done():
			return nil, r.Context().Err()
		case <-time.After(2 * time.Second):
			return status(200)(r)
		}
	}
	next := &scripted{script: []func(*http.Request) (*http.Response, error){slow, slow, status(200)}}
	rt, events := newTestRetry(t, next, func(c *Config) { c.Retry.PerTryTimeout = 50 * time.Millisecond })
	req, _ := http.NewRequest("GET", "http://api/", nil)
	start := time.Now()
	resp, err := rt.RoundTrip(req)
	if err != nil || resp.StatusCode != 200 || next.n.Load() != 3 {
		t.Fatalf("%v %v after %d attempts", resp, err, next.n.Load())
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("took %v: the per-try timeout did not cut the slow attempts", d)
	}
	if got := strings.Join(*events, " "); got != "retried:gateway-error retried:gateway-error" {
		t.Fatalf("events %q", got)
	}
	// The body of the answered attempt outlives the per-try timeout.
	time.Sleep(80 * time.Millisecond)
	if _, err := io.ReadAll(resp.Body); err != nil {
		t.Fatalf("reading the body after the per-try timeout: %v", err)
	}
	resp.Body.Close()
}
