//go:build linux && mirasample

package main

import (
	"os"
	"syscall"
)

// fallocKeepSize is FALLOC_FL_KEEP_SIZE: blocks are allocated, the file's
// size stays.
const fallocKeepSize = 1

// fallocate allocates mib MiB of blocks to name (created if need be)
// without changing its size.
func fallocate(name string, mib int) {
	f, err := os.OpenFile(name, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		fail(1, "fallocate: %v", err)
	}
	defer f.Close()
	if err := syscall.Fallocate(int(f.Fd()), fallocKeepSize, 0, int64(mib)<<20); err != nil {
		fail(1, "fallocate: %v", err)
	}
}
