package proxy

import (
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"meshlet.dev/meshlet/discovery"
	"meshlet.dev/meshlet/resilience"
)

// TestBreakerGaugeExactUnderRaces: breakers trip, half-open and close while their settings change (every breaker
// dropped and made again) and the endpoints are replaced, all at once; afterwards meshlet_breaker_endpoints counts
// each endpoint of the set exactly once, and meshlet_ejected_endpoints the endpoints that are ejected. A retired
// set (its upstream removed or replaced) counts nothing, whatever its breakers still do.
func TestBreakerGaugeExactUnderRaces(t *testing.T) {
	addrs := []string{"198.18.0.1:80", "198.18.0.2:80", "198.18.0.3:80"}
	eps, err := discovery.ParseAddrs(addrs)
	if err != nil {
		t.Fatal(err)
	}
	var cfg resilience.Config
	s, m := testSet(t, LBRoundRobin, 0, func(c *resilience.Config) {
		c.Breaker.ConsecutiveFailures = 1
		c.Breaker.OpenTimeout = time.Millisecond
		c.Outlier.MaxEjectionPercent = 100
		cfg = *c
	}, addrs...)
	counted := func() (sum float64) {
		for _, state := range []string{resilience.StateClosed, resilience.StateHalfOpen, resilience.StateOpen} {
			sum += m.BreakerEndpoints.WithLabelValues("api", state).Value()
		}
		return sum
	}
	fail := errors.New("boom")
	for round := range 50 {
		var wg sync.WaitGroup
		stop := make(chan struct{})
		for w := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					default:
					}
					_, done, err := s.choose(nil)
					if err != nil {
						t.Error(err)
						return
					}
					if (i+w)%3 == 0 {
						done(nil)
					} else {
						done(fail)
					}
				}
			}()
		}
		for i := range 20 {
			other := cfg
			other.Breaker.ConsecutiveFailures = uint32(1 + i%2)
			s.setBreakers(other.Breaker, other.Outlier)
			s.update(discovery.Snapshot{Service: "api", Endpoints: eps[i%2:], Index: uint64(2 + i)})
		}
		s.update(discovery.Snapshot{Service: "api", Endpoints: eps, Index: 100})
		close(stop)
		wg.Wait()
		if got := counted(); got != 3 {
			t.Fatalf("round %d: meshlet_breaker_endpoints counts %v endpoints, want 3", round, got)
		}
		ejected := 0
		for _, st := range s.states {
			if st.ejected.Load() != nil {
				ejected++
			}
		}
		if got := testutil.ToFloat64(m.EjectedEndpoints.WithLabelValues("api")); got != float64(ejected) {
			t.Fatalf("round %d: meshlet_ejected_endpoints = %v, %d endpoints ejected", round, got, ejected)
		}
	}
	s.retire()
	if got := counted(); got != 0 {
		t.Fatalf("a retired set still counts %v endpoints", got)
	}
	if got := testutil.ToFloat64(m.EjectedEndpoints.WithLabelValues("api")); got != 0 {
		t.Fatalf("a retired set still counts %v ejected endpoints", got)
	}
	for range 20 { // what is still in flight on the retired set: no breakers, nothing counted
		if _, done, err := s.choose(nil); err == nil {
			done(fail)
		}
	}
	s.update(discovery.Snapshot{Service: "api", Endpoints: eps[1:], Index: 200})
	if got := counted(); got != 0 {
		t.Fatalf("a retired set counts %v endpoints after more attempts and an update", got)
	}
}
