package main

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestPercentile(t *testing.T) {
	sorted := make([]time.Duration, 1000)
	for i := range sorted {
		sorted[i] = time.Duration(i+1) * time.Microsecond
	}
	for _, tc := range []struct {
		q    float64
		want time.Duration
	}{
		{0.5, 500 * time.Microsecond},
		{0.99, 990 * time.Microsecond},
		{0.999, 999 * time.Microsecond},
		{1, 1000 * time.Microsecond},
		{0, 1 * time.Microsecond},
	} {
		if got := percentile(sorted, tc.q); got != tc.want {
			t.Errorf("percentile(%v) = %v, want %v", tc.q, got, tc.want)
		}
	}
}

func TestReadProcSelf(t *testing.T) {
	s, err := readProc(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if s.RSSKiB <= 0 || s.HWMKiB < s.RSSKiB {
		t.Errorf("RSS %d KiB, peak %d KiB: want 0 < RSS <= peak", s.RSSKiB, s.HWMKiB)
	}
	// VmRSS is RssAnon + RssFile + RssShmem; a Go test binary has pages of both of the first two.
	if s.AnonKiB <= 0 || s.FileKiB <= 0 || s.AnonKiB+s.FileKiB > s.RSSKiB {
		t.Errorf("RssAnon %d KiB + RssFile %d KiB, VmRSS %d KiB: want both > 0 and their sum <= VmRSS", s.AnonKiB, s.FileKiB, s.RSSKiB)
	}
	if s.CPU < 0 {
		t.Errorf("CPU %v < 0", s.CPU)
	}
	// 100 writes to a pipe are counted as 100 more write syscalls (at least: the runtime may make its own).
	if s.SysW < 0 {
		t.Skip("/proc/self/io is not readable here")
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	for range 100 {
		if _, err := w.Write([]byte{1}); err != nil {
			t.Fatal(err)
		}
	}
	after, err := readProc(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if d := after.SysW - s.SysW; d < 100 {
		t.Errorf("write syscalls grew by %d over 100 writes", d)
	}
}

// TestDirectPath runs both load phases against each in-process backend: every request must succeed.
func TestDirectPath(t *testing.T) {
	for _, p := range []protocol{protoHTTP1, protoH2C, protoGRPC} {
		t.Run(string(p), func(t *testing.T) {
			c := backendAndCaller(t, p)
			ctx := context.Background()
			lat, errs := openLoop(ctx, c, 500, 200*time.Millisecond, 5*time.Second)
			if n, causes := errs.snapshot("latency"); n > 0 || lat.Count != 100 {
				t.Errorf("open loop: %d ok of 100, errors %v", lat.Count, causes)
			}
			tp, errs := closedLoop(ctx, c, 4, 200*time.Millisecond, 5*time.Second)
			if n, causes := errs.snapshot("throughput"); n > 0 || tp.Requests == 0 {
				t.Errorf("closed loop: %d ok, errors %v", tp.Requests, causes)
			}
		})
	}
}

// backendAndCaller starts p's backend and a caller of it (4 connections), both closed when the test ends.
func backendAndCaller(t *testing.T, p protocol) caller {
	t.Helper()
	be, err := startBackend(p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(be.close)
	c, err := newCaller(p, be.addr, 4, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.close)
	return c
}

// TestConfigsPassCheck runs `meshlet check` on each generated config when MESHLET_BIN names a binary.
func TestConfigsPassCheck(t *testing.T) {
	bin := os.Getenv("MESHLET_BIN")
	if bin == "" {
		t.Skip("MESHLET_BIN not set")
	}
	dir := t.TempDir()
	for _, p := range []protocol{protoHTTP1, protoH2C, protoGRPC} {
		for name, cfg := range map[string]meshletConfig{
			"one": {protocol: p, admin: "127.0.0.1:1", upstream: "127.0.0.1:2", endpoints: "127.0.0.1:3", peer: "app"},
			"B":   {protocol: p, admin: "127.0.0.1:1", inbound: "127.0.0.1:2", backend: "127.0.0.1:3"},
			"A":   {protocol: p, admin: "127.0.0.1:1", upstream: "127.0.0.1:2", endpoints: "127.0.0.1:3", peer: "sidecar"},
		} {
			path := filepath.Join(dir, string(p)+"-"+name+".yaml")
			y, err := cfg.yaml()
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, []byte(y), 0o644); err != nil {
				t.Fatal(err)
			}
			out, err := exec.Command(bin, "check", "-config", path).CombinedOutput()
			if err != nil || !strings.Contains(string(out), "config ok") {
				t.Errorf("%s %s: meshlet check: %v\n%s\nconfig:\n%s", p, name, err, out, y)
			}
		}
	}
}

// -post N: HTTP/1.1 and h2c requests are POSTs with an N-byte body, which the backend checks; out of range refused.
func TestPostBody(t *testing.T) {
	if o, err := parseFlags([]string{"-post", "256"}, io.Discard); err != nil || o.post != 256 {
		t.Fatalf("-post 256: %+v, %v", o.post, err)
	}
	defer func() { requestBody = nil }()
	for _, p := range []protocol{protoHTTP1, protoH2C} {
		t.Run(string(p), func(t *testing.T) {
			c := backendAndCaller(t, p)
			requestBody = bytes.Repeat([]byte("p"), 256)
			if err := c.call(context.Background()); err != nil {
				t.Fatalf("POST with the body the backend expects: %v", err)
			}
			hc := c.(*httpCaller)
			resp, err := hc.client.Post(hc.url, "text/plain", strings.NewReader("short"))
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusBadRequest {
				t.Errorf("a body of 5 bytes when 256 are expected: status %d, want 400", resp.StatusCode)
			}
		})
	}
	var stderr strings.Builder
	if code := run([]string{"-post", "-1"}, io.Discard, &stderr); code != 2 || !strings.Contains(stderr.String(), "-post") {
		t.Errorf("-post -1: exit %d, %q; want 2 and a message naming -post", code, stderr.String())
	}
}

// TestIdleFloors builds rssfloor plain and with client_golang, and measures both as make scale's idle RSS
// reference rows: each is measured, and the one with client_golang is the larger binary with more of it resident
// (it links and initializes the metrics library and protobuf; the plain one does not).
func TestIdleFloors(t *testing.T) {
	if testing.Short() {
		t.Skip("builds two binaries")
	}
	var log bytes.Buffer
	s := &scaleRig{dir: t.TempDir(), log: &log}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	figs := s.idleFloors(ctx)
	if len(figs) != 2 {
		t.Fatalf("%d reference rows, want 2; log: %s", len(figs), log.String())
	}
	for _, f := range figs {
		if f.Err != "" || f.Value <= 0 || f.Target != 0 || f.result() != "-" {
			t.Errorf("%+v: want a value, no error, no target", f)
		}
	}
	if figs[1].Value <= figs[0].Value {
		t.Errorf("with client_golang %v MiB, without %v MiB: want more with it", figs[1].Value, figs[0].Value)
	}
	plain, err := os.Stat(filepath.Join(s.dir, "rssfloor-plain"))
	if err != nil {
		t.Fatal(err)
	}
	prom, err := os.Stat(filepath.Join(s.dir, "rssfloor-prom"))
	if err != nil {
		t.Fatal(err)
	}
	if prom.Size() <= plain.Size()+1<<20 {
		t.Errorf("binary with client_golang %d bytes, without %d: want over 1 MiB more (the tag did not link it?)", prom.Size(), plain.Size())
	}
}
