package ledger

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/libp2p/go-libp2p/core/peer"
)

func TestParseGenesis(t *testing.T) {
	_, a := testKey(t, "a")
	_, b := testKey(t, "b")
	fp := "9f1c2a3b4c5d6e7f" // as `mira init` prints it
	_, c := testKey(t, "c")
	json := fmt.Sprintf(`{"network": "lab", "swarm_key_fingerprint": %q, "testnet": true,
		"grants": [{"peer": %q, "amount": 18446744073709551600}, {"peer": %q, "amount": 5}],
		"faucet": {"amount": 7, "peers": [%q]}, "entry_rate": {"burst": 10, "per_second": 2}}`, fp, a, b, c)
	g, err := ParseGenesis([]byte(json))
	if err != nil {
		t.Fatal(err)
	}
	if amt, ok := g.GrantFor(a); !ok || amt != 18446744073709551600 {
		t.Fatalf("GrantFor(a) = %d, %v (uint64 amounts must survive JSON exactly)", amt, ok)
	}
	if amt, ok := g.GrantFor(c); !ok || amt != 7 {
		t.Fatalf("GrantFor(c) = %d, %v, want the faucet", amt, ok)
	}
	_, d := testKey(t, "d")
	if amt, ok := g.GrantFor(d); ok {
		t.Fatalf("GrantFor(d) = %d, %v: d is not a faucet peer", amt, ok)
	}
	if got := g.Total([]peer.ID{b, c, c}); got != 12 {
		t.Fatalf("Total(b, c, c) = %d, want 12", got)
	}
	if got := g.Total([]peer.ID{a, b, c}); got != 18446744073709551612 {
		t.Fatalf("Total(a, b, c) = %d", got)
	}
	// Validate keeps grants and claims within 2^64; Total saturates all
	// the same.
	huge := &Genesis{Network: "lab", Grants: []GenesisGrant{{Peer: a, Amount: 1 << 63}, {Peer: b, Amount: 1 << 63}}}
	if got := huge.Total([]peer.ID{a, b}); got != ^uint64(0) {
		t.Fatalf("Total past 2^64 = %d, want saturation", got)
	}

	// Grant order and layout do not change the hash; content does.
	swapped := *g
	swapped.Grants = []GenesisGrant{g.Grants[1], g.Grants[0]}
	if swapped.Hash() != g.Hash() {
		t.Fatal("hash depends on grant order")
	}
	for name, change := range map[string]func(*Genesis){
		"faucet":       func(g *Genesis) { g.Faucet = nil },
		"faucet peers": func(g *Genesis) { g.Faucet = &GenesisFaucet{Amount: 7, Peers: []peer.ID{d}} },
		"testnet":      func(g *Genesis) { g.Testnet = false },
		"entry rate":   func(g *Genesis) { g.EntryRate = &GenesisEntryRate{Burst: 10, PerSecond: 3} },
	} {
		changed := *g
		change(&changed)
		if changed.Hash() == g.Hash() {
			t.Fatalf("hash ignores the %s", name)
		}
	}

	// Marshal and parse again.
	data, err := g.MarshalFile()
	if err != nil {
		t.Fatal(err)
	}
	g2, err := ParseGenesis(data)
	if err != nil || g2.Hash() != g.Hash() {
		t.Fatalf("reload: %v", err)
	}
}

// TestGenesisHashStable pins the hash of a genesis without the fields
// added since (testnet, faucet peers, entry rate) to what the build before
// them computed: a ledger records its genesis hash and refuses to open
// under another.
func TestGenesisHashStable(t *testing.T) {
	_, a := testKey(t, "a")
	_, b := testKey(t, "b")
	g := &Genesis{Network: "lab", SwarmKeyFingerprint: "9f1c2a3b4c5d6e7f", Grants: []GenesisGrant{{Peer: a, Amount: 5}, {Peer: b, Amount: 7}}}
	if got := g.Hash().String(); got != "c91798de1784f59c2de71e21b0931b4a29b5fcdf89c117786ca681f2963cc780" {
		t.Fatalf("hash %s", got)
	}
}

func TestGenesisInvalid(t *testing.T) {
	_, a := testKey(t, "a")
	_, b := testKey(t, "b")
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
		"zero faucet":     `{"network": "lab", "testnet": true, "faucet": {"amount": 0, "peers": [` + fmt.Sprintf("%q", b) + `]}}`,
		"faucet on a network that is not a testnet": `{"network": "lab", "faucet": {"amount": 1, "peers": [` + fmt.Sprintf("%q", b) + `]}}`,
		"faucet open to anyone":                     `{"network": "lab", "testnet": true, "faucet": {"amount": 1}}`,
		"bad faucet peer":                           `{"network": "lab", "testnet": true, "faucet": {"amount": 1, "peers": ["nope"]}}`,
		"faucet peer twice":                         `{"network": "lab", "testnet": true, "faucet": {"amount": 1, "peers": [` + fmt.Sprintf("%q, %q", b, b) + `]}}`,
		"faucet peer with a grant":                  `{"network": "lab", "testnet": true, "grants": [` + grant("1") + `], "faucet": {"amount": 1, "peers": [` + fmt.Sprintf("%q", a) + `]}}`,
		"entry rate without a burst":                `{"network": "lab", "entry_rate": {"burst": 0, "per_second": 1}}`,
		"entry rate of zero":                        `{"network": "lab", "entry_rate": {"burst": 1, "per_second": 0}}`,
		"entry rate past a nanosecond":              `{"network": "lab", "entry_rate": {"burst": 1, "per_second": 1000000001}}`,
		"entry burst too long to refill":            `{"network": "lab", "entry_rate": {"burst": 4611686018427387904, "per_second": 1}}`,
	}
	for name, json := range cases {
		t.Run(name, func(t *testing.T) {
			if _, err := ParseGenesis([]byte(json)); !errors.Is(err, ErrGenesis) {
				t.Fatalf("err = %v, want ErrGenesis", err)
			}
		})
	}
	overflow := fmt.Sprintf(`{"network": "lab", "grants": [%s, {"peer": %q, "amount": 18446744073709551615}]}`, grant("1"), b)
	if _, err := ParseGenesis([]byte(overflow)); !errors.Is(err, ErrGenesis) {
		t.Fatalf("overflowing grants: err = %v", err)
	}
	_, c := testKey(t, "c")
	overflow = fmt.Sprintf(`{"network": "lab", "testnet": true, "grants": [{"peer": %q, "amount": 18446744073709551615}], "faucet": {"amount": 1, "peers": [%q]}}`, b, c)
	if _, err := ParseGenesis([]byte(overflow)); !errors.Is(err, ErrGenesis) {
		t.Fatalf("grants and faucet claims past 2^64: err = %v", err)
	}
}
