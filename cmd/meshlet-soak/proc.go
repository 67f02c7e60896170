package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"meshlet.dev/meshlet/internal/meshlettest"
)

// meshletProc is one running meshlet process.
type meshletProc struct {
	*meshlettest.Proc
	name string // "A", "B0", "B1#3" (instance B1, third generation)
	http *http.Client
}

// startMeshlet writes yaml to cfgPath and starts `bin run -config cfgPath`, its output appended to logPath.
// The process gets SIGKILL if this program dies first.
func startMeshlet(bin, name, admin, cfgPath, logPath, yaml string) (*meshletProc, error) {
	p, err := meshlettest.StartConfig(bin, "meshlet "+name, admin, cfgPath, logPath, yaml)
	if err != nil {
		return nil, err
	}
	return &meshletProc{Proc: p, name: name, http: &http.Client{Timeout: 3 * time.Second}}, nil
}

// metrics scrapes /metrics.
func (m *meshletProc) metrics() (meshlettest.Metrics, error) {
	mt, err := meshlettest.Scrape(context.Background(), m.http, "http://"+m.Admin+"/metrics")
	if err != nil {
		return nil, fmt.Errorf("meshlet %s: %w", m.name, err)
	}
	return mt, nil
}

// readRSS returns VmRSS of pid in bytes.
func readRSS(pid int) (int64, error) {
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for line := range strings.SplitSeq(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(v)
			if len(f) != 2 || f[1] != "kB" {
				return 0, fmt.Errorf("/proc/%d/status: unexpected VmRSS %q", pid, v)
			}
			kib, err := strconv.ParseInt(f[0], 10, 64)
			return kib << 10, err
		}
	}
	return 0, fmt.Errorf("/proc/%d/status: no VmRSS", pid)
}

// logErrors returns the lines of a meshlet log at level ERROR (at most max of them) and how many there were.
func logErrors(path string, max int) ([]string, int) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, 0
	}
	var out []string
	n := 0
	for line := range strings.SplitSeq(string(b), "\n") {
		if strings.Contains(line, `"level":"ERROR"`) {
			n++
			if len(out) < max {
				out = append(out, line)
			}
		}
	}
	return out, n
}

// runMeshletCmd runs `bin args...` (the certs subcommands) with a timeout.
func runMeshletCmd(bin string, args ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("meshlet %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return nil
}

// certs manages the trust domain and the two leaves (soak-client for A, soak-server for every B) in dir.
type certs struct {
	bin, dir string
	issued   int // rotations so far
}

const (
	clientService = "soak-client"
	serverService = "soak-server"
)

func newCerts(bin, dir string) (*certs, error) {
	c := &certs{bin: bin, dir: dir}
	if err := runMeshletCmd(bin, "certs", "ca", "-dir", dir, "-trust-domain", "soak.mesh"); err != nil {
		return nil, err
	}
	for _, svc := range []string{clientService, serverService} {
		if err := runMeshletCmd(bin, "certs", "issue", "-dir", dir, "-service", svc); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// rotate issues new leaves for both services. `meshlet certs issue` writes the key and then the certificate,
// each atomically; it runs in a staging directory (a copy of the CA) and the two files are then renamed into
// place, key first, so the window in which the live key and certificate disagree is one rename.
func (c *certs) rotate() error {
	c.issued++
	stage := filepath.Join(c.dir, fmt.Sprintf("stage-%d", c.issued))
	if err := os.MkdirAll(stage, 0o700); err != nil {
		return err
	}
	defer os.RemoveAll(stage)
	for _, f := range []string{"ca.crt", "ca.key"} {
		b, err := os.ReadFile(filepath.Join(c.dir, f))
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(stage, f), b, 0o600); err != nil {
			return err
		}
	}
	// A lifetime that differs per rotation, so the new leaf is visibly new (meshlet_tls_certificate_expiry_seconds).
	lifetime := fmt.Sprintf("%dh", 2000+c.issued)
	var errs []error
	for _, svc := range []string{clientService, serverService} {
		if err := runMeshletCmd(c.bin, "certs", "issue", "-dir", stage, "-service", svc, "-lifetime", lifetime); err != nil {
			return err
		}
		for _, ext := range []string{".key", ".crt"} {
			errs = append(errs, os.Rename(filepath.Join(stage, svc+ext), filepath.Join(c.dir, svc+ext)))
		}
	}
	return errors.Join(errs...)
}

// logWarnings counts a meshlet log's WARN lines by message.
func logWarnings(path string) map[string]int {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	out := map[string]int{}
	for line := range strings.SplitSeq(string(b), "\n") {
		if !strings.Contains(line, `"level":"WARN"`) {
			continue
		}
		_, msg, _ := strings.Cut(line, `"msg":`)
		if q, err := strconv.QuotedPrefix(msg); err == nil {
			msg, _ = strconv.Unquote(q)
		}
		out[msg]++
	}
	return out
}
