package node

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// totalMemoryMiB is the machine's memory; 0 where /proc is missing.
func totalMemoryMiB() int64 {
	kb, err := procKB("/proc/meminfo", "MemTotal")
	if err != nil {
		return 0
	}
	return kb >> 10
}

// ResidentSetSize is this process's resident memory in bytes (Linux).
func ResidentSetSize() (int64, error) {
	kb, err := procKB("/proc/self/status", "VmRSS")
	return kb << 10, err
}

// procKB reads a "Field:   123 kB" line from a /proc file.
func procKB(path, field string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if rest, ok := strings.CutPrefix(s.Text(), field+":"); ok {
			v := strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB"))
			kb, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				return 0, fmt.Errorf("%s: %s %q: %w", path, field, v, err)
			}
			return kb, nil
		}
	}
	return 0, fmt.Errorf("%s: no %s line", path, field)
}
