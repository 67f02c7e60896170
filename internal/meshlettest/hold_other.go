//go:build !linux

package meshlettest

// holdPort holds nothing here: a killed Restartable's port is free for another server until its restart.
func holdPort(string) (release func()) { return func() {} }
