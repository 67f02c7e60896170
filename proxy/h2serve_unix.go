//go:build unix

package proxy

import "syscall"

// waitReadable waits until socket sc has bytes to read, its end or an error (or its read deadline passes, or it is
// closed), without reading: an idle connection's reader holds no buffer meanwhile.
func waitReadable(sc syscall.Conn) {
	rc, err := sc.SyscallConn()
	if err != nil {
		return
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
}
