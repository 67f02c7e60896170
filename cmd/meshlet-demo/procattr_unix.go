//go:build unix

package main

import "syscall"

// ownProcessGroup puts a child in its own process group, so a Ctrl-C in the terminal does not reach it.
func ownProcessGroup() *syscall.SysProcAttr { return &syscall.SysProcAttr{Setpgid: true} }
