package main

import (
	"testing"
	"time"
)

func TestPercentile(t *testing.T) {
	var r loadResult
	if got := r.percentile(0.5); got != 0 {
		t.Errorf("empty: got %v, want 0", got)
	}
	for i := 1; i <= 100; i++ {
		r.Latencies = append(r.Latencies, time.Duration(i)*time.Millisecond)
	}
	tests := []struct {
		q    float64
		want time.Duration
	}{
		{0, time.Millisecond}, {0.5, 50 * time.Millisecond}, {0.9, 90 * time.Millisecond},
		{0.99, 99 * time.Millisecond}, {1, 100 * time.Millisecond},
	}
	for _, tt := range tests {
		if got := r.percentile(tt.q); got != tt.want {
			t.Errorf("p%v: got %v, want %v", tt.q*100, got, tt.want)
		}
	}
}
