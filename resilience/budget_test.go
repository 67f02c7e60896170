package resilience

import (
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
