package main

import (
	"bufio"
	"cmp"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"golang.org/x/sys/unix"

	"meshlet.dev/meshlet/internal/meshlettest"
	"meshlet.dev/meshlet/proxy"
)

// The scale mode (-scale, `make scale`) prints each growth figure of issue 16 as one number beside its target:
// what meshlet's memory grows by per configured idle upstream, per endpoint and per idle client connection, its
// RSS idle and at 1k req/s, and its CPU per request at 10,000 endpoints against 1. Each figure comes from fresh
// meshlet processes (pinned as in the paths' run), RSS read after a forced GC (admin.pprof's heap?gc=1) once it
// has settled. It is a report: the exit status is 1 only when a figure could not be measured.

const (
	scaleUpstreams = 1000  // configured idle upstreams (name-routed, each with one static endpoint)
	scaleEndpoints = 10000 // static endpoints of one upstream
	scaleConns     = 1000  // idle client connections
	scaleRate      = 1000  // req/s of the RSS-under-load figure
	flatCPU        = 1.10  // "flat": CPU per request at scaleEndpoints at most this times that at 1
	scaleSubset    = 100   // subset_size of the third meshlet of the endpoints figure
)

// scaleFigure is one growth figure: Value in Unit, at most Target to pass (0: no target), or Err when it could
// not be measured.
type scaleFigure struct {
	Name   string  `json:"name"`
	Value  float64 `json:"value"`
	Unit   string  `json:"unit"`
	Target float64 `json:"target,omitempty"`
	Detail string  `json:"detail"` // the raw numbers it comes from
	Err    string  `json:"error,omitempty"`
}

// result is PASS, FAIL, "-" without a target, or "NOT MEASURED".
func (f scaleFigure) result() string {
	switch {
	case f.Err != "":
		return "NOT MEASURED"
	case f.Target == 0:
		return "-"
	case f.Value <= f.Target:
		return "PASS"
	}
	return "FAIL"
}

// perItemKiB is the growth per item, in KiB to one decimal, from RSS base (KiB) to RSS with n items more.
func perItemKiB(base, with int64, n int) float64 {
	if n <= 0 {
		return 0
	}
	return round1(float64(with-base) / float64(n))
}

// scaleRig starts the scale mode's meshlets and backends.
type scaleRig struct {
	bin   string
	dir   string
	pin   pinning
	log   io.Writer
	quick bool
	n     int    // meshlets started, for unique file names
	prof  string // -profile: write the CPU profiles of the endpoints figure's last phases here
}

// runScale measures every figure, prints the report and returns the exit status.
// scaleGroups are -scale's measurements in the order they run; -scale-only picks some by name.
var scaleGroups = []struct {
	name    string
	measure func(*scaleRig) func(context.Context) []scaleFigure
}{
	{"idle", func(s *scaleRig) func(context.Context) []scaleFigure { return s.idleAndLoad }},
	{"upstream", func(s *scaleRig) func(context.Context) []scaleFigure { return s.perUpstream }},
	{"conn-h2c", func(s *scaleRig) func(context.Context) []scaleFigure { return s.perConn(protoH2C) }},
	{"conn-http1", func(s *scaleRig) func(context.Context) []scaleFigure { return s.perConn(protoHTTP1) }},
	{"upstream-conn-h2c", func(s *scaleRig) func(context.Context) []scaleFigure { return s.perUpstreamConn(protoH2C, false) }},
	{"upstream-conn-mtls", func(s *scaleRig) func(context.Context) []scaleFigure { return s.perUpstreamConn(protoH2C, true) }},
	{"upstream-conn-http1", func(s *scaleRig) func(context.Context) []scaleFigure { return s.perUpstreamConn(protoHTTP1, false) }},
	{"endpoint", func(s *scaleRig) func(context.Context) []scaleFigure { return s.endpoints }},
}

// scaleGroupNames lists the measurements' names for -scale-only.
func scaleGroupNames() string {
	names := make([]string, len(scaleGroups))
	for i, g := range scaleGroups {
		names[i] = g.name
	}
	return strings.Join(names, ", ")
}

func runScale(ctx context.Context, opts options, stdout, stderr io.Writer) int {
	dir, err := os.MkdirTemp("", "meshlet-bench-scale-")
	if err != nil {
		fmt.Fprintln(stderr, "meshlet-bench:", err)
		return 1
	}
	s := &scaleRig{bin: opts.meshlet, dir: dir, log: stderr, quick: opts.quick, prof: opts.profileDir}
	if opts.pin {
		if cpus, err := allowedCPUs(); err == nil {
			if pin, why := planPinning(cpus); why == "" && pin.pinSelf() == nil {
				s.pin = pin
			}
		}
	}
	fmt.Fprintf(stderr, "meshlet-bench -scale: work directory %s; pinning: %s\n", dir, s.pin)
	var figs []scaleFigure
	for _, g := range scaleGroups {
		if !opts.scaleOnly[g.name] && len(opts.scaleOnly) > 0 {
			continue
		}
		measure := g.measure(s)
		if ctx.Err() != nil {
			figs = append(figs, scaleFigure{Name: "the rest", Err: "interrupted"})
			break
		}
		figs = append(figs, measure(ctx)...)
	}
	writeScale(stdout, opts.meshlet, s.pin, figs)
	failed := false
	for _, f := range figs {
		failed = failed || f.Err != ""
	}
	if opts.keep || failed && ctx.Err() == nil { // an interrupted run (Ctrl-C) leaves nothing behind
		fmt.Fprintf(stderr, "meshlet configs and logs kept in %s\n", dir)
	} else {
		os.RemoveAll(dir)
	}
	if opts.jsonFile != "" {
		if err := writeJSONValue(opts.jsonFile, figs); err != nil {
			fmt.Fprintln(stderr, "meshlet-bench: writing json:", err)
			return 1
		}
	}
	if failed {
		return 1
	}
	return 0
}

// start starts a meshlet on f (admin listener, pprof, log level and shutdown filled in) and waits until it is ready.
func (s *scaleRig) start(ctx context.Context, name string, f meshlettest.File) (*meshletProc, error) {
	addrs, err := meshlettest.PickAddrs(1)
	if err != nil {
		return nil, err
	}
	s.n++
	if f.Service.Name == "" {
		f.Service.Name = "scale-client"
	}
	f.Admin.Listen, f.Admin.Pprof = addrs[0], true
	f.Log.Level = "warn"
	f.Shutdown = meshlettest.Shutdown{DrainDelay: meshlettest.Duration(0), DrainTimeout: 5 * time.Second}
	yaml, err := f.YAML()
	if err != nil {
		return nil, err
	}
	file := fmt.Sprintf("%02d-%s", s.n, name)
	var p *meshlettest.Proc
	err = s.pin.start(func() (err error) {
		p, err = meshlettest.StartConfig(s.bin, "meshlet "+name, addrs[0], filepath.Join(s.dir, file+".yaml"),
			filepath.Join(s.dir, file+".log"), yaml)
		return err
	})
	if err != nil {
		return nil, err
	}
	m := &meshletProc{Proc: p}
	if err := m.waitReady(ctx); err != nil {
		m.Kill()
		return nil, err
	}
	return m, nil
}

// stop stops m, logging a failure (the figures were read already).
func (s *scaleRig) stop(m *meshletProc) {
	if err := m.stop(); err != nil {
		fmt.Fprintf(s.log, "meshlet-bench -scale: %v\n", err)
	}
}

// settledRSS returns m's VmRSS in KiB once two readings 300ms apart differ by at most 32 KiB (at most 10 rounds),
// with gc a GC forced before each (GET /debug/pprof/heap?gc=1: the heap profile it writes costs some memory of
// its own, the same in both processes of a growth figure).
func (s *scaleRig) settledRSS(ctx context.Context, m *meshletProc, gc bool) (int64, error) {
	ps, err := s.settled(ctx, m, gc)
	return ps.RSSKiB, err
}

// settled is settledRSS's last reading whole (its VmRSS with the RssAnon and RssFile it is made of).
func (s *scaleRig) settled(ctx context.Context, m *meshletProc, gc bool) (procSample, error) {
	client := &http.Client{Timeout: 10 * time.Second}
	defer client.CloseIdleConnections()
	var before func() error
	if gc {
		before = func() error { return forceGC(ctx, client, m.Admin) }
	}
	return settlePID(ctx, m.PID(), before)
}

// settlePID returns pid's reading once its VmRSS has settled (settledRSS), calling before (nil: nothing) ahead of
// each reading.
func settlePID(ctx context.Context, pid int, before func() error) (procSample, error) {
	prev := procSample{RSSKiB: -1}
	for range 10 {
		if before != nil {
			if err := before(); err != nil {
				return procSample{}, err
			}
		}
		select {
		case <-time.After(300 * time.Millisecond):
		case <-ctx.Done():
			return procSample{}, ctx.Err()
		}
		ps, err := readProc(pid)
		if err != nil {
			return procSample{}, err
		}
		if prev.RSSKiB >= 0 && abs64(ps.RSSKiB-prev.RSSKiB) <= 32 {
			return ps, nil
		}
		prev = ps
	}
	return prev, nil
}

// forceGC has the meshlet with its admin listener at admin collect garbage (GET /debug/pprof/heap?gc=1).
func forceGC(ctx context.Context, client *http.Client, admin string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+admin+"/debug/pprof/heap?gc=1", nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("forcing a GC: %w", err)
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("forcing a GC: GET /debug/pprof/heap: %s", resp.Status)
	}
	return nil
}

func abs64(v int64) int64 {
	if v < 0 {
		return -v
	}
	return v
}

func (s *scaleRig) phase() time.Duration {
	if s.quick {
		return 2 * time.Second
	}
	return 5 * time.Second
}

// upstream is an upstream named name of protocol p to endpoints, on its own listener at listen ("": by name only).
func upstream(name string, p protocol, listen string, endpoints ...string) proxy.UpstreamConfig {
	return proxy.UpstreamConfig{Name: name, Listen: listen, Protocol: protocolInfo[p].meshlet, Endpoints: endpoints}
}

// startOneUpstream starts a backend speaking p and a meshlet (named name) with one upstream to it on a listener
// of its own, at listen. The caller stops the meshlet (s.stop), then closes the backend.
func (s *scaleRig) startOneUpstream(ctx context.Context, name string, p protocol) (m *meshletProc, be *backend, listen string, err error) {
	if be, err = startBackend(p); err != nil {
		return nil, nil, "", err
	}
	addrs, err := meshlettest.PickAddrs(1)
	if err == nil {
		var f meshlettest.File
		f.Upstreams = []proxy.UpstreamConfig{upstream("backend", p, addrs[0], be.addr)}
		m, err = s.start(ctx, name, f)
	}
	if err != nil {
		be.close()
		return nil, nil, "", err
	}
	return m, be, addrs[0], nil
}

// idleAndLoad measures the idle RSS of a meshlet with one HTTP/1.1 upstream on its own listener, then its RSS
// after scaleRate req/s for a phase (two phases without -quick).
func (s *scaleRig) idleAndLoad(ctx context.Context) []scaleFigure {
	idle := scaleFigure{Name: "idle RSS", Unit: "MiB", Target: 10}
	load := scaleFigure{Name: fmt.Sprintf("RSS at %d req/s (HTTP/1.1)", scaleRate), Unit: "MiB", Target: 20}
	fail := func(err error) []scaleFigure { return failed(err, idle, load) }
	m, be, listen, err := s.startOneUpstream(ctx, "idle", protoHTTP1)
	if err != nil {
		return fail(err)
	}
	defer be.close()
	defer s.stop(m)
	rss, err := s.settled(ctx, m, false)
	if err != nil {
		return fail(err)
	}
	rssGC, err := s.settledRSS(ctx, m, true)
	if err != nil {
		return fail(err)
	}
	idle.Value = round1(float64(rss.RSSKiB) / 1024)
	idle.Detail = fmt.Sprintf("one HTTP/1.1 upstream on its own listener, ready, no request yet, settled: RssAnon %.1f MiB (heap, stacks, written data), RssFile %.1f MiB (pages of the binary, %s); %.1f MiB after a forced GC (the heap profile that forces it costs memory of its own)",
		float64(rss.AnonKiB)/1024, float64(rss.FileKiB)/1024, binarySize(s.bin), float64(rssGC)/1024)
	c := newHTTPCaller(protoHTTP1, listen, 64, nil)
	defer c.close()
	dur := 2 * s.phase()
	lat, errs := openLoop(ctx, c, scaleRate, dur, 5*time.Second)
	ps, err := readProc(m.PID())
	if n, _ := errs.snapshot(""); err != nil || n > 0 {
		load.Err = fmt.Sprintf("%d failed requests, reading /proc: %v", n, err)
		return []scaleFigure{idle, load}
	}
	load.Value = round1(float64(ps.RSSKiB) / 1024)
	load.Detail = fmt.Sprintf("VmRSS after %s of open loop at %d req/s (%d requests, p50 %.0f µs), no GC forced; peak %.1f MiB",
		dur, scaleRate, lat.Count, lat.P50us, float64(ps.HWMKiB)/1024)
	return append([]scaleFigure{idle, load}, s.idleFloors(ctx)...)
}

// rssFloorPkg is the idle RSS figure's reference program (rssfloor/main.go).
const rssFloorPkg = "meshlet.dev/meshlet/cmd/meshlet-bench/rssfloor"

// idleFloors measures, as the idle RSS figure measures meshlet, the idle RSS of rssfloor built with meshlet's
// flags: plain (a Go HTTP server) and with -tags prom (and client_golang's /metrics). References without a target:
// the part of meshlet's idle RSS that any Go HTTP server, and then its metrics library, cost by themselves. None
// when rssfloor cannot be built here (no go command, or not run from meshlet's module: make scale is).
func (s *scaleRig) idleFloors(ctx context.Context) []scaleFigure {
	goBin, err := exec.LookPath("go")
	if err == nil {
		var out []byte
		if out, err = exec.CommandContext(ctx, goBin, "list", "-m").Output(); err == nil && strings.TrimSpace(string(out)) != "meshlet.dev/meshlet" {
			err = fmt.Errorf("the working directory is in module %q", strings.TrimSpace(string(out)))
		}
	}
	if err != nil {
		fmt.Fprintf(s.log, "meshlet-bench -scale: no reference rows for the idle RSS (rssfloor is built from meshlet's module: run from the repository): %v\n", err)
		return nil
	}
	var figs []scaleFigure
	for _, v := range []struct{ name, tags string }{
		{"  reference: Go HTTP server", ""},
		{"  reference: + client_golang /metrics", "prom"},
	} {
		fig := scaleFigure{Name: v.name, Unit: "MiB"}
		ps, size, err := s.idleFloor(ctx, goBin, v.tags)
		if err != nil {
			fig.Err = err.Error()
		} else {
			fig.Value = round1(float64(ps.RSSKiB) / 1024)
			fig.Detail = fmt.Sprintf("rssfloor (cmd/meshlet-bench/rssfloor, -tags %q) built as meshlet is, listening, after one GET /ready, settled: RssAnon %.1f MiB, RssFile %.1f MiB (binary %s)",
				v.tags, float64(ps.AnonKiB)/1024, float64(ps.FileKiB)/1024, size)
		}
		figs = append(figs, fig)
	}
	return figs
}

// idleFloor builds rssfloor with tags, starts it (pinned as meshlet is), waits for its /ready and returns its
// settled reading and the size of its binary.
func (s *scaleRig) idleFloor(ctx context.Context, goBin, tags string) (procSample, string, error) {
	bin := filepath.Join(s.dir, "rssfloor-"+cmp.Or(tags, "plain"))
	build := exec.CommandContext(ctx, goBin, "build", "-trimpath", "-ldflags", "-s -w", "-tags", tags, "-o", bin, rssFloorPkg)
	build.Env = append(os.Environ(), "CGO_ENABLED=0") // as the Makefile builds meshlet
	if out, err := build.CombinedOutput(); err != nil {
		return procSample{}, "", fmt.Errorf("building rssfloor: %v: %s", err, out)
	}
	addrs, err := meshlettest.PickAddrs(1)
	if err != nil {
		return procSample{}, "", err
	}
	cmd := exec.Command(bin, "-listen", addrs[0])
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var p *meshlettest.Proc
	err = s.pin.start(func() (err error) {
		p, err = meshlettest.StartCmd("rssfloor", "", "", bin+".log", cmd)
		return err
	})
	if err != nil {
		return procSample{}, "", err
	}
	defer p.Stop()
	client := &http.Client{Timeout: 5 * time.Second}
	defer client.CloseIdleConnections()
	err = p.WaitFor(ctx, meshlettest.ReadyTimeout, func(ctx context.Context) error {
		return meshlettest.HTTPOK(ctx, client, "http://"+addrs[0]+"/ready")
	})
	if err != nil {
		return procSample{}, "", err
	}
	client.CloseIdleConnections() // meshlet's readiness check leaves no connection open either
	ps, err := settlePID(ctx, p.PID(), nil)
	return ps, binarySize(bin), err
}

// binarySize is the size of the file at path in MB (10^6 bytes), or "size unknown".
func binarySize(path string) string {
	fi, err := os.Stat(path)
	if err != nil {
		return "size unknown"
	}
	return fmt.Sprintf("%.1f MB", float64(fi.Size())/1e6)
}

// perUpstream compares a meshlet with the name-routed listener and no upstream with one with scaleUpstreams idle
// upstreams reachable by name, each with one static endpoint.
func (s *scaleRig) perUpstream(ctx context.Context) []scaleFigure {
	fig := scaleFigure{Name: "RSS per configured idle upstream", Unit: "KiB", Target: 4}
	rss := [2]int64{}
	for i, n := range []int{0, scaleUpstreams} {
		addrs, err := meshlettest.PickAddrs(1)
		if err != nil {
			fig.Err = err.Error()
			return []scaleFigure{fig}
		}
		var f meshlettest.File
		f.Outbound.Listen = addrs[0]
		for j := range n {
			f.Upstreams = append(f.Upstreams, upstream(fmt.Sprintf("up%04d", j), protoHTTP1, "", fmt.Sprintf("127.0.0.1:%d", 20000+j)))
		}
		m, err := s.start(ctx, fmt.Sprintf("upstreams-%d", n), f)
		if err == nil {
			rss[i], err = s.settledRSS(ctx, m, true)
			s.stop(m)
		}
		if err != nil {
			fig.Err = err.Error()
			return []scaleFigure{fig}
		}
	}
	fig.Value = perItemKiB(rss[0], rss[1], scaleUpstreams)
	fig.Detail = fmt.Sprintf("RSS %d KiB with the name-routed listener and no upstream, %d KiB with %d upstreams (by name, 1 static endpoint each); after a forced GC",
		rss[0], rss[1], scaleUpstreams)
	return []scaleFigure{fig}
}

// perConn measures what an idle client connection of protocol p costs meshlet: scaleConns connections to its
// upstream listener, one request each, then idle, against one such connection.
func (s *scaleRig) perConn(p protocol) func(context.Context) []scaleFigure {
	return func(ctx context.Context) []scaleFigure {
		fig := scaleFigure{Name: fmt.Sprintf("RSS per idle %s client connection", protocolInfo[p].label), Unit: "KiB", Target: 10}
		if p == protoHTTP1 {
			fig.Target = 0 // the issue sets one for HTTP/2 only
		}
		fail := func(err error) []scaleFigure { return failed(err, fig) }
		m, be, listen, err := s.startOneUpstream(ctx, "conns-"+string(p), p)
		if err != nil {
			return fail(err)
		}
		defer be.close()
		defer s.stop(m)
		var callers []*httpCaller
		defer func() {
			for _, c := range callers {
				c.close()
			}
		}()
		call := func() error {
			c := newHTTPCaller(p, listen, 1, nil)
			callers = append(callers, c)
			rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			return c.call(rctx)
		}
		base, with, fds, err := s.callGrowth(ctx, m, call)
		if err != nil {
			return fail(err)
		}
		fig.Value = perItemKiB(base, with, scaleConns)
		fig.Detail = fmt.Sprintf("RSS %d KiB with 1 connection, %d KiB with %d more (one request each, then idle; meshlet's open files %+d, the backend accepted %d connections in all); after a forced GC",
			base, with, scaleConns, fds, be.conns.Load())
		if p == protoHTTP1 {
			fig.Detail += "; no target set for HTTP/1.1"
		}
		return []scaleFigure{fig}
	}
}

// perUpstreamConn measures what an upstream connection costs once idle: a meshlet with one upstream of protocol p
// to 1 + scaleConns endpoints (every one a listener of the same backend processes), lb round_robin, first called
// once, then once per other endpoint, so that each holds one idle connection to the meshlet's client. The figure
// counts what the endpoint's first attempt made besides the connection (its breaker): what a sidecar keeps for an
// upstream it called once, until the connection has been idle for 90 s. HTTP/2 has the 10 KiB target.
// mtls: the endpoints are sidecars (HTTP/2 over mutual TLS, certificates from meshlet certs), as between meshlets.
func (s *scaleRig) perUpstreamConn(p protocol, mtls bool) func(context.Context) []scaleFigure {
	return func(ctx context.Context) []scaleFigure {
		fig := scaleFigure{Name: fmt.Sprintf("RSS per idle %s upstream connection", protocolInfo[p].label), Unit: "KiB", Target: 10}
		if mtls {
			fig.Name = "RSS per idle HTTP/2 mTLS upstream connection"
		}
		if p == protoHTTP1 {
			fig.Target = 0 // the issue sets one for HTTP/2 only
		}
		fail := func(err error) []scaleFigure { return failed(err, fig) }
		mode := manyMode{h2c: p == protoH2C}
		if mtls {
			certs, err := s.makeCerts()
			if err != nil {
				return fail(err)
			}
			mode = manyMode{tlsDir: certs}
		}
		be, err := startManyBackend(1+scaleConns, mode)
		if err != nil {
			return fail(err)
		}
		defer be.close()
		addrs, err := meshlettest.PickAddrs(1)
		if err != nil {
			return fail(err)
		}
		u := upstream("backend", p, addrs[0], be.addrs...)
		u.LB = proxy.LBRoundRobin // consecutive requests, distinct endpoints
		var f meshlettest.File
		name := "upstream-conns-" + string(p)
		if mtls {
			// meshlet certs' identities, as on the mesh path: the endpoints are sidecars of bench-backend.
			u.Name, u.Peer = "bench-backend", "sidecar"
			f.Service.Name = "bench-client"
			useCerts(&f, mode.tlsDir, f.Service.Name)
			name += "-mtls"
		}
		f.Upstreams = []proxy.UpstreamConfig{u}
		m, err := s.start(ctx, name, f)
		if err != nil {
			return fail(err)
		}
		defer s.stop(m)
		c := newHTTPCaller(p, addrs[0], 1, nil)
		defer c.close()
		call := func() error {
			rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			return c.call(rctx)
		}
		base, with, fds, err := s.callGrowth(ctx, m, call) // the first call: the upstream's transports, the caller's connection
		if err != nil {
			return fail(err)
		}
		if fds < scaleConns*9/10 {
			return fail(fmt.Errorf("meshlet's open files grew by %d for %d endpoints called: the connections were not kept", fds, scaleConns))
		}
		fig.Value = perItemKiB(base, with, scaleConns)
		fig.Detail = fmt.Sprintf("RSS %d KiB with 1 endpoint called, %d KiB with %d more called once each (lb round_robin; meshlet's open files %+d), its connection idle; after a forced GC; the endpoint's breaker, made at its first attempt, included",
			base, with, scaleConns, fds)
		if p == protoHTTP1 {
			fig.Detail += "; no target set for HTTP/1.1"
		}
		return []scaleFigure{fig}
	}
}

// callGrowth calls once (what every item shares), reads m's settled RSS after a forced GC, calls scaleConns times
// more (an item each) and reads it again: the two readings in KiB and the files m opened meanwhile.
func (s *scaleRig) callGrowth(ctx context.Context, m *meshletProc, call func() error) (base, with int64, fds int, err error) {
	if err = call(); err != nil {
		return 0, 0, 0, err
	}
	if base, err = s.settledRSS(ctx, m, true); err != nil {
		return 0, 0, 0, err
	}
	fds0 := countFDs(m.PID())
	for range scaleConns {
		if err = call(); err != nil {
			return 0, 0, 0, err
		}
	}
	if with, err = s.settledRSS(ctx, m, true); err != nil {
		return 0, 0, 0, err
	}
	return base, with, countFDs(m.PID()) - fds0, nil
}

// profile writes a CPU profile of m of one phase less a second into s.prof as name; failures are logged.
func (s *scaleRig) profile(m *meshletProc, name string) {
	secs := max(1, int(s.phase().Seconds())-1)
	client := &http.Client{Timeout: time.Duration(secs)*time.Second + 15*time.Second}
	url := fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", m.Admin, secs)
	err := os.MkdirAll(s.prof, 0o755)
	if err == nil {
		err = fetchTo(client, url, filepath.Join(s.prof, name))
	}
	if err != nil {
		fmt.Fprintf(s.log, "meshlet-bench -scale: profile %s: %v\n", name, err)
	}
}

// countFDs returns how many files pid has open (-1 when it cannot be read).
func countFDs(pid int) int {
	e, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return -1
	}
	return len(e)
}

// endpoints compares a meshlet with one HTTP/1.1 upstream of 1 static endpoint with one of scaleEndpoints (every
// one a live listener of the same backend): RSS per endpoint, and CPU per request at saturating closed-loop load,
// the meshlets measured in turn (1, N, 1, N). A third meshlet has the same scaleEndpoints with subset_size
// scaleSubset. With nginx on PATH, nginx with an upstream of 1 and of scaleEndpoints servers (random two
// least_conn: p2c as meshlet's default, every connection kept) is measured the same way, in the same turns, as the
// reference: the cost of spreading requests over that many warm connections.
func (s *scaleRig) endpoints(ctx context.Context) []scaleFigure {
	mem := scaleFigure{Name: "RSS per endpoint", Unit: "KiB", Target: 0.5}
	cpu := scaleFigure{Name: fmt.Sprintf("CPU per request, %d endpoints vs 1 (HTTP/1.1)", scaleEndpoints), Unit: "×", Target: flatCPU}
	sub := scaleFigure{Name: fmt.Sprintf("  with subset_size: %d", scaleSubset), Unit: "×", Target: flatCPU}
	ref := scaleFigure{Name: fmt.Sprintf("nginx: CPU per request, %d servers vs 1 (reference)", scaleEndpoints), Unit: "×"}
	fail := func(err error) []scaleFigure { return failed(err, mem, cpu, sub) }
	be, err := startManyBackend(scaleEndpoints, manyMode{})
	if err != nil {
		return fail(err)
	}
	defer be.close()
	var peers []*cpuPeer // one, all, subset, then nginx's one and all when it runs
	var rss [2]int64
	for i, eps := range [][]string{{be.shared}, be.addrs, be.addrs} {
		addrs, err := meshlettest.PickAddrs(1)
		if err != nil {
			return fail(err)
		}
		var f meshlettest.File
		u := upstream("backend", protoHTTP1, addrs[0], eps...)
		name := fmt.Sprintf("endpoints-%d", len(eps))
		if i == 2 {
			u.SubsetSize, name = scaleSubset, fmt.Sprintf("endpoints-%d-subset-%d", len(eps), scaleSubset)
		}
		f.Upstreams = []proxy.UpstreamConfig{u}
		m, err := s.start(ctx, name, f)
		if err != nil {
			return fail(err)
		}
		defer s.stop(m)
		peers = append(peers, &cpuPeer{name: m.Name, pid: m.PID, endpoints: len(eps), admin: m, listen: addrs[0]})
		if i < 2 {
			if rss[i], err = s.settledRSS(ctx, m, true); err != nil {
				return fail(err)
			}
		}
	}
	one, all, subset := peers[0], peers[1], peers[2]
	subset.endpoints = scaleSubset // what its warm-up waits for
	mem.Value = perItemKiB(rss[0], rss[1], scaleEndpoints-1)
	mem.Detail = fmt.Sprintf("RSS %d KiB with 1 endpoint, %d KiB with %d (one upstream, static, no request yet); after a forced GC",
		rss[0], rss[1], scaleEndpoints)
	bin, why := nginxPath()
	if why != "" { // the reference is optional: no row without nginx
		fmt.Fprintf(s.log, "meshlet-bench -scale: no nginx reference for the endpoints figure: %s\n", why)
	} else {
		for _, eps := range [][]string{{be.shared}, be.addrs} {
			addrs, err := meshlettest.PickAddrs(1)
			var n *nginxProc
			if err == nil {
				n, err = startNginx(ctx, bin, s.dir, fmt.Sprintf("nginx-endpoints-%d", len(eps)),
					nginxConfig{protocol: protoHTTP1, listen: addrs[0], backends: eps}, s.pin)
			}
			if err != nil {
				ref.Err = "starting nginx: " + err.Error()
				peers = peers[:3]
				break
			}
			defer n.stop()
			peers = append(peers, &cpuPeer{name: fmt.Sprintf("nginx %d servers", len(eps)), pid: n.PID, extra: n.worker,
				endpoints: len(eps), listen: addrs[0]})
		}
	}
	const workers = 32
	for _, p := range peers {
		p.caller = newHTTPCaller(protoHTTP1, p.listen, workers, nil)
		defer p.caller.close()
	}
	// Warm-up: until each peer has a connection to about every endpoint it picks (p2c picks at random, so this
	// takes more than one request per endpoint): at least two requests per endpoint, then until its open files grow
	// by less than one per thousand endpoints in a second; at most warmupMax.
	const warmupMax = 60 * time.Second
	for _, p := range peers {
		deadline := time.Now().Add(warmupMax)
		var done int64
		for fds := p.fds(); time.Now().Before(deadline) && ctx.Err() == nil; {
			tp, errs := closedLoop(ctx, p.caller, workers, time.Second, 5*time.Second)
			if n, causes := errs.snapshot("warm-up"); n > 0 {
				return fail(fmt.Errorf("warm-up of %s: %d failed requests: %v", p.name, n, causes))
			}
			done += tp.Requests
			now := p.fds()
			if done >= int64(2*p.endpoints) && now-fds <= max(1, p.endpoints/1000) {
				break
			}
			fds = now
		}
	}
	fds0 := all.fds()
	for round := range 2 {
		for i, p := range peers {
			if s.prof != "" && round == 1 && p.admin != nil {
				go s.profile(p.admin, fmt.Sprintf("scale-%s-cpu.pprof", p.name[len("meshlet "):]))
			}
			err := p.measure(func() (int64, *errorTally) {
				tp, errs := closedLoop(ctx, p.caller, workers, s.phase(), 5*time.Second)
				return tp.Requests, errs
			})
			if err != nil {
				if i >= 3 { // nginx: the reference only
					ref.Err = err.Error()
					peers = peers[:3]
					break
				}
				return fail(err)
			}
		}
	}
	var rssWarm [3]int64
	for i, p := range peers[:3] {
		if ps, err := readProc(p.pid()); err == nil {
			rssWarm[i] = ps.RSSKiB
		}
	}
	if r := ratio(all.us(), one.us()); r != nil {
		cpu.Value = *r
	}
	cpu.Detail = fmt.Sprintf("meshlet CPU %.1f µs/request at 1 endpoint, %.1f µs at %d; %.0f vs %.0f req/s, meshlet busy %.0f%% vs %.0f%% of its CPU "+
		"(closed loop, %d workers, 2×%s each, in turn, after a warm-up until the connections stopped growing; lb p2c, the default; the %d-endpoint meshlet's open files %d before measuring, %d after, its RSS %.1f MiB, 1 endpoint's %.1f MiB); target: flat, within %.0f%%",
		one.us(), all.us(), scaleEndpoints, one.rps(), all.rps(), one.busy()*100, all.busy()*100,
		workers, s.phase(), scaleEndpoints, fds0, all.fds(), float64(rssWarm[1])/1024, float64(rssWarm[0])/1024, (flatCPU-1)*100)
	if r := ratio(subset.us(), one.us()); r != nil {
		sub.Value = *r
	}
	sub.Detail = fmt.Sprintf("meshlet CPU %.1f µs/request with %d endpoints and subset_size %d (against %.1f at 1 endpoint, the same turns); %.0f req/s; open files %d, RSS %.1f MiB after measuring",
		subset.us(), scaleEndpoints, scaleSubset, one.us(), subset.rps(), subset.fds(), float64(rssWarm[2])/1024)
	if len(peers) == 5 {
		if r := ratio(peers[4].us(), peers[3].us()); r != nil {
			ref.Value = *r
		}
		ref.Detail = fmt.Sprintf("nginx (master+worker) CPU %.1f µs/request with 1 server, %.1f µs with %d (random two least_conn, keepalive %d: every connection kept, nginx's cache of them searched in order; the same backend, load and turns as meshlet's); %.0f vs %.0f req/s",
			peers[3].us(), peers[4].us(), scaleEndpoints, scaleEndpoints, peers[3].rps(), peers[4].rps())
	}
	if why != "" {
		return []scaleFigure{mem, cpu, sub}
	}
	return []scaleFigure{mem, cpu, sub, ref}
}

// cpuPeer is one proxy of the endpoints figure: a meshlet (admin set) or an nginx (extra: its worker's PID).
type cpuPeer struct {
	name      string
	pid       func() int
	extra     int // another process whose CPU time counts (nginx's worker); 0: none
	endpoints int
	admin     *meshletProc // a meshlet, for its profile; nil for nginx
	listen    string       // where the load goes
	caller    *httpCaller
	cpuPerRequest
}

// cpuTime is the peer's processes' utime+stime.
func (p *cpuPeer) cpuTime() (time.Duration, error) {
	t, err := readCPU(p.pid())
	if err == nil && p.extra > 0 {
		var w time.Duration
		w, err = readCPU(p.extra)
		t += w
	}
	return t, err
}

// fds is the open files of the peer's processes (nginx's worker holds its connections).
func (p *cpuPeer) fds() int {
	if p.extra > 0 {
		return countFDs(p.extra)
	}
	return countFDs(p.pid())
}

// measure runs one phase (run returns the requests that succeeded) and adds the peer's CPU time over it; a
// failed request fails the measurement.
func (p *cpuPeer) measure(run func() (int64, *errorTally)) error {
	before, err := p.cpuTime()
	if err != nil {
		return err
	}
	start := time.Now()
	n, errs := run()
	wall := time.Since(start)
	after, err := p.cpuTime()
	if err != nil {
		return err
	}
	if k, causes := errs.snapshot("measure"); k > 0 {
		return fmt.Errorf("%s: %d failed requests: %v", p.name, k, causes)
	}
	p.cpu += after - before
	p.wall += wall
	p.reqs += n
	return nil
}

// cpuPerRequest adds up a peer's CPU time, the requests it served and the wall time over measured phases.
type cpuPerRequest struct {
	cpu, wall time.Duration
	reqs      int64
}

// us is the CPU time per request in µs, to one decimal (0 without a request).
func (c *cpuPerRequest) us() float64 {
	if c.reqs == 0 {
		return 0
	}
	return round1(float64(c.cpu.Microseconds()) / float64(c.reqs))
}

// rps is the requests per second of wall time; busy the share of one CPU the process used.
func (c *cpuPerRequest) rps() float64 { return float64(c.reqs) / max(c.wall.Seconds(), 1e-9) }
func (c *cpuPerRequest) busy() float64 {
	return c.cpu.Seconds() / max(c.wall.Seconds(), 1e-9)
}

// manyBackend is the HTTP/1.1 backend on many loopback listeners, served by child processes of this program
// (-serve-many), manyPerChild listeners each: one process could not hold 10,000 listeners and their connections
// within a usual open-files limit. The children run on the benchmark's CPUs. Every child also serves shared, one
// address they all listen on (SO_REUSEPORT: the kernel spreads its connections over them), so that one endpoint
// is served by the same processes as all of them: a comparison of 1 endpoint with many is not one of 1 backend
// process with several (which costs the proxy more CPU per request by itself: about 1.2× with 4).
type manyBackend struct {
	shared string
	addrs  []string
	cmds   []*exec.Cmd
	stdin  []io.WriteCloser // closing one ends its child
}

const manyPerChild = 2500

// manyMode is what startManyBackend's children serve: HTTP/1.1, h2c with prior knowledge (h2c), or HTTP/2 over
// TLS with tlsDir's bench-backend certificate (meshlet certs).
type manyMode struct {
	h2c    bool
	tlsDir string
}

// makeCerts makes the trust domain and the certificates of the mesh path (bench.makeCerts) in the work directory,
// once.
func (s *scaleRig) makeCerts() (string, error) {
	return makeCertsIn(s.bin, filepath.Join(s.dir, "certs"))
}

// startManyBackend starts children serving n listeners in all, as mode says, and returns once every listener is
// open.
func startManyBackend(n int, mode manyMode) (_ *manyBackend, err error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	shared, err := meshlettest.PickAddrs(1)
	if err != nil {
		return nil, err
	}
	b := &manyBackend{shared: shared[0]}
	defer func() {
		if err != nil {
			b.close()
		}
	}()
	for left := n; left > 0; left -= manyPerChild {
		k := min(manyPerChild, left)
		args := []string{"-serve-many", strconv.Itoa(k), "-serve-shared", b.shared}
		if mode.h2c {
			args = append(args, "-serve-h2c")
		}
		if mode.tlsDir != "" {
			args = append(args, "-serve-tls", mode.tlsDir)
		}
		cmd := exec.Command(self, args...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		cmd.Stderr = os.Stderr
		stdin, err := cmd.StdinPipe()
		if err != nil {
			return nil, err
		}
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			return nil, err
		}
		if err := cmd.Start(); err != nil {
			return nil, err
		}
		b.cmds, b.stdin = append(b.cmds, cmd), append(b.stdin, stdin)
		sc := bufio.NewScanner(stdout)
		got := 0
		for sc.Scan() && sc.Text() != "ready" {
			b.addrs = append(b.addrs, sc.Text())
			got++
		}
		if got != k {
			return nil, fmt.Errorf("backend child: %d of %d listeners (%v)", got, k, sc.Err())
		}
	}
	return b, nil
}

// close ends the children (stdin closed; killed after 5s) and waits for them.
func (b *manyBackend) close() {
	for _, w := range b.stdin {
		w.Close()
	}
	for _, cmd := range b.cmds {
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	}
}

// serveMany is the child of startManyBackend: it serves the backend as mode says (HTTP/1.1, h2c or HTTP/2 over
// TLS) on n listeners on 127.0.0.1 and on shared (if set) with SO_REUSEPORT, prints the n addresses one a line and
// then "ready", and serves until stdin closes.
func serveMany(n int, shared string, mode manyMode, stdin io.Reader, stdout, stderr io.Writer) int {
	var protos http.Protocols
	protos.SetHTTP1(!mode.h2c && mode.tlsDir == "")
	protos.SetUnencryptedHTTP2(mode.h2c)
	protos.SetHTTP2(mode.tlsDir != "")
	major := 1
	if mode.h2c || mode.tlsDir != "" {
		major = 2
	}
	var tlsConf *tls.Config
	if mode.tlsDir != "" {
		cert, err := tls.LoadX509KeyPair(mode.tlsDir+"/bench-backend.crt", mode.tlsDir+"/bench-backend.key")
		if err != nil {
			fmt.Fprintln(stderr, "meshlet-bench -serve-many:", err)
			return 1
		}
		// The client's certificate is asked for and not checked: the figure is the client's.
		tlsConf = &tls.Config{Certificates: []tls.Certificate{cert}, ClientAuth: tls.RequestClientCert, NextProtos: []string{"h2"}}
	}
	serve := func(srv *http.Server, ln net.Listener) {
		if tlsConf != nil {
			ln = tls.NewListener(ln, tlsConf)
		}
		srv.Serve(ln)
	}
	srv := &http.Server{Handler: httpHandler(major), Protocols: &protos, TLSConfig: tlsConf, ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout: 2 * time.Minute, ErrorLog: log.New(io.Discard, "", 0)}
	if shared != "" {
		lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
			var serr error
			if err := c.Control(func(fd uintptr) {
				serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, unix.SO_REUSEPORT, 1)
			}); err != nil {
				return err
			}
			return serr
		}}
		ln, err := lc.Listen(context.Background(), "tcp", shared)
		if err != nil {
			fmt.Fprintln(stderr, "meshlet-bench -serve-many: shared listener:", err)
			return 1
		}
		go serve(srv, ln)
	}
	w := bufio.NewWriter(stdout)
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			fmt.Fprintln(stderr, "meshlet-bench -serve-many:", err)
			return 1
		}
		go serve(srv, ln)
		fmt.Fprintln(w, ln.Addr())
	}
	fmt.Fprintln(w, "ready")
	w.Flush()
	io.Copy(io.Discard, stdin)
	srv.Close()
	return 0
}

// writeScale prints the figures, one row each, then their details.
func writeScale(w io.Writer, bin string, pin pinning, figs []scaleFigure) {
	fmt.Fprintf(w, "\nmeshlet-bench -scale  %s %s  %d CPUs  %s\nmeshlet: %s (%s)\npinning: %s; load average %s\n\n",
		runtime.Version(), runtime.GOOS+"/"+runtime.GOARCH, runtime.NumCPU(), time.Now().Format(time.RFC3339),
		bin, meshletVersion(bin), pin, loadAvg())
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "FIGURE\tVALUE\tTARGET\tRESULT")
	for _, f := range figs {
		val, target := "-", "none"
		if f.Err == "" {
			val = fmt.Sprintf("%g %s", f.Value, f.Unit)
		}
		if f.Target > 0 {
			target = fmt.Sprintf("≤ %g %s", f.Target, f.Unit)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", f.Name, val, target, f.result())
	}
	tw.Flush()
	fmt.Fprintln(w)
	for _, f := range figs {
		if f.Err != "" {
			fmt.Fprintf(w, "%s: not measured: %s\n", f.Name, f.Err)
		} else {
			fmt.Fprintf(w, "%s: %s\n", f.Name, f.Detail)
		}
	}
}

// failed returns figs, each with err as why it could not be measured.
func failed(err error, figs ...scaleFigure) []scaleFigure {
	for i := range figs {
		figs[i].Err = err.Error()
	}
	return figs
}
