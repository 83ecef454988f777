package storage

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"os"
	"slices"
	"strings"

	"github.com/libp2p/go-libp2p/core/peer"
)

// ErrGenesis marks a genesis file that is not valid.
var ErrGenesis = errors.New("invalid genesis")

// maxNetworkName bounds a network's name.
const maxNetworkName = 64

// Genesis is what the members of a network agree on before its first entry:
// its name, its swarm key's fingerprint and who starts with which credits.
// Every member of a private testnet loads the same file.
//
// Credits enter the ledger only through Grant entries: the grant for an
// account is the account's own first entry (seq 1, kind Grant), for exactly
// the amount GrantFor returns. So at any time the sum of all balances equals
// the sum of the Grant entries present, which is Total of the accounts that
// have written one.
//
// The JSON form:
//
//	{
//	  "network": "lab",
//	  "swarm_key_fingerprint": "<the swarm key fingerprint mira init prints, or empty>",
//	  "grants": [{"peer": "12D3KooW…", "amount": 1000000}],
//	  "faucet": {"amount": 1000}
//	}
//
// Amounts are micro-credits. The faucet is optional (testnets): with it, any
// account without a grant of its own may claim one Grant of the faucet amount.
type Genesis struct {
	Network             string         `json:"network"`
	SwarmKeyFingerprint string         `json:"swarm_key_fingerprint"`
	Grants              []GenesisGrant `json:"grants"`
	Faucet              *GenesisFaucet `json:"faucet,omitempty"`
}

// GenesisGrant gives Peer Amount micro-credits.
type GenesisGrant struct {
	Peer   peer.ID `json:"peer"`
	Amount uint64  `json:"amount"`
}

// GenesisFaucet lets any account without a grant claim Amount once.
type GenesisFaucet struct {
	Amount uint64 `json:"amount"`
}

// LoadGenesis reads and validates a genesis file. Unknown fields are
// refused, so a typo does not silently drop a grant.
func LoadGenesis(path string) (*Genesis, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read genesis: %w", err)
	}
	g, err := ParseGenesis(data)
	if err != nil {
		return nil, fmt.Errorf("genesis %s: %w", path, err)
	}
	return g, nil
}

// ParseGenesis parses and validates a genesis file's contents.
func ParseGenesis(data []byte) (*Genesis, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var g Genesis
	if err := dec.Decode(&g); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrGenesis, err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%w: data after the JSON object", ErrGenesis)
	}
	if err := g.Validate(); err != nil {
		return nil, err
	}
	return &g, nil
}

// Save writes the genesis as indented JSON to path.
func (g *Genesis) Save(path string) error {
	if err := g.Validate(); err != nil {
		return err
	}
	data, err := json.MarshalIndent(g, "", "  ")
	if err != nil {
		return fmt.Errorf("encode genesis: %w", err)
	}
	if err := os.WriteFile(path, append(data, '\n'), 0o644); err != nil {
		return fmt.Errorf("write genesis: %w", err)
	}
	return nil
}

// Validate checks the genesis: a network name, a well-formed fingerprint,
// grants to distinct Ed25519 peers of non-zero amounts whose sum fits in a
// uint64, and a non-zero faucet amount if there is a faucet. Errors wrap
// ErrGenesis.
func (g *Genesis) Validate() error {
	if g.Network == "" || len(g.Network) > maxNetworkName {
		return fmt.Errorf("%w: network name must have 1 to %d bytes", ErrGenesis, maxNetworkName)
	}
	if f := g.SwarmKeyFingerprint; f != "" {
		if b, err := hex.DecodeString(f); err != nil || len(b) < 8 || len(b) > sha256.Size {
			return fmt.Errorf("%w: swarm_key_fingerprint must be 8 to 32 bytes in hex (as `mira init` prints it)", ErrGenesis)
		}
	}
	seen := make(map[peer.ID]bool, len(g.Grants))
	var sum uint64
	for i, gr := range g.Grants {
		if !isEd25519Peer([]byte(gr.Peer)) {
			return fmt.Errorf("%w: grant %d: peer %q is not an Ed25519 peer ID", ErrGenesis, i, gr.Peer)
		}
		if seen[gr.Peer] {
			return fmt.Errorf("%w: grant %d: second grant to %s", ErrGenesis, i, gr.Peer)
		}
		seen[gr.Peer] = true
		if gr.Amount == 0 {
			return fmt.Errorf("%w: grant %d: zero amount", ErrGenesis, i)
		}
		var carry uint64
		if sum, carry = bits.Add64(sum, gr.Amount, 0); carry != 0 {
			return fmt.Errorf("%w: grants sum past 2^64", ErrGenesis)
		}
	}
	if g.Faucet != nil && g.Faucet.Amount == 0 {
		return fmt.Errorf("%w: faucet of zero", ErrGenesis)
	}
	return nil
}

// GrantFor returns what account may claim with its Grant entry: its own
// grant if genesis lists it, else the faucet amount if there is a faucet.
// ok is false if the account may not claim anything.
func (g *Genesis) GrantFor(account peer.ID) (amount uint64, ok bool) {
	for _, gr := range g.Grants {
		if gr.Peer == account {
			return gr.Amount, true
		}
	}
	if g.Faucet != nil {
		return g.Faucet.Amount, true
	}
	return 0, false
}

// Total returns what the given accounts may claim in all: the sum of
// GrantFor over the distinct accounts listed (saturating at 2^64-1). For
// the ledger's accounts that have written their Grant entry, it equals the
// sum of all balances (Ledger.Total). Without a faucet, Total of the
// granted peers is everything the network will ever hold.
func (g *Genesis) Total(accounts []peer.ID) uint64 {
	seen := make(map[peer.ID]bool, len(accounts))
	var sum uint64
	for _, a := range accounts {
		if seen[a] {
			continue
		}
		seen[a] = true
		amt, _ := g.GrantFor(a)
		var carry uint64
		if sum, carry = bits.Add64(sum, amt, 0); carry != 0 {
			return ^uint64(0)
		}
	}
	return sum
}

// Hash identifies the genesis: SHA-256 over a canonical binary form
// (network, fingerprint, grants sorted by peer, faucet), so two files that
// differ only in layout or grant order hash the same.
func (g *Genesis) Hash() Hash {
	grants := slices.Clone(g.Grants)
	slices.SortFunc(grants, func(a, b GenesisGrant) int { return strings.Compare(string(a.Peer), string(b.Peer)) })
	out := []byte("mira-genesis/1\x00")
	out = appendField(out, []byte(g.Network))
	out = appendField(out, []byte(g.SwarmKeyFingerprint))
	out = binary.BigEndian.AppendUint64(out, uint64(len(grants)))
	for _, gr := range grants {
		out = appendField(out, []byte(gr.Peer))
		out = binary.BigEndian.AppendUint64(out, gr.Amount)
	}
	if g.Faucet != nil {
		out = append(out, 1)
		out = binary.BigEndian.AppendUint64(out, g.Faucet.Amount)
	} else {
		out = append(out, 0)
	}
	return sha256.Sum256(out)
}
