package executor

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"strconv"
)

// HostMemory is the host's memory as /proc/meminfo has it, in bytes:
// MemTotal and MemAvailable (the kernel's estimate of what can be
// allocated without swapping).
type HostMemory struct {
	Total, Available uint64
}

// ReadHostMemory reads /proc/meminfo.
func ReadHostMemory() (HostMemory, error) {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return HostMemory{}, fmt.Errorf("host memory: %w", err)
	}
	return parseMeminfo(bytes.NewReader(b))
}

// parseMeminfo reads the MemTotal and MemAvailable lines ("MemTotal:
// 16384 kB") of a /proc/meminfo.
func parseMeminfo(r io.Reader) (HostMemory, error) {
	var m HostMemory
	found := 0
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		fields := bytes.Fields(sc.Bytes())
		if len(fields) != 3 || string(fields[2]) != "kB" {
			continue
		}
		var dst *uint64
		switch string(fields[0]) {
		case "MemTotal:":
			dst = &m.Total
		case "MemAvailable:":
			dst = &m.Available
		default:
			continue
		}
		kb, err := strconv.ParseUint(string(fields[1]), 10, 64)
		if err != nil || kb > 1<<50 {
			return HostMemory{}, fmt.Errorf("host memory: bad line %q", sc.Text())
		}
		*dst = kb << 10
		found++
	}
	if err := sc.Err(); err != nil {
		return HostMemory{}, fmt.Errorf("host memory: %w", err)
	}
	if found != 2 {
		return HostMemory{}, fmt.Errorf("host memory: no MemTotal and MemAvailable in /proc/meminfo")
	}
	return m, nil
}

// hostMemoryMib is the host's total memory in MiB, or 1024 where it cannot
// be read: the default limit of an executor whose options give none.
func hostMemoryMib() uint32 {
	m, err := ReadHostMemory()
	if err != nil || m.Total>>20 == 0 {
		return 1024
	}
	return uint32(min(m.Total>>20, 1<<31))
}
