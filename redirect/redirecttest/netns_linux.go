// Package redirecttest makes network namespaces for tests of transparent interception: namespaces of the test's
// own, joined by veth pairs, with code run inside them; they are deleted when the test ends. Every helper needs
// root and the system's ip and nft tools (NeedRoot).
package redirecttest

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

// NeedRoot skips a test that needs root, network namespaces and the system's ip and nft tools, with a message;
// under CI=true it fails instead.
func NeedRoot(t testing.TB) {
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

// Netns is a network namespace a test made; it is deleted when the test ends.
type Netns struct {
	Name string
	FD   int // an open file of the namespace, for setns and nftables.WithNetNSFd
}

var netnsSeq atomic.Uint32

// NewNetns makes a network namespace with its loopback up.
func NewNetns(t testing.TB) *Netns {
	t.Helper()
	name := fmt.Sprintf("mlt%d-%d", os.Getpid()%100000, netnsSeq.Add(1))
	run(t, "ip", "netns", "add", name)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	f, err := os.Open("/var/run/netns/" + name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	n := &Netns{Name: name, FD: int(f.Fd())}
	n.IP(t, "link", "set", "lo", "up")
	return n
}

// IP runs the ip tool inside n and returns its output; a failure fails the test.
func (n *Netns) IP(t testing.TB, args ...string) string {
	t.Helper()
	return run(t, "ip", append([]string{"-n", n.Name}, args...)...)
}

// NFT runs the system's nft inside n and returns its output.
func (n *Netns) NFT(args ...string) (string, error) {
	out, err := exec.Command("ip", append([]string{"netns", "exec", n.Name, "nft"}, args...)...).CombinedOutput()
	return string(out), err
}

// Do runs f on an OS thread inside n: sockets f makes (listeners, connections) belong to n. The thread is not
// returned to the Go runtime afterwards (it ends with the goroutine).
func (n *Netns) Do(t testing.TB, f func()) {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread leaves with its namespace
		if err := unix.Setns(n.FD, unix.CLONE_NEWNET); err != nil {
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

// Link joins a and b by a veth pair, with the given IPv4 and IPv6 addresses (prefix lengths included).
func Link(t testing.TB, a, b *Netns, a4, b4, a6, b6 string) {
	t.Helper()
	va, vb := a.Name+"v", b.Name+"v"
	run(t, "ip", "link", "add", va, "netns", a.Name, "type", "veth", "peer", "name", vb, "netns", b.Name)
	for _, s := range []struct {
		n        *Netns
		dev      string
		ip4, ip6 string
	}{{a, va, a4, a6}, {b, vb, b4, b6}} {
		s.n.IP(t, "addr", "add", s.ip4, "dev", s.dev)
		s.n.IP(t, "-6", "addr", "add", s.ip6, "dev", s.dev, "nodad")
		s.n.IP(t, "link", "set", s.dev, "up")
	}
}

func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// Bridge joins members to a bridge in hub, as pods on a node's network: member i gets one end of a veth pair
// with the IPv4 address addrs[i] (prefix length included), hub the bridge with hubAddr. No route leads out of
// the namespaces.
func Bridge(t testing.TB, hub *Netns, hubAddr string, members []*Netns, addrs []string) {
	t.Helper()
	br := hub.Name + "br"
	hub.IP(t, "link", "add", br, "type", "bridge")
	hub.IP(t, "addr", "add", hubAddr, "dev", br)
	hub.IP(t, "link", "set", br, "up")
	for i, m := range members {
		vm, vh := m.Name+"v", fmt.Sprintf("%sp%d", hub.Name, i)
		run(t, "ip", "link", "add", vm, "netns", m.Name, "type", "veth", "peer", "name", vh, "netns", hub.Name)
		hub.IP(t, "link", "set", vh, "master", br)
		hub.IP(t, "link", "set", vh, "up")
		m.IP(t, "addr", "add", addrs[i], "dev", vm)
		m.IP(t, "link", "set", vm, "up")
	}
}
