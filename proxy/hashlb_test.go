package proxy

import (
	"fmt"
	"net/http/httptest"
	"testing"

	"meshlet.dev/meshlet/discovery"
)

// TestConsistentHashing: for ring_hash and maglev, a key keeps its endpoint while the set is stable (and in
// another process: the tables depend only on the endpoint IDs), keys spread evenly, and when an endpoint joins
// or leaves about 1/N of the keys move, and only to or from it.
func TestConsistentHashing(t *testing.T) {
	ids := func(n int) []string {
		var out []string
		for i := range n {
			out = append(out, fmt.Sprintf("node-%d/api-%d", i, i))
		}
		return out
	}
	const keys = 20000
	for _, lb := range []string{LBRingHash, LBMaglev} {
		build := func(ids []string) hashTable {
			if lb == LBMaglev {
				return newMaglev(ids)
			}
			return newRing(ids, 0)
		}
		four, again, five := build(ids(4)), build(ids(4)), build(ids(5))
		count := make([]int, 4)
		moved, wrongMove := 0, 0
		for k := range keys {
			key := hash64(fmt.Sprint("user-", k))
			a := four.lookup(key, 0)
			if again.lookup(key, 0) != a {
				t.Fatalf("%s: the same set maps key %d to two endpoints", lb, k)
			}
			count[a]++
			if b := five.lookup(key, 0); b != a {
				moved++
				if b != 4 {
					wrongMove++ // a key moved between two endpoints that both stayed
				}
			}
		}
		for i, n := range count {
			if share := float64(n) / keys; share < 0.25*0.8 || share > 0.25*1.2 {
				t.Errorf("%s: endpoint %d has %.1f%% of the keys, want 25%% ± 20%%", lb, i, 100*share)
			}
		}
		if share := float64(moved) / keys; share < 0.20*0.7 || share > 0.20*1.3 {
			t.Errorf("%s: %.1f%% of the keys moved when a fifth endpoint joined, want about 20%%", lb, 100*share)
		}
		if lb == LBRingHash && wrongMove != 0 {
			t.Errorf("%s: %d keys moved between endpoints that stayed", lb, wrongMove)
		}
		if lb == LBMaglev && float64(wrongMove)/keys > 0.02 {
			t.Errorf("%s: %d keys moved between endpoints that stayed (Maglev allows a few)", lb, wrongMove)
		}
		// Alternatives are other endpoints.
		key := hash64("x")
		if four.lookup(key, 0) == four.lookup(key, 1) && lb == LBRingHash {
			t.Errorf("%s: the first alternative is the key's own endpoint", lb)
		}
	}
}

// TestRequestHash: the hash policies, in order, Terminal ending the computation; no value: no key.
func TestRequestHash(t *testing.T) {
	r := httptest.NewRequest("GET", "/?u=7", nil)
	r.RemoteAddr = "198.18.0.9:5555"
	r.Header.Set("X-User", "alice")
	r.Header.Set("Cookie", "session=abc")
	key := func(ps ...discovery.HashPolicy) (uint64, bool) { return requestHash(r, ps) }
	header := discovery.HashPolicy{Field: "header", FieldValue: "x-user"}
	cookie := discovery.HashPolicy{Field: "cookie", FieldValue: "session"}
	query := discovery.HashPolicy{Field: "query_parameter", FieldValue: "u"}
	source := discovery.HashPolicy{SourceIP: true}
	missing := discovery.HashPolicy{Field: "header", FieldValue: "x-none"}
	for _, p := range []discovery.HashPolicy{header, cookie, query, source} {
		if _, ok := key(p); !ok {
			t.Errorf("%+v yields no key", p)
		}
	}
	if _, ok := key(missing); ok {
		t.Error("a missing header yields a key")
	}
	h1, _ := key(header)
	h2, _ := key(missing, header)
	if h1 != h2 {
		t.Error("a policy without a value changed the key")
	}
	terminal := header
	terminal.Terminal = true
	ht, _ := key(terminal, cookie)
	hboth, _ := key(header, cookie)
	if ht != h1 || hboth == h1 {
		t.Errorf("terminal: %x, header only %x, header and cookie %x", ht, h1, hboth)
	}
	r2 := httptest.NewRequest("GET", "/", nil)
	r2.Header.Set("X-User", "bob")
	if k2, _ := requestHash(r2, []discovery.HashPolicy{header}); k2 == h1 {
		t.Error("two users share a key")
	}
}
