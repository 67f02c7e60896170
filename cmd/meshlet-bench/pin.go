package main

import (
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// pinning puts the proxies under test (meshlet, nginx) on CPUs of their own and the benchmark's process (load
// generator and backends) on the others, so that a proxy's CPU time per request is measured on a core nothing
// else of the run competes for, and meshlet and nginx get the same core in the same run. The zero value pins
// nothing.
type pinning struct {
	proxy []int // CPUs of every meshlet and nginx process started
	bench []int // CPUs of the benchmark's own threads
}

// planPinning splits allowed (the CPUs this process may run on) into the last one for the proxies and the rest
// for the benchmark. With fewer than two CPUs it pins nothing and says why.
func planPinning(allowed []int) (pinning, string) {
	if len(allowed) < 2 {
		return pinning{}, fmt.Sprintf("only %d CPU(s) allowed: nothing pinned, proxies and load generator share", len(allowed))
	}
	n := len(allowed)
	return pinning{proxy: allowed[n-1:], bench: allowed[:n-1]}, ""
}

func (p pinning) enabled() bool { return len(p.proxy) > 0 }

// String describes p for the report.
func (p pinning) String() string {
	if !p.enabled() {
		return "none"
	}
	return fmt.Sprintf("meshlet and nginx on CPU %s, load generator and backends on CPU %s", cpuList(p.proxy), cpuList(p.bench))
}

// allowedCPUs returns the CPUs the calling thread may run on.
func allowedCPUs() ([]int, error) {
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		return nil, err
	}
	var cpus []int
	for i := 0; i < len(set)*64 && len(cpus) < set.Count(); i++ {
		if set.IsSet(i) {
			cpus = append(cpus, i)
		}
	}
	return cpus, nil
}

func cpuSet(cpus []int) *unix.CPUSet {
	var set unix.CPUSet
	for _, c := range cpus {
		set.Set(c)
	}
	return &set
}

func cpuList(cpus []int) string {
	s := make([]string, len(cpus))
	for i, c := range cpus {
		s[i] = strconv.Itoa(c)
	}
	return strings.Join(s, ",")
}

// pinSelf moves every thread of this process to p.bench and sets GOMAXPROCS to their number. Threads made later
// inherit the affinity of the thread that makes them (the runtime makes them from pinned threads).
func (p pinning) pinSelf() error {
	if !p.enabled() {
		return nil
	}
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return err
	}
	set := cpuSet(p.bench)
	for _, t := range tasks {
		tid, err := strconv.Atoi(t.Name())
		if err != nil {
			continue
		}
		if err := unix.SchedSetaffinity(tid, set); err != nil && err != unix.ESRCH {
			return fmt.Errorf("pinning thread %d: %w", tid, err)
		}
	}
	runtime.GOMAXPROCS(len(p.bench))
	return nil
}

// start runs start (which starts a process: os/exec forks on the calling thread) on a locked thread whose
// affinity is p.proxy for the while, so that the new process and every thread it makes run on the proxies' CPUs
// only (and the Go runtime of a meshlet sizes GOMAXPROCS to them). The thread's affinity is restored afterwards.
func (p pinning) start(start func() error) error {
	if !p.enabled() {
		return start()
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var old unix.CPUSet
	if err := unix.SchedGetaffinity(0, &old); err != nil {
		return err
	}
	if err := unix.SchedSetaffinity(0, cpuSet(p.proxy)); err != nil {
		return fmt.Errorf("pinning to CPU %s: %w", cpuList(p.proxy), err)
	}
	defer unix.SchedSetaffinity(0, &old)
	return start()
}
