package redirect

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"

	"golang.org/x/sys/unix"
)

// needRoot skips a test that needs root, network namespaces and the system's ip and nft tools, with a message;
// under CI=true it fails instead.
func needRoot(t *testing.T) {
	t.Helper()
	why := ""
	if os.Geteuid() != 0 {
		why = "needs root (network namespaces, nftables)"
	} else if _, err := exec.LookPath("ip"); err != nil {
		why = "needs the ip tool (iproute2)"
	} else if _, err := exec.LookPath("nft"); err != nil {
		why = "needs the nft tool (Debian package nftables) to read the rules back"
	}
	if why == "" {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal(why + "; CI=true: failing instead of skipping")
	}
	t.Skip(why)
}

// netns is a network namespace a test made; it is deleted when the test ends.
type netns struct {
	name string
	fd   int
}

var netnsSeq atomic.Uint32

func newNetns(t *testing.T) *netns {
	t.Helper()
	name := fmt.Sprintf("mlt%d-%d", os.Getpid()%100000, netnsSeq.Add(1))
	run(t, "ip", "netns", "add", name)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	f, err := os.Open("/var/run/netns/" + name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	n := &netns{name: name, fd: int(f.Fd())}
	n.ip(t, "link", "set", "lo", "up")
	return n
}

// ip runs `ip` inside n.
func (n *netns) ip(t *testing.T, args ...string) string {
	t.Helper()
	return run(t, "ip", append([]string{"-n", n.name}, args...)...)
}

// nft runs the system's nft inside n.
func (n *netns) nft(t *testing.T, args ...string) (string, error) {
	t.Helper()
	out, err := exec.Command("ip", append([]string{"netns", "exec", n.name, "nft"}, args...)...).CombinedOutput()
	return string(out), err
}

// do runs f on an OS thread inside n: sockets f makes (listeners, connections) belong to n. The thread is not
// returned to the Go runtime afterwards (it ends with the goroutine).
func (n *netns) do(t *testing.T, f func()) {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread leaves with its namespace
		if err := unix.Setns(n.fd, unix.CLONE_NEWNET); err != nil {
			errc <- err
			return
		}
		f()
		errc <- nil
	}()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

// link joins a and b by a veth pair, with the given IPv4 and IPv6 addresses (prefix lengths included).
func link(t *testing.T, a, b *netns, a4, b4, a6, b6 string) {
	t.Helper()
	va, vb := a.name+"v", b.name+"v"
	run(t, "ip", "link", "add", va, "netns", a.name, "type", "veth", "peer", "name", vb, "netns", b.name)
	for _, s := range []struct {
		n        *netns
		dev      string
		ip4, ip6 string
	}{{a, va, a4, a6}, {b, vb, b4, b6}} {
		s.n.ip(t, "addr", "add", s.ip4, "dev", s.dev)
		s.n.ip(t, "-6", "addr", "add", s.ip6, "dev", s.dev, "nodad")
		s.n.ip(t, "link", "set", s.dev, "up")
	}
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}
