package admin

// Go's profiles on the admin listener (admin.pprof), served with runtime/pprof and runtime/trace directly: the
// paths and formats of net/http/pprof, which `go tool pprof URL` reads, without its HTML index (and the template
// packages it would link into the binary).

import (
	"fmt"
	"io"
	"net/http"
	"runtime"
	"runtime/pprof"
	"runtime/trace"
	"strconv"
	"time"

	"meshlet.dev/meshlet/resilience"
)

// maxProfileSeconds bounds ?seconds= of the CPU profile and the trace.
const maxProfileSeconds = 300

// pprofIndex lists the profiles, one path a line.
func pprofIndex(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	fmt.Fprintln(w, "profile?seconds=30 (CPU)")
	fmt.Fprintln(w, "trace?seconds=5")
	for _, p := range pprof.Profiles() {
		fmt.Fprintf(w, "%s (%d)\n", p.Name(), p.Count())
	}
}

// pprofNamed writes the profile {name} (heap, goroutine, allocs, block, mutex, threadcreate): ?debug=1 or 2 as
// text, else the protobuf that go tool pprof reads. ?gc=1 runs a garbage collection before a heap profile, as
// net/http/pprof does (the profile then shows the live heap as of that collection).
func pprofNamed(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	p := pprof.Lookup(name)
	if p == nil {
		http.Error(w, "no such profile", http.StatusNotFound)
		return
	}
	if gc, _ := strconv.Atoi(r.URL.Query().Get("gc")); gc > 0 && name == "heap" {
		runtime.GC()
	}
	debug, _ := strconv.Atoi(r.URL.Query().Get("debug"))
	if debug > 0 {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	} else {
		w.Header().Set("Content-Type", "application/octet-stream")
	}
	_ = p.WriteTo(w, debug)
}

// seconds reads ?seconds= (default def, at most maxProfileSeconds); false after answering 400.
func seconds(w http.ResponseWriter, r *http.Request, def int) (time.Duration, bool) {
	n := def
	if v := r.URL.Query().Get("seconds"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 1 || n > maxProfileSeconds {
			http.Error(w, fmt.Sprintf("seconds=%q: want 1..%d", v, maxProfileSeconds), http.StatusBadRequest)
			return 0, false
		}
	}
	return time.Duration(n) * time.Second, true
}

// pprofCPU writes a CPU profile of ?seconds= (default 30); one at a time (409 while another runs).
func pprofCPU(w http.ResponseWriter, r *http.Request) {
	record(w, r, 30, "the CPU profile", pprof.StartCPUProfile, pprof.StopCPUProfile)
}

// pprofTrace writes an execution trace of ?seconds= (default 1); one at a time (409 while another runs).
func pprofTrace(w http.ResponseWriter, r *http.Request) {
	record(w, r, 1, "the trace", trace.Start, trace.Stop)
}

// record runs start(w), waits ?seconds= (default def) or until the client goes away, and stops: what a CPU
// profile and a trace share.
func record(w http.ResponseWriter, r *http.Request, def int, what string, start func(io.Writer) error, stop func()) {
	d, ok := seconds(w, r, def)
	if !ok {
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	if err := start(w); err != nil {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		http.Error(w, "cannot start "+what+": "+err.Error(), http.StatusConflict)
		return
	}
	resilience.Sleep(r.Context(), d) // until d or the client goes away
	stop()
}
