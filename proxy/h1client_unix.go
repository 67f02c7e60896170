//go:build unix

package proxy

import (
	"net"
	"syscall"
)

// connAlive reports whether idle connection c is still open and silent: a peek that does not wait finds neither
// the endpoint's end of the stream nor bytes it sent unasked (either closes the connection, as net/http's
// Transport does). A connection it cannot look at (no plain socket under its wrappers: plainSocket) is not
// alive: not knowing, it is not used again.
func connAlive(c net.Conn) bool {
	sc := plainSocket(c)
	return sc != nil && socketAlive(sc)
}

func socketAlive(sc syscall.Conn) bool {
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	alive := false
	var buf [1]byte
	err = rc.Read(func(fd uintptr) bool {
		for {
			_, _, err := syscall.Recvfrom(int(fd), buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
			if err == syscall.EINTR {
				continue
			}
			alive = err == syscall.EAGAIN || err == syscall.EWOULDBLOCK
			return true // never wait for the connection to become readable
		}
	})
	return err == nil && alive
}
