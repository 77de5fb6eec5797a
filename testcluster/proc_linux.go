package testcluster

import "syscall"

// deathSignal makes the kernel kill a member process when the thread that
// started it exits, so a killed test binary leaves no etcd behind.
func deathSignal() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
