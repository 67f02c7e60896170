package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"meshlet.dev/meshlet/internal/meshlettest"
)

// meshletProc is one running meshlet process started by the benchmark.
type meshletProc struct {
	*meshlettest.Proc
	failed bool // waitReady already reported the process's failure
}

// meshletConfig is what differs between the generated configs.
type meshletConfig struct {
	protocol  protocol
	admin     string
	inbound   string // inbound.listen; service.address is then backend
	backend   string
	upstream  string // upstreams[0].listen
	endpoints string // upstreams[0].endpoints[0]
	peer      string // upstreams[0].peer: app | sidecar
	certs     string // directory of certificates made by meshlet certs; empty: no TLS
}

// yaml renders c in meshlet's config format (see the working spec).
func (c meshletConfig) yaml() string {
	var b strings.Builder
	proto := protocolInfo[c.protocol].meshlet
	if c.inbound != "" {
		fmt.Fprintf(&b, "service:\n  name: bench-backend\n  address: %s\n  protocol: %s\n", c.backend, proto)
		fmt.Fprintf(&b, "inbound:\n  listen: %s\n", c.inbound)
	} else {
		fmt.Fprintf(&b, "service:\n  name: bench-client\n")
	}
	if c.upstream != "" {
		fmt.Fprintf(&b, "upstreams:\n  - name: bench-backend\n    listen: %s\n    protocol: %s\n", c.upstream, proto)
		fmt.Fprintf(&b, "    endpoints: [%s]\n    peer: %s\n", c.endpoints, c.peer)
	}
	if c.certs != "" {
		name := "bench-client"
		if c.inbound != "" {
			name = "bench-backend"
		}
		fmt.Fprintf(&b, "tls:\n  cert_file: %s/%s.crt\n  key_file: %s/%s.key\n  ca_file: %s/ca.crt\n",
			c.certs, name, c.certs, name, c.certs)
	}
	fmt.Fprintf(&b, "admin:\n  listen: %s\n", c.admin)
	b.WriteString("log:\n  level: warn\n  access_log: false\n")
	b.WriteString("shutdown:\n  drain_delay: 0s\n  drain_timeout: 5s\n")
	return b.String()
}

// startMeshlet writes cfg to dir and starts `bin run -config` with its output in a log file beside it.
// The process gets SIGKILL if the benchmark dies first.
func startMeshlet(bin, dir, name, role string, cfg meshletConfig) (*meshletProc, error) {
	display := "meshlet"
	if role != "meshlet" {
		display += " " + role // "A" (client-side sidecar) or "B" (server-side sidecar)
	}
	p, err := meshlettest.StartConfig(bin, display, cfg.admin, filepath.Join(dir, name+".yaml"),
		filepath.Join(dir, name+".log"), cfg.yaml())
	if err != nil {
		return nil, err
	}
	return &meshletProc{Proc: p}, nil
}

// waitReady waits for /ready (meshlettest.Proc.WaitReady) and remembers when the process failed on the way.
func (m *meshletProc) waitReady(ctx context.Context) error {
	err := m.WaitReady(ctx, meshlettest.ReadyTimeout)
	if err != nil && !m.Alive() {
		m.failed = true
	}
	return err
}

// stop stops the process (meshlettest.Proc.Stop); one whose failure waitReady already reported is not reported
// again.
func (m *meshletProc) stop() error {
	if m.failed && !m.Alive() {
		return nil
	}
	return m.Stop()
}

// logLines returns how many lines the process logged; with log level warn each is a warning or error.
func (m *meshletProc) logLines() int {
	b, err := os.ReadFile(m.LogPath)
	if err != nil {
		return 0
	}
	return bytes.Count(b, []byte("\n"))
}

// logHead returns the first n lines of the process's log, indented.
func (m *meshletProc) logHead(n int) string {
	b, err := os.ReadFile(m.LogPath)
	if err != nil {
		return "    (no log: " + err.Error() + ")"
	}
	lines := strings.SplitN(strings.TrimRight(string(b), "\n"), "\n", n+1)
	if len(lines) > n {
		lines = lines[:n]
	}
	return "    " + strings.Join(lines, "\n    ")
}

// meshletVersion runs `bin version` and returns its output.
func meshletVersion(bin string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "version").CombinedOutput()
	if err != nil {
		return fmt.Sprintf("unknown (%s version: %v)", bin, err)
	}
	return strings.TrimSpace(string(out))
}

// makeCerts creates (once per run) a trust domain and the two services' certificates with `meshlet certs`,
// and returns their directory.
func (b *bench) makeCerts() (string, error) {
	dir := filepath.Join(b.dir, "certs")
	if _, err := os.Stat(filepath.Join(dir, "ca.crt")); err == nil {
		return dir, nil
	}
	for _, args := range [][]string{
		{"certs", "ca", "-dir", dir, "-trust-domain", "bench.mesh"},
		{"certs", "issue", "-dir", dir, "-service", "bench-backend"},
		{"certs", "issue", "-dir", dir, "-service", "bench-client"},
	} {
		if out, err := exec.Command(b.opts.meshlet, args...).CombinedOutput(); err != nil {
			return "", fmt.Errorf("meshlet %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	return dir, nil
}
