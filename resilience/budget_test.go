package resilience

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestBudget(t *testing.T) {
	now := time.Unix(1000, 0)
	b := NewBudget(BudgetConfig{Ratio: 0.2, MinPerSecond: 1, Window: 10 * time.Second})
	b.now = func() time.Time { return now }
	// No traffic: the reserve alone (1/s over 10 s) allows 10 retries.
	for i := range 10 {
		if !b.TryRetry() {
			t.Fatalf("retry %d refused within the reserve", i)
		}
	}
	if b.TryRetry() {
		t.Fatal("retry beyond the reserve allowed")
	}
	if got := (BudgetConfig{Ratio: 0.2, MinPerSecond: 1, Window: 10 * time.Second}).Reserve(); got != 10 {
		t.Fatalf("Reserve() = %v, want 10 (what a fresh budget allows)", got)
	}
	// 100 requests add 20 retries.
	for range 100 {
		b.Request()
	}
	if got := b.Remaining(); got != 20 {
		t.Fatalf("remaining %v, want 20", got)
	}
	n := 0
	for b.TryRetry() {
		n++
	}
	if n != 20 {
		t.Fatalf("%d retries allowed, want 20", n)
	}
	// A window later everything has expired: the reserve is back.
	now = now.Add(11 * time.Second)
	if got := b.Remaining(); got != 10 {
		t.Fatalf("remaining after the window %v, want 10", got)
	}
}

// TestBudgetConcurrent: failures racing for the last retries of a budget take exactly what it allows, never more
// (checking and counting apart let every racer pass the check first; an e2e run overspent it by one).
func TestBudgetConcurrent(t *testing.T) {
	for round := range 200 {
		b := NewBudget(BudgetConfig{Ratio: 0.2, MinPerSecond: 1, Window: 10 * time.Second})
		for range 50 {
			b.Request()
		}
		// Allowed: 0.2 × 50 + 1 × 10 = 20.
		var granted atomic.Int64
		var wg sync.WaitGroup
		start := make(chan struct{})
		for range 16 {
			wg.Go(func() {
				<-start
				for range 5 {
					if b.TryRetry() {
						granted.Add(1)
					}
				}
			})
		}
		close(start)
		wg.Wait()
		if got := granted.Load(); got != 20 {
			t.Fatalf("round %d: 16 goroutines were granted %d retries, the budget allows 20", round, got)
		}
	}
}

func TestEjectorCap(t *testing.T) {
	e := NewEjector(OutlierConfig{MaxEjectionPercent: 50})
	if !e.TryEject(4) || !e.TryEject(4) || e.TryEject(4) {
		t.Fatal("with 4 endpoints at 50%, exactly 2 may be ejected")
	}
	e.Return()
	if !e.TryEject(4) {
		t.Fatal("a returned slot must be usable again")
	}
	if NewEjector(OutlierConfig{MaxEjectionPercent: 50}).TryEject(1) {
		t.Fatal("the only endpoint must never be ejected")
	}
}
