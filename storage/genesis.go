package storage

import (
	"fmt"
	"os"

	"github.com/mira-market/mira/protocol/ledger"
)

// LoadGenesis reads and validates a genesis file (ledger.ParseGenesis).
// Unknown fields are refused, so a typo does not silently drop a grant.
func LoadGenesis(path string) (*ledger.Genesis, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read genesis: %w", err)
	}
	g, err := ledger.ParseGenesis(data)
	if err != nil {
		return nil, fmt.Errorf("genesis %s: %w", path, err)
	}
	return g, nil
}

// SaveGenesis writes g, once validated, as indented JSON to path.
func SaveGenesis(path string, g *ledger.Genesis) error {
	data, err := g.MarshalFile()
	if err != nil {
		return err
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		return fmt.Errorf("write genesis: %w", err)
	}
	return nil
}
