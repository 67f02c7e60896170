//go:build !unix

package proxy

// openFileLimit returns 0: no file-descriptor budget where the limit is unknown.
func openFileLimit() int64 { return 0 }
