package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"

	"meshlet.dev/meshlet/redirect"
)

const redirectHelp = `meshlet redirect-traffic installs the rules of transparent interception in the current network namespace:
outbound TCP from every process but meshlet goes to meshlet's outbound listener, TCP from outside to meshlet's
inbound listener (nftables: table inet meshlet, replaced whole; run it again to change the rules).
meshlet redirect-traffic -delete removes them. Both are idempotent and need CAP_NET_ADMIN.

Usage:
  meshlet redirect-traffic -proxy-uid UID [-config FILE] [-proxy-outbound-port P] [-proxy-inbound-port P]
      [-exclude-inbound-port P,...] [-exclude-outbound-port P,...] [-exclude-outbound-cidr CIDR,...]
      [-exclude-uid UID,...] [-redirect-dns ADDR:PORT]
  meshlet redirect-traffic -delete

With -config, the ports come from meshlet's config file: outbound.listen, inbound.listen, and the admin port is
excluded from inbound redirection. The exclusion flags may be repeated and take comma-separated lists.

Examples:
  meshlet redirect-traffic -proxy-uid 5995 -proxy-outbound-port 15001 -proxy-inbound-port 21000 -exclude-inbound-port 15000
  meshlet redirect-traffic -proxy-uid 5995 -config /etc/meshlet/meshlet.yaml -exclude-outbound-cidr 10.0.0.0/8
  meshlet redirect-traffic -delete
`

// redirectCmd is `meshlet redirect-traffic`.
func redirectCmd(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("redirect-traffic", stderr)
	var cfg redirect.Config
	del := fs.Bool("delete", false, "remove the rules meshlet installed (table inet "+redirect.Table+")")
	configPath := fs.String("config", "", "meshlet's config file: the listener ports and the admin port to exclude")
	outPort := fs.Int("proxy-outbound-port", 0, "meshlet's outbound listener port (default: from -config's outbound.listen)")
	inPort := fs.Int("proxy-inbound-port", 0, "meshlet's inbound listener port (default: from -config's inbound.listen)")
	redirectFlags(fs, &cfg)
	if code, ok := parseFlags(fs, redirectHelp, args, stdout, stderr); !ok {
		return code
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "meshlet redirect-traffic: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	if *del {
		if err := redirect.Delete(); err != nil {
			fmt.Fprintln(stderr, "meshlet redirect-traffic -delete:", err)
			return 1
		}
		fmt.Fprintf(stdout, "removed table inet %s\n", redirect.Table)
		return 0
	}
	if *configPath != "" {
		if err := portsFromConfig(*configPath, &cfg); err != nil {
			fmt.Fprintln(stderr, "meshlet redirect-traffic:", err)
			return 1
		}
	}
	for _, p := range []struct {
		name string
		v    int
		dst  *uint16
	}{{"proxy-outbound-port", *outPort, &cfg.OutboundPort}, {"proxy-inbound-port", *inPort, &cfg.InboundPort}} {
		if p.v < 0 || p.v > 65535 {
			fmt.Fprintf(stderr, "meshlet redirect-traffic: -%s: %d is not a port\n", p.name, p.v)
			return 2
		}
		if p.v != 0 {
			*p.dst = uint16(p.v)
		}
	}
	if err := cfg.Validate(); err != nil {
		fmt.Fprintln(stderr, "meshlet redirect-traffic:", strings.ReplaceAll(err.Error(), "\n", "; "))
		return 2
	}
	if err := redirect.Install(cfg); err != nil {
		fmt.Fprintln(stderr, "meshlet redirect-traffic:", err)
		return 1
	}
	fmt.Fprintf(stdout, "installed table inet %s: outbound port %d, inbound port %d, proxy UID %d\n",
		redirect.Table, cfg.OutboundPort, cfg.InboundPort, *cfg.ProxyUID)
	return 0
}

// redirectFlags defines the flags that fill cfg directly: -proxy-uid, the exclusions and -redirect-dns.
func redirectFlags(fs *flag.FlagSet, cfg *redirect.Config) {
	fs.Func("proxy-uid", "the UID meshlet runs as: its connections are never redirected (required)", func(s string) error {
		u, err := redirect.ParseUIDs(s)
		if err != nil || len(u) != 1 {
			return fmt.Errorf("invalid UID %q", s)
		}
		cfg.ProxyUID = &u[0]
		return nil
	})
	listFlag(fs, "exclude-inbound-port", "local ports whose inbound connections are left alone", redirect.ParsePorts, &cfg.ExcludeInboundPorts)
	listFlag(fs, "exclude-outbound-port", "destination ports whose outbound connections are left alone", redirect.ParsePorts, &cfg.ExcludeOutboundPorts)
	listFlag(fs, "exclude-outbound-cidr", "destination networks (or addresses) left alone", redirect.ParseCIDRs, &cfg.ExcludeOutboundCIDRs)
	listFlag(fs, "exclude-uid", "UIDs whose outbound connections are left alone", redirect.ParseUIDs, &cfg.ExcludeUIDs)
	fs.Func("redirect-dns", "send DNS (UDP and TCP port 53) to this resolver, ADDR:PORT (Consul DNS)", func(s string) error {
		ap, err := netip.ParseAddrPort(s)
		if err != nil {
			return fmt.Errorf("invalid ADDR:PORT %q", s)
		}
		cfg.DNS = ap
		return nil
	})
}

// listFlag defines a flag that may be repeated and takes comma-separated lists, appending to *dst.
func listFlag[T any](fs *flag.FlagSet, name, usage string, parse func(string) ([]T, error), dst *[]T) {
	fs.Func(name, usage+" (repeatable, comma-separated)", func(s string) error {
		v, err := parse(s)
		if err != nil {
			return err
		}
		*dst = append(*dst, v...)
		return nil
	})
}

// portsFromConfig fills the ports of c from meshlet's config file: outbound.listen and inbound.listen, and the
// admin port as an excluded inbound port. Flags given besides override them.
func portsFromConfig(path string, c *redirect.Config) error {
	fc, err := loadConfig(path)
	if err != nil {
		return err
	}
	port := func(field, addr string) (uint16, error) {
		if addr == "" {
			return 0, nil
		}
		_, p, err := net.SplitHostPort(addr)
		if err != nil {
			return 0, fmt.Errorf("%s: %w", field, err)
		}
		n, err := strconv.ParseUint(p, 10, 16)
		if err != nil || n == 0 {
			return 0, fmt.Errorf("%s: %q has no fixed port to redirect to", field, addr)
		}
		return uint16(n), nil
	}
	var errs []error
	var e error
	if c.OutboundPort, e = port("outbound.listen", fc.Outbound.Listen); e != nil {
		errs = append(errs, e)
	}
	if c.InboundPort, e = port("inbound.listen", fc.Inbound.Listen); e != nil {
		errs = append(errs, e)
	} else if host, _, _ := net.SplitHostPort(fc.Inbound.Listen); c.InboundPort != 0 && isLoopback(host) {
		// Connections redirected from outside arrive at the address of the interface they came in on.
		errs = append(errs, fmt.Errorf("inbound.listen: %s listens on loopback only, where no redirected inbound connection arrives (listen on 0.0.0.0 or the pod's address)", fc.Inbound.Listen))
	}
	if admin, e := port("admin.listen", fc.Admin.Listen); e != nil {
		errs = append(errs, e)
	} else if admin != 0 {
		c.ExcludeInboundPorts = append(c.ExcludeInboundPorts, admin)
	}
	return errors.Join(errs...)
}

// isLoopback reports whether host is a loopback IP address or localhost.
func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.IsLoopback()
}
