//go:build !linux

package redirect

import (
	"errors"
	"net"
	"net/netip"
)

var errNotLinux = errors.New("transparent interception needs Linux (nftables, SO_ORIGINAL_DST)")

// ErrNotRedirected is returned by OriginalDst for a connection that no rule redirected.
var ErrNotRedirected = errors.New("connection was not redirected")

// Install needs Linux.
func Install(Config) error { return errNotLinux }

// InstallIn needs Linux.
func InstallIn(int, Config) error { return errNotLinux }

// Delete needs Linux.
func Delete() error { return errNotLinux }

// DeleteIn needs Linux.
func DeleteIn(int) error { return errNotLinux }

// OriginalDst returns ErrNotRedirected: without Linux's rules no connection is redirected.
func OriginalDst(net.Conn) (netip.AddrPort, error) { return netip.AddrPort{}, ErrNotRedirected }
