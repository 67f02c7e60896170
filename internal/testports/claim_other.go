//go:build !unix

package testports

// claim counts every port as this process's outside Unix (no cross-process lock; the counter still keeps one
// process from handing out a port twice).
func claim(int) bool { return true }
