package main

import (
	"context"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

const (
	// maxInFlight bounds the open loop's concurrent requests. When it is reached the dispatcher waits; the
	// requests it then sends late are still measured from their scheduled time.
	maxInFlight = 4096
	// sendGrace is how long past the schedule's end the open loop keeps sending late requests; whatever is
	// still unsent then counts as an error.
	sendGrace = 5 * time.Second
	// maxRatePerSecond bounds the closed loop's request count (far above what loopback allows).
	maxRatePerSecond = 1_000_000
)

// openLoop sends rate requests per second for dur on a fixed timetable: request i is due at start+i/rate,
// whether or not earlier requests have finished. Latency runs from the due time to the end of the response,
// so time a request spends waiting because the system under test is slow is counted (no coordinated
// omission). It sends at most rate*dur requests and stops sending at dur+sendGrace.
func openLoop(ctx context.Context, c caller, rate int, dur, timeout time.Duration) (latencyStats, *errorTally) {
	n := max(1, int(int64(rate)*int64(dur)/int64(time.Second)))
	lat := make([]time.Duration, n) // from due time to response; -1 for a failed request
	svc := make([]time.Duration, n) // from actual send to response
	lag := make([]time.Duration, n) // from due time to actual send
	var inFlight, maxInFlightSeen atomic.Int64
	errs, sem, wg := &errorTally{}, make(chan struct{}, maxInFlight), &sync.WaitGroup{}

	// The dispatcher sleeps on its own OS thread with nanosleep and 1ns timer slack: Go's timers wake up
	// to a millisecond late when the process is idle, which would add to every measured latency.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	setTimerSlack(1)
	defer setTimerSlack(50_000) // the kernel default

	start := time.Now().Add(time.Millisecond)
	stopSending := start.Add(dur + sendGrace)
	sent := 0
	var lastSend time.Time
	for i := 0; i < n && ctx.Err() == nil; i++ {
		due := start.Add(time.Duration(int64(i) * int64(time.Second) / int64(rate)))
		sleepUntil(due)
		if !acquire(ctx, sem, stopSending) {
			break
		}
		lastSend = time.Now()
		lag[i] = lastSend.Sub(due)
		sent++
		if f := inFlight.Add(1); f > maxInFlightSeen.Load() {
			maxInFlightSeen.Store(f) // only this goroutine stores
		}
		wg.Add(1)
		go func(sentAt time.Time) {
			defer wg.Done()
			defer func() { inFlight.Add(-1); <-sem }()
			rctx, cancel := context.WithTimeout(ctx, timeout)
			err := c.call(rctx)
			cancel()
			if err != nil {
				errs.add(err)
				lat[i] = -1
				return
			}
			now := time.Now()
			lat[i], svc[i] = now.Sub(due), now.Sub(sentAt)
		}(lastSend)
	}
	wg.Wait()
	notSent := "not sent: generator fell too far behind the schedule"
	if ctx.Err() != nil {
		notSent = "not sent: interrupted"
	}
	errs.addKey(notSent, int64(n-sent))

	s := summarizeOpenLoop(lat[:sent], svc[:sent], lag[:sent])
	s.MaxInFlight = maxInFlightSeen.Load()
	s.Errors, _ = errs.snapshot("")
	if sent > 1 {
		s.Rate = float64(sent-1) / lastSend.Sub(start).Seconds()
	}
	return s, errs
}

// summarizeOpenLoop computes the latency percentiles of the sent requests' lat (-1 for failures), the
// service-time percentiles of svc and the generator's lag.
func summarizeOpenLoop(lat, svc, lag []time.Duration) latencyStats {
	var ok, okSvc []time.Duration
	for i, d := range lat {
		if d >= 0 {
			ok = append(ok, d)
			okSvc = append(okSvc, svc[i])
		}
	}
	s := summarize(ok)
	svcStats := summarize(okSvc)
	s.ServiceP50us, s.ServiceP99us = svcStats.P50us, svcStats.P99us
	s.LagP99us = summarize(lag).P99us
	s.Sent = len(lat)
	return s
}

// acquire takes an in-flight slot, waiting no later than deadline; false means give up sending.
func acquire(ctx context.Context, sem chan struct{}, deadline time.Time) bool {
	if time.Now().After(deadline) {
		return false
	}
	select {
	case sem <- struct{}{}:
		return true
	default:
	}
	t := time.NewTimer(time.Until(deadline))
	defer t.Stop()
	select {
	case sem <- struct{}{}:
		return true
	case <-ctx.Done():
		return false
	case <-t.C:
		return false
	}
}

// sleepUntil blocks the calling OS thread until t with nanosleep(2).
func sleepUntil(t time.Time) {
	for {
		d := time.Until(t)
		if d <= 0 {
			return
		}
		ts := syscall.NsecToTimespec(int64(d))
		if err := syscall.Nanosleep(&ts, nil); err != nil && err != syscall.EINTR {
			time.Sleep(d)
			return
		}
	}
}

// setTimerSlack sets the calling thread's timer slack (prctl PR_SET_TIMERSLACK) in nanoseconds; failures
// only make sleeps less precise, so they are ignored.
func setTimerSlack(ns uintptr) {
	const prSetTimerSlack = 29
	syscall.Syscall(syscall.SYS_PRCTL, prSetTimerSlack, ns, 0)
}

// throughputStats is the result of one closed-loop phase.
type throughputStats struct {
	Requests int64   `json:"requests"` // successful requests
	Errors   int64   `json:"errors"`
	Seconds  float64 `json:"seconds"`
	RPS      float64 `json:"rps"` // successful requests per second
}

// closedLoop runs workers goroutines, each sending its next request as soon as the previous one is answered,
// until dur has passed (requests in flight then are allowed to finish) or maxRatePerSecond*dur requests
// were started.
func closedLoop(ctx context.Context, c caller, workers int, dur, timeout time.Duration) (throughputStats, *errorTally) {
	limit := int64(maxRatePerSecond * dur.Seconds())
	errs := &errorTally{}
	var started, ok atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	deadline := start.Add(dur)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil && time.Now().Before(deadline) && started.Add(1) <= limit {
				rctx, cancel := context.WithTimeout(ctx, timeout)
				err := c.call(rctx)
				cancel()
				if err != nil {
					errs.add(err)
					continue
				}
				ok.Add(1)
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start).Seconds()
	s := throughputStats{Requests: ok.Load(), Seconds: elapsed}
	s.Errors, _ = errs.snapshot("")
	if elapsed > 0 {
		s.RPS = float64(s.Requests) / elapsed
	}
	return s, errs
}
