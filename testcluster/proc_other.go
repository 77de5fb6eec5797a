//go:build !linux

package testcluster

import "syscall"

// deathSignal: only Linux has a parent-death signal. Elsewhere a killed test
// binary can leave member processes behind; Start's sweep removes the data
// folders of dead runs and kills the members they list.
func deathSignal() *syscall.SysProcAttr { return &syscall.SysProcAttr{} }
