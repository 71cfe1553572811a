package gctune

import (
	"os"
	"runtime/debug"
	"strconv"
	"strings"
)

// cgroupLimitFiles are where a container's memory limit is read from:
// cgroup v2, then v1.
var cgroupLimitFiles = []string{"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"}

// MemoryLimitShare is the part of the container's limit the Go runtime is
// told to stay under (GOMEMLIMIT): the rest is for stacks, the binary and
// what the runtime does not count, so the collector works harder before
// the kernel's OOM killer acts.
const MemoryLimitShare = 0.9

// SetMemoryLimit sets the runtime's soft memory limit to MemoryLimitShare
// of the container's memory limit, read from the cgroup, and returns it;
// 0 when there is no limit to read (no cgroup limit, "max", or not Linux).
// GOMEMLIMIT in the environment takes precedence: call this only without
// it.
func SetMemoryLimit() int64 {
	limit := containerLimit(cgroupLimitFiles)
	if limit <= 0 {
		return 0
	}
	soft := int64(float64(limit) * MemoryLimitShare)
	debug.SetMemoryLimit(soft)
	return soft
}

// containerLimit reads the first of files that holds a byte count; cgroup
// v1 reports "no limit" as a huge number, taken as none.
func containerLimit(files []string) int64 {
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		v := strings.TrimSpace(string(b))
		if v == "max" {
			return 0
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n <= 0 || n >= 1<<62 {
			return 0
		}
		return n
	}
	return 0
}
