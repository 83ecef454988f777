package market

import (
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// pureRoots are the trees of pure packages: market, and protocol with
// every package under it, found by walking the tree, so a new package
// there is checked without being listed here.
var pureRoots = []string{".", "../protocol"}

// forbiddenImports are what a pure package must not import: the network,
// the disk, processes, the node and its stores, libp2p's host machinery,
// the DHT, pubsub and Badger. A path is forbidden with everything under it
// (but libp2p's root module only as itself: its core/crypto and core/peer
// are plain data and signatures).
var forbiddenImports = []string{
	"net", "os", "os/exec", "io/fs",
	"github.com/mira-market/mira/node", "github.com/mira-market/mira/storage", "github.com/mira-market/mira/testnet",
	"github.com/libp2p/go-libp2p", "github.com/libp2p/go-libp2p/core/host", "github.com/libp2p/go-libp2p/core/network",
	"github.com/libp2p/go-libp2p/p2p", "github.com/libp2p/go-libp2p-kad-dht", "github.com/libp2p/go-libp2p-pubsub",
	"github.com/dgraph-io/badger",
}

// TestPurePackagesDoNoIO keeps the layering true: market and protocol (and
// its subpackages: the ledger's rules, the reconciliation) are pure, so
// they must not import the network, the disk, the node or libp2p's host
// machinery.
func TestPurePackagesDoNoIO(t *testing.T) {
	checked := 0
	for _, root := range pureRoots {
		err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if d.IsDir() && d.Name() == "testdata" {
				return filepath.SkipDir
			}
			if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
				return nil
			}
			checked++
			for _, imp := range forbiddenIn(t, path) {
				t.Errorf("%s imports %s", path, imp)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if checked == 0 {
		t.Fatal("no file checked")
	}
}

// forbiddenIn returns the forbidden imports of the Go file at path.
func forbiddenIn(t *testing.T, path string) []string {
	parsed, err := parser.ParseFile(token.NewFileSet(), path, nil, parser.ImportsOnly)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, imp := range parsed.Imports {
		p, _ := strconv.Unquote(imp.Path.Value)
		for _, bad := range forbiddenImports {
			if p == bad || strings.HasPrefix(p, bad+"/") && bad != "github.com/libp2p/go-libp2p" {
				out = append(out, p)
				break
			}
		}
	}
	return out
}
