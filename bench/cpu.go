package main

import (
	"bufio"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// cpuTimes is the machine's CPU time so far, in clock ticks, from
// /proc/stat: busy (user, system, interrupts; not idle or waiting for I/O)
// and total. ok is false where /proc/stat cannot be read (not Linux).
type cpuTimes struct {
	busy, total uint64
	ok          bool
}

func readCPU() cpuTimes {
	f, err := os.Open("/proc/stat")
	if err != nil {
		return cpuTimes{}
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	if !sc.Scan() {
		return cpuTimes{}
	}
	fields := strings.Fields(sc.Text())
	if len(fields) < 6 || fields[0] != "cpu" {
		return cpuTimes{}
	}
	var c cpuTimes
	for i, s := range fields[1:] {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return cpuTimes{}
		}
		if i >= 8 {
			break // guest time is already in user time
		}
		c.total += v
		if i != 3 && i != 4 { // idle, iowait
			c.busy += v
		}
	}
	c.ok = true
	return c
}

// busyPct is the share of the machine's CPU time between a and b that was
// busy, in percent; -1 when it could not be read.
func busyPct(a, b cpuTimes) float64 {
	if !a.ok || !b.ok || b.total <= a.total {
		return -1
	}
	return 100 * float64(b.busy-a.busy) / float64(b.total-a.total)
}

// selfCPU is the CPU time this process has used so far (user and system).
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return -1
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// clientPct is the share of the machine's CPU capacity (every core) this
// process used between a and b, over wall time, in percent; -1 when it
// could not be read.
func clientPct(a, b, wall time.Duration) float64 {
	if a < 0 || b < 0 || wall <= 0 {
		return -1
	}
	return 100 * float64(b-a) / float64(wall) / float64(runtime.NumCPU())
}
