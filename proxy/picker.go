package proxy

import (
	"errors"
	"math/bits"
	"math/rand/v2"
	"net/http"
	"sync/atomic"
	"time"

	"meshlet.dev/meshlet/discovery"
	"meshlet.dev/meshlet/resilience"
)

// ErrNoEndpoint is returned by a Picker that has no endpoint to offer.
var ErrNoEndpoint = errors.New("no endpoint available")

// Picker chooses an endpoint for one request. Pick never blocks and is safe for concurrent use. The caller must call
// done exactly once when the request (including its response body) has finished, with the error it ended with or
// nil. A picker is an immutable snapshot: endpoint changes build a new one.
type Picker interface {
	Pick(r *http.Request) (ep discovery.Endpoint, done func(error), err error)
}

// endpointState is the per-endpoint state that outlives pickers: rebuilt pickers reuse it by endpoint ID, so
// in-flight counts and outcomes survive an endpoint update.
type endpointState struct {
	ep       discovery.Endpoint
	hostport string                     // ep.Addr as "ip:port", computed once
	target   atomic.Pointer[dialTarget] // how to reach it under the upstream's current settings (targetOf)

	inFlight atomic.Int64
	requests atomic.Uint64
	failures atomic.Uint64
	lastErr  atomic.Pointer[endpointError]
	// recent is a ring of the latest recentOutcomes outcomes, slot i a bit: bit i set for a success, bit
	// 32+i for a failure, neither for a slot not yet used.
	recent atomic.Uint64

	// breaker is the endpoint's circuit breaker, made at its first attempt (endpointSet.breakerOf): an endpoint
	// never called holds none, and is counted closed.
	breaker atomic.Pointer[resilience.Breaker]
	// counted is the state meshlet_breaker_endpoints counts the endpoint under (countedClosed...), notCounted
	// when it is to have no breaker (breakers off, or the endpoint left its set). Changed under the set's mu only
	// (the breaker's transitions too), so that the gauge stays exact when a transition races the breaker's removal.
	counted atomic.Int32
	ejected atomic.Pointer[ejection] // nil when in load balancing
}

// ejection is an endpoint's time out of load balancing.
type ejection struct {
	by *resilience.Ejector // whose slot it holds
	// until (Unix nanoseconds) is when the breaker's open timeout ends: from then on the endpoint is eligible
	// again, so that a request reaches its breaker, which half-opens (breakers change state only when asked)
	// and lets a probe through.
	until int64
}

// recentOutcomes is how many of an endpoint's latest outcomes /debug/upstreams summarizes (the bits of half of
// endpointState.recent).
const recentOutcomes = 32

type endpointError struct {
	msg string
	at  time.Time
}

func newEndpointState(ep discovery.Endpoint) *endpointState {
	st := &endpointState{ep: ep}
	var buf [len("[ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255%zone]:65535") + 16]byte
	if hp := ep.Addr.AppendTo(buf[:0]); string(hp) == ep.ID {
		st.hostport = ep.ID // static endpoints are named by their address: one string for both
	} else {
		st.hostport = string(hp)
	}
	return st
}

// sameTarget reports whether a and b (the same endpoint ID) are reached the same way: same address, identity and
// kind (sidecar or not, meshlet or foreign). Otherwise the endpoint gets a new state: its per-endpoint state and dial target are
// those of another endpoint.
func sameTarget(a, b discovery.Endpoint) bool {
	return a.Addr == b.Addr && a.Identity == b.Identity && isSidecar(&a) == isSidecar(&b) && isForeign(&a) == isForeign(&b)
}

// isSidecar reports whether discovery says that ep is a sidecar (Meta "peer" is "sidecar").
func isSidecar(ep *discovery.Endpoint) bool { return ep.Meta["peer"] == PeerSidecar }

// isForeign reports whether discovery says that ep is a sidecar that is not a meshlet (Meta "proxy" is
// "foreign").
func isForeign(ep *discovery.Endpoint) bool {
	return ep.Meta[discovery.MetaProxy] == discovery.ProxyForeign
}

// finish records the outcome of one request that was counted in flight. resilience.ErrExcluded (the client went
// away) counts as neither success nor failure.
func (s *endpointState) finish(err error) {
	s.inFlight.Add(-1)
	if errors.Is(err, resilience.ErrExcluded) {
		return
	}
	n := s.requests.Add(1)
	slot := uint64(1) << ((n - 1) % recentOutcomes)
	set := slot
	if err != nil {
		s.failures.Add(1)
		s.lastErr.Store(&endpointError{msg: err.Error(), at: time.Now()})
		set = slot << recentOutcomes
	}
	for {
		old := s.recent.Load()
		if s.recent.CompareAndSwap(old, old&^(slot|slot<<recentOutcomes)|set) {
			return
		}
	}
}

// recentCounts returns how many of the latest outcomes (at most recentOutcomes) succeeded and failed.
func (s *endpointState) recentCounts() (ok, failed int) {
	r := s.recent.Load()
	return bits.OnesCount32(uint32(r)), bits.OnesCount32(uint32(r >> recentOutcomes))
}

// picker is the shared shape of meshlet's pickers over a fixed set of endpoints.
type picker struct {
	endpoints []*endpointState // what the policy chooses from: every endpoint, or the subset (subset_size)
	all       []*endpointState // every endpoint when endpoints is a subset; nil otherwise
	choose    func(eps []*endpointState) *endpointState
	hashed    hashTable // ring_hash and maglev: a request's key picks; nil for the others
}

// maxHashAlternatives bounds how far pickKey walks a hash table for an eligible endpoint before the fallback.
const maxHashAlternatives = 8

// pickKey is pick for a request with a hash key (ring_hash, maglev): the key's endpoint, else its next
// alternatives, else any eligible one. Without a table or a key it is pick.
func (p *picker) pickKey(avoid func(*endpointState) bool, key uint64, hasKey bool) (*endpointState, error) {
	if p.hashed == nil || !hasKey || len(p.endpoints) == 0 {
		return p.pick(avoid)
	}
	first := p.endpoints[p.hashed.lookup(key, 0)]
	s := first
	for alt := 1; !s.eligible(avoid) && alt <= min(maxHashAlternatives, len(p.endpoints)); alt++ {
		s = p.endpoints[p.hashed.lookup(key, alt)]
	}
	if !s.eligible(avoid) {
		s = p.fallback(first, avoid)
	}
	s.inFlight.Add(1)
	return s, nil
}

// pick returns an endpoint and counts a request in flight on it. It avoids ejected endpoints and those that
// avoid names (the endpoints a request already tried), unless nothing else is left: then an ejected endpoint
// is better than none (panic mode), and a tried one better than failing.
func (p *picker) pick(avoid func(*endpointState) bool) (*endpointState, error) {
	if len(p.endpoints) == 0 {
		return nil, ErrNoEndpoint
	}
	s := p.choose(p.endpoints)
	if !s.eligible(avoid) {
		s = p.fallback(s, avoid)
	}
	s.inFlight.Add(1)
	return s, nil
}

func (s *endpointState) eligible(avoid func(*endpointState) bool) bool {
	if e := s.ejected.Load(); e != nil && time.Now().UnixNano() < e.until {
		return false
	}
	return avoid == nil || !avoid(s)
}

// fallback finds an eligible endpoint when the policy's choice was not; first is the policy's choice. With a
// subset, the rest of the upstream's endpoints come after the subset's.
func (p *picker) fallback(first *endpointState, avoid func(*endpointState) bool) *endpointState {
	lists := [2][]*endpointState{p.endpoints, p.all}
	for _, eps := range lists {
		if s := scan(eps, func(s *endpointState) bool { return s.eligible(avoid) }); s != nil {
			return s
		}
	}
	for _, eps := range lists { // every endpoint is ejected or tried: prefer one not yet tried
		if s := scan(eps, func(s *endpointState) bool { return avoid == nil || !avoid(s) }); s != nil {
			return s
		}
	}
	return first
}

// scan returns the first endpoint of eps that ok accepts, starting at a random one; nil when none.
func scan(eps []*endpointState, ok func(*endpointState) bool) *endpointState {
	n := len(eps)
	if n == 0 {
		return nil
	}
	start := rand.IntN(n)
	for i := range n {
		if s := eps[(start+i)%n]; ok(s) {
			return s
		}
	}
	return nil
}

// Pick implements Picker.
func (p *picker) Pick(*http.Request) (discovery.Endpoint, func(error), error) {
	s, err := p.pick(nil)
	if err != nil {
		return discovery.Endpoint{}, nil, err
	}
	return s.ep, s.finish, nil
}

// newPicker returns a picker over eps using policy lb (LBP2C or LBRoundRobin).
func newPicker(lb string, eps []*endpointState) *picker {
	if lb == LBRoundRobin {
		var next atomic.Uint64
		return &picker{endpoints: eps, choose: func(eps []*endpointState) *endpointState {
			return eps[(next.Add(1)-1)%uint64(len(eps))]
		}}
	}
	if lb == LBRingHash || lb == LBMaglev {
		p := &picker{endpoints: eps, choose: func(eps []*endpointState) *endpointState { return eps[rand.IntN(len(eps))] }}
		if len(eps) > 0 {
			p.hashed = newHashTable(lb, eps, 0)
		}
		return p
	}
	if lb == LBRandom {
		return &picker{endpoints: eps, choose: func(eps []*endpointState) *endpointState { return eps[rand.IntN(len(eps))] }}
	}
	return &picker{endpoints: eps, choose: chooseP2C}
}

// chooseP2C samples two distinct endpoints at random and returns the one with fewer requests in flight.
func chooseP2C(eps []*endpointState) *endpointState {
	n := len(eps)
	if n == 1 {
		return eps[0]
	}
	i := rand.IntN(n)
	j := rand.IntN(n - 1)
	if j >= i {
		j++
	}
	a, b := eps[i], eps[j]
	if b.inFlight.Load() < a.inFlight.Load() {
		return b
	}
	return a
}
