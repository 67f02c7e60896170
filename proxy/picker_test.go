package proxy

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"testing"

	"meshlet.dev/meshlet/discovery"
)

func states(n int) []*endpointState {
	out := make([]*endpointState, n)
	for i := range out {
		ap := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(9000+i))
		out[i] = newEndpointState(discovery.Endpoint{ID: ap.String(), Addr: ap})
	}
	return out
}

func TestPickerEmpty(t *testing.T) {
	for _, lb := range []string{LBP2C, LBRoundRobin} {
		_, _, err := newPicker(lb, nil).Pick(nil)
		if !errors.Is(err, ErrNoEndpoint) {
			t.Errorf("%s: Pick on no endpoints = %v, want ErrNoEndpoint", lb, err)
		}
	}
}

func TestRoundRobinIsEven(t *testing.T) {
	eps := states(3)
	p := newPicker(LBRoundRobin, eps)
	count := map[string]int{}
	for range 300 {
		ep, done, err := p.Pick(nil)
		if err != nil {
			t.Fatal(err)
		}
		count[ep.ID]++
		done(nil)
	}
	for _, st := range eps {
		if count[st.ep.ID] != 100 {
			t.Fatalf("round robin split %v, want 100 each", count)
		}
	}
}

// TestP2CAvoidsLoaded checks that an endpoint with many requests in flight is never chosen over idle ones: with
// two samples, the loaded one wins only if both samples are that endpoint, which p2c rules out by sampling two
// distinct endpoints.
func TestP2CAvoidsLoaded(t *testing.T) {
	eps := states(2)
	p := newPicker(LBP2C, eps)
	eps[0].inFlight.Store(10)
	for range 200 {
		ep, done, _ := p.Pick(nil)
		if ep.ID != eps[1].ep.ID {
			t.Fatalf("picked the loaded endpoint %s", ep.ID)
		}
		done(nil)
	}
}

// TestP2CSpreadsLoad: with requests held in flight, p2c keeps the endpoints' in-flight counts close together.
func TestP2CSpreadsLoad(t *testing.T) {
	eps := states(5)
	p := newPicker(LBP2C, eps)
	var dones []func(error)
	for range 500 {
		_, done, _ := p.Pick(nil)
		dones = append(dones, done)
	}
	lo, hi := int64(1<<62), int64(0)
	for _, st := range eps {
		lo, hi = min(lo, st.inFlight.Load()), max(hi, st.inFlight.Load())
	}
	if hi-lo > 10 {
		t.Fatalf("in-flight spread %d..%d; p2c should keep it tight", lo, hi)
	}
	for _, d := range dones {
		d(nil)
	}
	for _, st := range eps {
		if st.inFlight.Load() != 0 {
			t.Fatalf("in flight %d after all done", st.inFlight.Load())
		}
	}
}

func TestPickerConcurrent(t *testing.T) {
	for _, lb := range []string{LBP2C, LBRoundRobin} {
		eps := states(4)
		p := newPicker(lb, eps)
		var wg sync.WaitGroup
		for g := range 8 {
			wg.Go(func() {
				for i := range 1000 {
					_, done, err := p.Pick(nil)
					if err != nil {
						t.Error(err)
						return
					}
					if (g+i)%7 == 0 {
						done(fmt.Errorf("boom"))
					} else {
						done(nil)
					}
				}
			})
		}
		wg.Wait()
		var total, failed uint64
		for _, st := range eps {
			if st.inFlight.Load() != 0 {
				t.Fatalf("%s: in flight %d", lb, st.inFlight.Load())
			}
			total += st.requests.Load()
			failed += st.failures.Load()
		}
		var recentOK, recentFailed int
		for _, st := range eps {
			ok, bad := st.recentCounts()
			recentOK, recentFailed = recentOK+ok, recentFailed+bad
		}
		if recentOK+recentFailed != 4*recentOutcomes || recentFailed == 0 {
			t.Fatalf("%s: recent outcomes %d ok, %d failed; want %d in all, some failed", lb, recentOK, recentFailed, 4*recentOutcomes)
		}
		if total != 8000 || failed != 8000/7+1 {
			t.Fatalf("%s: %d requests and %d failures recorded, want 8000 and %d", lb, total, failed, 8000/7+1)
		}
	}
}

func TestStaticWatchAndSet(t *testing.T) {
	s := discovery.NewStatic()
	ctx, cancel := testContext(t)
	ch, err := s.Watch(ctx, "api")
	if err != nil {
		t.Fatal(err)
	}
	if snap := <-ch; len(snap.Endpoints) != 0 {
		t.Fatalf("first snapshot of unknown service: %+v", snap)
	}
	eps, _ := discovery.ParseAddrs([]string{"127.0.0.1:1", "127.0.0.1:2"})
	s.Set("api", eps[:1])
	s.Set("api", eps) // the receiver has not taken the first: it must only ever see the latest
	snap := <-ch
	if len(snap.Endpoints) != 2 {
		t.Fatalf("got %d endpoints, want the latest snapshot (2)", len(snap.Endpoints))
	}
	cancel()
	for range ch {
	}
	if _, err := discovery.ParseAddrs([]string{"localhost:80"}); err == nil {
		t.Fatal("ParseAddrs accepted a host name")
	}
}
