//go:build unix

package proxy

import (
	"net"
	"syscall"
)

// waitReadable waits until c's socket has bytes to read, its end or an error (or c's read deadline passes, or c is
// closed), without reading: an idle connection's reader holds no buffer meanwhile. false: c has no socket to wait
// on, and the caller reads as usual.
func waitReadable(c net.Conn) bool {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	var buf [1]byte
	rc.Read(func(fd uintptr) bool {
		for {
			_, _, err := syscall.Recvfrom(int(fd), buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
			if err == syscall.EINTR {
				continue
			}
			return err != syscall.EAGAIN && err != syscall.EWOULDBLOCK // false: wait for the socket
		}
	})
	return true
}
