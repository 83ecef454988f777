package node_test

import (
	"fmt"
	"os"
	"testing"
)

// testWasmCache is the wasm compilation cache of every testnet in this
// test binary, so that the sample module compiles once, not once per
// test: a fresh dir of mode 0700 with a random name, which no other user
// can have made first.
var testWasmCache string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "mira-node-test-wasm-cache-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	testWasmCache = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}
