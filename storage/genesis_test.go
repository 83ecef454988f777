package storage

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/mira-market/mira/protocol/ledger"
)

// TestGenesisFile saves a genesis and loads it back; a file that is not a
// valid genesis does not load.
func TestGenesisFile(t *testing.T) {
	_, a := testKey(t, "a")
	g := &ledger.Genesis{Network: "lab", SwarmKeyFingerprint: "9f1c2a3b4c5d6e7f", Grants: []ledger.GenesisGrant{{Peer: a, Amount: 5}}}
	path := filepath.Join(t.TempDir(), "genesis.json")
	if err := SaveGenesis(path, g); err != nil {
		t.Fatal(err)
	}
	loaded, err := LoadGenesis(path)
	if err != nil || loaded.Hash() != g.Hash() {
		t.Fatalf("reload: %v", err)
	}
	if err := SaveGenesis(filepath.Join(t.TempDir(), "bad.json"), &ledger.Genesis{}); !errors.Is(err, ledger.ErrGenesis) {
		t.Fatalf("save an invalid genesis: %v", err)
	}
	if err := os.WriteFile(path, []byte(`{"network": "lab", "grant": []}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadGenesis(path); !errors.Is(err, ledger.ErrGenesis) {
		t.Fatalf("load a genesis with an unknown field: %v", err)
	}
	if _, err := LoadGenesis(filepath.Join(t.TempDir(), "none.json")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("load a missing file: %v", err)
	}
}
