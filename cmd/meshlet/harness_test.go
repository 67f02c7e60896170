package main_test

// This file is the end-to-end harness: it builds the meshlet binary once and starts real meshlet processes on
// loopback. Tests in this package drive them with real clients and servers.

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// meshletBin is the path of the binary built by TestMain.
var meshletBin string

func TestMain(m *testing.M) {
	flag.Parse()
	if f := flag.Lookup("test.fuzz"); f != nil && f.Value.String() != "" {
		// A fuzzing run (`make fuzz`: -run=^$, and each worker process runs TestMain again) starts no
		// meshlet process: building one per worker only delays the workers past the coordinator's deadline.
		os.Exit(m.Run())
	}
	dir, err := os.MkdirTemp("", "meshlet-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	meshletBin = filepath.Join(dir, "meshlet")
	build := exec.Command("go", "build", "-race", "-o", meshletBin, ".")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building meshlet:", err)
		os.Exit(2)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// freeAddr returns a loopback address with a port that was free a moment ago. The port comes from below the
// kernel's ephemeral range: a port from that range (what port 0 gives) can be taken, between freeAddr and the
// meshlet that binds it, by any client connection of the tests running beside this one as its local port
// ("address already in use", one CI run in a few). A process-wide counter from a random start keeps two calls
// from trying the same port.
func freeAddr(t testing.TB) string {
	t.Helper()
	low, span := testPorts()
	for range span {
		port := low + int(nextTestPort.Add(1)%uint32(span))
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			continue
		}
		l.Close()
		return l.Addr().String()
	}
	l, err := net.Listen("tcp", "127.0.0.1:0") // the whole range is taken: what the kernel gives
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// nextTestPort counts the ports freeAddr tried, from a random start.
var nextTestPort = func() *atomic.Uint32 {
	var n atomic.Uint32
	n.Store(rand.Uint32())
	return &n
}()

// testPorts returns the range freeAddr picks from: up to 10,000 ports just below the ephemeral range
// (/proc/sys/net/ipv4/ip_local_port_range; 32768 when it cannot be read), never below 1024.
var testPorts = sync.OnceValues(func() (low, span int) {
	ephemeral := 32768
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if n, err := strconv.Atoi(f[0]); err == nil {
				ephemeral = n
			}
		}
	}
	low = max(1024, ephemeral-10000)
	return low, max(ephemeral-low, 1)
})

// syncBuffer is a bytes.Buffer safe for a process writing and a test reading.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// meshletProc is a running meshlet process.
type meshletProc struct {
	cmd        *exec.Cmd
	configPath string
	admin      string // admin listen address
	stderr     *syncBuffer
	done       chan struct{}
	exitErr    error
}

// startMeshlet writes config (YAML) to a file and runs `meshlet run -config` on it. The config must set
// admin.listen to admin. It waits until /ready answers 200 and stops the process when the test ends.
func startMeshlet(t testing.TB, admin, config string) *meshletProc {
	t.Helper()
	p := launchMeshlet(t, config)
	p.admin = admin
	if err := p.waitReady(15 * time.Second); err != nil {
		t.Fatalf("meshlet not ready: %v\nstderr:\n%s", err, p.stderr.String())
	}
	return p
}

// launchMeshlet starts meshlet on config without waiting for anything.
func launchMeshlet(t testing.TB, config string, args ...string) *meshletProc {
	t.Helper()
	path := writeMeshletConfig(t, config)
	return runMeshletCmd(t, path, exec.Command(meshletBin, append([]string{"run", "-config", path}, args...)...))
}

// writeMeshletConfig writes config to a file of the test's and returns its path.
func writeMeshletConfig(t testing.TB, config string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "meshlet.yaml")
	if err := os.WriteFile(path, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// runMeshletCmd starts cmd, a meshlet that runs the config at path (directly, in another directory, or wrapped),
// with its output captured; it is killed when the test ends and its output logged if the test failed.
func runMeshletCmd(t testing.TB, path string, cmd *exec.Cmd) *meshletProc {
	t.Helper()
	p := &meshletProc{cmd: cmd, configPath: path, stderr: &syncBuffer{}, done: make(chan struct{})}
	p.cmd.Stderr = p.stderr
	p.cmd.Stdout = p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.exitErr = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.cmd.Process.Signal(syscall.SIGKILL)
		<-p.done
		if t.Failed() {
			where := path
			if p.cmd.Dir != "" {
				where += ", in " + p.cmd.Dir
			}
			t.Logf("meshlet stderr (%s):\n%s", where, p.stderr.String())
		}
	})
	return p
}

// waitReady polls /ready until it answers 200, the process exits or the timeout passes.
func (p *meshletProc) waitReady(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		select {
		case <-p.done:
			return fmt.Errorf("meshlet exited: %v", p.exitErr)
		default:
		}
		resp, err := http.Get("http://" + p.admin + "/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("not ready after %v", timeout)
}

// wait waits for the process to exit and returns its exit code.
func (p *meshletProc) wait(t testing.TB, timeout time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(timeout):
		t.Fatalf("meshlet did not exit within %v\nstderr:\n%s", timeout, p.stderr.String())
	}
	if p.exitErr == nil {
		return 0
	}
	if ee, ok := p.exitErr.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	t.Fatalf("meshlet: %v", p.exitErr)
	return -1
}

// adminGet fetches path from the admin listener and returns status and body.
func (p *meshletProc) adminGet(t testing.TB, path string) (int, string) {
	t.Helper()
	resp, err := http.Get("http://" + p.admin + path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// metricValue returns the sum of the samples of the metric whose line starts with prefix (a metric name with an
// optional opening of its label set, e.g. `meshlet_requests_total{direction="outbound",upstream="api"`).
func (p *meshletProc) metricValue(t testing.TB, prefix string) float64 {
	t.Helper()
	_, body := p.adminGet(t, "/metrics")
	var sum float64
	for _, line := range strings.Split(body, "\n") {
		if !strings.HasPrefix(line, prefix) {
			continue
		}
		var v float64
		if _, err := fmt.Sscan(line[strings.LastIndexByte(line, ' ')+1:], &v); err == nil {
			sum += v
		}
	}
	return sum
}

// runMeshlet runs the binary with args to completion and returns combined output and exit code.
func runMeshlet(t testing.TB, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, meshletBin, args...).CombinedOutput()
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			return string(out), ee.ExitCode()
		}
		t.Fatalf("meshlet %v: %v", args, err)
	}
	return string(out), 0
}
