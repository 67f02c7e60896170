package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	neturl "net/url"
	"slices"
	"sync"
	"time"
)

// loadResult is what the users of web saw.
type loadResult struct {
	Completed int // requests answered or failed; fewer than asked for when interrupted
	OK        int
	Errors    map[string]int  // error description -> count
	Latencies []time.Duration // of successful requests, sorted
	Elapsed   time.Duration
	Sample    string // the body of one successful response
}

// Failed returns how many requests failed.
func (r *loadResult) Failed() int { return r.Completed - r.OK }

// percentile returns the q-th (0..1) latency by nearest rank, or 0 without latencies.
func (r *loadResult) percentile(q float64) time.Duration {
	if len(r.Latencies) == 0 {
		return 0
	}
	i := int(q*float64(len(r.Latencies))+0.5) - 1
	return r.Latencies[min(max(i, 0), len(r.Latencies)-1)]
}

// sendLoad sends n GET requests to url at about rate per second, at most concurrency at a time, and stops early
// when ctx ends; requests cut short by that are not counted.
func sendLoad(ctx context.Context, url string, n, concurrency int, rate float64) *loadResult {
	client := &http.Client{
		Timeout:   5 * time.Second,
		Transport: &http.Transport{MaxIdleConnsPerHost: concurrency},
	}
	defer client.CloseIdleConnections()

	jobs := make(chan int)
	go func() {
		defer close(jobs)
		tick := time.NewTicker(max(time.Duration(float64(time.Second)/rate), time.Microsecond))
		defer tick.Stop()
		for i := range n {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			select {
			case <-ctx.Done():
				return
			case jobs <- i:
			}
		}
	}()

	res := &loadResult{Errors: map[string]int{}}
	var mu sync.Mutex
	var wg sync.WaitGroup
	start := time.Now()
	for range concurrency {
		wg.Go(func() {
			for i := range jobs {
				t0 := time.Now()
				body, err := get(ctx, client, fmt.Sprintf("%s?name=user-%d&item=%s", url, i, items[i%len(items)]))
				d := time.Since(t0)
				if err != nil && ctx.Err() != nil {
					continue // interrupted, not failed
				}
				if ue := (*neturl.Error)(nil); errors.As(err, &ue) {
					err = ue.Err // without the URL, so that like errors count together
				}
				mu.Lock()
				res.Completed++
				if err != nil {
					res.Errors[err.Error()]++
				} else {
					res.OK++
					res.Latencies = append(res.Latencies, d)
					if res.Sample == "" {
						res.Sample = body
					}
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	res.Elapsed = time.Since(start)
	slices.Sort(res.Latencies)
	return res
}

var items = []string{"coffee", "tea", "croissant", "bagel", "juice"}

// get fetches url and checks that web answered 200 with a greeting.
func get(ctx context.Context, client *http.Client, url string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		var e struct{ Error, Call string }
		if json.Unmarshal(body, &e) == nil && e.Error != "" {
			return "", fmt.Errorf("%s: %s call to api: %s", resp.Status, e.Call, e.Error)
		}
		return "", fmt.Errorf("%s: %.100s", resp.Status, bytes.TrimSpace(body))
	}
	var p struct{ Greeting string }
	if err := json.Unmarshal(body, &p); err != nil || p.Greeting == "" {
		return "", fmt.Errorf("200 but no greeting in %.100q", body)
	}
	return string(body), nil
}
