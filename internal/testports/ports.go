// Package testports picks loopback ports for the test harnesses (meshlettest, discoverytest), from below the
// kernel's ephemeral range. It imports nothing of meshlet's, so that every harness can use it.
package testports

import (
	"errors"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
)

// Free returns a loopback address with a port that was free a moment ago. The port comes from below the
// kernel's ephemeral range: a port from that range (what port 0 gives) can be taken, between Free and the
// meshlet that binds it, by any client connection of the tests running beside this one as its local port
// ("address already in use", one CI run in a few). A process-wide counter from a random start keeps two calls
// from trying the same port, and a lock file per port (claim) keeps two test processes (go test runs packages
// side by side) from handing out the same one: a port stays this process's until it exits.
func Free() (string, error) {
	low, span := testPorts()
	for range span {
		port := low + int(nextTestPort.Add(1)%uint32(span))
		if !claim(port) {
			continue
		}
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			continue
		}
		l.Close()
		return l.Addr().String(), nil
	}
	l, err := net.Listen("tcp", "127.0.0.1:0") // the whole range is taken: what the kernel gives
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// Pick returns n distinct loopback addresses whose ports were free a moment ago (Free's rule).
func Pick(n int) ([]string, error) {
	var out []string
	for range n {
		a, err := Free()
		if err != nil {
			return nil, errors.Join(errors.New("no free loopback port"), err)
		}
		out = append(out, a)
	}
	return out, nil
}

// nextTestPort counts the ports Free tried, from a random start.
var nextTestPort = func() *atomic.Uint32 {
	var n atomic.Uint32
	n.Store(rand.Uint32())
	return &n
}()

// testPorts returns the range Free picks from: up to 10,000 ports just below the ephemeral range
// (/proc/sys/net/ipv4/ip_local_port_range; 32768 when it cannot be read), never below 1024.
var testPorts = sync.OnceValues(func() (low, span int) {
	ephemeral := 32768
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if n, err := strconv.Atoi(f[0]); err == nil {
				ephemeral = n
			}
		}
	}
	low = max(1024, ephemeral-10000)
	return low, max(ephemeral-low, 1)
})
