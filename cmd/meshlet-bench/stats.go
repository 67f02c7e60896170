package main

import (
	"math"
	"slices"
	"sort"
	"sync"
	"time"
)

// latencyStats summarises the successful requests of one open-loop phase. Durations are in microseconds
// in JSON so that the numbers stay readable.
type latencyStats struct {
	Count    int     `json:"count"` // successful requests measured
	P50us    float64 `json:"p50_us"`
	P90us    float64 `json:"p90_us"`
	P99us    float64 `json:"p99_us"`
	P999us   float64 `json:"p999_us"`
	MaxUs    float64 `json:"max_us"`
	MeanUs   float64 `json:"mean_us"`
	Sent     int     `json:"sent"`             // requests sent (scheduled requests the generator got out)
	Errors   int64   `json:"errors"`           // failed requests, including scheduled requests never sent
	Rate     float64 `json:"achieved_rate"`    // requests sent per second of the schedule
	LagP99us float64 `json:"sched_lag_p99_us"` // generator's own lateness in sending (timer resolution, CPU)
	// ServiceP50us and ServiceP99us run from the actual send instead of the due time: they leave out the
	// generator's lateness and any backlog, so they understate latency when the path falls behind.
	ServiceP50us float64 `json:"service_p50_us"`
	ServiceP99us float64 `json:"service_p99_us"`
	MaxInFlight  int64   `json:"max_in_flight"` // most requests outstanding at once; high means a backlog
}

// summarize computes percentiles of lat (successful requests only; it is sorted in place).
func summarize(lat []time.Duration) latencyStats {
	var s latencyStats
	s.Count = len(lat)
	if len(lat) == 0 {
		return s
	}
	slices.Sort(lat)
	var sum time.Duration
	for _, d := range lat {
		sum += d
	}
	s.P50us = us(percentile(lat, 0.50))
	s.P90us = us(percentile(lat, 0.90))
	s.P99us = us(percentile(lat, 0.99))
	s.P999us = us(percentile(lat, 0.999))
	s.MaxUs = us(lat[len(lat)-1])
	s.MeanUs = us(sum / time.Duration(len(lat)))
	return s
}

// percentile returns the nearest-rank q-quantile of sorted, which must not be empty.
func percentile(sorted []time.Duration, q float64) time.Duration {
	i := int(math.Ceil(q*float64(len(sorted)))) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}

func us(d time.Duration) float64 { return math.Round(float64(d)/float64(time.Microsecond)*10) / 10 }

// errorTally counts errors by cause. It keeps at most maxErrorKeys distinct causes; the rest count as "other".
// The zero value is ready to use; it is safe for concurrent use.
type errorTally struct {
	mu     sync.Mutex
	total  int64
	counts map[string]int64
}

const maxErrorKeys = 16

func (t *errorTally) add(err error) { t.addKey(errorKey(err), 1) }

func (t *errorTally) addKey(key string, n int64) {
	if n <= 0 {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.counts == nil {
		t.counts = map[string]int64{}
	}
	if _, ok := t.counts[key]; !ok && len(t.counts) >= maxErrorKeys {
		key = "other"
	}
	t.counts[key] += n
	t.total += n
}

// errorCount is one cause of errors and how often it happened.
type errorCount struct {
	Phase string `json:"phase"`
	Error string `json:"error"`
	Count int64  `json:"count"`
}

// snapshot returns the total and the causes, most frequent first, labelled with phase.
func (t *errorTally) snapshot(phase string) (int64, []errorCount) {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]errorCount, 0, len(t.counts))
	for k, n := range t.counts {
		out = append(out, errorCount{Phase: phase, Error: k, Count: n})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Count != out[j].Count {
			return out[i].Count > out[j].Count
		}
		return out[i].Error < out[j].Error
	})
	return t.total, out
}
