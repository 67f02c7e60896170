package main

// The intercepted path (transparent interception, issue 14): the load client calls the backend at its own address
// and never learns meshlet's; the kernel redirects its connections to meshlet's outbound listener (meshlet
// redirect-traffic), which routes each by its original destination.

import (
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
	"syscall"
	"time"

	"meshlet.dev/meshlet/internal/meshlettest"
	"meshlet.dev/meshlet/redirect/redirecttest"
)

const (
	interceptUID      = 5995              // meshlet's UID in the pod: redirect-traffic leaves its own connections alone
	podAddr           = "198.18.0.1"      // the pod's end of the veth pair (198.18.0.0/15: benchmarking, RFC 2544)
	peerAddr          = "198.18.0.2"      // the peer's end: the backend's address on the intercepted path
	peerDirectAddr    = "198.18.0.3"      // the peer's second address, which the rules leave alone: netns-direct's
	podAdmin          = "127.0.0.1:15000" // meshlet's admin listener, inside the pod
	podOutboundListen = "127.0.0.1:15001" // meshlet's outbound listener, inside the pod: redirected connections arrive here
	podExplicitAdmin  = "127.0.0.1:15010" // the netns-one meshlet's admin listener, inside the pod
	podExplicitListen = "127.0.0.1:15011" // its upstream listener: the netns-one client calls it (loopback: not redirected)
)

// podNet is the intercepted path's network, made once per run: a "pod" namespace where the load client and meshlet
// run, with meshlet redirect-traffic's rules, and a "peer" namespace where the backend listens, joined by a veth
// pair (198.18.0.1/24; 198.18.0.2/24 and 198.18.0.3/24). Neither namespace has another interface or route, so no
// packet leaves them. close removes both.
type podNet struct {
	pod, peer *redirecttest.Netns
	thread    *nsThread    // an OS thread inside pod: the client's dials and meshlet's fork run on it
	dir       string       // readable by interceptUID: the meshlet binary's copy, configs and logs
	bin       string       // the copy of the meshlet binary in dir
	admin     *http.Client // reaches meshlet's admin listener inside pod
	pin       pinning      // where meshlet runs (pin.go)
}

// errPodClosed is a dial after the pod's thread ended.
var errPodClosed = errors.New("intercepted path: the pod's network is closed")

// interceptUnavailable says why the intercepted path cannot run here, or "" when it can.
func interceptUnavailable() string {
	if os.Geteuid() != 0 {
		return "needs root (network namespaces, nftables): run the bench as root to measure it"
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return "needs the ip tool (iproute2)"
	}
	return ""
}

// newPodNet makes the namespaces and the veth pair, starts the pod's thread and copies the meshlet binary bin
// into workDir/intercepted, which it makes readable by interceptUID (workDir becomes traversable).
func newPodNet(workDir, bin string) (_ *podNet, err error) {
	n := &podNet{}
	defer func() {
		if err != nil {
			n.close()
		}
	}()
	pid := os.Getpid()
	if n.pod, err = redirecttest.MakeNetns(fmt.Sprintf("mlb%d-a", pid)); err != nil {
		return nil, err
	}
	if n.peer, err = redirecttest.MakeNetns(fmt.Sprintf("mlb%d-b", pid)); err != nil {
		return nil, err
	}
	if err = redirecttest.LinkNetns(n.pod, n.peer, podAddr+"/24", peerAddr+"/24", "", ""); err != nil {
		return nil, err
	}
	if out, err := exec.Command("ip", "-n", n.peer.Name, "addr", "add", peerDirectAddr+"/24", "dev", n.peer.Name+"v").CombinedOutput(); err != nil {
		return nil, fmt.Errorf("ip addr add %s in %s: %v: %s", peerDirectAddr, n.peer.Name, err, strings.TrimSpace(string(out)))
	}
	if n.thread, err = startThread(n.pod); err != nil {
		return nil, err
	}
	n.admin = &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DialContext: n.dial, DisableKeepAlives: true}}

	n.dir = filepath.Join(workDir, "intercepted")
	if err = os.Chmod(workDir, 0o711); err != nil {
		return nil, err
	}
	if err = os.Mkdir(n.dir, 0o755); err != nil {
		return nil, err
	}
	b, err := os.ReadFile(bin)
	if err != nil {
		return nil, err
	}
	n.bin = filepath.Join(n.dir, "meshlet")
	return n, os.WriteFile(n.bin, b, 0o755)
}

// close ends the pod's thread and removes both namespaces (and with them the veth pair). Meshlet must have been
// stopped: its fork's parent-death signal is tied to the thread.
func (n *podNet) close() {
	if n.thread != nil {
		n.thread.close()
	}
	for _, ns := range []*redirecttest.Netns{n.pod, n.peer} {
		if ns != nil {
			if err := ns.Remove(); err != nil {
				fmt.Fprintln(os.Stderr, "meshlet-bench:", err)
			}
		}
	}
}

// dial connects from inside the pod (a DialContext for the load client's transports).
func (n *podNet) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := errPodClosed
	n.thread.do(func() { c, err = (&net.Dialer{Timeout: 5 * time.Second}).DialContext(ctx, network, addr) })
	return c, err
}

// startBackend starts p's backend on a free port of every address of the peer namespace: the intercepted path
// calls it at peerAddr, netns-direct at peerDirectAddr (podTarget).
func (n *podNet) startBackend(p protocol) (*backend, error) {
	var ln net.Listener
	var err error
	if rerr := n.peer.Run(func() { ln, err = net.Listen("tcp4", "0.0.0.0:0") }); rerr != nil {
		return nil, rerr
	}
	if err != nil {
		return nil, err
	}
	return serveBackend(p, ln)
}

// podTarget is the address the client in the pod calls on path k (inPod), whose backend is be.
func podTarget(be *backend, k pathKind) string {
	_, port, _ := net.SplitHostPort(be.addr)
	switch k {
	case pathNetnsDirect:
		return net.JoinHostPort(peerDirectAddr, port)
	case pathNetnsOne:
		return podExplicitListen
	}
	return net.JoinHostPort(peerAddr, port)
}

// podEndpoint is the backend's address for the pod's meshlets: peerAddr at be's port.
func podEndpoint(be *backend) string { return podTarget(be, pathIntercepted) }

// startMeshlet starts the meshlet of path k (intercepted or netns-one) for p in the pod, as interceptUID, with
// backendAddr (peerAddr) as its upstream's endpoint. Intercepted's meshlet has the upstream at backendAddr too,
// reached only through interception, and redirect-traffic's rules are installed for it; netns-one's has an
// explicit upstream listener (podExplicitListen). The process gets SIGKILL if the benchmark dies first.
func (n *podNet) startMeshlet(p protocol, k pathKind, backendAddr string) (*meshletProc, error) {
	cfg := meshletConfig{protocol: p, admin: podAdmin, outbound: podOutboundListen, endpoints: backendAddr, peer: "app"}
	if k == pathNetnsOne {
		cfg = meshletConfig{protocol: p, admin: podExplicitAdmin, upstream: podExplicitListen, endpoints: backendAddr, peer: "app"}
	}
	yaml, err := cfg.yaml()
	if err != nil {
		return nil, err
	}
	name := string(p) + "-" + string(k)
	cfgPath, logPath := filepath.Join(n.dir, name+".yaml"), filepath.Join(n.dir, name+".log")
	if err := os.WriteFile(cfgPath, []byte(yaml), 0o644); err != nil {
		return nil, err
	}
	if k == pathIntercepted {
		if err := n.redirect(cfgPath); err != nil {
			return nil, err
		}
	}
	cmd := exec.Command(n.bin, "run", "-config", cfgPath)
	cmd.Env = envWithoutMeshlet()
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Credential: &syscall.Credential{Uid: interceptUID, Gid: interceptUID},
		Pdeathsig:  syscall.SIGKILL, // the thread that forks it lives until close, after meshlet is stopped
	}
	var proc *meshlettest.Proc
	err = errPodClosed
	n.thread.do(func() {
		err = n.pin.start(func() (err error) {
			proc, err = meshlettest.StartCmd("meshlet", cfg.admin, cfgPath, logPath, cmd)
			return err
		})
	})
	if err != nil {
		return nil, err
	}
	return &meshletProc{Proc: proc, admin: n.admin}, nil
}

// redirect installs meshlet redirect-traffic's rules in the pod for the config at cfgPath (its outbound port; the
// admin port is left alone), replacing the table whole; peerDirectAddr is left alone, for netns-direct.
func (n *podNet) redirect(cfgPath string) error {
	var out []byte
	err := errPodClosed
	n.thread.do(func() {
		out, err = exec.Command(n.bin, "redirect-traffic", "-proxy-uid", strconv.Itoa(interceptUID), "-config", cfgPath,
			"-exclude-outbound-cidr", peerDirectAddr+"/32").CombinedOutput()
	})
	if err != nil {
		return fmt.Errorf("meshlet redirect-traffic in %s: %v: %s", n.pod.Name, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// envWithoutMeshlet is the environment less MESHLET_* (as meshlettest.StartConfig gives the other meshlets), so
// that the generated config is what runs.
func envWithoutMeshlet() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "MESHLET_") {
			env = append(env, kv)
		}
	}
	return env
}

// nsThread runs functions one at a time on one OS thread inside a network namespace: sockets they make belong to
// the namespace and can then be used from any goroutine, and processes they start are forked there.
type nsThread struct {
	work    chan func()
	stopped chan struct{} // closed by close
	ended   chan error    // the thread's end: the error of entering the namespace, or nil
}

// startThread starts the thread inside ns and returns once it is there.
func startThread(ns *redirecttest.Netns) (*nsThread, error) {
	t := &nsThread{work: make(chan func()), stopped: make(chan struct{}), ended: make(chan error, 1)}
	inside := make(chan struct{})
	go func() {
		t.ended <- ns.Run(func() {
			close(inside)
			for {
				select {
				case f := <-t.work:
					f()
				case <-t.stopped:
					return
				}
			}
		})
	}()
	select {
	case <-inside:
		return t, nil
	case err := <-t.ended:
		return nil, err
	}
}

// do runs f on the thread and waits for it; after close it does not run f.
func (t *nsThread) do(f func()) {
	done := make(chan struct{})
	select {
	case t.work <- func() { defer close(done); f() }:
		<-done
	case <-t.stopped:
	}
}

// close ends the thread (after the function running, if any) and waits for it.
func (t *nsThread) close() {
	close(t.stopped)
	<-t.ended
}
