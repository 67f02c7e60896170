// Package discoverytest runs a real Consul agent for tests, the way net/http/httptest runs a real server.
//
// The agent is `consul agent -dev` bound to 127.0.0.1 on free ports, found through $MESHLET_CONSUL_BIN or
// bin/consul at the module root (`make consul` builds it). Without a binary the test is skipped with a message
// saying how to get one, except with CI=true, where it fails.
package discoverytest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"meshlet.dev/meshlet/internal/syncbuf"
	"meshlet.dev/meshlet/internal/testports"
	"meshlet.dev/meshlet/internal/toolbin"
)

// ManagementToken is the ACL token with every permission of an agent started with Options.ACL.
const ManagementToken = "d3b07384-d113-4ec6-8ab8-5d0c6e1e2f11"

// Options change how the agent starts.
type Options struct {
	// ACL turns ACLs on with default_policy deny; ManagementToken is the initial management token.
	ACL bool
	// Addr is the IP the agent binds and advertises, its HTTP API and DNS included; default 127.0.0.1.
	Addr string
	// Fork, when set, runs start (which forks the agent) where the agent should run: a network namespace's
	// thread (redirecttest.Netns.Do). Dial then reaches it from the test (readiness, Client).
	Fork func(start func())
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
}

// Agent is a running (or stopped) Consul dev agent. Its ports stay the same across Stop and Start.
type Agent struct {
	t        testing.TB
	bin      string
	config   string
	opts     Options
	HTTPAddr string // 127.0.0.1:port (Options.Addr:port) of the HTTP API
	DNSAddr  string // the same address's port of its DNS interface (UDP and TCP)

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
	out  *syncbuf.Buffer
}

// Binary returns the path of the Consul binary ($MESHLET_CONSUL_BIN, else bin/consul), or an error saying how to
// get one.
func Binary() (string, error) { return toolbin.Find("consul") }

// StartConsul starts a dev agent and waits until it has a leader and has registered itself; it is stopped when
// the test ends. Without a binary it skips the test (fails it with CI=true).
func StartConsul(t testing.TB, opts Options) *Agent {
	t.Helper()
	bin := toolbin.Need(t, "consul")
	a := &Agent{t: t, bin: bin, opts: opts}
	a.config = filepath.Join(t.TempDir(), "consul.hcl")
	t.Cleanup(func() {
		a.Stop()
		if t.Failed() {
			t.Logf("consul output:\n%s", a.output())
		}
	})
	// The ports were free a moment ago; another process on the machine may take one before the agent binds it.
	// Then the agent exits at once, and it is started again on other ports (three times at most).
	for attempt := 1; ; attempt++ {
		ports := freePorts(t, 6)
		a.HTTPAddr = net.JoinHostPort(opts.addr(), strconv.Itoa(ports[0]))
		a.DNSAddr = net.JoinHostPort(opts.addr(), strconv.Itoa(ports[1]))
		if err := os.WriteFile(a.config, []byte(agentConfig(ports, opts)), 0o600); err != nil {
			t.Fatal(err)
		}
		err := a.start()
		if err == nil {
			return a
		}
		if attempt == 3 || !strings.Contains(a.output(), "address already in use") {
			t.Fatalf("consul not ready: %v\noutput:\n%s", err, a.output())
		}
		t.Logf("consul: a port was taken before the agent bound it; starting again on other ports")
		a.Stop()
		a.mu.Lock()
		a.out = nil
		a.mu.Unlock()
	}
}

func (o Options) addr() string {
	if o.Addr == "" {
		return "127.0.0.1"
	}
	return o.Addr
}

// agentConfig is the agent's HCL config on ports (http, dns, serf_lan, serf_wan, server, grpc).
func agentConfig(ports []int, opts Options) string {
	hcl := fmt.Sprintf(`disable_update_check = true
node_name = "meshlet-test"
bind_addr = "%[7]s"
client_addr = "%[7]s"
advertise_addr = "%[7]s"
log_level = "warn"
ports {
  http = %[1]d
  dns = %[2]d
  serf_lan = %[3]d
  serf_wan = %[4]d
  server = %[5]d
  grpc = %[6]d
  grpc_tls = -1
}
`, ports[0], ports[1], ports[2], ports[3], ports[4], ports[5], opts.addr())
	if opts.ACL {
		hcl += fmt.Sprintf(`acl {
  enabled = true
  default_policy = "deny"
  enable_token_persistence = false
  tokens { initial_management = %q }
}
`, ManagementToken)
	}
	return hcl
}

// Start starts the agent (again, on the same ports, with an empty state) and waits until it is ready.
func (a *Agent) Start() {
	a.t.Helper()
	if err := a.start(); err != nil {
		a.t.Fatalf("consul not ready: %v\noutput:\n%s", err, a.output())
	}
}

func (a *Agent) start() error {
	a.mu.Lock()
	if a.cmd != nil {
		a.mu.Unlock()
		return errors.New("already running")
	}
	if a.out == nil {
		a.out = &syncbuf.Buffer{}
	}
	cmd := exec.Command(a.bin, "agent", "-dev", "-config-file", a.config)
	cmd.Stdout, cmd.Stderr = a.out, a.out
	var err error
	if a.opts.Fork != nil {
		a.opts.Fork(func() { err = cmd.Start() })
	} else {
		err = cmd.Start()
	}
	if err != nil {
		a.mu.Unlock()
		return err
	}
	done := make(chan struct{})
	go func() {
		cmd.Wait()
		close(done)
	}()
	a.cmd, a.done = cmd, done
	a.mu.Unlock()
	return a.waitReady(done, 30*time.Second)
}

// Stop stops the agent by its PID (SIGINT; Consul exits 1 on it, which is normal) and waits for it to exit,
// killing it after 10 s. It does nothing when the agent is not running.
func (a *Agent) Stop() {
	a.mu.Lock()
	cmd, done := a.cmd, a.done
	a.cmd = nil
	a.mu.Unlock()
	if cmd == nil {
		return
	}
	cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		<-done
	}
}

// Client returns an API client for the agent, with the management token when ACLs are on.
func (a *Agent) Client() *api.Client {
	a.t.Helper()
	cfg := &api.Config{Address: a.HTTPAddr, Scheme: "http"}
	if a.opts.Dial != nil {
		cfg.Transport = &http.Transport{DialContext: a.opts.Dial}
	}
	if a.opts.ACL {
		cfg.Token = ManagementToken
	}
	c, err := api.NewClient(cfg)
	if err != nil {
		a.t.Fatal(err)
	}
	return c
}

// waitReady polls until a leader is elected and the server has registered itself in the catalog.
func (a *Agent) waitReady(done <-chan struct{}, timeout time.Duration) error {
	c := &http.Client{Timeout: time.Second}
	if a.opts.Dial != nil {
		c.Transport = &http.Transport{DialContext: a.opts.Dial}
	}
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		select {
		case <-done:
			return errors.New("consul exited")
		default:
		}
		if a.get(c, "/v1/status/leader") != `""` && strings.Contains(a.get(c, "/v1/catalog/service/consul"), `"ServiceID"`) {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("no leader after %v", timeout)
}

func (a *Agent) get(c *http.Client, path string) string {
	req, _ := http.NewRequestWithContext(context.Background(), "GET", "http://"+a.HTTPAddr+path, nil)
	if a.opts.ACL {
		req.Header.Set("X-Consul-Token", ManagementToken)
	}
	resp, err := c.Do(req)
	if err != nil {
		return `""`
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	b.ReadFrom(resp.Body)
	if resp.StatusCode != 200 {
		return `""`
	}
	return strings.TrimSpace(b.String())
}

func (a *Agent) output() string {
	if a.out == nil {
		return ""
	}
	return a.out.String()
}

// freePorts returns n loopback ports that were free (TCP and UDP) a moment ago, from below the ephemeral range.
func freePorts(t testing.TB, n int) []int {
	t.Helper()
	var ports []int
	var closers []func() error
	defer func() {
		for _, c := range closers {
			c()
		}
	}()
	for tries := 0; len(ports) < n; tries++ {
		// From below the kernel's ephemeral range (meshlettest's picker): a port of that range can be taken by
		// any client connection of the tests running beside this one before the agent binds it.
		addrs, err := testports.Pick(1)
		if err != nil || tries > 100*n {
			t.Fatalf("no free port for consul: %v", err)
		}
		l, err := net.Listen("tcp", addrs[0])
		if err != nil {
			continue
		}
		closers = append(closers, l.Close)
		port := l.Addr().(*net.TCPAddr).Port
		u, err := net.ListenPacket("udp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			continue // the UDP port is taken: try another
		}
		closers = append(closers, u.Close)
		ports = append(ports, port)
	}
	return ports
}
