// Command meshlet-soak runs steady mixed traffic through two sidecars for a bounded time while endpoints churn,
// certificates rotate and the config reloads, and judges the run (issue 7, `make soak`).
//
// Topology, all on 127.0.0.1 with free ports:
//
//	load ──HTTP/1.1 (GET, POST)──▶ meshlet A upstream soak-http ┐
//	     ──gRPC (unary, h2c)─────▶ meshlet A upstream soak-grpc ┴─mTLS, HTTP/2─▶ B0, B1, B2: meshlet inbound ─▶ backend
//
// Each instance Bi is a backend (HTTP/1.1, h2c and gRPC on one port) with its own meshlet. B0 lives the whole
// run; B1 and B2 are churned in turn every -churn, in modes by round (see mesh.churn): taken out of A's static
// endpoint list (config rewritten, SIGHUP, applied), stopped (SIGTERM), started again in place and put back; the
// same but replaced on new ports; and, with -unannounced, stopped while A still lists it and started again in
// place, which A's retries must hide. Every -rotate (at least once per run) new leaf certificates are issued
// with `meshlet certs issue` for both services, and every meshlet must load its new one.
//
// Every -interval it prints requests, errors by cause, p50/p99 latency, A's retries, each meshlet's RSS (VmRSS)
// and goroutines; at the end a summary. The exit status is 1 when:
//   - any request failed, whatever the cause: with an instance taken out of A before it stops, no failure is
//     possible, and when it stops unannounced meshlet's retries must hide it (only requests that never reached
//     the app fail there, and those are safe to retry), so no cause is expected;
//   - a churn, reload or rotation did not complete, or a meshlet exited unexpectedly or uncleanly;
//   - memory grew without bound (see judgeMemory), or the load fell far behind its rate;
//   - an instance never served a request.
//
// Usage: go run ./cmd/meshlet-soak -meshlet bin/meshlet [-duration 10m] [-interval 1m] [-rate 200]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"meshlet.dev/meshlet/internal/meshlettest"
)

type options struct {
	meshlet     string
	duration    time.Duration
	interval    time.Duration
	rate        int
	churn       time.Duration
	rotate      time.Duration
	instances   int
	keep        bool
	logLevel    string
	unannounced bool
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func parseFlags(args []string, stderr io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("meshlet-soak", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.meshlet, "meshlet", "bin/meshlet", "the meshlet binary")
	fs.DurationVar(&o.duration, "duration", 10*time.Minute, "how long the traffic runs (1m..24h)")
	fs.DurationVar(&o.interval, "interval", time.Minute, "report interval (5s..duration)")
	fs.IntVar(&o.rate, "rate", 200, "requests per second in all, half gRPC, half HTTP/1.1 (10..5000)")
	fs.DurationVar(&o.churn, "churn", 30*time.Second, "how often an instance is churned (5s..)")
	fs.DurationVar(&o.rotate, "rotate", 2*time.Minute, "how often the certificates rotate (at most duration/2, so at least once)")
	fs.IntVar(&o.instances, "instances", 3, "server instances (2..5); all but the first are churned")
	fs.BoolVar(&o.keep, "keep", false, "keep the work directory (configs, certificates, meshlet logs)")
	fs.BoolVar(&o.unannounced, "unannounced", false, "also stop instances while A still lists them (every third round); see mesh.churn")
	fs.StringVar(&o.logLevel, "log-level", "info", "the meshlets' log.level (debug logs each failed upstream attempt)")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	var errs []error
	if o.duration < time.Minute || o.duration > 24*time.Hour {
		errs = append(errs, fmt.Errorf("-duration %s: want 1m..24h", o.duration))
	}
	if o.interval < 5*time.Second || o.interval > o.duration {
		errs = append(errs, fmt.Errorf("-interval %s: want 5s..duration", o.interval))
	}
	if o.rate < 10 || o.rate > 5000 {
		errs = append(errs, fmt.Errorf("-rate %d: want 10..5000", o.rate))
	}
	if o.churn < 5*time.Second {
		errs = append(errs, fmt.Errorf("-churn %s: want at least 5s", o.churn))
	}
	if o.instances < 2 || o.instances > 5 {
		errs = append(errs, fmt.Errorf("-instances %d: want 2..5", o.instances))
	}
	if fs.NArg() > 0 {
		errs = append(errs, fmt.Errorf("unexpected arguments %q", fs.Args()))
	}
	o.rotate = min(max(o.rotate, 5*time.Second), o.duration/2)
	if err := errors.Join(errs...); err != nil {
		fmt.Fprintln(stderr, err)
		return o, err
	}
	return o, nil
}

func run(args []string, stdout, stderr io.Writer) int {
	o, err := parseFlags(args, stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	dir, err := os.MkdirTemp("", "meshlet-soak-")
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	// A copy of the binary, so that a rebuild of bin/meshlet during the run does not change what restarts.
	if err := copyFile(o.meshlet, filepath.Join(dir, "meshlet"), 0o755); err != nil {
		fmt.Fprintln(stderr, "copying the meshlet binary:", err)
		os.RemoveAll(dir)
		return 1
	}
	o.meshlet = filepath.Join(dir, "meshlet")
	s := &soak{opts: o, out: stdout, dir: dir, start: time.Now()}
	ok := s.run()
	if o.keep || !ok {
		fmt.Fprintf(stdout, "work directory (configs, certificates, meshlet logs): %s\n", dir)
	} else {
		os.RemoveAll(dir)
	}
	if !ok {
		fmt.Fprintln(stdout, "FAIL")
		return 1
	}
	fmt.Fprintln(stdout, "PASS")
	return 0
}

// soak is one run.
type soak struct {
	opts  options
	out   io.Writer
	dir   string
	start time.Time
	mesh  *mesh
	load  *load

	mu       sync.Mutex
	failures []string // why the run fails
	cancel   context.CancelFunc
	rss      map[string][]int64 // RSS samples of the current interval, by instance name (A, B0, ...)
	gor      map[string][]int64 // goroutine samples (go_goroutines) of the current interval, likewise
	reports  []report
	finalA   meshlettest.Metrics // A's metrics at the end, before it stops
}

// fail records a reason for failing and ends the run early.
func (s *soak) fail(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	s.mu.Lock()
	s.failures = append(s.failures, msg)
	s.mu.Unlock()
	s.logf("FAILURE: %s", msg)
	s.cancel()
}

func (s *soak) logf(format string, args ...any) {
	fmt.Fprintf(s.out, "[%7s] %s\n", time.Since(s.start).Round(time.Second), fmt.Sprintf(format, args...))
}

func (s *soak) run() bool {
	o := s.opts
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	ctx, s.cancel = context.WithCancel(ctx)
	defer s.cancel()
	fmt.Fprintf(s.out, "meshlet soak: %s of %d requests/s (half gRPC, a quarter each HTTP GET and POST) through "+
		"meshlet A and %d instances over mTLS; churn every %s, certificate rotation every %s, report every %s\n",
		o.duration, o.rate, o.instances, o.churn, o.rotate, o.interval)

	m, err := newMesh(o.meshlet, s.dir, o.logLevel, o.instances)
	if err != nil {
		s.failures = append(s.failures, err.Error())
		return s.summary()
	}
	m.unannounced = o.unannounced
	s.mesh = m
	clean := false
	defer func() {
		if !clean {
			m.close(false) // a failed or interrupted run: kill what is left
		}
	}()
	if err := m.start(ctx); err != nil {
		s.failures = append(s.failures, "start: "+err.Error())
		return s.summary()
	}
	s.load, err = newLoad(m.aHTTP, m.aGRPC)
	if err != nil {
		s.failures = append(s.failures, err.Error())
		return s.summary()
	}
	defer s.load.close()
	s.start = time.Now()
	s.rss, s.gor = map[string][]int64{}, map[string][]int64{}
	end := s.start.Add(o.duration)
	s.logf("mesh up: A upstreams %s (HTTP) and %s (gRPC), admin %s; work directory %s", m.aHTTP, m.aGRPC, m.aAdm, s.dir)
	s.printHeader()

	loadCtx, stopLoad := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { s.load.run(loadCtx, o.rate) })
	var chaos sync.WaitGroup
	chaos.Go(func() { s.chaos(ctx, end) })
	s.observe(ctx, end)
	chaos.Wait() // the last event completes before the load stops, so none is cut short
	stopLoad()
	wg.Wait()
	if w := s.load.take(); len(s.reports) == 0 || len(w.requests) > 0 {
		s.addReport(w, true) // the remainder after the last full interval
	}
	s.finalA, _ = m.a.metrics()
	if ctx.Err() != nil && len(s.failures) == 0 {
		s.failures = append(s.failures, "interrupted")
	}
	if ctx.Err() == nil {
		clean = true
		for _, err := range m.close(true) {
			if err != nil {
				s.failures = append(s.failures, "shutdown: "+err.Error())
			}
		}
	}
	return s.summary()
}

// chaos runs the events one at a time until end: churn every opts.churn, rotation every opts.rotate. No event
// starts in the last 20s, so each completes while the load still runs.
func (s *soak) chaos(ctx context.Context, end time.Time) {
	nextChurn := s.start.Add(s.opts.churn)
	nextRotate := s.start.Add(s.opts.rotate)
	for k := 0; ; {
		next := nextChurn
		if nextRotate.Before(next) {
			next = nextRotate
		}
		if next.After(end.Add(-20*time.Second)) || sleep(ctx, time.Until(next)) != nil {
			return
		}
		var err error
		if !nextRotate.After(time.Now()) {
			err = s.mesh.rotate(ctx, s.logf)
			nextRotate = nextRotate.Add(s.opts.rotate)
		} else {
			err = s.mesh.churn(ctx, k, s.logf)
			k++
			nextChurn = nextChurn.Add(s.opts.churn)
		}
		if err != nil {
			if ctx.Err() == nil {
				s.fail("%v", err)
			}
			return
		}
	}
}

// observe samples RSS and checks the processes every few seconds, and reports every interval, until end.
func (s *soak) observe(ctx context.Context, end time.Time) {
	sampleEvery := min(max(s.opts.interval/10, time.Second), 5*time.Second)
	tick := time.NewTicker(sampleEvery)
	defer tick.Stop()
	nextReport := s.start.Add(s.opts.interval)
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		s.sample()
		now := time.Now()
		if !now.Before(nextReport) {
			s.addReport(s.load.take(), false)
			nextReport = nextReport.Add(s.opts.interval)
		}
		if !now.Before(end) {
			return
		}
	}
}

// sample reads the RSS and goroutines of every running meshlet and checks that none exited unexpectedly: A always runs, and an
// instance's sidecar runs unless the churn stopped it.
func (s *soak) sample() {
	m := s.mesh
	m.mu.Lock()
	type entry struct {
		name string
		p    *meshletProc
		must bool
	}
	procs := []entry{{"A", m.a, true}}
	for _, in := range m.instances {
		procs = append(procs, entry{in.name, in.proc, in.inA && !in.down})
	}
	m.mu.Unlock()
	for _, e := range procs {
		if !e.p.Alive() {
			if e.must {
				s.fail("meshlet %s exited unexpectedly (%v); log:\n%s", e.p.name, e.p.WaitErr(), meshlettest.LogTail(e.p.LogPath, 20))
			}
			continue
		}
		if rss, err := readRSS(e.p.PID()); err == nil {
			s.mu.Lock()
			s.rss[e.name] = append(s.rss[e.name], rss)
			s.mu.Unlock()
		}
		if t, err := e.p.metrics(); err == nil {
			s.mu.Lock()
			s.gor[e.name] = append(s.gor[e.name], int64(t.Sum("go_goroutines", nil)))
			s.mu.Unlock()
		}
	}
}

// names of the meshlets in report order.
func (s *soak) names() []string {
	out := []string{"A"}
	for _, in := range s.mesh.instances {
		out = append(out, in.name)
	}
	return out
}

func copyFile(from, to string, mode os.FileMode) error {
	b, err := os.ReadFile(from)
	if err != nil {
		return err
	}
	return os.WriteFile(to, b, mode)
}
