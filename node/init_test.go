package node_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mira-market/mira/node"
)

func TestInitRefusesExistingDataDir(t *testing.T) {
	dir := t.TempDir()
	key, err := node.NewSwarmKey()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := node.Init(node.InitOptions{Config: node.DefaultConfigPrivate(dir), SwarmKey: key}); err != nil {
		t.Fatal(err)
	}
	before := snapshot(t, dir)

	for _, cfg := range []node.Config{node.DefaultConfig(dir), node.DefaultConfigPrivate(dir)} {
		_, err := node.Init(node.InitOptions{Config: cfg})
		if !errors.Is(err, node.ErrAlreadyInitialized) {
			t.Fatalf("second init: err = %v, want ErrAlreadyInitialized", err)
		}
		if !strings.Contains(err.Error(), "refusing to overwrite") {
			t.Fatalf("message %q does not say what happened", err)
		}
	}
	after := snapshot(t, dir)
	if len(before) != len(after) {
		t.Fatalf("files changed: %v -> %v", before, after)
	}
	for name, content := range before {
		if after[name] != content {
			t.Fatalf("%s changed", name)
		}
	}
}

func TestInitWritesPrivateFiles(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "n")
	key, _ := node.NewSwarmKey()
	if _, err := node.Init(node.InitOptions{Config: node.DefaultConfigPrivate(dir), SwarmKey: key}); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{node.IdentityFile, node.SwarmKeyFile} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s mode = %v, want 0600", name, fi.Mode().Perm())
		}
	}
	cfg, err := node.LoadConfig(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !cfg.Private {
		t.Fatal("config of a node initialized with a swarm key is not private")
	}
	if _, err := node.LoadSwarmKey(dir); err != nil {
		t.Fatal(err)
	}
	if _, err := node.LoadIdentity(dir); err != nil {
		t.Fatal(err)
	}
}

func TestInitRejectsBadSwarmKey(t *testing.T) {
	dir := t.TempDir()
	_, err := node.Init(node.InitOptions{Config: node.DefaultConfigPrivate(dir), SwarmKey: []byte("not a key")})
	if err == nil {
		t.Fatal("init accepted a malformed swarm key")
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Fatalf("init with a bad key left files: %v", entries)
	}
}

func snapshot(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		out[e.Name()] = string(b)
	}
	return out
}
