package main

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// clockTicks is USER_HZ, the unit of utime and stime in /proc/PID/stat; Linux reports it as 100 on every
// architecture Go supports.
const clockTicks = 100

// procSample is one reading of a process's resources.
type procSample struct {
	RSSKiB  int64         // VmRSS: resident set size now
	AnonKiB int64         // RssAnon: the anonymous part of VmRSS (heap, stacks, written data)
	FileKiB int64         // RssFile: the file-backed part of VmRSS (for meshlet: pages of its binary)
	HWMKiB  int64         // VmHWM: peak resident set size so far
	CPU     time.Duration // utime+stime: CPU time consumed so far
	SysR    int64         // read syscalls so far (syscr of /proc/PID/io: read, recv and the like); -1 if unreadable
	SysW    int64         // write syscalls so far (syscw: write, send and the like); -1 if unreadable
	ok      bool          // the sample was read (set by sampleAll)
}

// readProc reads pid's memory from /proc/PID/status and its CPU time from /proc/PID/stat.
func readProc(pid int) (procSample, error) {
	var s procSample
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return s, err
	}
	sc := bufio.NewScanner(bytes.NewReader(status))
	for sc.Scan() {
		key, val, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		switch key {
		case "VmRSS":
			s.RSSKiB, err = parseKiB(val)
		case "RssAnon":
			s.AnonKiB, err = parseKiB(val)
		case "RssFile":
			s.FileKiB, err = parseKiB(val)
		case "VmHWM":
			s.HWMKiB, err = parseKiB(val)
		}
		if err != nil {
			return s, fmt.Errorf("/proc/%d/status %s: %w", pid, key, err)
		}
	}
	s.CPU, err = readCPU(pid)
	s.SysR, s.SysW = readSyscalls(pid)
	return s, err
}

// readSyscalls returns the read and write syscalls pid made so far (syscr and syscw of /proc/PID/io: they count
// every read/recv-like and write/send-like call, including those that would block); -1, -1 when the file cannot be
// read (another user's process without privileges, or a kernel without task I/O accounting).
func readSyscalls(pid int) (r, w int64) {
	r, w = -1, -1
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/io", pid))
	if err != nil {
		return r, w
	}
	for line := range strings.Lines(string(data)) {
		key, val, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok {
			continue
		}
		n, err := strconv.ParseInt(strings.TrimSpace(val), 10, 64)
		if err != nil {
			continue
		}
		switch key {
		case "syscr":
			r = n
		case "syscw":
			w = n
		}
	}
	return r, w
}

// parseKiB parses a /proc/PID/status value such as "   12345 kB".
func parseKiB(v string) (int64, error) {
	f := strings.Fields(v)
	if len(f) != 2 || f[1] != "kB" {
		return 0, fmt.Errorf("unexpected value %q", v)
	}
	return strconv.ParseInt(f[0], 10, 64)
}

// readCPU returns utime+stime of pid (all its threads) from /proc/PID/stat.
func readCPU(pid int) (time.Duration, error) {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) is in parentheses and may contain spaces: fields count from the last ')'.
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no ')' in %q", pid, stat)
	}
	f := strings.Fields(string(stat[i+1:]))
	// f[0] is field 3 (state), so utime (field 14) is f[11] and stime (field 15) is f[12].
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: only %d fields", pid, len(f)+2)
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%d/stat: bad utime %q or stime %q", pid, f[11], f[12])
	}
	return time.Duration(utime+stime) * time.Second / clockTicks, nil
}
