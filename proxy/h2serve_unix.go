//go:build unix

package proxy

import "syscall"

// waitReadable waits until socket sc has bytes to read, its end or an error (or its read deadline passes, or it is
// closed), without reading: an idle connection's reader holds no buffer meanwhile. The error is the wait's (the
// deadline's, the close's); nil when the socket is readable.
func waitReadable(sc syscall.Conn) error {
	rc, err := sc.SyscallConn()
	if err != nil {
		return err
	}
	var buf [1]byte
	return rc.Read(func(fd uintptr) bool {
		for {
			_, _, err := syscall.Recvfrom(int(fd), buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
			if err == syscall.EINTR {
				continue
			}
			return err != syscall.EAGAIN && err != syscall.EWOULDBLOCK // false: wait for the socket
		}
	})
}
