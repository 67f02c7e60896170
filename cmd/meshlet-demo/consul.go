package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"meshlet.dev/meshlet/internal/meshlettest"
)

// consulHCL is the config of the demo's Consul dev agent: loopback only, the ports of t.consulPorts, no update
// check, no gRPC (meshlet uses the HTTP API).
func consulHCL(t *topology) (string, error) {
	p, err := t.consulPorts()
	if err != nil {
		return "", err
	}
	return fmt.Sprintf(`disable_update_check = true
node_name = "meshlet-demo"
bind_addr = "127.0.0.1"
client_addr = "127.0.0.1"
advertise_addr = "127.0.0.1"
log_level = "warn"
ports {
  http = %d
  dns = %d
  serf_lan = %d
  serf_wan = %d
  server = %d
  grpc = -1
  grpc_tls = -1
}
`, p["http"], p["dns"], p["serf_lan"], p["serf_wan"], p["server"]), nil
}

// startConsul starts the dev agent of the Consul variant and waits until it has a leader. It returns the process
// also on error, so that the caller stops it.
func startConsul(ctx context.Context, o options, t *topology, logDir string) (*process, error) {
	hcl, err := consulHCL(t)
	if err != nil {
		return nil, err
	}
	cfg := filepath.Join(logDir, "consul.hcl")
	if err := os.WriteFile(cfg, []byte(hcl), 0o600); err != nil {
		return nil, err
	}
	p, err := startProcess("consul", logDir, "consul.log", o.consul, "agent", "-dev", "-config-file", cfg)
	if err != nil {
		return nil, err
	}
	readyCtx, cancel := context.WithTimeout(ctx, o.startTimeout)
	defer cancel()
	leader := func(ctx context.Context) error {
		ctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		body, err := fetch(ctx, "http://"+t.Consul+"/v1/status/leader")
		if err != nil {
			return err
		}
		if strings.TrimSpace(body) == `""` {
			return errors.New("no leader yet")
		}
		return nil
	}
	if err := waitReady(readyCtx, p, leader); err != nil {
		return p, err
	}
	fmt.Printf("  %-13s  pid %-6d  Consul dev agent, http://%s/ui (config %s)\n", "consul", p.PID(), t.Consul, cfg)
	return p, nil
}

// stopConsul stops the agent by its PID with SIGINT and waits; Consul exits 1 on SIGINT, which is normal.
func stopConsul(p *process, timeout time.Duration) error {
	if !p.Alive() {
		return diedError(p)
	}
	p.Cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-p.Exited():
	case <-time.After(timeout):
		p.Kill()
		return fmt.Errorf("consul still running %v after SIGINT: killed (log: %s)", timeout, p.LogPath)
	}
	var ee *exec.ExitError
	if err := p.WaitErr(); err != nil && !(errors.As(err, &ee) && ee.ExitCode() == 1) {
		return fmt.Errorf("consul ended with %v (log: %s)", err, p.LogPath)
	}
	return nil
}

// hasEndpoints is ready when the meshlet at admin has at least one endpoint for each of upstreams (the Consul
// variant: web's meshlet is ready at its first answer from Consul, which may come before api registered).
func hasEndpoints(admin string, upstreams ...string) func(context.Context) error {
	return func(ctx context.Context) error {
		ctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		fams, err := meshlettest.Scrape(ctx, nil, "http://"+admin+"/metrics")
		if err != nil {
			return err
		}
		have := map[string]bool{}
		for _, m := range fams["meshlet_upstream_endpoints"].GetMetric() {
			if m.GetGauge().GetValue() > 0 {
				have[meshlettest.Labels(m)["upstream"]] = true
			}
		}
		for _, u := range upstreams {
			if !have[u] {
				return fmt.Errorf("upstream %s: no endpoint from Consul yet", u)
			}
		}
		return nil
	}
}
