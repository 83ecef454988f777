package market

import (
	"go/parser"
	"go/token"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestPurePackagesDoNoIO keeps the layering true: market and protocol are
// pure, so they must not import the network, the disk, the node or libp2p's
// host machinery.
func TestPurePackagesDoNoIO(t *testing.T) {
	forbidden := []string{
		"net", "os", "os/exec", "io/fs",
		"github.com/mira-market/mira/node", "github.com/mira-market/mira/storage", "github.com/mira-market/mira/testnet",
		"github.com/libp2p/go-libp2p", "github.com/libp2p/go-libp2p/core/host", "github.com/libp2p/go-libp2p/core/network",
		"github.com/libp2p/go-libp2p/p2p", "github.com/libp2p/go-libp2p-kad-dht", "github.com/libp2p/go-libp2p-pubsub",
		"github.com/dgraph-io/badger",
	}
	for _, dir := range []string{".", "../protocol", "../protocol/pb"} {
		files, err := filepath.Glob(filepath.Join(dir, "*.go"))
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range files {
			if strings.HasSuffix(f, "_test.go") {
				continue
			}
			parsed, err := parser.ParseFile(token.NewFileSet(), f, nil, parser.ImportsOnly)
			if err != nil {
				t.Fatal(err)
			}
			for _, imp := range parsed.Imports {
				path, _ := strconv.Unquote(imp.Path.Value)
				for _, bad := range forbidden {
					if path == bad || strings.HasPrefix(path, bad+"/") && bad != "github.com/libp2p/go-libp2p" {
						t.Errorf("%s imports %s", f, path)
					}
				}
			}
		}
	}
}
