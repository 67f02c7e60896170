package e2e_test

// Issue 7: memory and goroutines stay bounded under many idle client connections and come back once they close.
// One meshlet serves 10,000 client connections on its name-routed outbound listener at once: half have had one
// request and sit idle in keep-alive, half connected and never sent a byte. The test reads meshlet's RSS
// (/proc/PID/status), go_goroutines and the Go heap (admin /metrics) before, at the peak and after all are closed.

import (
	"bufio"
	"debug/buildinfo"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"meshlet.dev/meshlet/internal/meshlettest"
	"meshlet.dev/meshlet/proxy"
)

const (
	idleConns   = 10000 // client connections open at the peak: half had a request, half none
	idleWorkers = 16    // goroutines opening them (and so at most 16 requests in flight: a small upstream pool)
)

// memSample is what the test reads of meshlet's memory and goroutines at one moment.
type memSample struct {
	rss        int64 // VmRSS, bytes
	goroutines int
	heapInuse  int64 // go_memstats_heap_inuse_bytes: live objects and garbage not yet collected
	nextGC     int64 // go_memstats_next_gc_bytes: the heap goal the last GC set from the heap it found live
	gcs        int   // go_gc_duration_seconds_count
	// heldFree is heap_idle - heap_released: free heap the runtime still holds and may give back to the OS (the
	// runtime's own estimate, runtime.MemStats), which its background scavenger returns gradually.
	heldFree int64
}

func (s memSample) String() string {
	return fmt.Sprintf("RSS %.1f MiB (%.1f MiB of it free heap not yet returned), Go heap in use %.1f MiB (goal %.1f MiB), %d goroutines",
		mib(s.rss), mib(s.heldFree), mib(s.heapInuse), mib(s.nextGC), s.goroutines)
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }

// memSample reads meshlet's RSS and, from one scrape of /metrics, its Go runtime figures.
func memSampleOf(t testing.TB, p *meshlettest.Proc) memSample {
	t.Helper()
	m := p.Metrics(t)
	v := map[string]float64{}
	for _, name := range []string{"go_goroutines", "go_memstats_heap_inuse_bytes", "go_memstats_next_gc_bytes",
		"go_gc_duration_seconds_count", "go_memstats_heap_idle_bytes", "go_memstats_heap_released_bytes"} {
		if len(m.Samples(name)) == 0 {
			t.Fatalf("/metrics has no %s", name)
		}
		v[name] = m.Sum(name, nil)
	}
	return memSample{rss: procRSS(t, p.Cmd.Process.Pid), goroutines: int(v["go_goroutines"]),
		heapInuse: int64(v["go_memstats_heap_inuse_bytes"]), nextGC: int64(v["go_memstats_next_gc_bytes"]),
		gcs:      int(v["go_gc_duration_seconds_count"]),
		heldFree: int64(v["go_memstats_heap_idle_bytes"] - v["go_memstats_heap_released_bytes"])}
}

// raceBuilt reports whether the binary at path was built with the race detector.
func raceBuilt(t testing.TB, path string) bool {
	t.Helper()
	bi, err := buildinfo.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range bi.Settings {
		if s.Key == "-race" {
			return s.Value == "true"
		}
	}
	return false
}

// procRSS returns the resident set size of process pid in bytes.
func procRSS(t testing.TB, pid int) int64 {
	t.Helper()
	return procField(t, pid, "status", "VmRSS:") << 10
}

// procNofile returns the soft open-files limit of process pid.
func procNofile(t testing.TB, pid int) int64 {
	t.Helper()
	return procField(t, pid, "limits", "Max open files")
}

// procField is meshlettest.ProcField; an error fails the test.
func procField(t testing.TB, pid int, file, key string) int64 {
	t.Helper()
	n, err := meshlettest.ProcField(pid, file, key)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// raiseNofile makes this process's open-files limit at least want if it can: the soft limit up to the hard one,
// and both when the hard limit is lower and the process may raise it (root); meshlet, started afterwards,
// inherits the limit. It fails unless the limit ends up at least need.
func raiseNofile(t testing.TB, want, need uint64) uint64 {
	t.Helper()
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	if lim.Cur >= want {
		return lim.Cur
	}
	if lim.Max < want {
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &syscall.Rlimit{Cur: want, Max: want}); err == nil {
			return want
		}
	}
	if lim.Cur < lim.Max {
		lim.Cur = lim.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
			t.Fatalf("raising RLIMIT_NOFILE to its hard limit %d: %v", lim.Max, err)
		}
	}
	if lim.Cur < need {
		t.Fatalf("RLIMIT_NOFILE is %d (hard limit %d) but this test needs %d (and %d to leave meshlet's descriptor "+
			"budget room): raise the hard limit (ulimit -Hn) where the tests run", lim.Cur, lim.Max, need, want)
	}
	return lim.Cur
}

// openIdle opens conns[i] for i in [from, to) to addr with idleWorkers goroutines. With request, each connection
// carries one GET and its response is read whole, leaving it idle in keep-alive; without, it only connects.
func openIdle(t *testing.T, addr string, conns []net.Conn, from, to int, request bool) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, idleWorkers)
	for w := range idleWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := from + w; i < to; i += idleWorkers {
				c, err := net.DialTimeout("tcp", addr, 10*time.Second)
				if err != nil {
					errs <- fmt.Errorf("connection %d: %w", i, err)
					return
				}
				conns[i] = c
				if request {
					if err := idleRequest(c, bufio.NewReaderSize(c, 512), "GET /idle HTTP/1.1\r\nHost: api\r\n\r\n"); err != nil {
						errs <- fmt.Errorf("connection %d: %w", i, err)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// idleRequest sends req (a keep-alive request for upstream api) on c and reads the whole response from br.
func idleRequest(c net.Conn, br *bufio.Reader, req string) error {
	c.SetDeadline(time.Now().Add(15 * time.Second))
	defer c.SetDeadline(time.Time{})
	if _, err := io.WriteString(c, req); err != nil {
		return err
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return err
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK || string(b) != "ok" || resp.Close {
		return fmt.Errorf("response %d %q (close %v), want 200 \"ok\" kept alive", resp.StatusCode, b, resp.Close)
	}
	return nil
}

// churner sends requests with 2,500 header fields (40 KiB) through meshlet on a few keep-alive connections: ordinary traffic
// that allocates enough for the garbage collector to run soon.
type churner struct {
	req     string
	conns   []net.Conn
	readers []*bufio.Reader
	sent    int
}

func newChurner(t *testing.T, addr string, n int) *churner {
	t.Helper()
	var b strings.Builder
	b.WriteString("GET /churn HTTP/1.1\r\nHost: api\r\n")
	for i := range 2500 { // many small fields: what costs a proxy the most heap per byte (a key, a value, a map entry)
		fmt.Fprintf(&b, "X-C%04d: %d\r\n", i, i)
	}
	b.WriteString("\r\n")
	ch := &churner{req: b.String()}
	for range n {
		c := meshlettest.DialHeld(t, addr)
		ch.conns, ch.readers = append(ch.conns, c), append(ch.readers, bufio.NewReader(c))
	}
	return ch
}

// batch sends perConn requests on each connection at once.
func (ch *churner) batch(t *testing.T, perConn int) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make([]error, len(ch.conns))
	for i := range ch.conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range perConn {
				if errs[i] = idleRequest(ch.conns[i], ch.readers[i], ch.req); errs[i] != nil {
					return
				}
			}
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatalf("churn request: %v", err)
		}
	}
	ch.sent += perConn * len(ch.conns)
}

func TestIdleConnectionsBounded(t *testing.T) {
	if testing.Short() {
		t.Skip("opens 10,000 connections")
	}
	start := time.Now()
	// The test process holds idleConns client sockets, meshlet as many accepted ones; meshlet's client
	// connections may take three quarters of its open-file limit less 128 (the rest is for upstream connections
	// and admin), so both need about 4/3 of idleConns; twice that where the limit can be raised.
	nofile := raiseNofile(t, 2*idleConns+1024, idleConns*4/3+512)

	backend := meshlettest.StartBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok")
	}), false, nil)
	out, admin := meshlettest.FreeAddr(t), meshlettest.FreeAddr(t)
	// max_connections above idleConns (the default is exactly 10,000); read_header_timeout long enough that the
	// connections that never send a request are still open at the peak (the default 10s is not much more than a
	// slow run of the opening phase takes).
	f := meshlettest.Sidecar("web", admin, proxy.UpstreamConfig{Name: "api", Protocol: "http", Endpoints: []string{meshlettest.HostOf(backend)}})
	f.Outbound.Listen = out
	f.Outbound.Limits = proxy.ListenerLimits{MaxConnections: 2 * idleConns, ReadHeaderTimeout: 2 * time.Minute}
	f.Log.Level = "warn"
	p := meshlettest.StartFile(t, f)
	if n := procNofile(t, p.Cmd.Process.Pid); n < idleConns+500 {
		t.Fatalf("meshlet's open-files limit is %d, below the %d this test needs", n, idleConns+500)
	}
	open := func() int {
		return int(p.MetricSum(t, "meshlet_connections_open", map[string]string{"direction": "outbound"}))
	}

	// Warm up the way the test loads meshlet later (idleWorkers connections with requests at once), so the
	// upstream connection pool and the runtime's caches are in the baseline.
	warm := make([]net.Conn, 4*idleWorkers)
	openIdle(t, out, warm, 0, len(warm), true)
	for _, c := range warm {
		c.Close()
	}
	meshlettest.Eventually(t, 10*time.Second, "warm-up connections closed", func() bool { return open() == 0 })
	time.Sleep(500 * time.Millisecond)
	base := memSampleOf(t, p)
	t.Logf("baseline (+%v): %v", time.Since(start).Round(time.Millisecond), base)

	conns := make([]net.Conn, idleConns)
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}()
	half := idleConns / 2
	openIdle(t, out, conns, 0, half, true)
	meshlettest.Eventually(t, 15*time.Second, "idle keep-alive connections counted open", func() bool { return open() == half })
	mid := memSampleOf(t, p)
	openIdle(t, out, conns, half, idleConns, false)
	// Every connection is held: meshlet's budget of client connections at an open-file limit of 20,000 (which a
	// process without CAP_SYS_RESOURCE cannot raise) is 14,904. One it refused would be counted.
	refused := func() int { return int(p.MetricSum(t, "meshlet_connections_refused_total", nil)) }
	meshlettest.Eventually(t, 15*time.Second, fmt.Sprintf("%d connections counted open or refused", idleConns), func() bool {
		return open()+refused() == idleConns
	})
	held := open()
	if held < idleConns {
		t.Fatalf("meshlet held %d of the %d connections and refused %d (open-file limit %d; see its log)",
			held, idleConns, refused(), nofile)
	}
	peak := memSampleOf(t, p)
	t.Logf("peak (+%v, %d open: %d idle after one request, %d never sent a byte): %v", time.Since(start).Round(time.Millisecond),
		held, half, held-half, peak)
	t.Logf("per connection: idle after a request %.2f goroutines, %.1f KiB RSS, %.1f KiB heap; never used %.2f goroutines, %.1f KiB RSS, %.1f KiB heap",
		float64(mid.goroutines-base.goroutines)/float64(half), float64(mid.rss-base.rss)/float64(half)/1024,
		float64(mid.heapInuse-base.heapInuse)/float64(half)/1024,
		float64(peak.goroutines-mid.goroutines)/float64(held-half), float64(peak.rss-mid.rss)/float64(held-half)/1024,
		float64(peak.heapInuse-mid.heapInuse)/float64(held-half)/1024)
	if per := float64(peak.goroutines-base.goroutines) / float64(held); per < 0.9 || per > 2 {
		t.Errorf("%.2f goroutines per open connection at the peak (%d over the baseline for %d connections), want 1 to 2",
			per, peak.goroutines-base.goroutines, held)
	}

	// Close them all: the first half with a FIN, the second with a RST (SO_LINGER 0), both ways clients go.
	for i, c := range conns {
		if i >= half {
			c.(*net.TCPConn).SetLinger(0)
		}
		c.Close()
		conns[i] = nil
	}
	meshlettest.Eventually(t, 20*time.Second, "all connections counted closed", func() bool { return open() == 0 })
	var after memSample
	meshlettest.Eventually(t, 10*time.Second, "goroutines back near the baseline", func() bool {
		after = memSampleOf(t, p)
		return after.goroutines <= base.goroutines+50
	})
	t.Logf("after closing (+%v): %v", time.Since(start).Round(time.Millisecond), after)

	// Memory. Go gives freed memory back to the OS only after a garbage collection has found it free, and then
	// gradually: the background scavenger returns a few MiB per second (measured). An idle meshlet allocates
	// almost nothing, so its next GC would be the runtime's forced one, two minutes later; ordinary traffic
	// (churn: requests with 2,500 header fields) brings two on. Then:
	//   - the heap goal the last GC set (twice the live heap) is back within 16 MiB of the baseline's (measured:
	//     4.4 MiB at the baseline, 130-220 MiB at the peak, 15-17 MiB after: the churn's own garbage);
	//   - RSS is within 32 MiB of the baseline's, not counting the free heap the runtime holds and is returning
	//     (heap_idle - heap_released, the runtime's own estimate of what it could give back). Measured on a
	//     build without -race: RSS 17 MiB at the baseline, 150 MiB at the peak, 150-220 MiB right after the
	//     GCs with all but a few MiB of the growth free heap, and 42-49 MiB 25-30s later when the scavenger is
	//     done (what stays is the 10,000 dead goroutines' g structs, which the runtime keeps for reuse, and its
	//     span and stack caches). Without -race the test also waits for that, at most 30s, and then holds raw
	//     RSS to baseline + 48 MiB.
	// Under the race detector (the harness builds meshlet with -race) RSS also holds ThreadSanitizer's shadow
	// memory and per-goroutine state, which its runtime does not give back: measured 55 MiB at the baseline,
	// 1.0 GiB at the peak, 1.4-2.0 GiB after (the heap's growth to the peak's goal during the churn adds
	// shadow). There the RSS margin is 3 GiB: it catches a runaway, not a leak; the heap goal and the goroutine
	// bounds are exact either way.
	race := raceBuilt(t, meshlettest.Bin())
	margin := int64(32 << 20)
	if race {
		margin = 3 << 30
	}
	ch := newChurner(t, out, 4)
	gcClosed := after.gcs
	meshlettest.Eventually(t, 20*time.Second, "two GCs and the heap goal back near the baseline's", func() bool {
		if after = memSampleOf(t, p); after.gcs >= gcClosed+2 && after.nextGC <= base.nextGC+16<<20 {
			return true
		}
		ch.batch(t, 10)
		return false
	})
	t.Logf("after two GCs (%d churn requests, +%v): %v", ch.sent, time.Since(start).Round(time.Millisecond), after)
	if after.rss-after.heldFree > base.rss+margin {
		t.Errorf("RSS %.1f MiB: %.1f MiB over the baseline's %.1f MiB that is not free heap being returned, more than %.0f MiB "+
			"(race detector %v)", mib(after.rss), mib(after.rss-after.heldFree-base.rss), mib(base.rss), mib(margin), race)
	}
	if !race {
		// Without the race detector, raw RSS comes back too once the scavenger is done: wait for it, bounded.
		const rawMargin = 48 << 20
		settle := time.Now().Add(30 * time.Second)
		for after.rss > base.rss+rawMargin && time.Now().Before(settle) {
			time.Sleep(250 * time.Millisecond)
			after = memSampleOf(t, p)
		}
		if after.rss > base.rss+rawMargin {
			t.Errorf("RSS %.1f MiB 30s after the GCs, more than %d MiB over the baseline's %.1f MiB: %v",
				mib(after.rss), rawMargin>>20, mib(base.rss), after)
		}
		t.Logf("after the scavenger (+%v): %v", time.Since(start).Round(time.Millisecond), after)
	}
	t.Logf("race detector %v; total %v", race, time.Since(start).Round(time.Millisecond))
}
