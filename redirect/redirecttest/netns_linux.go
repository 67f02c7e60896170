// Package redirecttest makes network namespaces for tests of transparent interception: namespaces of the test's
// own, joined by veth pairs, with code run inside them; they are deleted when the test ends. Every helper needs
// root and the system's ip and nft tools (NeedRoot). The functions that take a testing.TB are for tests; MakeNetns,
// Netns.Run, Netns.Remove and LinkNetns return errors instead, for tools (make bench).
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

	"meshlet.dev/meshlet/internal/toolbin"
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
	if why != "" {
		toolbin.Missing(t, why)
	}
}

// Netns is a network namespace a test (NewNetns: deleted when the test ends) or a tool (MakeNetns) made.
type Netns struct {
	Name string
	FD   int      // an open file of the namespace, for setns and nftables.WithNetNSFd
	file *os.File // FD's file, closed by Remove
}

var netnsSeq atomic.Uint32

// NewNetns makes a network namespace with its loopback up.
func NewNetns(t testing.TB) *Netns {
	t.Helper()
	n, err := MakeNetns(fmt.Sprintf("mlt%d-%d", os.Getpid()%100000, netnsSeq.Add(1)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Remove() })
	return n
}

// MakeNetns makes the network namespace name with its loopback up; the caller removes it (Remove). A name of 14
// bytes or fewer leaves room for Link's veth names.
func MakeNetns(name string) (*Netns, error) {
	if _, err := command("ip", "netns", "add", name); err != nil {
		return nil, err
	}
	f, err := os.Open("/var/run/netns/" + name)
	if err != nil {
		exec.Command("ip", "netns", "del", name).Run()
		return nil, err
	}
	n := &Netns{Name: name, FD: int(f.Fd()), file: f}
	if _, err := n.ip("link", "set", "lo", "up"); err != nil {
		n.Remove()
		return nil, err
	}
	return n, nil
}

// Remove deletes n (ip netns del); processes still inside keep it alive until they end. Interfaces in it go with
// it, and so does the peer end of a veth pair in another namespace.
func (n *Netns) Remove() error {
	if n.file != nil {
		n.file.Close()
	}
	_, err := command("ip", "netns", "del", n.Name)
	return err
}

// IP runs the ip tool inside n and returns its output; a failure fails the test.
func (n *Netns) IP(t testing.TB, args ...string) string {
	t.Helper()
	out, err := n.ip(args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func (n *Netns) ip(args ...string) (string, error) {
	return command("ip", append([]string{"-n", n.Name}, args...)...)
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
	if err := n.Run(f); err != nil {
		t.Fatal(err)
	}
}

// Run is Do for tools: it returns the error of entering n, in which case f did not run.
func (n *Netns) Run(f func()) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread leaves with its namespace
		if err := unix.Setns(n.FD, unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("entering network namespace %s: %w", n.Name, err)
			return
		}
		f()
		errc <- nil
	}()
	return <-errc
}

// Link joins a and b by a veth pair, with the given IPv4 and IPv6 addresses (prefix lengths included).
// The interface in a is named a.Name+"v", the one in b b.Name+"v".
func Link(t testing.TB, a, b *Netns, a4, b4, a6, b6 string) {
	t.Helper()
	if err := LinkNetns(a, b, a4, b4, a6, b6); err != nil {
		t.Fatal(err)
	}
}

// LinkNetns is Link for tools; empty IPv6 addresses are not added.
func LinkNetns(a, b *Netns, a4, b4, a6, b6 string) error {
	va, vb := a.Name+"v", b.Name+"v"
	if _, err := command("ip", "link", "add", va, "netns", a.Name, "type", "veth", "peer", "name", vb, "netns", b.Name); err != nil {
		return err
	}
	for _, s := range []struct {
		n        *Netns
		dev      string
		ip4, ip6 string
	}{{a, va, a4, a6}, {b, vb, b4, b6}} {
		steps := [][]string{{"addr", "add", s.ip4, "dev", s.dev}}
		if s.ip6 != "" {
			steps = append(steps, []string{"-6", "addr", "add", s.ip6, "dev", s.dev, "nodad"})
		}
		steps = append(steps, []string{"link", "set", s.dev, "up"})
		for _, args := range steps {
			if _, err := s.n.ip(args...); err != nil {
				return err
			}
		}
	}
	return nil
}

// command runs name with args and returns its output; its error names the command and includes the output.
func command(name string, args ...string) (string, error) {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out), nil
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
		if _, err := command("ip", "link", "add", vm, "netns", m.Name, "type", "veth", "peer", "name", vh, "netns", hub.Name); err != nil {
			t.Fatal(err)
		}
		hub.IP(t, "link", "set", vh, "master", br)
		hub.IP(t, "link", "set", vh, "up")
		m.IP(t, "addr", "add", addrs[i], "dev", vm)
		m.IP(t, "link", "set", vm, "up")
	}
}
