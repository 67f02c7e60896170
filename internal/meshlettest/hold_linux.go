//go:build linux

package meshlettest

import (
	"net/netip"
	"syscall"
)

// holdPort binds a socket to addr without listening on it, so that a dial to addr is refused (as to a dead
// process's port) while no other server of the test binary takes the port. It binds without SO_REUSEADDR if it can:
// then no other socket can bind the port. Connections that the killed server closed first leave TIME_WAIT sockets
// on the port, which stop that bind; it then binds with SO_REUSEADDR, as Go's listeners do, which still keeps the
// port from the kernel's choice of a free port (a listen on port 0). Its close releases the port; a failure holds
// nothing.
func holdPort(addr string) (release func()) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return func() {}
	}
	family := syscall.AF_INET
	var sa syscall.Sockaddr
	if ap.Addr().Is4() {
		sa = &syscall.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}
	} else {
		family = syscall.AF_INET6
		sa = &syscall.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}
	}
	for _, reuse := range []int{0, 1} {
		fd, err := syscall.Socket(family, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
		if err != nil {
			return func() {}
		}
		if syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_REUSEADDR, reuse) == nil && syscall.Bind(fd, sa) == nil {
			return func() { syscall.Close(fd) }
		}
		syscall.Close(fd)
	}
	return func() {}
}
