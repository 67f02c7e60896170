package meshlettest

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"meshlet.dev/meshlet/internal/syncbuf"
)

// MeshletPkg is the package Main builds.
const MeshletPkg = "meshlet.dev/meshlet/cmd/meshlet"

// bin is the path of the meshlet binary Main built; Bin returns it.
var bin string

// Main is a TestMain for packages that run meshlet processes: it builds MeshletPkg once with -race, runs the
// tests and removes the binary. A fuzzing run (`make fuzz`: -run=^$, and each worker process runs TestMain
// again) builds nothing: building one per worker only delays the workers past the coordinator's deadline.
func Main(m *testing.M) {
	flag.Parse()
	if f := flag.Lookup("test.fuzz"); f != nil && f.Value.String() != "" {
		os.Exit(m.Run())
	}
	dir, err := os.MkdirTemp("", "meshlet-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	bin = filepath.Join(dir, "meshlet")
	build := exec.Command("go", "build", "-race", "-o", bin, MeshletPkg)
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building meshlet:", err)
		os.Exit(2)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// Bin is the path of the meshlet binary built by Main.
func Bin() string { return bin }

// FreeAddr returns a loopback address with a port that was free a moment ago, from below the kernel's ephemeral
// range (see freePort).
func FreeAddr(t testing.TB) string {
	t.Helper()
	a, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// FreeAddrs returns n distinct addresses of FreeAddr.
func FreeAddrs(t testing.TB, n int) []string {
	t.Helper()
	addrs := make([]string, n)
	for i := range addrs {
		addrs[i] = FreeAddr(t)
	}
	return addrs
}

// Start writes config (YAML) to a file and runs `meshlet run -config` on it. The config must set admin.listen to
// admin. It waits until /ready answers 200 and stops the process when the test ends.
func Start(t testing.TB, admin, config string) *Proc {
	t.Helper()
	p := Launch(t, config)
	p.Admin = admin
	if err := p.WaitReady(context.Background(), ReadyTimeout); err != nil {
		t.Fatalf("meshlet not ready: %v", err)
	}
	return p
}

// Launch starts meshlet on config with args after `run -config FILE`, without waiting for anything.
func Launch(t testing.TB, config string, args ...string) *Proc {
	t.Helper()
	path := WriteConfig(t, config)
	return Command(t, path, exec.Command(bin, append([]string{"run", "-config", path}, args...)...))
}

// WriteConfig writes config to a file of the test's and returns its path.
func WriteConfig(t testing.TB, config string) string {
	t.Helper()
	return WriteTemp(t, "meshlet.yaml", config)
}

// WriteTemp writes content to the file name in a new directory of the test's and returns its path.
func WriteTemp(t testing.TB, name, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// SyncBuffer is a bytes.Buffer safe for a process writing and a test reading.
type SyncBuffer = syncbuf.Buffer

// Command starts cmd (StartCmd), a meshlet that runs the config at path (directly, in another directory, or
// wrapped), its output in a log file of the test's; it is killed when the test ends and its log written to the
// test's output if the test failed.
func Command(t testing.TB, path string, cmd *exec.Cmd) *Proc {
	t.Helper()
	p, err := StartCmd("meshlet", "", path, filepath.Join(t.TempDir(), "meshlet.log"), cmd)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		p.Cmd.Process.Signal(syscall.SIGKILL)
		<-p.exited
		if t.Failed() {
			where := path
			if p.Cmd.Dir != "" {
				where += ", in " + p.Cmd.Dir
			}
			t.Logf("meshlet log (%s):\n%s", where, p.Log())
		}
	})
	return p
}

// Wait waits for the process to exit and returns its exit code; it fails the test after timeout.
func (p *Proc) Wait(t testing.TB, timeout time.Duration) int {
	t.Helper()
	select {
	case <-p.exited:
	case <-time.After(timeout):
		t.Fatalf("meshlet did not exit within %v\nlog:\n%s", timeout, p.Log())
	}
	if p.waitErr == nil {
		return 0
	}
	if ee, ok := p.waitErr.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	t.Fatalf("meshlet: %v", p.waitErr)
	return -1
}

// RewriteConfig replaces the config file of p (for reload tests).
func (p *Proc) RewriteConfig(t testing.TB, config string) {
	t.Helper()
	if err := os.WriteFile(p.CfgPath, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
}

// AdminGet fetches path from the admin listener and returns status and body.
func (p *Proc) AdminGet(t testing.TB, path string) (int, string) {
	t.Helper()
	resp, err := http.Get("http://" + p.Admin + path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// Metrics scrapes the admin listener's /metrics.
func (p *Proc) Metrics(t testing.TB) Metrics {
	t.Helper()
	m, err := Scrape(context.Background(), nil, "http://"+p.Admin+"/metrics")
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// MetricSum returns the sum of the samples of metric name (exact name, e.g. meshlet_requests_total) whose labels
// include every pair in labels (Metrics.Sum).
func (p *Proc) MetricSum(t testing.TB, name string, labels map[string]string) float64 {
	t.Helper()
	return p.Metrics(t).Sum(name, labels)
}

// WaitMetric polls until the metric reaches at least want or timeout passes, and returns its last value.
func (p *Proc) WaitMetric(t testing.TB, timeout time.Duration, name string, labels map[string]string, want float64) float64 {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		v := p.MetricSum(t, name, labels)
		if v >= want || time.Now().After(deadline) {
			return v
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Exec runs the meshlet binary with args to completion (30 s at most) and returns combined output and exit code.
func Exec(t testing.TB, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			return string(out), ee.ExitCode()
		}
		t.Fatalf("meshlet %v: %v", args, err)
	}
	return string(out), 0
}

// Eventually polls cond every 20ms until it returns true or timeout passes; it fails the test with msg then.
func Eventually(t testing.TB, timeout time.Duration, msg string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %v: %s", timeout, msg)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
