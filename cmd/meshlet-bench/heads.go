package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"meshlet.dev/meshlet/internal/meshlettest"
	"meshlet.dev/meshlet/proxy"
)

// The heads scenario (-heads N) measures what request heads that never end cost a meshlet (issue 11, item 14):
// N client connections each send headBytes of an HTTP/1.1 head without its final empty line and hold it, against
// one meshlet with its default limits (max_header_bytes 64 KiB, max_pending_header_bytes 16 MiB for the
// direction). It reports how many connections meshlet holds and how many it refuses (503 header_budget), and its
// RSS before, at the peak and after the connections close. read_header_timeout is raised to 2 minutes so that
// the measurement does not race it.

// headBytes is what each connection sends of its head: 60 KiB, just under max_header_bytes.
const headBytes = 60 << 10

// headsResult is what the scenario measured.
type headsResult struct {
	conns, held, refused, closed, failed int
	base, peak, hwm, after               int64   // KiB
	heapPeak, heapAfter                  float64 // Go heap in use, bytes
	budgetRefusals                       float64
}

// runHeads runs the heads scenario with n connections and prints its report; the exit status is 1 when meshlet
// failed or a connection could not be classified.
func runHeads(ctx context.Context, bin string, n int, stdout, stderr io.Writer) int {
	dir, err := os.MkdirTemp("", "meshlet-bench-heads-")
	if err != nil {
		fmt.Fprintln(stderr, "meshlet-bench:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	addrs, err := meshlettest.PickAddrs(2)
	if err != nil {
		fmt.Fprintln(stderr, "meshlet-bench:", err)
		return 1
	}
	var cfg meshlettest.File
	cfg.Service.Name = "heads-client"
	cfg.Outbound.Limits.ReadHeaderTimeout = 2 * time.Minute
	cfg.Upstreams = []proxy.UpstreamConfig{{Name: "heads", Listen: addrs[0], Protocol: "http", Endpoints: []string{"127.0.0.1:9"}}}
	cfg.Admin.Listen = addrs[1]
	cfg.Log.Level = "warn"
	cfg.Shutdown = meshlettest.Shutdown{DrainDelay: meshlettest.Duration(0), DrainTimeout: 5 * time.Second}
	yaml, err := cfg.YAML()
	if err != nil {
		fmt.Fprintln(stderr, "meshlet-bench:", err)
		return 1
	}
	p, err := meshlettest.StartConfig(bin, "meshlet", addrs[1], filepath.Join(dir, "heads.yaml"), filepath.Join(dir, "heads.log"), yaml)
	if err != nil {
		fmt.Fprintln(stderr, "meshlet-bench:", err)
		return 1
	}
	defer p.Stop()
	if err := p.WaitReady(ctx, meshlettest.ReadyTimeout); err != nil {
		fmt.Fprintln(stderr, "meshlet-bench:", err, "\n", meshlettest.LogTail(p.LogPath, 20))
		return 1
	}
	res, err := measureHeads(ctx, p, addrs[0], n)
	if err != nil {
		fmt.Fprintln(stderr, "meshlet-bench:", err, "\n", meshlettest.LogTail(p.LogPath, 20))
		return 1
	}
	writeHeads(stdout, res)
	if !p.Alive() || res.failed > 0 {
		fmt.Fprintf(stdout, "problems: meshlet alive %v, connections that failed before sending their head %d\n",
			p.Alive(), res.failed)
		return 1
	}
	return 0
}

// measureHeads opens the connections, classifies them and samples meshlet's memory.
func measureHeads(ctx context.Context, p *meshlettest.Proc, addr string, n int) (headsResult, error) {
	r := headsResult{conns: n}
	base, err := readProc(p.PID())
	if err != nil {
		return r, err
	}
	r.base = base.RSSKiB
	head := unfinishedHead()
	conns := make([]net.Conn, n)
	var wg sync.WaitGroup
	var mu sync.Mutex
	next := 0
	for range 64 {
		wg.Go(func() {
			for {
				mu.Lock()
				i := next
				next++
				mu.Unlock()
				if i >= n || ctx.Err() != nil {
					return
				}
				c, err := net.DialTimeout("tcp", addr, 5*time.Second)
				if err != nil {
					continue // counted as failed below (nil)
				}
				c.SetWriteDeadline(time.Now().Add(10 * time.Second))
				c.Write(head) // a refused connection may be closed before it is all written
				conns[i] = c
			}
		})
	}
	wg.Wait()
	time.Sleep(time.Second) // let meshlet read what was sent
	peak, err := readProc(p.PID())
	if err != nil {
		return r, err
	}
	r.peak, r.hwm = peak.RSSKiB, peak.HWMKiB
	r.heapPeak = metricValue(p.Admin, "go_memstats_heap_inuse_bytes", nil)
	kinds := make([]string, n)
	var cw sync.WaitGroup
	for i, c := range conns {
		if c != nil {
			cw.Go(func() { kinds[i] = classify(c) })
		}
	}
	cw.Wait()
	for i, c := range conns {
		switch {
		case c == nil:
			r.failed++
			continue
		case kinds[i] == "held":
			r.held++
		case kinds[i] == "refused":
			r.refused++
		default:
			r.closed++
		}
		c.Close()
	}
	time.Sleep(3 * time.Second) // connections closed, buffers returned
	after, err := readProc(p.PID())
	if err != nil {
		return r, err
	}
	r.after = after.RSSKiB
	r.heapAfter = metricValue(p.Admin, "go_memstats_heap_inuse_bytes", nil)
	r.budgetRefusals = metricValue(p.Admin, "meshlet_refused_requests_total", map[string]string{"direction": "outbound", "reason": "header_budget"})
	return r, nil
}

// unfinishedHead is a request head of headBytes without its final empty line.
func unfinishedHead() []byte {
	var b strings.Builder
	b.WriteString("GET /held HTTP/1.1\r\nHost: heads\r\n")
	for i := 0; b.Len() < headBytes-1100; i++ {
		fmt.Fprintf(&b, "X-Pad-%d: %s\r\n", i, strings.Repeat("p", 1000))
	}
	return []byte(b.String())
}

// classify reads what meshlet sent on c within a moment: nothing (held), a 503 (refused), or the connection's end.
func classify(c net.Conn) string {
	c.SetReadDeadline(time.Now().Add(time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			return "held"
		}
		return "closed"
	}
	resp.Body.Close()
	if resp.StatusCode == http.StatusServiceUnavailable {
		return "refused"
	}
	return "closed"
}

// metricValue reads the sum of the samples of metric name with labels from meshlet's /metrics; 0 when absent
// or unreadable.
func metricValue(admin, name string, labels map[string]string) float64 {
	m, err := meshlettest.Scrape(context.Background(), nil, "http://"+admin+"/metrics")
	if err != nil {
		return 0
	}
	return m.Sum(name, labels)
}

func writeHeads(w io.Writer, r headsResult) {
	fmt.Fprintf(w, "heads: %d connections, each holding %d KiB of a request head that never ends\n", r.conns, headBytes>>10)
	fmt.Fprintf(w, "  held by meshlet %d, refused with 503 %d (meshlet_refused_requests_total header_budget %.0f), closed %d, failed %d\n",
		r.held, r.refused, r.budgetRefusals, r.closed, r.failed)
	fmt.Fprintf(w, "  meshlet RSS: before %.1f MiB, with the connections %.1f MiB (peak %.1f MiB), after closing %.1f MiB\n",
		float64(r.base)/1024, float64(r.peak)/1024, float64(r.hwm)/1024, float64(r.after)/1024)
	fmt.Fprintf(w, "  meshlet Go heap in use: with the connections %.1f MiB, after closing %.1f MiB\n",
		r.heapPeak/(1<<20), r.heapAfter/(1<<20))
	if r.conns > 0 {
		fmt.Fprintf(w, "  per connection at the peak: %.1f KiB\n", float64(r.hwm-r.base)/float64(r.conns))
	}
}
