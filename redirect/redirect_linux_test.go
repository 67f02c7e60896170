package redirect

import (
	"net/netip"
	"strings"
	"testing"

	"meshlet.dev/meshlet/redirect/redirecttest"
)

func uid(u uint32) *uint32 { return &u }

// TestInstallDelete installs rules in a namespace of the test's own and reads them back with the system's nft,
// independently of this package: all of them, once each, however often Install runs; a new config replaces the
// old rules whole; Delete removes exactly meshlet's table (another table stays), twice in a row.
func TestInstallDelete(t *testing.T) {
	redirecttest.NeedRoot(t)
	ns := redirecttest.NewNetns(t)
	if out, err := ns.NFT("add", "table", "inet", "other"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	cfg := Config{OutboundPort: 15001, InboundPort: 15006, ProxyUID: uid(5995), ExcludeUIDs: []uint32{100},
		ExcludeInboundPorts: []uint16{19000}, ExcludeOutboundPorts: []uint16{22},
		ExcludeOutboundCIDRs: []netip.Prefix{netip.MustParsePrefix("198.18.9.0/24"), netip.MustParsePrefix("2001:db8:9::/48")},
		DNS:                  netip.MustParseAddrPort("198.18.0.53:8600")}
	want := []string{
		"chain output {",
		"type nat hook output priority -100; policy accept;",
		"meta skuid 5995 return",
		"meta skuid 100 return",
		"meta nfproto ipv4 udp dport 53 dnat ip to 198.18.0.53:8600",
		"meta nfproto ipv4 tcp dport 53 dnat ip to 198.18.0.53:8600",
		`oifname "lo" return`,
		"tcp dport 22 return",
		"ip daddr 198.18.9.0/24 return",
		"ip6 daddr 2001:db8:9::/48 return",
		"meta l4proto tcp redirect to :15001",
		"}",
		"chain prerouting {",
		"type nat hook prerouting priority dstnat; policy accept;",
		`iifname "lo" return`,
		"tcp dport 19000 return",
		"meta l4proto tcp redirect to :15006",
		"}",
	}
	for range 2 {
		if err := InstallIn(ns.FD, cfg); err != nil {
			t.Fatal(err)
		}
		checkRules(t, ns, want)
	}
	// A new config replaces the rules whole.
	cfg2 := Config{OutboundPort: 16001, ProxyUID: uid(1337)}
	if err := InstallIn(ns.FD, cfg2); err != nil {
		t.Fatal(err)
	}
	checkRules(t, ns, []string{
		"chain output {",
		"type nat hook output priority -100; policy accept;",
		"meta skuid 1337 return",
		`oifname "lo" return`,
		"meta l4proto tcp redirect to :16001",
		"}",
	})
	for range 2 {
		if err := DeleteIn(ns.FD); err != nil {
			t.Fatal(err)
		}
		if out, err := ns.NFT("list", "table", "inet", Table); err == nil {
			t.Fatalf("table inet %s still there after Delete:\n%s", Table, out)
		}
	}
	if out, err := ns.NFT("list", "table", "inet", "other"); err != nil {
		t.Fatalf("another table was removed: %v %s", err, out)
	}
}

// checkRules compares the body of table inet meshlet, as nft lists it, line by line with want.
func checkRules(t *testing.T, ns *redirecttest.Netns, want []string) {
	t.Helper()
	out, err := ns.NFT("list", "table", "inet", Table)
	if err != nil {
		t.Fatalf("nft list: %v\n%s", err, out)
	}
	var got []string
	for _, l := range strings.Split(out, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			got = append(got, l)
		}
	}
	if len(got) < 2 || got[0] != "table inet "+Table+" {" || got[len(got)-1] != "}" {
		t.Fatalf("unexpected listing:\n%s", out)
	}
	got = got[1 : len(got)-1]
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("rules as nft lists them:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
		want string // "" : valid
	}{
		{"outbound only", Config{OutboundPort: 15001, ProxyUID: uid(0)}, ""},
		{"no proxy uid", Config{OutboundPort: 15001}, "proxy-uid: required"},
		{"nothing to redirect", Config{ProxyUID: uid(5995)}, "nothing to redirect"},
		{"outbound port excluded", Config{OutboundPort: 15001, ProxyUID: uid(1), ExcludeOutboundPorts: []uint16{15001}},
			"15001 is meshlet's outbound port"},
		{"inbound port excluded", Config{InboundPort: 15006, ProxyUID: uid(1), ExcludeInboundPorts: []uint16{15006}},
			"15006 is meshlet's inbound port"},
		{"dns without port", Config{OutboundPort: 1, ProxyUID: uid(1), DNS: netip.AddrPortFrom(netip.MustParseAddr("198.18.0.53"), 0)},
			"has no port"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.Validate()
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Validate: %v, want %q", err, tc.want)
			}
		})
	}
}

func TestParseLists(t *testing.T) {
	if p, err := ParsePorts(" 22, 8080 ,"); err != nil || len(p) != 2 || p[0] != 22 || p[1] != 8080 {
		t.Fatalf("ParsePorts: %v %v", p, err)
	}
	for _, bad := range []string{"0", "65536", "x", "22a", "-1"} {
		if _, err := ParsePorts(bad); err == nil {
			t.Fatalf("ParsePorts(%q) accepted", bad)
		}
	}
	c, err := ParseCIDRs("10.0.0.0/8, 198.18.0.7 ,2001:db8::1/32")
	if err != nil || len(c) != 3 || c[1].String() != "198.18.0.7/32" || c[2].String() != "2001:db8::/32" {
		t.Fatalf("ParseCIDRs: %v %v", c, err)
	}
	if _, err := ParseCIDRs("10.0.0.0/33"); err == nil {
		t.Fatal("ParseCIDRs accepted /33")
	}
	if u, err := ParseUIDs("0,5995"); err != nil || len(u) != 2 || u[1] != 5995 {
		t.Fatalf("ParseUIDs: %v %v", u, err)
	}
	if _, err := ParseUIDs("-1"); err == nil {
		t.Fatal("ParseUIDs accepted -1")
	}
}
