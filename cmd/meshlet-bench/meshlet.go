package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

const (
	readyTimeout = 15 * time.Second // from start until GET /ready answers 200
	stopTimeout  = 10 * time.Second // from SIGTERM until the process must have exited (drain_timeout is 5s)
)

// meshletProc is one running meshlet process started by the benchmark.
type meshletProc struct {
	role    string // "meshlet", "A" (client-side sidecar) or "B" (server-side sidecar)
	admin   string // admin listen address
	cfgPath string
	logPath string
	cmd     *exec.Cmd
	logFile *os.File
	exited  chan struct{} // closed when the process has exited; waitErr is set then
	waitErr error
	failed  bool // waitReady already reported the process's failure
}

// name is how messages refer to the process.
func (m *meshletProc) name() string {
	if m.role == "meshlet" {
		return "meshlet"
	}
	return "meshlet " + m.role
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
	m := &meshletProc{
		role:    role,
		admin:   cfg.admin,
		cfgPath: filepath.Join(dir, name+".yaml"),
		logPath: filepath.Join(dir, name+".log"),
		exited:  make(chan struct{}),
	}
	if err := os.WriteFile(m.cfgPath, []byte(cfg.yaml()), 0o644); err != nil {
		return nil, err
	}
	f, err := os.Create(m.logPath)
	if err != nil {
		return nil, err
	}
	m.logFile = f
	m.cmd = exec.Command(bin, "run", "-config", m.cfgPath)
	m.cmd.Stdout, m.cmd.Stderr = f, f
	m.cmd.Env = cleanEnv()
	m.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := m.cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	go func() {
		m.waitErr = m.cmd.Wait()
		f.Close()
		close(m.exited)
	}()
	return m, nil
}

// cleanEnv is the environment without MESHLET_* variables, so the generated config is what runs.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "MESHLET_") {
			env = append(env, kv)
		}
	}
	return env
}

func (m *meshletProc) pid() int { return m.cmd.Process.Pid }

// waitReady polls GET /ready on the admin port until it answers 200, the process exits or readyTimeout passes.
func (m *meshletProc) waitReady(ctx context.Context) error {
	client := &http.Client{Timeout: time.Second}
	defer client.CloseIdleConnections()
	deadline := time.Now().Add(readyTimeout)
	last := "no answer"
	for time.Now().Before(deadline) {
		select {
		case <-m.exited:
			m.failed = true
			return fmt.Errorf("%s exited before it was ready (%v); log:\n%s", m.name(), m.waitErr, m.logTail(20))
		case <-ctx.Done():
			return ctx.Err()
		default:
		}
		resp, err := client.Get("http://" + m.admin + "/ready")
		if err == nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = fmt.Sprintf("%d %q", resp.StatusCode, bytes.TrimSpace(body))
		} else {
			last = err.Error()
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("%s not ready after %s (last /ready: %s); log:\n%s", m.name(), readyTimeout, last, m.logTail(20))
}

// stop sends SIGTERM and waits up to stopTimeout for the process to exit, then kills it. It returns an error
// if the process had already exited, did not exit in time, or exited with a non-zero status.
func (m *meshletProc) stop() error {
	select {
	case <-m.exited:
		if m.failed {
			return nil
		}
		return fmt.Errorf("%s had exited during the run (%v); log:\n%s", m.name(), m.waitErr, m.logTail(20))
	default:
	}
	if err := m.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		return fmt.Errorf("%s: SIGTERM: %w", m.name(), err)
	}
	t := time.NewTimer(stopTimeout)
	defer t.Stop()
	select {
	case <-m.exited:
	case <-t.C:
		m.cmd.Process.Kill()
		<-m.exited
		return fmt.Errorf("%s did not exit within %s of SIGTERM (drain_delay 0s, drain_timeout 5s); killed", m.name(), stopTimeout)
	}
	if m.waitErr != nil {
		return fmt.Errorf("%s exited with %v after SIGTERM; log:\n%s", m.name(), m.waitErr, m.logTail(20))
	}
	return nil
}

// logTail returns the last n lines of the process's log, indented.
func (m *meshletProc) logTail(n int) string {
	b, err := os.ReadFile(m.logPath)
	if err != nil {
		return "    (no log: " + err.Error() + ")"
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	if len(lines) == 1 && lines[0] == "" {
		return "    (empty)"
	}
	return "    " + strings.Join(lines, "\n    ")
}

// logLines returns how many lines the process logged; with log level warn each is a warning or error.
func (m *meshletProc) logLines() int {
	b, err := os.ReadFile(m.logPath)
	if err != nil {
		return 0
	}
	return bytes.Count(b, []byte("\n"))
}

// logHead returns the first n lines of the process's log, indented.
func (m *meshletProc) logHead(n int) string {
	b, err := os.ReadFile(m.logPath)
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

// freeAddrs returns n distinct loopback addresses whose ports were free a moment ago. All n listeners are
// open at once, so the ports differ.
func freeAddrs(n int) ([]string, error) {
	var out []string
	var errs []error
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			errs = append(errs, err)
			continue
		}
		defer l.Close()
		out = append(out, l.Addr().String())
	}
	return out, errors.Join(errs...)
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
