//go:build !unix

package proxy

import "net"

// waitReadable cannot wait for a socket here: the caller reads as usual.
func waitReadable(net.Conn) bool { return false }
