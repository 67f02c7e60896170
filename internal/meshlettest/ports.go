package meshlettest

import "meshlet.dev/meshlet/internal/testports"

// freePort returns a loopback address with a port that was free a moment ago, from below the kernel's ephemeral
// range (testports.Free).
func freePort() (string, error) { return testports.Free() }

// PickAddrs returns n distinct loopback addresses whose ports were free a moment ago (testports.Pick), for the
// tools; tests call FreeAddr or FreeAddrs.
func PickAddrs(n int) ([]string, error) { return testports.Pick(n) }
