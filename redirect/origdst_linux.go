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
	if v4 {
		var sa unix.RawSockaddrInet4
		size := uint32(unsafe.Sizeof(sa))
		if err := getsockopt(fd, unix.SOL_IP, soOriginalDst, unsafe.Pointer(&sa), &size); err != nil {
			if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOPROTOOPT) {
				// No conntrack entry (ENOENT), or no connection tracking in the kernel at all (ENOPROTOOPT): no
				// rule can have redirected the connection.
				return netip.AddrPort{}, ErrNotRedirected
			}
			return netip.AddrPort{}, err
		}
		port := uint16(sa.Port>>8) | uint16(sa.Port<<8) // network byte order
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), port), nil
	}
	var sa unix.RawSockaddrInet6
	size := uint32(unsafe.Sizeof(sa))
	if err := getsockopt(fd, unix.SOL_IPV6, soOriginalDst, unsafe.Pointer(&sa), &size); err != nil {
		if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOPROTOOPT) {
			return netip.AddrPort{}, ErrNotRedirected
		}
		return netip.AddrPort{}, err
	}
	port := uint16(sa.Port>>8) | uint16(sa.Port<<8)
	return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), port), nil
}

func getsockopt(fd, level, name int, val unsafe.Pointer, size *uint32) error {
	_, _, errno := syscall.Syscall6(syscall.SYS_GETSOCKOPT, uintptr(fd), uintptr(level), uintptr(name),
		uintptr(val), uintptr(unsafe.Pointer(size)), 0)
	if errno != 0 {
		return errno
	}
	return nil
}
