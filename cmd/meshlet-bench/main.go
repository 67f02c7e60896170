// Command meshlet-bench measures what meshlet adds to a call, side by side in one run.
//
// For each protocol (HTTP/1.1, h2c, gRPC unary) it calls an in-process backend several ways:
//
//	direct        app → backend
//	1 meshlet     app → meshlet upstream listener (peer: app) → backend
//	nginx         app → nginx (one worker) → backend: the reference peer, when nginx is on PATH (nginx.go)
//	direct netns  app → backend, in the intercepted path's namespaces at an address the rules leave alone
//	1 meshlet netns  app → meshlet upstream listener → backend, in the intercepted path's namespaces
//	intercepted   app → backend's address, redirected by nftables → meshlet's transparent outbound listener → backend
//	2 meshlets    app → meshlet A (peer: sidecar) → meshlet B inbound → backend   (the real mesh path)
//	2 meshlets mTLS  the same with mutual TLS between A and B
//	2 nginx mTLS  app → nginx A → (mutual TLS) → nginx B → backend: two-mtls's reference peer (nginx.go)
//
// and reports latency at a fixed open-loop rate (measured from each request's scheduled time, so a stalled
// proxy cannot hide behind coordinated omission), throughput at a fixed concurrency (closed loop), and each
// meshlet process's RSS and CPU seconds per 1000 requests, and the intercepted path against the explicit listener
// (1 meshlet, on the host and in the same namespaces). All traffic stays on 127.0.0.1, but that of the intercepted,
// direct netns and 1 meshlet netns paths: they run in two network namespaces the bench makes (root only; without
// root they are skipped) and removes at the end, joined only to each other by a veth pair. Every load loop is bounded in count and time.
//
// Usage:
//
//	go build -o bin/meshlet ./cmd/meshlet && go run ./cmd/meshlet-bench -meshlet bin/meshlet [-quick] [-json out.json]
//
// Meshlets and nginx run pinned to a CPU of their own, the benchmark to the others (-pin, pin.go); with nginx the
// report compares 1 meshlet and 2 meshlets mTLS with it per protocol, and 2 meshlets mTLS with 2 nginx mTLS (vsnginx.go). -scale prints meshlet's growth
// figures instead (scale.go), -profile writes profiles of the throughput phases (profile.go), -vs BASELINE runs
// the paths with -meshlet and with a baseline binary in alternated rounds and prints their CPU ratios (vs.go).
//
// Without -meshlet only the direct path runs. The exit status is 1 when any request failed, a path could not
// be measured or a meshlet process misbehaved, 2 on bad flags.
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"
	"time"
)

// options are the parsed command-line flags.
type options struct {
	scaleOnly   map[string]bool // -scale-only: the -scale measurements to run; empty runs all
	meshlet     string          // path of the meshlet binary; empty runs the direct path only
	rate        int             // open-loop requests per second in the latency phase
	duration    time.Duration   // length of each latency and each throughput phase
	warmup      time.Duration   // closed-loop warm-up before each path's measurements
	concurrency int             // closed-loop workers in the throughput phase
	timeout     time.Duration   // per-request timeout
	protocols   []protocol
	paths       []pathKind
	jsonFile    string // write results here when set
	keep        bool   // keep the work directory (configs, meshlet logs)
	quick       bool
	heads       int    // run the heads scenario with this many connections instead (heads.go)
	pin         bool   // pin meshlets and nginx to a CPU of their own (pin.go)
	profileDir  string // write CPU and allocation profiles of the meshlets' throughput phases here
	scale       bool   // run the growth figures instead (scale.go)
	serveMany   int    // internal to -scale: serve the HTTP/1.1 backend on this many listeners (scale.go)
	serveShared string // internal to -scale: with serveMany, also serve on this address, shared (SO_REUSEPORT)
	serveH2C    bool   // internal to -scale: with serveMany, serve h2c (prior knowledge) instead of HTTP/1.1
	serveTLS    string // internal to -scale: with serveMany, serve HTTP/2 over TLS with DIR/bench-backend.{crt,key}
	post        int    // HTTP/1.1 and h2c requests are POSTs with a body of this many bytes; 0: GETs
	vs          string // a baseline meshlet binary: alternated rounds against it instead of one run (vs.go)
	rounds      int    // -vs's rounds
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	opts, err := parseFlags(args, stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintln(stderr, "meshlet-bench:", err)
		return 2
	}
	// The generator allocates per request; fewer collections mean fewer pauses in the measured latencies.
	debug.SetGCPercent(400)
	// GOGC and GOMEMLIMIT in the environment are for the meshlets, which inherit it (to measure their GC
	// settings); the benchmark's own collector keeps its setting above and no memory limit.
	debug.SetMemoryLimit(math.MaxInt64)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	if opts.post < 0 || opts.post > 1<<20 {
		fmt.Fprintln(stderr, "meshlet-bench: -post: a body of 0 to 1048576 bytes")
		return 2
	}
	requestBody = bytes.Repeat([]byte("p"), opts.post)
	if opts.heads > 0 {
		return runHeads(ctx, opts.meshlet, opts.heads, stdout, stderr)
	}
	if opts.scale {
		return runScale(ctx, opts, stdout, stderr)
	}
	if opts.vs != "" {
		return runVs(ctx, opts, stdout, stderr)
	}
	if opts.serveMany > 0 {
		return serveMany(opts.serveMany, opts.serveShared, manyMode{h2c: opts.serveH2C, tlsDir: opts.serveTLS}, os.Stdin, stdout, stderr)
	}
	b := &bench{opts: opts, log: stderr}
	rep := b.run(ctx)
	writeTable(stdout, rep)
	if opts.jsonFile != "" {
		if err := writeJSON(opts.jsonFile, rep); err != nil {
			fmt.Fprintln(stderr, "meshlet-bench: writing json:", err)
			return 1
		}
		fmt.Fprintf(stderr, "results written to %s\n", opts.jsonFile)
	}
	if problems := rep.problems(); len(problems) > 0 {
		writeProblems(stdout, problems)
		return 1
	}
	return 0
}

func parseFlags(args []string, stderr io.Writer) (options, error) {
	fs := flag.NewFlagSet("meshlet-bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o options
	var protocols, paths string
	fs.StringVar(&o.meshlet, "meshlet", "", "path of the meshlet binary (empty: measure the direct path only)")
	fs.IntVar(&o.rate, "rate", 1000, "open-loop request rate per second for the latency phase")
	fs.DurationVar(&o.duration, "duration", 10*time.Second, "length of each latency and throughput phase")
	fs.DurationVar(&o.warmup, "warmup", 500*time.Millisecond, "warm-up before each path's measurements")
	fs.IntVar(&o.concurrency, "concurrency", 32, "closed-loop workers for the throughput phase")
	fs.DurationVar(&o.timeout, "timeout", 5*time.Second, "per-request timeout")
	fs.StringVar(&protocols, "protocols", "http1,h2c,grpc", "comma-separated protocols: http1, h2c, grpc")
	fs.StringVar(&paths, "paths", "direct,one,nginx,netns-direct,netns-one,intercepted,two,two-mtls,nginx-mtls", "comma-separated paths: direct, one (1 meshlet), "+
		"nginx (1 nginx, the reference peer; skipped when nginx is not on PATH), "+
		"intercepted (1 meshlet by transparent interception, in network namespaces; root only, skipped otherwise), "+
		"netns-direct and netns-one (direct and 1 meshlet in intercepted's namespaces), two (2 meshlets), "+
		"two-mtls (2 meshlets, mutual TLS between them), nginx-mtls (2 nginx, mutual TLS between them: two-mtls's reference peer)")
	fs.StringVar(&o.jsonFile, "json", "", "write the results as JSON to this file")
	fs.BoolVar(&o.keep, "keep", false, "keep the work directory with meshlet configs and logs")
	fs.IntVar(&o.heads, "heads", 0, "instead of the paths: hold this many connections, each with 60 KiB of a request head that never ends, and report meshlet's RSS (needs -meshlet)")
	fs.BoolVar(&o.pin, "pin", true, "pin meshlets and nginx to the last allowed CPU and the benchmark (load generator, backends) to the others (needs 2 CPUs)")
	fs.StringVar(&o.profileDir, "profile", "", "turn admin.pprof on and write each meshlet's CPU and allocation profile of the throughput phase (up to 10s) into this directory")
	fs.BoolVar(&o.scale, "scale", false, "instead of the paths: measure meshlet's memory growth per upstream, endpoint and idle connection, RSS idle and at 1k req/s, and CPU per request at 1 and 10,000 endpoints, each against its target (needs -meshlet)")
	var scaleOnly string
	fs.StringVar(&scaleOnly, "scale-only", "", "with -scale: only these comma-separated measurements: "+scaleGroupNames()+
		" (idle: idle RSS and RSS at 1k req/s; endpoint: per endpoint and CPU at 10,000 endpoints)")
	fs.BoolVar(&o.serveH2C, "serve-h2c", false, "internal to -scale: with -serve-many, serve h2c (prior knowledge) instead of HTTP/1.1")
	fs.StringVar(&o.serveTLS, "serve-tls", "", "internal to -scale: with -serve-many, serve HTTP/2 over TLS with the certificate DIR/bench-backend.crt and its key")
	fs.StringVar(&o.serveShared, "serve-shared", "", "internal to -scale: with -serve-many, also serve on this address, shared with the other children (SO_REUSEPORT)")
	fs.IntVar(&o.serveMany, "serve-many", 0, "internal to -scale: serve the HTTP/1.1 backend on this many loopback listeners, print their addresses, until stdin closes")
	fs.IntVar(&o.post, "post", 0, "HTTP/1.1 and h2c requests are POSTs with a body of this many bytes (0: GETs without a body); gRPC is unchanged")
	fs.StringVar(&o.vs, "vs", "", "a baseline meshlet binary: run the paths with it and with -meshlet in turn, -rounds times, and print the median of the rounds' ratios of each meshlet's CPU per request (nginx's paths left out)")
	fs.IntVar(&o.rounds, "rounds", 5, "with -vs: the rounds (each runs both binaries)")
	fs.BoolVar(&o.quick, "quick", false, "short run: 2s phases, 200ms warm-up (explicit -duration/-warmup win)")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	if scaleOnly != "" {
		o.scaleOnly = map[string]bool{}
		for _, name := range strings.Split(scaleOnly, ",") {
			known := false
			for _, g := range scaleGroups {
				known = known || g.name == name
			}
			if !known {
				return o, fmt.Errorf("-scale-only: unknown measurement %q (%s)", name, scaleGroupNames())
			}
			o.scaleOnly[name] = true
		}
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if o.quick {
		if !set["duration"] {
			o.duration = 2 * time.Second
		}
		if !set["warmup"] {
			o.warmup = 200 * time.Millisecond
		}
	}
	var err error
	o.protocols, err = parseProtocols(protocols)
	if err != nil {
		return o, err
	}
	if o.paths, err = parsePaths(paths); err != nil {
		return o, err
	}
	if o.meshlet == "" {
		o.paths = []pathKind{pathDirect}
	}
	return o, o.validate()
}

// validate checks the numeric flags and the meshlet binary, joining every problem.
func (o options) validate() error {
	var errs []error
	if o.rate < 1 || o.rate > 100000 {
		errs = append(errs, fmt.Errorf("-rate: must be in 1..100000, got %d", o.rate))
	}
	if o.duration < 100*time.Millisecond || o.duration > 10*time.Minute {
		errs = append(errs, fmt.Errorf("-duration: must be in 100ms..10m, got %s", o.duration))
	}
	if o.warmup < 0 || o.warmup > time.Minute {
		errs = append(errs, fmt.Errorf("-warmup: must be in 0..1m, got %s", o.warmup))
	}
	if o.concurrency < 1 || o.concurrency > 4096 {
		errs = append(errs, fmt.Errorf("-concurrency: must be in 1..4096, got %d", o.concurrency))
	}
	if o.timeout <= 0 {
		errs = append(errs, fmt.Errorf("-timeout: must be > 0, got %s", o.timeout))
	}
	if o.heads < 0 || o.heads > 100000 || o.heads > 0 && o.meshlet == "" {
		errs = append(errs, fmt.Errorf("-heads: must be in 0..100000 and needs -meshlet, got %d", o.heads))
	}
	if o.scale && (o.meshlet == "" || o.heads > 0) {
		errs = append(errs, errors.New("-scale: needs -meshlet and excludes -heads"))
	}
	if o.vs != "" && (o.meshlet == "" || o.scale || o.heads > 0) {
		errs = append(errs, errors.New("-vs: needs -meshlet and excludes -scale and -heads"))
	}
	if o.vs != "" && (o.rounds < 1 || o.rounds > 50) {
		errs = append(errs, fmt.Errorf("-rounds: must be in 1..50, got %d", o.rounds))
	}
	if o.serveMany < 0 || o.serveMany > 10000 {
		errs = append(errs, fmt.Errorf("-serve-many: must be in 0..10000, got %d", o.serveMany))
	}
	for _, b := range []struct{ flag, path string }{{"-meshlet", o.meshlet}, {"-vs", o.vs}} {
		if b.path == "" {
			continue
		}
		if st, err := os.Stat(b.path); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", b.flag, err))
		} else if st.IsDir() || st.Mode()&0o111 == 0 {
			errs = append(errs, fmt.Errorf("%s: %s is not an executable file", b.flag, b.path))
		}
	}
	return errors.Join(errs...)
}

func parseProtocols(s string) ([]protocol, error) {
	var out []protocol
	seen := map[protocol]bool{}
	for _, f := range strings.Split(s, ",") {
		p := protocol(strings.TrimSpace(f))
		if _, ok := protocolInfo[p]; !ok {
			return nil, fmt.Errorf("-protocols: unknown protocol %q (want http1, h2c, grpc)", p)
		}
		if !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	return out, nil
}

func parsePaths(s string) ([]pathKind, error) {
	want := map[pathKind]bool{}
	for _, f := range strings.Split(s, ",") {
		p := pathKind(strings.TrimSpace(f))
		if _, ok := pathLabels[p]; !ok {
			return nil, fmt.Errorf("-paths: unknown path %q (want direct, one, nginx, netns-direct, netns-one, intercepted, two, two-mtls, nginx-mtls)", p)
		}
		want[p] = true
	}
	var out []pathKind
	for _, p := range allPaths { // always in the same order; direct first so "added" can be computed
		if want[p] {
			out = append(out, p)
		}
	}
	return out, nil
}
