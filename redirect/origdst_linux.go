package redirect

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// soOriginalDst is SO_ORIGINAL_DST (linux/netfilter_ipv4.h) and IP6T_SO_ORIGINAL_DST (linux/netfilter_ipv6/
// ip6_tables.h), both 80.
const soOriginalDst = 80

// ErrNotRedirected is returned by OriginalDst for a connection that no rule redirected: its destination is the
// listener itself.
var ErrNotRedirected = errors.New("connection was not redirected")

// OriginalDst returns the destination a redirected TCP connection was made to before the rules sent it to the
// listener that accepted c (conntrack's record, SO_ORIGINAL_DST). c is a TCP connection, or wraps one and
// returns it from NetConn (as *tls.Conn does). A connection made to the listener's own address gives
// ErrNotRedirected.
func OriginalDst(c net.Conn) (netip.AddrPort, error) {
	sc, ok := c.(syscall.Conn)
	for !ok {
		w, isWrapper := c.(interface{ NetConn() net.Conn })
		if !isWrapper {
			return netip.AddrPort{}, fmt.Errorf("original destination: %T is not a TCP connection", c)
		}
		c = w.NetConn()
		sc, ok = c.(syscall.Conn)
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, err
	}
	local, err := netip.ParseAddrPort(c.LocalAddr().String())
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("original destination: local address: %w", err)
	}
	var dst netip.AddrPort
	var serr error
	err = raw.Control(func(fd uintptr) { dst, serr = getOriginalDst(int(fd), local.Addr().Is4() || local.Addr().Is4In6()) })
	if err == nil {
		err = serr
	}
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("original destination: %w", err)
	}
	if dst == local || (dst.Addr().Unmap() == local.Addr().Unmap() && dst.Port() == local.Port()) {
		return dst, ErrNotRedirected
	}
	return dst, nil
}

func getOriginalDst(fd int, v4 bool) (netip.AddrPort, error) {
	var sa4 unix.RawSockaddrInet4
	var sa6 unix.RawSockaddrInet6
	level, val, size := unix.SOL_IPV6, unsafe.Pointer(&sa6), uint32(unsafe.Sizeof(sa6))
	if v4 {
		level, val, size = unix.SOL_IP, unsafe.Pointer(&sa4), uint32(unsafe.Sizeof(sa4))
	}
	if err := getsockopt(fd, level, soOriginalDst, val, &size); err != nil {
		if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOPROTOOPT) {
			// No conntrack entry (ENOENT), or no connection tracking in the kernel at all (ENOPROTOOPT): no rule
			// can have redirected the connection.
			return netip.AddrPort{}, ErrNotRedirected
		}
		return netip.AddrPort{}, err
	}
	if v4 {
		return netip.AddrPortFrom(netip.AddrFrom4(sa4.Addr), ntohs(sa4.Port)), nil
	}
	return netip.AddrPortFrom(netip.AddrFrom16(sa6.Addr).Unmap(), ntohs(sa6.Port)), nil
}

// ntohs reads a port in network byte order.
func ntohs(p uint16) uint16 { return p>>8 | p<<8 }

func getsockopt(fd, level, name int, val unsafe.Pointer, size *uint32) error {
	_, _, errno := syscall.Syscall6(syscall.SYS_GETSOCKOPT, uintptr(fd), uintptr(level), uintptr(name),
		uintptr(val), uintptr(unsafe.Pointer(size)), 0)
	if errno != 0 {
		return errno
	}
	return nil
}
