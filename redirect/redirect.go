// Package redirect installs and removes the rules that send a network namespace's TCP traffic through meshlet
// (transparent interception), and reads a redirected connection's original destination.
//
// The rules are nftables rules, programmed over netlink (no nft or iptables binary needed), all in one table that
// meshlet owns: table inet meshlet, with a nat chain on the output hook (the namespace's outbound connections go to
// meshlet's outbound listener) and one on the prerouting hook (connections from outside go to meshlet's inbound
// listener). Installing replaces the whole table in one transaction, and deleting removes it: both are idempotent,
// safe to run twice or after a crash, and never touch rules that others own.
//
// Left alone, in this order: meshlet's own connections (its UID, so it never loops back to itself) and other
// excluded UIDs; loopback traffic (interface lo); the excluded ports and outbound CIDRs. DNS (UDP and TCP port 53)
// may be sent to a given resolver, for Consul DNS.
package redirect

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// Table is the name of the nftables table (family inet) that holds every rule meshlet installs.
const Table = "meshlet"

// Config is what to redirect.
type Config struct {
	// OutboundPort is meshlet's outbound listener port: outbound TCP goes there. 0: outbound traffic is not
	// redirected.
	OutboundPort uint16
	// InboundPort is meshlet's inbound listener port: TCP from outside the namespace goes there. 0: inbound
	// traffic is not redirected.
	InboundPort uint16
	// ProxyUID is the UID meshlet runs as: its own connections are never redirected. Required.
	ProxyUID *uint32
	// ExcludeUIDs are other UIDs whose outbound connections are left alone.
	ExcludeUIDs []uint32
	// ExcludeInboundPorts are local ports whose inbound connections are left alone (meshlet's admin port, say).
	ExcludeInboundPorts []uint16
	// ExcludeOutboundPorts are destination ports whose outbound connections are left alone.
	ExcludeOutboundPorts []uint16
	// ExcludeOutboundCIDRs are destination networks whose outbound connections are left alone.
	ExcludeOutboundCIDRs []netip.Prefix
	// DNS, when valid, receives the namespace's DNS queries (UDP and TCP port 53) but meshlet's own; its address
	// family is the queries' that are redirected.
	DNS netip.AddrPort
}

// Validate reports every problem of c.
func (c Config) Validate() error {
	var errs []error
	if c.ProxyUID == nil {
		errs = append(errs, errors.New("proxy-uid: required (the UID meshlet runs as, whose traffic is never redirected)"))
	}
	if c.OutboundPort == 0 && c.InboundPort == 0 {
		errs = append(errs, errors.New("nothing to redirect: give the outbound port, the inbound port or both"))
	}
	if c.OutboundPort != 0 && slices.Contains(c.ExcludeOutboundPorts, c.OutboundPort) {
		errs = append(errs, fmt.Errorf("exclude-outbound-port: %d is meshlet's outbound port", c.OutboundPort))
	}
	if c.InboundPort != 0 && slices.Contains(c.ExcludeInboundPorts, c.InboundPort) {
		errs = append(errs, fmt.Errorf("exclude-inbound-port: %d is meshlet's inbound port", c.InboundPort))
	}
	for _, p := range c.ExcludeOutboundCIDRs {
		if !p.IsValid() {
			errs = append(errs, fmt.Errorf("exclude-outbound-cidr: invalid prefix %s", p))
		}
	}
	if c.DNS.IsValid() && c.DNS.Port() == 0 {
		errs = append(errs, fmt.Errorf("redirect-dns: %s has no port", c.DNS))
	}
	return errors.Join(errs...)
}

// ParsePorts parses a comma-separated list of ports ("22,8080"); empty gives none.
func ParsePorts(s string) ([]uint16, error) {
	var ports []uint16
	for _, f := range splitList(s) {
		var p uint16
		if _, err := fmt.Sscanf(f, "%d", &p); err != nil || p == 0 || fmt.Sprint(p) != f {
			return nil, fmt.Errorf("invalid port %q (1-65535)", f)
		}
		ports = append(ports, p)
	}
	return ports, nil
}

// ParseCIDRs parses a comma-separated list of networks or addresses ("10.0.0.0/8,192.0.2.1").
func ParseCIDRs(s string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, f := range splitList(s) {
		p, err := netip.ParsePrefix(f)
		if err != nil {
			a, aerr := netip.ParseAddr(f)
			if aerr != nil {
				return nil, fmt.Errorf("invalid CIDR %q", f)
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// ParseUIDs parses a comma-separated list of UIDs.
func ParseUIDs(s string) ([]uint32, error) {
	var out []uint32
	for _, f := range splitList(s) {
		var u uint32
		if _, err := fmt.Sscanf(f, "%d", &u); err != nil || fmt.Sprint(u) != f {
			return nil, fmt.Errorf("invalid UID %q", f)
		}
		out = append(out, u)
	}
	return out, nil
}

func splitList(s string) []string {
	var out []string
	for f := range strings.SplitSeq(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}
