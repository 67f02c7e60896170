package redirect

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"

	"meshlet.dev/meshlet/redirect/redirecttest"
	"time"
)

// namedServer accepts on ln and answers each connection with one line: its name, and the original destination of
// the connection when rules redirected it ("name -> dst"), else just the name.
func namedServer(t *testing.T, ln net.Listener, name string) {
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			line := name
			if dst, err := OriginalDst(c); err == nil {
				line += " -> " + dst.String()
			} else if !errors.Is(err, ErrNotRedirected) {
				line += " error " + err.Error()
			}
			fmt.Fprintln(c, line)
			c.Close()
		}
	}()
}

// listenIn listens on addr inside ns.
func listenIn(t *testing.T, ns *redirecttest.Netns, addr string) net.Listener {
	t.Helper()
	var ln net.Listener
	var err error
	ns.Do(t, func() { ln, err = net.Listen("tcp", addr) })
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

// askFrom connects from inside ns to addr and returns the line the server answered.
func askFrom(t *testing.T, ns *redirecttest.Netns, addr string) string {
	t.Helper()
	var c net.Conn
	var err error
	ns.Do(t, func() { c, err = net.DialTimeout("tcp", addr, 3*time.Second) })
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil && !(errors.Is(err, io.EOF) && line != "") {
		t.Fatalf("read from %s: %v", addr, err)
	}
	return strings.TrimSpace(line)
}

// TestRedirectTraffic: two namespaces joined by a veth pair ("pod" 198.18.0.1 and 2001:db8::1, "peer" 198.18.0.2
// and 2001:db8::2). With the rules in pod, its outbound TCP reaches the outbound listener, which reads the original
// destination (IPv4 and IPv6), but for excluded ports, networks and UIDs and loopback; TCP from peer to any port of
// pod reaches the inbound listener, but for excluded ports.
func TestRedirectTraffic(t *testing.T) {
	redirecttest.NeedRoot(t)
	pod, peer := redirecttest.NewNetns(t), redirecttest.NewNetns(t)
	redirecttest.Link(t, pod, peer, "198.18.0.1/24", "198.18.0.2/24", "2001:db8::1/64", "2001:db8::2/64")
	for _, a := range []string{"198.18.0.2:80", "198.18.0.2:22", "[2001:db8::2]:80"} {
		namedServer(t, listenIn(t, peer, a), "peer "+a)
	}
	namedServer(t, listenIn(t, pod, "127.0.0.1:15001"), "outbound")
	namedServer(t, listenIn(t, pod, "[::1]:15001"), "outbound6")
	namedServer(t, listenIn(t, pod, ":15006"), "inbound")
	namedServer(t, listenIn(t, pod, "198.18.0.1:19000"), "pod admin")
	namedServer(t, listenIn(t, pod, "127.0.0.1:8080"), "pod app")

	base := Config{OutboundPort: 15001, InboundPort: 15006, ProxyUID: uid(5995), // the test runs as root, UID 0
		ExcludeOutboundPorts: []uint16{22}, ExcludeInboundPorts: []uint16{19000}}
	cases := []struct {
		name  string
		cfg   func(c *Config)
		from  *redirecttest.Netns
		addr  string
		reply string
	}{
		{"outbound IPv4", nil, pod, "198.18.0.2:80", "outbound -> 198.18.0.2:80"},
		{"outbound IPv6", nil, pod, "[2001:db8::2]:80", "outbound6 -> [2001:db8::2]:80"},
		{"outbound to an address nothing listens on", nil, pod, "198.18.0.99:443", "outbound -> 198.18.0.99:443"},
		{"excluded outbound port", nil, pod, "198.18.0.2:22", "peer 198.18.0.2:22"},
		{"loopback", nil, pod, "127.0.0.1:8080", "pod app"},
		{"excluded network", func(c *Config) { c.ExcludeOutboundCIDRs = []netip.Prefix{netip.MustParsePrefix("198.18.0.0/30")} },
			pod, "198.18.0.2:80", "peer 198.18.0.2:80"},
		{"excluded IPv6 network", func(c *Config) { c.ExcludeOutboundCIDRs = []netip.Prefix{netip.MustParsePrefix("2001:db8::/64")} },
			pod, "[2001:db8::2]:80", "peer [2001:db8::2]:80"},
		{"meshlet's own UID", func(c *Config) { c.ProxyUID = uid(0) }, pod, "198.18.0.2:80", "peer 198.18.0.2:80"},
		{"excluded UID", func(c *Config) { c.ExcludeUIDs = []uint32{0} }, pod, "198.18.0.2:80", "peer 198.18.0.2:80"},
		{"inbound to any port", nil, peer, "198.18.0.1:8443", "inbound -> 198.18.0.1:8443"},
		{"inbound IPv6", nil, peer, "[2001:db8::1]:9090", "inbound -> [2001:db8::1]:9090"},
		{"excluded inbound port", nil, peer, "198.18.0.1:19000", "pod admin"},
		{"no outbound redirection", func(c *Config) { c.OutboundPort = 0 }, pod, "198.18.0.2:80", "peer 198.18.0.2:80"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := base
			if tc.cfg != nil {
				tc.cfg(&cfg)
			}
			if err := InstallIn(pod.FD, cfg); err != nil {
				t.Fatal(err)
			}
			if got := askFrom(t, tc.from, tc.addr); got != tc.reply {
				t.Fatalf("%s answered %q, want %q", tc.addr, got, tc.reply)
			}
		})
	}
	// Without the rules, everything goes where it was sent.
	if err := DeleteIn(pod.FD); err != nil {
		t.Fatal(err)
	}
	if got := askFrom(t, pod, "198.18.0.2:80"); got != "peer 198.18.0.2:80" {
		t.Fatalf("after Delete: %q", got)
	}
}

// TestRedirectDNS: with a resolver given, DNS from pod over UDP and TCP (port 53, to any address) reaches the
// resolver instead; meshlet's own queries do not.
func TestRedirectDNS(t *testing.T) {
	redirecttest.NeedRoot(t)
	pod, peer := redirecttest.NewNetns(t), redirecttest.NewNetns(t)
	redirecttest.Link(t, pod, peer, "198.18.0.1/24", "198.18.0.2/24", "2001:db8::1/64", "2001:db8::2/64")
	var udp net.PacketConn
	var err error
	peer.Do(t, func() { udp, err = net.ListenPacket("udp", "198.18.0.2:8600") })
	if err != nil {
		t.Fatal(err)
	}
	defer udp.Close()
	go func() {
		buf := make([]byte, 512)
		for {
			n, from, err := udp.ReadFrom(buf)
			if err != nil {
				return
			}
			udp.WriteTo(append([]byte("resolver: "), buf[:n]...), from)
		}
	}()
	namedServer(t, listenIn(t, peer, "198.18.0.2:8600"), "resolver tcp")
	namedServer(t, listenIn(t, peer, "198.18.0.2:53"), "peer dns tcp")
	askUDP := func() (string, error) {
		var c net.Conn
		var err error
		pod.Do(t, func() { c, err = net.Dial("udp", "198.18.0.2:53") })
		if err != nil {
			return "", err
		}
		defer c.Close()
		c.Write([]byte("query"))
		_ = c.SetReadDeadline(time.Now().Add(time.Second))
		buf := make([]byte, 512)
		n, err := c.Read(buf)
		return string(buf[:n]), err
	}
	cfg := Config{OutboundPort: 15001, ProxyUID: uid(5995), ExcludeOutboundPorts: []uint16{53},
		DNS: netip.MustParseAddrPort("198.18.0.2:8600")}
	if err := InstallIn(pod.FD, cfg); err != nil {
		t.Fatal(err)
	}
	if got, err := askUDP(); err != nil || got != "resolver: query" {
		t.Fatalf("DNS over UDP: %q %v", got, err)
	}
	if got := askFrom(t, pod, "198.18.0.2:53"); got != "resolver tcp" {
		t.Fatalf("DNS over TCP reached %q", got)
	}
	cfg.ProxyUID = uid(0) // now the test is meshlet: its queries go where they were sent
	if err := InstallIn(pod.FD, cfg); err != nil {
		t.Fatal(err)
	}
	if got := askFrom(t, pod, "198.18.0.2:53"); got != "peer dns tcp" {
		t.Fatalf("meshlet's own DNS over TCP reached %q", got)
	}
	if got, err := askUDP(); err == nil {
		t.Fatalf("meshlet's own DNS over UDP was answered by %q; nothing listens on port 53", got)
	}
}
