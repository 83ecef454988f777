//go:build wasip1 || (mirasample && !linux)

package main

// fallocate is linux only: WASI has no way to allocate blocks without
// changing a file's size.
func fallocate(string, int) { fail(2, "fallocate: not on this system") }
