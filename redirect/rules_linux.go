package redirect

import (
	"fmt"
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// Install replaces meshlet's table in the current network namespace with the rules for c, in one transaction:
// before it, the namespace has the old rules (or none); after it, exactly the new ones.
func Install(c Config) error { return InstallIn(0, c) }

// InstallIn is Install in the network namespace of the file descriptor netns (0: the current one).
func InstallIn(netns int, c Config) error {
	if err := c.Validate(); err != nil {
		return err
	}
	conn, err := connect(netns)
	if err != nil {
		return err
	}
	defer conn.CloseLasting()
	t := &nftables.Table{Family: nftables.TableFamilyINet, Name: Table}
	// Add then delete then add: the table exists when it is deleted, whether it did before or not, so that the
	// transaction never fails on a table that is not there (the first install) and never keeps an old rule.
	conn.AddTable(t)
	conn.DelTable(t)
	conn.AddTable(t)
	if c.OutboundPort != 0 || c.DNS.IsValid() {
		out := conn.AddChain(&nftables.Chain{Name: "output", Table: t, Type: nftables.ChainTypeNAT,
			Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityNATDest})
		for _, r := range outboundRules(c) {
			conn.AddRule(&nftables.Rule{Table: t, Chain: out, Exprs: r})
		}
	}
	if c.InboundPort != 0 {
		in := conn.AddChain(&nftables.Chain{Name: "prerouting", Table: t, Type: nftables.ChainTypeNAT,
			Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityNATDest})
		for _, r := range inboundRules(c) {
			conn.AddRule(&nftables.Rule{Table: t, Chain: in, Exprs: r})
		}
	}
	if err := conn.Flush(); err != nil {
		return fmt.Errorf("installing the nftables rules (table inet %s): %w", Table, err)
	}
	return nil
}

// Delete removes meshlet's table from the current network namespace; without one it does nothing.
func Delete() error { return DeleteIn(0) }

// DeleteIn is Delete in the network namespace of the file descriptor netns (0: the current one).
func DeleteIn(netns int) error {
	conn, err := connect(netns)
	if err != nil {
		return err
	}
	defer conn.CloseLasting()
	t := &nftables.Table{Family: nftables.TableFamilyINet, Name: Table}
	conn.AddTable(t) // as in InstallIn: deleting a table that is not there would fail the transaction
	conn.DelTable(t)
	if err := conn.Flush(); err != nil {
		return fmt.Errorf("deleting the nftables rules (table inet %s): %w", Table, err)
	}
	return nil
}

func connect(netns int) (*nftables.Conn, error) {
	opts := []nftables.ConnOption{nftables.AsLasting()}
	if netns > 0 {
		opts = append(opts, nftables.WithNetNSFd(netns))
	}
	conn, err := nftables.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("netlink (nftables): %w", err)
	}
	return conn, nil
}

// outboundRules are the output chain's rules, in order: meshlet's own and the excluded UIDs' connections
// return; DNS goes to its resolver; loopback, the excluded ports and networks return; other TCP goes to the
// outbound port.
func outboundRules(c Config) [][]expr.Any {
	var rules [][]expr.Any
	for _, uid := range append([]uint32{*c.ProxyUID}, c.ExcludeUIDs...) {
		rules = append(rules, []expr.Any{
			&expr.Meta{Key: expr.MetaKeySKUID, Register: 1},
			cmpEq(binaryutil.NativeEndian.PutUint32(uid)),
			ret(),
		})
	}
	if c.DNS.IsValid() {
		for _, proto := range []byte{unix.IPPROTO_UDP, unix.IPPROTO_TCP} {
			rules = append(rules, dnsRule(c.DNS, proto))
		}
	}
	rules = append(rules, []expr.Any{
		&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
		cmpEq(ifname("lo")),
		ret(),
	})
	if c.OutboundPort == 0 {
		return rules
	}
	for _, p := range c.ExcludeOutboundPorts {
		rules = append(rules, append(tcpDport(p), ret()))
	}
	for _, p := range c.ExcludeOutboundCIDRs {
		rules = append(rules, append(daddrIn(p), ret()))
	}
	return append(rules, redirectTCP(c.OutboundPort))
}

// inboundRules are the prerouting chain's: loopback and the excluded ports return; other TCP goes to the inbound
// port.
func inboundRules(c Config) [][]expr.Any {
	rules := [][]expr.Any{{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		cmpEq(ifname("lo")),
		ret(),
	}}
	for _, p := range c.ExcludeInboundPorts {
		rules = append(rules, append(tcpDport(p), ret()))
	}
	return append(rules, redirectTCP(c.InboundPort))
}

// dnsRule sends DNS over proto (UDP or TCP) of dst's address family to dst.
func dnsRule(dst netip.AddrPort, proto byte) []expr.Any {
	family, addr := byte(unix.NFPROTO_IPV4), dst.Addr().Unmap()
	if addr.Is6() {
		family = unix.NFPROTO_IPV6
	}
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		cmpEq([]byte{family}),
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		cmpEq([]byte{proto}),
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		cmpEq(binaryutil.BigEndian.PutUint16(53)),
		&expr.Immediate{Register: 1, Data: addr.AsSlice()},
		&expr.Immediate{Register: 2, Data: binaryutil.BigEndian.PutUint16(dst.Port())},
		&expr.NAT{Type: expr.NATTypeDestNAT, Family: uint32(family), RegAddrMin: 1, RegProtoMin: 2, Specified: true},
	}
}

// tcpDport matches TCP to destination port p.
func tcpDport(p uint16) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		cmpEq([]byte{unix.IPPROTO_TCP}),
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		cmpEq(binaryutil.BigEndian.PutUint16(p)),
	}
}

// daddrIn matches packets to an address of p (IPv4 or IPv6, by p's family).
func daddrIn(p netip.Prefix) []expr.Any {
	family, offset := byte(unix.NFPROTO_IPV4), uint32(16)
	if p.Addr().Is6() {
		family, offset = unix.NFPROTO_IPV6, 24
	}
	n := uint32(p.Addr().BitLen() / 8)
	mask := make([]byte, n)
	for i := range p.Bits() {
		mask[i/8] |= 0x80 >> (i % 8)
	}
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		cmpEq([]byte{family}),
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: n},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: n, Mask: mask, Xor: make([]byte, n)},
		cmpEq(p.Masked().Addr().AsSlice()),
	}
}

// redirectTCP sends TCP to port on the namespace itself (127.0.0.1 or ::1 for its own connections, the address
// of the receiving interface for others).
func redirectTCP(port uint16) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		cmpEq([]byte{unix.IPPROTO_TCP}),
		&expr.Immediate{Register: 1, Data: binaryutil.BigEndian.PutUint16(port)},
		&expr.Redir{RegisterProtoMin: 1},
	}
}

func cmpEq(data []byte) *expr.Cmp { return &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: data} }

func ret() *expr.Verdict { return &expr.Verdict{Kind: expr.VerdictReturn} }

// ifname is an interface name as nftables compares it: NUL-terminated, in 16 bytes.
func ifname(name string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	return b
}
