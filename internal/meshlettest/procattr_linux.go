package meshlettest

import "syscall"

// dieWithParent returns attr (a new one if nil) set so that the child gets SIGKILL when its parent dies.
func dieWithParent(attr *syscall.SysProcAttr) *syscall.SysProcAttr {
	if attr == nil {
		attr = &syscall.SysProcAttr{}
	}
	attr.Pdeathsig = syscall.SIGKILL
	return attr
}
