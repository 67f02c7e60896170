package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"time"

	"meshlet.dev/meshlet/internal/meshlettest"
)

// pathKind is how the app reaches the backend.
type pathKind string

const (
	pathDirect pathKind = "direct"   // app → backend
	pathOne    pathKind = "one"      // app → meshlet (peer: app) → backend
	pathTwo    pathKind = "two"      // app → meshlet A (peer: sidecar) → meshlet B inbound → backend
	pathTwoTLS pathKind = "two-mtls" // the same with mutual TLS between A and B (certificates from meshlet certs)
	// app → (nftables redirect) → meshlet's transparent outbound listener → backend: the app calls the backend's
	// own address, in network namespaces of the bench's (intercept.go); root only.
	pathIntercepted pathKind = "intercepted"
	// app → backend in the same namespaces, at an address the rules leave alone: the baseline of the paths in
	// the namespaces, as direct is the others'.
	pathNetnsDirect pathKind = "netns-direct"
	// app → meshlet's upstream listener on 127.0.0.1 → backend, in the same namespaces (loopback is never
	// redirected): the explicit listener in intercepted's surroundings.
	pathNetnsOne pathKind = "netns-one"
	// app → nginx (one worker, pinned like meshlet) → backend: the reference peer of one, when nginx is on PATH
	// (nginx.go).
	pathNginx pathKind = "nginx"
	// app → nginx A → (mutual TLS, TLS 1.3) → nginx B → backend: the reference peer of two-mtls, nginx's own mesh
	// path, both pinned like the meshlets (nginx.go).
	pathNginxTLS pathKind = "nginx-mtls"
)

var (
	allPaths   = []pathKind{pathDirect, pathOne, pathNginx, pathNetnsDirect, pathNetnsOne, pathIntercepted, pathTwo, pathTwoTLS, pathNginxTLS}
	pathLabels = map[pathKind]string{pathDirect: "direct", pathOne: "1 meshlet", pathTwo: "2 meshlets",
		pathTwoTLS: "2 meshlets mTLS", pathIntercepted: "intercepted", pathNetnsDirect: "direct netns",
		pathNetnsOne: "1 meshlet netns", pathNginx: "nginx", pathNginxTLS: "2 nginx mTLS"}
)

// isNginx reports whether path k is one of nginx's (the reference peer's).
func isNginx(k pathKind) bool { return k == pathNginx || k == pathNginxTLS }

// inPod reports whether path k runs in the intercepted path's network namespaces.
func inPod(k pathKind) bool { return k == pathIntercepted || k == pathNetnsDirect || k == pathNetnsOne }

// bench runs the whole benchmark once.
type bench struct {
	opts options
	log  io.Writer // progress and diagnostics
	dir  string    // work directory for configs and meshlet logs
	rep  *report
	// pod is the intercepted path's network (nil when the path is not run); podSkip says why the machine cannot
	// run it (not root), podFailed why making it failed.
	pod                *podNet
	podSkip, podFailed string
	pin                pinning // where meshlets and nginx run, and the benchmark itself (pin.go)
	nginx              string  // the nginx binary; "" skips the nginx path for nginxSkip
	nginxSkip          string
	// cpus, when set, are the CPUs to plan the pinning with instead of those the process may run on now: a
	// run after another (-vs) finds the process pinned already, to the benchmark's CPUs.
	cpus []int
}

// run measures every protocol × path and returns the report; failures are recorded in it, not returned.
func (b *bench) run(ctx context.Context) *report {
	b.rep = &report{Meta: b.meta()}
	dir, err := os.MkdirTemp("", "meshlet-bench-")
	if err != nil {
		b.rep.Problems = append(b.rep.Problems, "creating work directory: "+err.Error())
		return b.rep
	}
	b.dir = dir
	fmt.Fprintf(b.log, "meshlet-bench: %d protocol(s) × %d path(s), %s per phase; work directory %s\n",
		len(b.opts.protocols), len(b.opts.paths), b.opts.duration, dir)
	b.setUp()
	if slices.ContainsFunc(b.opts.paths, inPod) {
		b.openPod()
		defer b.closePod() // also on Ctrl-C: the signal ends ctx, the loops return and this runs
	}
	for _, p := range b.opts.protocols {
		if ctx.Err() != nil {
			b.rep.Problems = append(b.rep.Problems, "interrupted")
			break
		}
		b.runProtocol(ctx, p)
	}
	b.rep.Meta.LoadEnd = loadAvg()
	b.rep.compareIntercepted()
	b.rep.compareNginx()
	// Kept to look at when something failed; an interrupted run (Ctrl-C) leaves nothing behind.
	if b.opts.keep || len(b.rep.problems()) > 0 && ctx.Err() == nil {
		fmt.Fprintf(b.log, "meshlet configs and logs kept in %s\n", dir)
	} else {
		os.RemoveAll(dir)
	}
	return b.rep
}

// setUp pins the benchmark's threads (b.pin) and finds nginx for the nginx path, saying what it did.
func (b *bench) setUp() {
	if b.opts.pin {
		cpus, err := b.cpus, error(nil)
		if cpus == nil {
			cpus, err = allowedCPUs()
		}
		why := ""
		if err != nil {
			why = "reading the allowed CPUs: " + err.Error()
		} else if b.pin, why = planPinning(cpus); b.pin.enabled() {
			if err := b.pin.pinSelf(); err != nil {
				b.pin, why = pinning{}, err.Error()
			}
		}
		if why != "" {
			b.note("not pinned: " + why)
		}
	}
	if b.opts.profileDir != "" {
		if err := os.MkdirAll(b.opts.profileDir, 0o755); err != nil {
			b.problem("-profile: " + err.Error())
			b.opts.profileDir = ""
		}
	}
	b.rep.Meta.Pinning = b.pin.String()
	b.rep.Meta.GOMAXPROCS = runtime.GOMAXPROCS(0)
	fmt.Fprintf(b.log, "meshlet-bench: pinning: %s\n", b.pin)
	if slices.ContainsFunc(b.opts.paths, isNginx) {
		if b.nginx, b.nginxSkip = nginxPath(); b.nginx == "" {
			fmt.Fprintf(b.log, "meshlet-bench: the nginx path is skipped: %s\n", b.nginxSkip)
		} else {
			b.rep.Meta.Nginx = nginxVersion(b.nginx)
		}
	}
}

func (b *bench) meta() meta {
	m := meta{
		GoVersion:   runtime.Version(),
		OSArch:      runtime.GOOS + "/" + runtime.GOARCH,
		CPUs:        runtime.NumCPU(),
		GOMAXPROCS:  runtime.GOMAXPROCS(0),
		Date:        time.Now().Format(time.RFC3339),
		Meshlet:     b.opts.meshlet,
		Rate:        b.opts.rate,
		Duration:    b.opts.duration.String(),
		Warmup:      b.opts.warmup.String(),
		Concurrency: b.opts.concurrency,
		BodyBytes:   bodySize,
		PostBytes:   len(requestBody),
		Quick:       b.opts.quick,
		LoadStart:   loadAvg(),
	}
	if b.opts.meshlet != "" {
		m.MeshletVersion = meshletVersion(b.opts.meshlet)
	}
	return m
}

// runProtocol starts p's backends and the meshlets the chosen paths need, measures each path, then stops
// everything and records what went wrong.
func (b *bench) runProtocol(ctx context.Context, p protocol) {
	results := make(map[pathKind]*pathResult)
	for _, k := range b.opts.paths {
		r := &pathResult{Protocol: string(p), Path: string(k)}
		results[k] = r
		b.rep.Results = append(b.rep.Results, r)
	}
	be, err := startBackend(p)
	if err != nil {
		for _, r := range results {
			r.Failed = "starting backend: " + err.Error()
		}
		return
	}
	defer be.close()
	backends := map[pathKind]*backend{pathDirect: be} // direct's even when not measured: the other paths use it
	for k := range results {
		backends[k] = be
	}
	if pbe := b.podBackend(p, results); pbe != nil {
		defer pbe.close()
		for k := range results {
			if inPod(k) {
				backends[k] = pbe
			}
		}
	}

	var nginxH1 *backend // nginx proxies plain HTTP to HTTP/1.1 only: for h2c its paths have an HTTP/1.1 backend of their own
	for _, k := range []pathKind{pathNginx, pathNginxTLS} {
		r := results[k]
		switch {
		case r == nil:
		case b.nginx == "":
			r.Skipped = b.nginxSkip
		case p == protoH2C:
			if nginxH1 == nil {
				h1, err := startBackend(protoHTTP1)
				if err != nil {
					r.Failed = "starting nginx's HTTP/1.1 backend: " + err.Error()
					break
				}
				defer h1.close()
				nginxH1 = h1
			}
			backends[k] = nginxH1
		}
	}
	targets, procs := b.startMeshlets(ctx, p, backends, results)
	defer b.stopMeshlets(p, procs)

	for _, k := range b.opts.paths {
		r := results[k]
		if r.Failed != "" || r.Skipped != "" {
			fmt.Fprintf(b.log, "[%s %s] skipped: %s%s\n", p, pathLabels[k], r.Failed, r.Skipped)
			continue
		}
		if ctx.Err() != nil {
			r.Failed = "interrupted"
			continue
		}
		r.Target = targets[k]
		r.Meshlets = procs[k]
		conns := backends[k].conns.Load()
		b.runPath(ctx, p, k, r)
		r.BackendConns = backends[k].conns.Load() - conns
	}
	if d := results[pathDirect]; d != nil {
		for _, r := range results {
			r.compare(d)
		}
	}
}

// startMeshlets starts the meshlets for the one, two, netns-one and intercepted paths, waits until they are ready and
// records their idle memory. It returns each path's target address and processes; a path whose meshlets could not be
// started is marked failed in results.
func (b *bench) startMeshlets(ctx context.Context, p protocol, backends map[pathKind]*backend, results map[pathKind]*pathResult) (map[pathKind]string, map[pathKind][]*meshletStats) {
	backendAddr := backends[pathDirect].addr // every path's backend but the intercepted one's
	targets := map[pathKind]string{pathDirect: backendAddr}
	procs := map[pathKind][]*meshletStats{}
	start := func(k pathKind, name, role string, cfg meshletConfig) {
		if results[k].Failed != "" {
			return
		}
		cfg.pprof = b.opts.profileDir != ""
		var m *meshletProc
		err := b.pin.start(func() (err error) {
			m, err = startMeshlet(b.opts.meshlet, b.dir, fmt.Sprintf("%s-%s-%s", p, k, name), role, cfg)
			return err
		})
		if err != nil {
			results[k].Failed = err.Error()
			return
		}
		procs[k] = append(procs[k], &meshletStats{Role: role, PID: m.PID(), proc: m})
	}
	for _, k := range b.opts.paths {
		if k == pathDirect || results[k].Failed != "" || results[k].Skipped != "" {
			continue
		}
		if inPod(k) { // intercepted: the client calls the backend itself, only redirection brings it to meshlet
			targets[k] = podTarget(backends[k], k)
			if k == pathNetnsDirect {
				continue
			}
			if m, err := b.pod.startMeshlet(p, k, podEndpoint(backends[k])); err != nil {
				results[k].Failed = err.Error()
			} else {
				procs[k] = []*meshletStats{{Role: "meshlet", PID: m.PID(), proc: m}}
			}
			continue
		}
		addrs, err := meshlettest.PickAddrs(4)
		if err != nil {
			results[k].Failed = "finding free ports: " + err.Error()
			continue
		}
		switch k {
		case pathOne:
			targets[k] = addrs[1]
			start(k, "meshlet", "meshlet", meshletConfig{protocol: p, admin: addrs[0], upstream: addrs[1], endpoints: backendAddr, peer: "app"})
		case pathNginx:
			targets[k] = addrs[1]
			n, err := startNginx(ctx, b.nginx, b.dir, fmt.Sprintf("%s-nginx", p),
				nginxConfig{protocol: p, listen: addrs[1], backend: backends[k].addr}, b.pin)
			if err != nil {
				results[k].Failed = "starting nginx: " + err.Error()
				continue
			}
			procs[k] = []*meshletStats{{Role: "nginx", PID: n.PID(), extra: []int{n.worker}, nginx: n}}
		case pathNginxTLS:
			certs, err := b.makeCerts()
			if err != nil {
				results[k].Failed = "making certificates: " + err.Error()
				continue
			}
			targets[k] = addrs[3]
			for _, side := range []struct {
				role string
				cfg  nginxConfig
			}{
				{"A", nginxConfig{protocol: p, listen: addrs[3], backend: addrs[1], tls: certs, tlsOut: true}},
				{"B", nginxConfig{protocol: p, listen: addrs[1], backend: backends[k].addr, tls: certs, tlsIn: true}},
			} {
				n, err := startNginx(ctx, b.nginx, b.dir, fmt.Sprintf("%s-nginx-%s", p, side.role), side.cfg, b.pin)
				if err != nil {
					results[k].Failed = fmt.Sprintf("starting nginx %s: %v", side.role, err)
					break
				}
				procs[k] = append(procs[k], &meshletStats{Role: side.role, PID: n.PID(), extra: []int{n.worker}, nginx: n})
			}
		case pathTwo, pathTwoTLS:
			certs := ""
			if k == pathTwoTLS {
				if certs, err = b.makeCerts(); err != nil {
					results[k].Failed = "making certificates: " + err.Error()
					continue
				}
			}
			targets[k] = addrs[3]
			start(k, "B", "B", meshletConfig{protocol: p, admin: addrs[0], inbound: addrs[1], backend: backendAddr, certs: certs})
			start(k, "A", "A", meshletConfig{protocol: p, admin: addrs[2], upstream: addrs[3], endpoints: addrs[1], peer: "sidecar", certs: certs})
			slices.Reverse(procs[k]) // A (app side) first, as the table prints it
		}
	}
	for k, ms := range procs {
		for _, m := range ms {
			if results[k].Failed != "" {
				break
			}
			if m.proc != nil {
				if err := m.proc.waitReady(ctx); err != nil {
					results[k].Failed = err.Error()
					break
				}
			}
			if s := m.sample(); s.ok {
				m.RSSIdleKiB = s.RSSKiB
			}
		}
	}
	return targets, procs
}

// stopMeshlets stops every process in procs, recording problems (unclean exits) and notes (slow exits,
// warnings logged).
func (b *bench) stopMeshlets(p protocol, procs map[pathKind][]*meshletStats) {
	for _, k := range b.opts.paths {
		for _, m := range procs[k] {
			if m.nginx != nil {
				if err := m.nginx.stop(); err != nil {
					b.problem(fmt.Sprintf("%s %s: %v", protocolInfo[p].label, pathLabels[k], err))
				}
				continue
			}
			t0 := time.Now()
			err := m.proc.stop()
			m.StopSeconds = round1(time.Since(t0).Seconds()*10) / 10
			if err != nil {
				b.problem(fmt.Sprintf("%s %s: %v", protocolInfo[p].label, pathLabels[k], err))
			} else if m.StopSeconds > 2 {
				b.note(fmt.Sprintf("%s %s, %s took %.1fs to exit after SIGTERM (drain_delay 0s, nothing in flight)",
					protocolInfo[p].label, pathLabels[k], m.proc.Name, m.StopSeconds))
			}
			if n := m.proc.logLines(); n > 0 {
				m.LogLines = n
				b.note(fmt.Sprintf("%s %s, %s logged %d line(s) at level warn; first:\n%s",
					protocolInfo[p].label, pathLabels[k], m.proc.Name, n, m.proc.logHead(3)))
			}
		}
	}
}

// runPath measures one protocol × path: a probe request, a warm-up, the open-loop latency phase and the
// closed-loop throughput phase, sampling the path's meshlet processes around the phases.
func (b *bench) runPath(ctx context.Context, p protocol, k pathKind, r *pathResult) {
	tag := fmt.Sprintf("[%s %s]", p, pathLabels[k])
	var dial dialFunc
	if inPod(k) {
		dial = b.pod.dial // from inside the pod, where its connections are redirected (but netns-direct's)
	}
	inner, err := newCaller(p, r.Target, b.opts.concurrency, dial)
	if err != nil {
		r.Failed = "client: " + err.Error()
		return
	}
	c := &countingCaller{caller: inner}
	defer c.close()

	pctx, cancel := context.WithTimeout(ctx, b.opts.timeout)
	err = c.call(pctx)
	cancel()
	if err != nil {
		r.Failed = "probe request failed: " + errorKey(err)
		errs := &errorTally{}
		errs.add(err)
		r.addErrors("probe", errs)
		fmt.Fprintf(b.log, "%s %s\n", tag, r.Failed)
		return
	}
	if b.opts.warmup > 0 {
		_, errs := closedLoop(ctx, c, min(4, b.opts.concurrency), b.opts.warmup, b.opts.timeout)
		r.addErrors("warmup", errs)
	}

	before := sampleAll(r.Meshlets)
	lat, errs := openLoop(ctx, c, b.opts.rate, b.opts.duration, b.opts.timeout)
	r.Latency = &lat
	r.addErrors("latency", errs)
	mid := sampleAll(r.Meshlets)
	profiled := b.startProfiles(p, k, r.Meshlets, b.opts.duration)
	tp, errs := closedLoop(ctx, c, b.opts.concurrency, b.opts.duration, b.opts.timeout)
	profiled()
	r.Throughput = &tp
	r.addErrors("throughput", errs)
	after := sampleAll(r.Meshlets)

	for i, m := range r.Meshlets {
		if !before[i].ok || !mid[i].ok || !after[i].ok {
			continue // the process is gone: a problem reported when it is stopped
		}
		m.RSSLoadKiB = after[i].RSSKiB
		m.HWMKiB = after[i].HWMKiB
		m.CPUSeconds = (after[i].CPU - mid[i].CPU).Seconds()
		if tp.Requests > 0 {
			m.CPUPer1k = m.CPUSeconds / float64(tp.Requests) * 1000
			if after[i].SysR >= 0 && mid[i].SysR >= 0 {
				m.ReadsPerReq = float64(after[i].SysR-mid[i].SysR) / float64(tp.Requests)
				m.WritesPerReq = float64(after[i].SysW-mid[i].SysW) / float64(tp.Requests)
			}
		}
		if lat.Count > 0 {
			m.CPUPer1kAtRate = (mid[i].CPU - before[i].CPU).Seconds() / float64(lat.Count) * 1000
		}
	}
	b.crossCheck(p, k, r, c.n.Load())
	fmt.Fprintf(b.log, "%s latency p50 %s p99 %s p99.9 %s ms (%d sent, max %d in flight, generator lag p99 %.0fµs) | throughput %.0f req/s | errors %d\n",
		tag, fmtMs(lat.P50us), fmtMs(lat.P99us), fmtMs(lat.P999us), lat.Sent, lat.MaxInFlight, lat.LagP99us, tp.RPS, r.Errors)
}

// sampleAll reads every process's resources; a process that cannot be read gives a sample that is not ok.
func sampleAll(ms []*meshletStats) []procSample {
	out := make([]procSample, len(ms))
	for i, m := range ms {
		out[i] = m.sample()
	}
	return out
}

// sample reads m's resources: its process's, plus those of its extra processes (nginx's worker) added up; a
// process that cannot be read gives a sample that is not ok.
func (m *meshletStats) sample() procSample {
	var sum procSample
	for _, pid := range append([]int{m.PID}, m.extra...) {
		s, err := readProc(pid)
		if err != nil {
			return procSample{}
		}
		sum.RSSKiB += s.RSSKiB
		sum.HWMKiB += s.HWMKiB
		sum.CPU += s.CPU
		if s.SysR < 0 || sum.SysR < 0 {
			sum.SysR, sum.SysW = -1, -1
		} else {
			sum.SysR += s.SysR
			sum.SysW += s.SysW
		}
	}
	sum.ok = true
	return sum
}

func (b *bench) note(s string) {
	b.rep.Notes = append(b.rep.Notes, s)
	fmt.Fprintln(b.log, "note:", s)
}

func (b *bench) problem(s string) {
	b.rep.Problems = append(b.rep.Problems, s)
	fmt.Fprintln(b.log, "PROBLEM:", s)
}

// openPod makes the network of the paths in the namespaces (inPod), or records why it cannot (podSkip) or could
// not (podFailed).
func (b *bench) openPod() {
	if why := interceptUnavailable(); why != "" {
		b.podSkip = why
		fmt.Fprintf(b.log, "meshlet-bench: the paths in network namespaces (netns-direct, netns-one, intercepted) are skipped: %s\n", why)
		return
	}
	pod, err := newPodNet(b.dir, b.opts.meshlet)
	if err != nil {
		b.podFailed = "making its network namespaces: " + err.Error()
		return
	}
	b.pod = pod
	pod.pin = b.pin
	fmt.Fprintf(b.log, "meshlet-bench: netns-direct, netns-one and intercepted paths: client and meshlets in network namespace %s, backend in %s\n",
		pod.pod.Name, pod.peer.Name)
}

// closePod removes the intercepted path's network, once every meshlet in it has been stopped.
func (b *bench) closePod() {
	if b.pod != nil {
		b.pod.close()
		b.pod = nil
	}
}

// podBackend starts p's backend in the peer namespace for the paths of results that run in the pod (inPod), and
// returns it (nil: no such path, or none could start); without one it marks those paths skipped or failed.
func (b *bench) podBackend(p protocol, results map[pathKind]*pathResult) *backend {
	var rs []*pathResult
	for k, r := range results {
		if inPod(k) {
			rs = append(rs, r)
		}
	}
	if len(rs) == 0 {
		return nil
	}
	var skipped, failed string
	switch {
	case b.podSkip != "":
		skipped = b.podSkip
	case b.pod == nil:
		failed = b.podFailed
	default:
		be, err := b.pod.startBackend(p)
		if err == nil {
			return be
		}
		failed = "starting backend in the peer namespace: " + err.Error()
	}
	for _, r := range rs {
		r.Skipped, r.Failed = skipped, failed
	}
	return nil
}
