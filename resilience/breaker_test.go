package resilience

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/sony/gobreaker/v2"
)

// gobreakerOf is the gobreaker two-step breaker that meshlet built per endpoint for cfg before EndpointBreaker:
// the reference that EndpointBreaker must match.
func gobreakerOf(cfg BreakerConfig, onChange func(from, to string)) *gobreaker.TwoStepCircuitBreaker[struct{}] {
	return gobreaker.NewTwoStepCircuitBreaker[struct{}](gobreaker.Settings{
		Name:        "ref",
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
		OnStateChange: func(_ string, from, to gobreaker.State) {
			name := func(s gobreaker.State) string {
				return map[gobreaker.State]string{gobreaker.StateClosed: StateClosed,
					gobreaker.StateHalfOpen: StateHalfOpen, gobreaker.StateOpen: StateOpen}[s]
			}
			onChange(name(from), name(to))
		},
	})
}

// TestEndpointBreakerMatchesGobreaker runs random sequences of attempts (several in flight at once), outcomes
// (success, failure, excluded), state reads and passing time (in a synctest bubble: both clocks are the same
// fake one) through an EndpointBreaker and through gobreaker with the same settings: every decision, state and
// state change must be the same.
func TestEndpointBreakerMatchesGobreaker(t *testing.T) {
	seen := map[string]int{}
	for seed := range uint64(300) {
		synctest.Test(t, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 7))
			cfg := BreakerConfig{ConsecutiveFailures: uint32(1 + rng.IntN(6)), FailureRatio: []float64{0.25, 0.5, 1}[rng.IntN(3)],
				MinRequests: uint32(rng.IntN(10)), Interval: time.Duration(rng.IntN(4)) * 50 * time.Millisecond,
				OpenTimeout: time.Duration(rng.IntN(3)) * 40 * time.Millisecond, HalfOpenRequests: uint32(rng.IntN(4))}
			var got, want []string
			ref := gobreakerOf(cfg, func(from, to string) { want = append(want, from+">"+to) })
			var eb EndpointBreaker
			eb.Start(NewBreakerPolicy(cfg))
			hook := func(from, to string) { got = append(got, from+">"+to) }
			type attempt struct {
				t    BreakerTicket
				done func(error)
			}
			var out []attempt
			outcomes := []error{nil, errors.New("boom"), ErrExcluded, fmt.Errorf("wrapped: %w", ErrExcluded)}
			for step := range 400 {
				switch op := rng.IntN(10); {
				case op < 4:
					tk, err := eb.Allow(hook)
					done, rerr := ref.Allow()
					if (err == nil) != (rerr == nil) {
						t.Fatalf("seed %d step %d (%+v): Allow = %v, gobreaker's %v", seed, step, cfg, err, rerr)
					}
					if err == nil {
						out = append(out, attempt{tk, done})
					}
				case op < 8 && len(out) > 0:
					i := rng.IntN(len(out))
					a := out[i]
					out = append(out[:i], out[i+1:]...)
					o := outcomes[rng.IntN(len(outcomes))]
					eb.Done(a.t, o, hook)
					a.done(o)
				case op == 8:
					time.Sleep(time.Duration(rng.IntN(30)) * time.Millisecond)
				default:
					s := eb.State(hook)
					r := map[gobreaker.State]string{gobreaker.StateClosed: StateClosed,
						gobreaker.StateHalfOpen: StateHalfOpen, gobreaker.StateOpen: StateOpen}[ref.State()]
					if s != r {
						t.Fatalf("seed %d step %d (%+v): State = %s, gobreaker's %s", seed, step, cfg, s, r)
					}
				}
				if g, w := strings.Join(got, " "), strings.Join(want, " "); g != w {
					t.Fatalf("seed %d step %d (%+v): changes %q, gobreaker's %q", seed, step, cfg, g, w)
				}
			}
			for _, c := range got {
				seen[c]++
			}
		})
	}
	for _, c := range []string{"closed>open", "open>half_open", "half_open>closed", "half_open>open"} {
		if seen[c] == 0 {
			t.Errorf("no sequence changed %s: the test misses part of the state machine", c)
		}
	}
	t.Logf("state changes: %v", seen)
}

// TestEndpointBreakerOff: the zero value and a stopped breaker let everything through and count nothing; a
// restarted one is closed with zero counts, and the outcomes of attempts from before are ignored.
func TestEndpointBreakerOff(t *testing.T) {
	var eb EndpointBreaker
	if s := eb.State(nil); s != "" {
		t.Fatalf("zero value: State %q, want off", s)
	}
	p := NewBreakerPolicy(BreakerConfig{ConsecutiveFailures: 2, FailureRatio: 1, MinRequests: 100, Interval: time.Minute, OpenTimeout: time.Minute})
	for range 3 {
		tk, err := eb.Allow(nil)
		if err != nil || tk != 0 {
			t.Fatalf("off: Allow = %v, %v; want the zero ticket", tk, err)
		}
		eb.Done(tk, errors.New("boom"), nil)
	}
	if was, on := eb.Start(p); on || was != "" {
		t.Fatalf("Start on an off breaker: was %q %v", was, on)
	}
	old, _ := eb.Allow(nil)
	fail := func() {
		tk, err := eb.Allow(nil)
		if err != nil {
			t.Fatal(err)
		}
		eb.Done(tk, errors.New("boom"), nil)
	}
	fail()
	fail()
	if s := eb.State(nil); s != StateOpen {
		t.Fatalf("after 2 failures: %s", s)
	}
	if was, on := eb.Stop(); !on || was != StateOpen {
		t.Fatalf("Stop: was %q %v, want open", was, on)
	}
	if tk, err := eb.Allow(nil); err != nil || tk != 0 {
		t.Fatalf("stopped: Allow = %v, %v", tk, err)
	}
	eb.Start(p)
	eb.Done(old, errors.New("boom"), nil) // an attempt of an earlier generation
	fail()
	if s := eb.State(nil); s != StateClosed {
		t.Fatalf("restarted, one failure (and one of an earlier generation): %s", s)
	}
}

// TestEndpointBreakerAllocs: a breaker costs nothing per attempt.
func TestEndpointBreakerAllocs(t *testing.T) {
	var eb EndpointBreaker
	eb.Start(NewBreakerPolicy(BreakerConfig{ConsecutiveFailures: 5, FailureRatio: 0.5, MinRequests: 20, Interval: time.Minute, OpenTimeout: time.Minute}))
	n := 0
	hook := func(from, to string) { n++ }
	if a := testing.AllocsPerRun(100, func() {
		tk, _ := eb.Allow(hook)
		eb.Done(tk, nil, hook)
	}); a != 0 {
		t.Fatalf("%v allocations per attempt", a)
	}
}
