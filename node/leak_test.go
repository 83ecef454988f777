package node_test

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"testing"

	"github.com/mira-market/mira/testnet"
)

// TestCloseLeavesNoGoroutines starts and stops a testnet and checks that
// the goroutines it started have ended.
func TestCloseLeavesNoGoroutines(t *testing.T) {
	before := runtime.NumGoroutine()
	tn, err := testnet.Start(context.Background(), testnet.Options{Nodes: 3, Dir: t.TempDir(), Configure: testnet.WithProviders(1), WasmCacheDir: testWasmCache})
	if err != nil {
		t.Fatal(err)
	}
	if err := testnet.WaitFor(context.Background(), deadline, tn.Formed); err != nil {
		t.Fatal(err)
	}
	if err := tn.Close(); err != nil {
		t.Fatal(err)
	}
	err = testnet.WaitFor(context.Background(), deadline, func() error {
		if n := runtime.NumGoroutine(); n > before {
			return fmt.Errorf("%d goroutines after close, %d before", n, before)
		}
		return nil
	})
	if err != nil {
		buf := make([]byte, 1<<20)
		stacks := string(buf[:runtime.Stack(buf, true)])
		t.Fatalf("%v\n%s", err, firstLines(stacks, 200))
	}
}

func firstLines(s string, n int) string {
	lines := strings.SplitN(s, "\n", n+1)
	return strings.Join(lines[:min(n, len(lines))], "\n")
}
