//go:build !linux

package meshlettest

import "syscall"

// dieWithParent returns attr unchanged: only Linux can tie a child's life to its parent's.
func dieWithParent(attr *syscall.SysProcAttr) *syscall.SysProcAttr { return attr }
