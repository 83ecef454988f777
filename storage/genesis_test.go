package storage

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/libp2p/go-libp2p/core/peer"
)

func TestLoadGenesis(t *testing.T) {
	_, a := testKey(t, "a")
	_, b := testKey(t, "b")
	path := filepath.Join(t.TempDir(), "genesis.json")
	fp := "9f1c2a3b4c5d6e7f" // as `mira init` prints it
	json := fmt.Sprintf(`{"network": "lab", "swarm_key_fingerprint": %q,
		"grants": [{"peer": %q, "amount": 18446744073709551610}, {"peer": %q, "amount": 5}],
		"faucet": {"amount": 7}}`, fp, a, b)
	if err := os.WriteFile(path, []byte(json), 0o644); err != nil {
		t.Fatal(err)
	}
	g, err := LoadGenesis(path)
	if err != nil {
		t.Fatal(err)
	}
	if amt, ok := g.GrantFor(a); !ok || amt != 18446744073709551610 {
		t.Fatalf("GrantFor(a) = %d, %v (uint64 amounts must survive JSON exactly)", amt, ok)
	}
	_, c := testKey(t, "c")
	if amt, ok := g.GrantFor(c); !ok || amt != 7 {
		t.Fatalf("GrantFor(c) = %d, %v, want the faucet", amt, ok)
	}
	if got := g.Total([]peer.ID{b, c, c}); got != 12 {
		t.Fatalf("Total(b, c, c) = %d, want 12", got)
	}
	if got := g.Total([]peer.ID{a, b, c}); got != ^uint64(0) {
		t.Fatalf("Total past 2^64 = %d, want saturation", got)
	}

	// Grant order and layout do not change the hash; content does.
	swapped := *g
	swapped.Grants = []GenesisGrant{g.Grants[1], g.Grants[0]}
	if swapped.Hash() != g.Hash() {
		t.Fatal("hash depends on grant order")
	}
	swapped.Faucet = nil
	if swapped.Hash() == g.Hash() {
		t.Fatal("hash ignores the faucet")
	}

	// Save and load again.
	path2 := filepath.Join(t.TempDir(), "g2.json")
	if err := g.Save(path2); err != nil {
		t.Fatal(err)
	}
	g2, err := LoadGenesis(path2)
	if err != nil || g2.Hash() != g.Hash() {
		t.Fatalf("reload: %v", err)
	}
}

func TestGenesisInvalid(t *testing.T) {
	_, a := testKey(t, "a")
	grant := func(amount string) string { return fmt.Sprintf(`{"peer": %q, "amount": %s}`, a, amount) }
	cases := map[string]string{
		"not json":        `{`,
		"unknown field":   `{"network": "lab", "grant": []}`,
		"trailing":        `{"network": "lab"} {}`,
		"no network":      `{"grants": []}`,
		"long network":    `{"network": "` + strings.Repeat("n", 65) + `"}`,
		"bad fingerprint": `{"network": "lab", "swarm_key_fingerprint": "abc"}`,
		"bad peer":        `{"network": "lab", "grants": [{"peer": "nope", "amount": 1}]}`,
		"zero grant":      `{"network": "lab", "grants": [` + grant("0") + `]}`,
		"negative grant":  `{"network": "lab", "grants": [` + grant("-1") + `]}`,
		"twice":           `{"network": "lab", "grants": [` + grant("1") + `,` + grant("2") + `]}`,
		"zero faucet":     `{"network": "lab", "faucet": {"amount": 0}}`,
	}
	for name, json := range cases {
		t.Run(name, func(t *testing.T) {
			if _, err := ParseGenesis([]byte(json)); !errors.Is(err, ErrGenesis) {
				t.Fatalf("err = %v, want ErrGenesis", err)
			}
		})
	}
	_, b := testKey(t, "b")
	overflow := fmt.Sprintf(`{"network": "lab", "grants": [%s, {"peer": %q, "amount": 18446744073709551615}]}`, grant("1"), b)
	if _, err := ParseGenesis([]byte(overflow)); !errors.Is(err, ErrGenesis) {
		t.Fatalf("overflowing grants: err = %v", err)
	}
}
