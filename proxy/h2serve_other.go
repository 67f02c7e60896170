//go:build !unix

package proxy

import "syscall"

// waitReadable cannot wait for a socket here: the caller reads as usual.
func waitReadable(syscall.Conn) error { return nil }
