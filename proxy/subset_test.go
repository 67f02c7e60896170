package proxy

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"meshlet.dev/meshlet/discovery"
	"meshlet.dev/meshlet/resilience"
)

// newSubsetSet returns an endpoint set with policy lb and subset_size n over eps.
func newSubsetSet(t *testing.T, lb string, n int, eps []discovery.Endpoint) *endpointSet {
	t.Helper()
	addrs := make([]string, len(eps))
	for i, ep := range eps {
		addrs[i] = ep.ID
	}
	s, _ := testSet(t, lb, n, nil, addrs...)
	return s
}

// subsetIDs returns the IDs /debug/upstreams shows in the subset, and the subset size it shows.
func subsetIDs(s *endpointSet) ([]string, int) {
	var ui UpstreamInfo
	s.info(&ui)
	var ids []string
	for _, ei := range ui.Endpoints {
		if ei.InSubset {
			ids = append(ids, ei.ID)
		}
	}
	return ids, ui.SubsetSize
}

// pickIDs makes n attempts (each finished at once) and returns the endpoints they went to.
func pickIDs(t *testing.T, s *endpointSet, n int, tried []*endpointState) map[string]int {
	t.Helper()
	got := map[string]int{}
	for range n {
		st, done, err := s.choose(tried)
		if err != nil {
			t.Fatal(err)
		}
		got[st.ep.ID]++
		done(nil)
	}
	return got
}

// TestSubsetPicksWithin: with subset_size 10 of 1,000 endpoints, every policy that takes a subset sends every
// attempt to the same 10 endpoints, those /debug/upstreams marks, and spreads them over all 10.
func TestSubsetPicksWithin(t *testing.T) {
	eps := manyEndpoints(t, 1000)
	for _, lb := range []string{LBP2C, LBRoundRobin, LBRandom} {
		s := newSubsetSet(t, lb, 10, eps)
		ids, size := subsetIDs(s)
		if size != 10 || len(ids) != 10 {
			t.Fatalf("%s: /debug/upstreams shows subset_size %d and %d endpoints in it, want 10 and 10", lb, size, len(ids))
		}
		got := pickIDs(t, s, 2000, nil)
		if len(got) != 10 {
			t.Fatalf("%s: 2,000 attempts went to %d endpoints, want the subset's 10", lb, len(got))
		}
		for id := range got {
			if !slices.Contains(ids, id) {
				t.Fatalf("%s: an attempt went to %s, not in the subset %v", lb, id, ids)
			}
		}
	}
}

// TestSubsetUnderChurn: the subset is rendezvous hashing's: an endpoint leaving the upstream that is not in the
// subset changes nothing, one in it is replaced by exactly one other, and endpoints joining enter it only by
// taking the place of a member (never reshuffling the rest).
func TestSubsetUnderChurn(t *testing.T) {
	eps := manyEndpoints(t, 1100)
	base := eps[:1000]
	s := newSubsetSet(t, LBP2C, 10, base)
	before, _ := subsetIDs(s)

	var outside discovery.Endpoint
	for _, ep := range base {
		if !slices.Contains(before, ep.ID) {
			outside = ep
			break
		}
	}
	without := func(id string) []discovery.Endpoint {
		return slices.DeleteFunc(slices.Clone(base), func(ep discovery.Endpoint) bool { return ep.ID == id })
	}
	s.update(discovery.Snapshot{Service: "api", Endpoints: without(outside.ID), Index: 2})
	if after, _ := subsetIDs(s); !slices.Equal(after, before) {
		t.Fatalf("removing %s (not in the subset) changed the subset from %v to %v", outside.ID, before, after)
	}

	gone := before[3]
	s.update(discovery.Snapshot{Service: "api", Endpoints: without(gone), Index: 3})
	after, _ := subsetIDs(s)
	kept := 0
	for _, id := range after {
		if slices.Contains(before, id) {
			kept++
		}
	}
	if len(after) != 10 || kept != 9 || slices.Contains(after, gone) {
		t.Fatalf("removing subset member %s: subset %v → %v, want the other 9 kept and one new", gone, before, after)
	}

	s.update(discovery.Snapshot{Service: "api", Endpoints: eps, Index: 4}) // 100 join (and gone is back)
	grown, _ := subsetIDs(s)
	for _, id := range grown {
		if !slices.Contains(after, id) && !slices.ContainsFunc(eps[1000:], func(ep discovery.Endpoint) bool { return ep.ID == id }) && id != gone {
			t.Fatalf("after 100 endpoints joined, %s entered the subset though it was there before and out of it", id)
		}
	}
}

// TestSubsetPerSidecar: each set (each sidecar process, each upstream) hashes with a seed of its own, so two
// sidecars calling the same 1,000 endpoints use different subsets.
func TestSubsetPerSidecar(t *testing.T) {
	eps := manyEndpoints(t, 1000)
	a, _ := subsetIDs(newSubsetSet(t, LBP2C, 10, eps))
	b, _ := subsetIDs(newSubsetSet(t, LBP2C, 10, eps))
	if slices.Equal(a, b) {
		t.Fatalf("two sets chose the same subset %v", a)
	}
}

// TestSubsetFallback: when no endpoint of the subset can take an attempt (all ejected, or all tried by the
// request), the attempt goes to another endpoint of the upstream rather than to an ejected or tried one.
func TestSubsetFallback(t *testing.T) {
	eps := manyEndpoints(t, 100)
	s := newSubsetSet(t, LBP2C, 5, eps)
	p := s.picker.Load()
	members := slices.Clone(p.endpoints)

	got := pickIDs(t, s, 200, members) // a retry that tried every member
	for id := range got {
		if slices.ContainsFunc(members, func(st *endpointState) bool { return st.ep.ID == id }) {
			t.Fatalf("an attempt that had tried every subset member went to member %s again", id)
		}
	}

	until := time.Now().Add(time.Hour).UnixNano()
	for _, st := range members {
		st.ejected.Store(&ejection{until: until})
	}
	got = pickIDs(t, s, 200, nil)
	for id := range got {
		if slices.ContainsFunc(members, func(st *endpointState) bool { return st.ep.ID == id }) {
			t.Fatalf("with every subset member ejected, an attempt went to ejected member %s", id)
		}
	}
}

// TestSubsetNotApplied: no subset when the upstream has no more endpoints than subset_size, nor with a hash
// policy (every caller must map a key to the same endpoint); a reload's subset_size applies in place.
func TestSubsetNotApplied(t *testing.T) {
	eps := manyEndpoints(t, 50)
	if ids, size := subsetIDs(newSubsetSet(t, LBP2C, 50, eps)); size != 0 || len(ids) != 0 {
		t.Fatalf("subset_size 50 of 50 endpoints: subset %d (%d marked), want none", size, len(ids))
	}
	if got := pickIDs(t, newSubsetSet(t, LBRoundRobin, 60, eps), 100, nil); len(got) != 50 {
		t.Fatalf("subset_size 60 of 50 endpoints: 100 round-robin attempts went to %d endpoints, want 50", len(got))
	}
	for _, lb := range []string{LBRingHash, LBMaglev} {
		if p := newSubsetSet(t, lb, 5, eps).picker.Load(); p.all != nil || len(p.endpoints) != 50 {
			t.Fatalf("%s with subset_size 5: picker over %d endpoints (subset %v), want all 50 and no subset", lb, len(p.endpoints), p.all != nil)
		}
	}
	s := newSubsetSet(t, LBP2C, 0, eps)
	s.setPicking(LBP2C, 5)
	if _, size := subsetIDs(s); size != 5 {
		t.Fatalf("after setPicking(p2c, 5): subset_size %d, want 5", size)
	}
	if got := pickIDs(t, s, 200, nil); len(got) != 5 {
		t.Fatalf("after setPicking(p2c, 5): 200 attempts went to %d endpoints, want 5", len(got))
	}
	s.setPicking(LBP2C, 0)
	if _, size := subsetIDs(s); size != 0 {
		t.Fatalf("after setPicking(p2c, 0): subset_size %d, want none", size)
	}
}

// TestImplicitSubsetSize: outbound.transparent.subset_size is the subset_size of the implicit upstreams (the
// services of the Consul mesh, which the config cannot give one), not of the config's own; a reload applies a new
// one in place, while the rest of outbound.transparent still waits for a restart.
func TestImplicitSubsetSize(t *testing.T) {
	eps := []string{"198.18.1.1:80", "198.18.1.2:80", "198.18.1.3:80", "198.18.1.4:80", "198.18.1.5:80"}
	cfg := Config{Service: ServiceConfig{Name: "web"}, Outbound: OutboundConfig{Listen: "127.0.0.1:0",
		Transparent: TransparentConfig{Enabled: true, SubsetSize: 2}},
		Upstreams: []UpstreamConfig{
			{Name: "api", Addresses: []string{"198.18.0.5"}, Endpoints: eps},
			{Name: "db", Addresses: []string{"240.0.0.2"}, Endpoints: eps, Implicit: true},
		}}
	p, _ := startProxy(t, cfg)
	e := (*p.addrs.Load()).lookup(netip.MustParseAddrPort("240.0.0.2:7000"))
	if e == nil {
		t.Fatal("no implicit upstream at 240.0.0.2")
	}
	e.cluster.ensureActive()
	if got := upstreamInfo(t, p, "db").SubsetSize; got != 2 {
		t.Fatalf("implicit upstream: subset_size %d, want outbound.transparent's 2", got)
	}
	if got := upstreamInfo(t, p, "api").SubsetSize; got != 0 {
		t.Fatalf("the config's upstream: subset_size %d, want none (its own, 0)", got)
	}
	cfg.Outbound.Transparent.SubsetSize = 3
	if warnings, err := p.Reload(cfg); err != nil || len(warnings) != 0 {
		t.Fatalf("reload of outbound.transparent.subset_size: %v, warnings %q; want it applied", err, warnings)
	}
	if got := upstreamInfo(t, p, "db").SubsetSize; got != 3 {
		t.Fatalf("after the reload: subset_size %d, want 3", got)
	}
	cfg.Outbound.Transparent.DetectTimeout = 2 * time.Second
	if warnings, err := p.Reload(cfg); err != nil || len(warnings) != 1 {
		t.Fatalf("reload of outbound.transparent.detect_timeout: %v, warnings %q; want one (restart only)", err, warnings)
	}
	if got := upstreamInfo(t, p, "db").SubsetSize; got != 3 {
		t.Fatalf("after a reload kept for the restart: subset_size %d, want 3 still", got)
	}
}

// TestSubsetEjectionCap: max_ejection_percent counts the upstream's endpoints, not the subset's: with a subset of
// 2 of 10 and the default 50%, both members are ejected when their breakers open (a cap of 1 would keep one in),
// and the attempts go to the other endpoints.
func TestSubsetEjectionCap(t *testing.T) {
	addrs := make([]string, 10)
	for i := range addrs {
		addrs[i] = fmt.Sprintf("198.18.2.%d:80", i+1)
	}
	s, m := testSet(t, LBP2C, 2, func(c *resilience.Config) {
		c.Breaker.ConsecutiveFailures = 1
		c.Breaker.OpenTimeout = time.Hour
	}, addrs...)
	members := slices.Clone(s.picker.Load().endpoints)
	for _, want := range members {
		for i := 0; ; i++ {
			st, done, err := s.choose(nil)
			if err != nil {
				t.Fatal(err)
			}
			if st == want {
				done(errors.New("boom"))
				break
			}
			done(nil)
			if i == 1000 {
				t.Fatalf("member %s never picked", want.ep.ID)
			}
		}
	}
	if got := testutil.ToFloat64(m.EjectedEndpoints.WithLabelValues("api")); got != 2 {
		t.Fatalf("meshlet_ejected_endpoints = %v after both subset members failed, want 2", got)
	}
	for range 50 {
		st, done, err := s.choose(nil)
		if err != nil {
			t.Fatal(err)
		}
		if slices.Contains(members, st) {
			t.Fatalf("an attempt went to ejected member %s", st.ep.ID)
		}
		done(nil)
	}
}
