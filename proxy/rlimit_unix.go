//go:build unix

package proxy

import "syscall"

// openFileLimit returns the soft limit of open files (Go raises it to the hard limit at start), or 0.
func openFileLimit() int64 {
	var r syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &r); err != nil || r.Cur > 1<<40 {
		return 0
	}
	return int64(r.Cur)
}
