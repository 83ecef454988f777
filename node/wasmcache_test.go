package node_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mira-market/mira/node"
	"github.com/mira-market/mira/testnet"
)

// A compilation cache others may write (a dir another local user made in
// /tmp, say) is never used: machine code planted there would run as the
// node. The provider compiles in memory and writes nothing there.
func TestWasmCacheOthersMayWriteIsNotUsed(t *testing.T) {
	planted := filepath.Join(t.TempDir(), "mira-wasm-cache")
	if err := os.Mkdir(planted, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(planted, 0o777); err != nil { // past the umask
		t.Fatal(err)
	}
	tn := startTestnet(t, 2, func(i int, cfg *node.Config) {
		testnet.WithProviders(1)(i, cfg)
		cfg.Provider.WasmCacheDir = planted
	})
	select {
	case <-tn.Node(1).Warm(): // the samples are compiled
	case <-time.After(deadline):
		t.Fatal("provider not warm")
	}
	entries, err := os.ReadDir(planted)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) > 0 {
		t.Fatalf("the provider used a cache dir others may write: it holds %v", entries)
	}
}

// A testnet keeps its members' compilation cache in its own dir, 0700,
// not in a path of the shared /tmp that another user could make first.
func TestTestnetWasmCacheIsItsOwn(t *testing.T) {
	dir := t.TempDir()
	tn, err := testnet.Start(t.Context(), testnet.Options{Nodes: 2, Dir: dir, Configure: testnet.WithProviders(1)})
	if err != nil {
		t.Fatal(err)
	}
	defer tn.Close()
	cfg, err := node.LoadConfig(tn.Dir(1))
	if err != nil {
		t.Fatal(err)
	}
	cache := cfg.Provider.WasmCacheDir
	if rel, err := filepath.Rel(dir, cache); err != nil || strings.HasPrefix(rel, "..") {
		t.Fatalf("wasm cache %q is outside the testnet's dir %q", cache, dir)
	}
	select {
	case <-tn.Node(1).Warm():
	case <-time.After(deadline):
		t.Fatal("provider not warm")
	}
	fi, err := os.Stat(cache)
	if err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("wasm cache %q: %v, %v; want a dir of mode 0700", cache, fi, err)
	}
}
