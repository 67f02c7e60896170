package proxy

import (
	"cmp"
	"hash/maphash"
	"log/slog"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"meshlet.dev/meshlet/discovery"
	"meshlet.dev/meshlet/metrics"
	"meshlet.dev/meshlet/resilience"
)

// endpointSet is a cluster's endpoints and what is known of each: their states (requests in flight, outcomes),
// the picker over them, their circuit breakers and ejection from load balancing. A snapshot from discovery
// replaces the set; an endpoint that stays keeps its state. choose never blocks and is safe for concurrent use.
type endpointSet struct {
	name      string // the cluster's: metric labels and breaker names
	m         *metrics.Metrics
	decisions *resilience.Decisions
	log       *slog.Logger

	picker   atomic.Pointer[picker]
	breakers atomic.Pointer[breakerSettings] // swapped by setBreakers

	seen atomic.Bool // the first snapshot has arrived (set under mu, once its gauge is)

	// mu guards lb, states, updated, index, stale, contact, waitFirst, subset, retired, and the endpoints'
	// breaker bookkeeping (counted, ejected): a breaker's state change takes it under the breaker's own lock, so
	// no code calls into a breaker while holding mu.
	mu       sync.Mutex
	lb       string
	ringSize uint64           // ring_hash's minimum ring size (a discovery chain's resolver); 0: the default
	subset   int              // subset_size: the endpoints the policy chooses from; 0: all
	retired  bool             // the upstream was removed or replaced: its breakers are no longer counted (retire)
	seed     maphash.Seed     // the subset's rendezvous hashing: this process's own
	states   []*endpointState // the endpoints, one per ID, in the snapshot's order (the picker's, too)
	// updated and contact are times in Unix nanoseconds (a word each, not a time.Time's three): when the last
	// snapshot came, and when its source last heard from Consul (0: never, and for static endpoints).
	updated, contact int64
	index            uint64
	stale            bool // the source lost contact; the endpoints are the last known
	// waitFirst is closed at the first snapshot; made by a waitSnapshot before it only (a set whose endpoints come
	// at once, as static ones do, never has one).
	waitFirst chan struct{}
}

// breakerSettings are the settings every endpoint's breaker is made with (and their gobreaker policy, which the
// breakers share), and the ejector that caps how many endpoints an open breaker takes out of load balancing.
type breakerSettings struct {
	breaker resilience.BreakerConfig
	policy  *resilience.BreakerPolicy // made with the first breaker (breakerOf, under the set's mu); nil until then
	outlier resilience.OutlierConfig
	ejector *resilience.Ejector
}

func newBreakerSettings(breaker resilience.BreakerConfig, outlier resilience.OutlierConfig) *breakerSettings {
	return &breakerSettings{breaker: breaker, outlier: outlier, ejector: resilience.NewEjector(outlier)}
}

func newEndpointSet(name, lb string, subset int, cfg resilience.Config, m *metrics.Metrics, decisions *resilience.Decisions, log *slog.Logger) *endpointSet {
	s := &endpointSet{name: name, m: m, decisions: decisions, log: log, lb: lb, subset: subset, seed: maphash.MakeSeed()}
	s.picker.Store(newPicker(lb, nil))
	s.breakers.Store(newBreakerSettings(cfg.Breaker, cfg.Outlier))
	return s
}

// update builds a new picker from snap, reusing the state of endpoints that stay. The endpoints are kept in a
// list only: the maps by ID that match them up live for the update alone.
func (s *endpointSet) update(snap discovery.Snapshot) {
	s.mu.Lock()
	var prev map[string]*endpointState
	if len(s.states) > 0 {
		prev = make(map[string]*endpointState, len(s.states))
		for _, st := range s.states {
			prev[st.ep.ID] = st
		}
	}
	next := make(map[string]*endpointState, len(snap.Endpoints))
	list := make([]*endpointState, 0, len(snap.Endpoints))
	for _, ep := range snap.Endpoints {
		if _, dup := next[ep.ID]; dup {
			continue
		}
		st, ok := prev[ep.ID]
		if !ok || !sameTarget(st.ep, ep) {
			st = newEndpointState(ep)
			s.addBreaker(st)
		}
		next[ep.ID] = st
		list = append(list, st)
	}
	for _, st := range s.states {
		if next[st.ep.ID] != st {
			s.dropBreaker(st)
		}
	}
	s.states = list
	s.updated = time.Now().UnixNano()
	s.index = snap.Index
	s.stale, s.contact = snap.Stale, 0
	if !snap.LastContact.IsZero() {
		s.contact = snap.LastContact.UnixNano()
	}
	s.picker.Store(s.newPicker(s.lb, list))
	s.mu.Unlock()
	s.m.Endpoints.WithLabelValues(s.name).Set(float64(len(list)))
	if !s.seen.Load() {
		s.mu.Lock()
		if !s.seen.Swap(true) && s.waitFirst != nil {
			close(s.waitFirst)
		}
		s.mu.Unlock()
	}
	s.log.Info("endpoints updated", "endpoints", len(list), "index", snap.Index, "stale", snap.Stale)
}

// setPicking rebuilds the picker over the same endpoints, once, when the load-balancing policy or subset_size
// changed.
func (s *endpointSet) setPicking(lb string, subset int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if lb == s.lb && subset == s.subset {
		return
	}
	s.lb, s.subset = lb, subset
	s.picker.Store(s.newPicker(lb, s.states)) // pickers only read their list: the new one shares it
}

// setBreakers applies changed breaker or outlier settings: every endpoint's breaker starts afresh (closed) and
// the ejector is new.
func (s *endpointSet) setBreakers(breaker resilience.BreakerConfig, outlier resilience.OutlierConfig) {
	old := s.breakers.Load()
	if old.breaker == breaker && old.outlier == outlier {
		return
	}
	s.breakers.Store(newBreakerSettings(breaker, outlier))
	s.mu.Lock()
	for _, st := range s.states {
		s.dropBreaker(st)
		s.addBreaker(st)
	}
	s.mu.Unlock()
}

// waitSnapshot waits up to d for the first snapshot.
func (s *endpointSet) waitSnapshot(d time.Duration) {
	if s.seen.Load() {
		return
	}
	s.mu.Lock()
	if s.seen.Load() {
		s.mu.Unlock()
		return
	}
	if s.waitFirst == nil {
		s.waitFirst = make(chan struct{})
	}
	wait := s.waitFirst
	s.mu.Unlock()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-wait:
	case <-t.C:
	}
}

// lbName is the set's load-balancing policy.
func (s *endpointSet) lbName() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lb
}

// newPicker is newPicker with the set's ring size and subset. Call with s.mu held.
func (s *endpointSet) newPicker(lb string, list []*endpointState) *picker {
	p := newPicker(lb, list)
	if p.hashed != nil && s.ringSize != 0 && lb == LBRingHash {
		p.hashed = newHashTable(lb, list, s.ringSize)
	}
	if p.hashed == nil && s.subset > 0 && s.subset < len(list) {
		p.endpoints, p.all = subsetOf(list, s.subset, s.seed), list
	}
	return p
}

// subsetOf returns the n endpoints of list (n < len(list)) whose IDs hash highest under seed (rendezvous
// hashing), in list's order: when an endpoint leaves, only it is replaced; when one joins, it takes the place of
// at most one.
func subsetOf(list []*endpointState, n int, seed maphash.Seed) []*endpointState {
	type scored struct {
		score uint64
		i     int
	}
	all := make([]scored, len(list))
	for i, st := range list {
		all[i] = scored{maphash.String(seed, st.ep.ID), i}
	}
	slices.SortFunc(all, func(a, b scored) int { return cmp.Compare(b.score, a.score) })
	keep := all[:n]
	slices.SortFunc(keep, func(a, b scored) int { return cmp.Compare(a.i, b.i) })
	out := make([]*endpointState, n)
	for j, k := range keep {
		out[j] = list[k.i]
	}
	return out
}

// hasSnapshot reports whether the first snapshot has arrived.
func (s *endpointSet) hasSnapshot() bool { return s.seen.Load() }

// choose picks an endpoint for one attempt, avoiding those in tried (the attempts of the same request or
// connection so far) unless nothing else is left, and passes its breaker. An endpoint whose breaker refuses (open,
// or half-open with its probes out) is passed over for another, twice at most; then the attempt goes to the last
// one picked without the breaker's accounting, so a cluster whose endpoints all failed still gets traffic (panic
// mode) instead of none. done must be called once with the attempt's outcome (resilience.ErrExcluded: neither
// success nor failure). The only error is ErrNoEndpoint.
func (s *endpointSet) choose(tried []*endpointState) (st *endpointState, done func(error), err error) {
	return s.chooseKey(tried, 0, false)
}

// chooseKey is choose for a request with a hash key (ring_hash and maglev sets; ignored by the others).
func (s *endpointSet) chooseKey(tried []*endpointState, key uint64, hasKey bool) (st *endpointState, done func(error), err error) {
	p := s.picker.Load()
	var skip []*endpointState
	var avoid func(*endpointState) bool // nil in the common case: nothing to avoid, no closure call per candidate
	if len(tried) > 0 {
		avoid = func(e *endpointState) bool { return slices.Contains(skip, e) || slices.Contains(tried, e) }
	}
	for i := 0; ; i++ {
		st, err := p.pickKey(avoid, key, hasKey)
		if err != nil {
			return nil, nil, err
		}
		b := s.breakerOf(st)
		if b == nil {
			return st, st.finish, nil
		}
		breakerDone, err := b.Allow()
		if err == nil {
			return st, func(outcome error) {
				breakerDone(outcome)
				st.finish(outcome)
			}, nil
		}
		if i == 2 {
			return st, st.finish, nil
		}
		st.inFlight.Add(-1)
		skip = append(skip, st)
		if avoid == nil {
			avoid = func(e *endpointState) bool { return slices.Contains(skip, e) || slices.Contains(tried, e) }
		}
	}
}

// addBreaker arms a new endpoint's breaker (none when breakers are disabled), made at its first attempt
// (breakerOf); until then the endpoint counts as closed. Call with s.mu held.
func (s *endpointSet) addBreaker(st *endpointState) {
	if s.breakers.Load().breaker.Disabled {
		return
	}
	if s.retired {
		return
	}
	st.counted.Store(countedClosed)
	s.m.BreakerEndpoints.WithLabelValues(s.name, resilience.StateClosed).Inc()
}

// The states meshlet_breaker_endpoints counts an endpoint under (endpointState.counted).
const (
	notCounted int32 = iota
	countedClosed
	countedHalfOpen
	countedOpen
)

var countedNames = [...]string{countedClosed: resilience.StateClosed, countedHalfOpen: resilience.StateHalfOpen,
	countedOpen: resilience.StateOpen}

// countedAs is the counted state of a breaker state name.
func countedAs(state string) int32 {
	switch state {
	case resilience.StateHalfOpen:
		return countedHalfOpen
	case resilience.StateOpen:
		return countedOpen
	}
	return countedClosed
}

// retire takes the set's endpoints out of meshlet_breaker_endpoints and meshlet_ejected_endpoints (their
// breakers dropped), for an upstream that is removed or replaced: its successor under the same name counts its
// own. The set keeps serving what is in flight, without breakers.
func (s *endpointSet) retire() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.retired = true
	for _, st := range s.states {
		s.dropBreaker(st)
	}
}

// breakerOf returns st's breaker, made now if st is armed and has none yet (its first attempt); nil when breakers
// are off or st left the set. A breaker made at the first attempt decides as one made with the endpoint: an
// endpoint never called has no counts.
func (s *endpointSet) breakerOf(st *endpointState) *resilience.Breaker {
	if b := st.breaker.Load(); b != nil || st.counted.Load() == notCounted {
		return b
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if b := st.breaker.Load(); b != nil || st.counted.Load() == notCounted {
		return b
	}
	bs := s.breakers.Load()
	if bs.policy == nil { // the upstream's first breaker: an upstream never called holds no policy either
		bs.policy = resilience.NewBreakerPolicy(bs.breaker)
	}
	var b *resilience.Breaker
	b = resilience.NewPolicyBreaker(bs.policy, "", func(from, to string) {
		// Called under the breaker's own lock: mu is taken after it, so nothing may call into a breaker while
		// holding mu.
		s.mu.Lock()
		defer s.mu.Unlock()
		if st.breaker.Load() == b { // not replaced or dropped meanwhile
			s.breakerChanged(st, from, to)
		}
	})
	st.breaker.Store(b)
	return b
}

// dropBreaker removes an endpoint's breaker (the endpoint is gone, or the settings changed), giving back its
// ejection slot. Call with s.mu held.
func (s *endpointSet) dropBreaker(st *endpointState) {
	st.breaker.Store(nil) // its transitions from now on are not followed
	c := st.counted.Swap(notCounted)
	if c == notCounted {
		return
	}
	s.m.BreakerEndpoints.WithLabelValues(s.name, countedNames[c]).Dec()
	if e := st.ejected.Swap(nil); e != nil {
		e.by.Return()
		s.m.EjectedEndpoints.WithLabelValues(s.name).Dec()
	}
}

// breakerChanged follows an endpoint's breaker: an opened breaker ejects the endpoint from load balancing if the
// ejection cap allows; half-open and closed put it back. Called under the breaker's lock and s.mu, for the
// endpoint's current breaker only: no breaker calls here.
func (s *endpointSet) breakerChanged(st *endpointState, from, to string) {
	c := st.counted.Load()
	if c == notCounted {
		return
	}
	s.m.BreakerEndpoints.WithLabelValues(s.name, countedNames[c]).Dec()
	s.m.BreakerEndpoints.WithLabelValues(s.name, to).Inc()
	st.counted.Store(countedAs(to))
	s.m.BreakerTransitions.WithLabelValues(s.name, from, to).Inc()
	switch to {
	case resilience.StateOpen:
		s.decisions.Add("opened", st.ep.ID, "breaker opened after failures")
		bs := s.breakers.Load()
		if bs.ejector.TryEject(len(s.states)) { // the upstream's endpoints, a subset's members or not
			st.ejected.Store(&ejection{by: bs.ejector, until: time.Now().Add(bs.breaker.OpenTimeout).UnixNano()})
			s.m.Ejections.WithLabelValues(s.name).Inc()
			s.m.EjectedEndpoints.WithLabelValues(s.name).Inc()
			s.decisions.Add("ejected", st.ep.ID, "out of load balancing until its breaker half-opens")
		} else {
			s.decisions.Add("not_ejected", st.ep.ID, "ejection cap reached: stays in load balancing (panic mode)")
		}
	case resilience.StateHalfOpen, resilience.StateClosed:
		if e := st.ejected.Swap(nil); e != nil {
			e.by.Return()
			s.m.EjectedEndpoints.WithLabelValues(s.name).Dec()
		}
		kind := "closed"
		if to == resilience.StateHalfOpen {
			kind = "half_opened"
		}
		s.decisions.Add(kind, st.ep.ID, "breaker "+to)
	}
}

// info fills the endpoint part of ui: the snapshot's index and age, staleness, and each endpoint's state.
func (s *endpointSet) info(ui *UpstreamInfo) {
	s.mu.Lock()
	ui.Index, ui.Stale = s.index, s.stale
	if s.updated != 0 {
		ui.UpdatedAt = time.Unix(0, s.updated)
	}
	if s.contact != 0 {
		c := time.Unix(0, s.contact)
		ui.LastContact = &c
	}
	ui.Endpoints = make([]EndpointInfo, 0, len(s.states))
	breakers := make([]*resilience.Breaker, 0, len(s.states)) // asked for their state once mu is released
	var in map[*endpointState]bool
	if p := s.picker.Load(); p.all != nil {
		ui.SubsetSize = len(p.endpoints)
		in = make(map[*endpointState]bool, len(p.endpoints))
		for _, st := range p.endpoints {
			in[st] = true
		}
	}
	for _, st := range s.states {
		ei := EndpointInfo{ID: st.ep.ID, Address: st.hostport, Identity: st.ep.Identity, Meta: st.ep.Meta,
			InFlight: st.inFlight.Load(), Requests: st.requests.Load(), Failures: st.failures.Load()}
		ei.Recent.Success, ei.Recent.Failure = st.recentCounts()
		b := st.breaker.Load()
		if b == nil && st.counted.Load() != notCounted {
			ei.Breaker = resilience.StateClosed // not called yet: no breaker made
		}
		breakers = append(breakers, b)
		ei.Ejected = st.ejected.Load() != nil
		ei.InSubset = in[st]
		if le := st.lastErr.Load(); le != nil {
			ei.LastError, ei.LastErrorAt = le.msg, &le.at
		}
		ui.InFlight += ei.InFlight
		ui.Endpoints = append(ui.Endpoints, ei)
	}
	s.mu.Unlock()
	for i, b := range breakers { // a state change due now happens here, and takes mu
		if b != nil {
			ui.Endpoints[i].Breaker = b.State()
		}
	}
	sort.Slice(ui.Endpoints, func(i, j int) bool { return ui.Endpoints[i].ID < ui.Endpoints[j].ID })
}
