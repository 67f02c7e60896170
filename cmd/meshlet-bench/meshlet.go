package main

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"meshlet.dev/meshlet/internal/meshlettest"
	"meshlet.dev/meshlet/proxy"
)

// meshletProc is one running meshlet process started by the benchmark.
type meshletProc struct {
	*meshlettest.Proc
	failed bool         // waitReady already reported the process's failure
	admin  *http.Client // reaches the admin listener; nil: a client of the benchmark's own network (loopback)
}

// meshletConfig is what differs between the generated configs.
type meshletConfig struct {
	protocol  protocol
	admin     string
	inbound   string // inbound.listen; service.address is then backend
	backend   string
	upstream  string // upstreams[0].listen
	outbound  string // outbound.listen, transparent (mesh destinations only); upstreams[0].addresses is then endpoints
	endpoints string // upstreams[0].endpoints[0]
	peer      string // upstreams[0].peer: app | sidecar
	certs     string // directory of certificates made by meshlet certs; empty: no TLS
	pprof     bool   // admin.pprof: serve /debug/pprof/
}

// yaml renders c from meshlet's config types (meshlettest.File).
func (c meshletConfig) yaml() (string, error) {
	var f meshlettest.File
	proto := protocolInfo[c.protocol].meshlet
	name := "bench-client"
	if c.inbound != "" {
		name = "bench-backend"
		f.Service.Address, f.Service.Protocol = c.backend, proto
		f.Inbound.Listen = c.inbound
	}
	f.Service.Name = name
	if c.upstream != "" || c.outbound != "" {
		f.Upstreams = []proxy.UpstreamConfig{{Name: "bench-backend", Listen: c.upstream, Protocol: proto,
			Endpoints: []string{c.endpoints}, Peer: c.peer}}
	}
	if c.outbound != "" {
		// The app calls the backend at its own address; its redirected connections are the only way to meshlet.
		f.Outbound.Listen = c.outbound
		f.Outbound.Transparent = proxy.TransparentConfig{Enabled: true, MeshDestinationsOnly: true}
		f.Upstreams[0].Addresses = []string{c.endpoints}
	}
	if c.certs != "" {
		useCerts(&f, c.certs, name)
	}
	f.Admin.Listen = c.admin
	f.Admin.Pprof = c.pprof
	f.Log.Level = "warn"
	f.Shutdown = meshlettest.Shutdown{DrainDelay: meshlettest.Duration(0), DrainTimeout: 5 * time.Second}
	return f.YAML()
}

// useCerts gives f the certificate and key that meshlet certs issued in certs for service name, and its CA.
func useCerts(f *meshlettest.File, certs, name string) {
	f.TLS.CertFile, f.TLS.KeyFile, f.TLS.CAFile = certs+"/"+name+".crt", certs+"/"+name+".key", certs+"/ca.crt"
}

// startMeshlet writes cfg to dir and starts `bin run -config` with its output in a log file beside it.
// The process gets SIGKILL if the benchmark dies first.
func startMeshlet(bin, dir, name, role string, cfg meshletConfig) (*meshletProc, error) {
	display := "meshlet"
	if role != "meshlet" {
		display += " " + role // "A" (client-side sidecar) or "B" (server-side sidecar)
	}
	yaml, err := cfg.yaml()
	if err != nil {
		return nil, err
	}
	p, err := meshlettest.StartConfig(bin, display, cfg.admin, filepath.Join(dir, name+".yaml"),
		filepath.Join(dir, name+".log"), yaml)
	if err != nil {
		return nil, err
	}
	return &meshletProc{Proc: p}, nil
}

// waitReady waits for /ready (as meshlettest.Proc.WaitReady, through adminClient) and remembers when the process failed on the way.
func (m *meshletProc) waitReady(ctx context.Context) error {
	client := m.adminClient()
	defer client.CloseIdleConnections()
	err := m.WaitFor(ctx, meshlettest.ReadyTimeout, func(ctx context.Context) error {
		return meshlettest.HTTPOK(ctx, client, "http://"+m.Admin+"/ready")
	})
	if err != nil && !m.Alive() {
		m.failed = true
	}
	return err
}

// adminClient returns the client that reaches m's admin listener.
func (m *meshletProc) adminClient() *http.Client {
	if m.admin != nil {
		return m.admin
	}
	return &http.Client{Timeout: 2 * time.Second}
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
	return makeCertsIn(b.opts.meshlet, filepath.Join(b.dir, "certs"))
}

// makeCertsIn makes them with meshlet binary bin in dir, unless they are there.
func makeCertsIn(bin, dir string) (string, error) {
	if _, err := os.Stat(filepath.Join(dir, "ca.crt")); err == nil {
		return dir, nil
	}
	for _, args := range [][]string{
		{"certs", "ca", "-dir", dir, "-trust-domain", "bench.mesh"},
		{"certs", "issue", "-dir", dir, "-service", "bench-backend"},
		{"certs", "issue", "-dir", dir, "-service", "bench-client"},
	} {
		if out, err := exec.Command(bin, args...).CombinedOutput(); err != nil {
			return "", fmt.Errorf("meshlet %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	return dir, nil
}
