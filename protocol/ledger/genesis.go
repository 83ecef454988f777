package ledger

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
	"slices"
	"strings"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

// ErrGenesis marks a genesis that is not valid.
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
//	  "grants": [{"peer": "12D3KooW…", "amount": 1000000}]
//	}
//
// Amounts are micro-credits. Optional: "testnet": true declares a test
// network, the only kind that may have a faucet, "faucet": {"amount": 1000,
// "peers": ["12D3KooW…"]}, which lets each peer it lists claim one Grant of
// its amount (a convenience for a lab's many members: the faucet mints only
// for the peers listed, like grants); "entry_rate": {"burst": 65536,
// "per_second": 256} sets the per-account limit on ledger entries
// (DefaultEntryBurst, DefaultEntryRate).
type Genesis struct {
	Network             string `json:"network"`
	SwarmKeyFingerprint string `json:"swarm_key_fingerprint"`
	// Testnet declares a test network: only such a network may have a
	// faucet.
	Testnet   bool              `json:"testnet,omitempty"`
	Grants    []GenesisGrant    `json:"grants"`
	Faucet    *GenesisFaucet    `json:"faucet,omitempty"`
	EntryRate *GenesisEntryRate `json:"entry_rate,omitempty"`
}

// GenesisGrant gives Peer Amount micro-credits.
type GenesisGrant struct {
	Peer   peer.ID `json:"peer"`
	Amount uint64  `json:"amount"`
}

// GenesisFaucet lets each of Peers (that has no grant of its own) claim
// Amount once, on a test network. A faucet open to any key would mint
// without limit: a new key is free, so one person could claim it as often
// as they like and pay every claim on to one account.
type GenesisFaucet struct {
	Amount uint64    `json:"amount"`
	Peers  []peer.ID `json:"peers"`
}

// Defaults of the per-account limit on ledger entries (see GenesisEntryRate).
// The burst is twenty times what one requester writes in a burst of 1,000
// jobs in `mira bench market` (a hold and a payment each, some releases and
// new holds); the rate sustains 128 jobs a second for every requester and
// provider, with the burst to spare.
const (
	DefaultEntryBurst = 65536
	DefaultEntryRate  = 256
)

// GenesisEntryRate limits how fast one account may write ledger entries,
// counted in the entries' own times (which every node reads alike): Burst
// entries at once, then PerSecond a second. Holds and releases cost their
// writer nothing but the limit: without it an account with one credit
// could write entries, which every node keeps, as fast as it can sign.
type GenesisEntryRate struct {
	Burst     uint64 `json:"burst"`
	PerSecond uint64 `json:"per_second"`
}

// maxEntrySlack bounds Burst × the interval between entries, so that a
// paced time never overflows (entry times are below 2^63).
const maxEntrySlack = 1 << 62

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

// MarshalFile returns the genesis as a genesis file holds it: indented
// JSON, after checking it is valid.
func (g *Genesis) MarshalFile() ([]byte, error) {
	if err := g.Validate(); err != nil {
		return nil, err
	}
	data, err := json.MarshalIndent(g, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encode genesis: %w", err)
	}
	return append(data, '\n'), nil
}

// Validate checks the genesis: a network name, a well-formed fingerprint,
// grants to distinct Ed25519 peers of non-zero amounts whose sum fits in a
// uint64 (with the faucet's claims), a faucet only on a test network, with
// a non-zero amount and distinct Ed25519 peers that have no grant, and an
// entry rate in range. Errors wrap ErrGenesis.
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
	if err := g.validateFaucet(seen, sum); err != nil {
		return err
	}
	if r := g.EntryRate; r != nil {
		if r.Burst == 0 || r.PerSecond == 0 || r.PerSecond > uint64(time.Second) {
			return fmt.Errorf("%w: entry_rate needs a burst of at least 1 and 1 to 10^9 entries per_second", ErrGenesis)
		}
		if hi, lo := bits.Mul64(r.Burst, uint64(time.Second)/r.PerSecond); hi != 0 || lo > maxEntrySlack {
			return fmt.Errorf("%w: entry_rate's burst takes longer than 2^62 ns to refill", ErrGenesis)
		}
	}
	return nil
}

// validateFaucet checks the faucet against the grants (granted, their sum).
func (g *Genesis) validateFaucet(granted map[peer.ID]bool, sum uint64) error {
	f := g.Faucet
	switch {
	case f == nil:
		return nil
	case !g.Testnet:
		return fmt.Errorf(`%w: a faucet needs a test network ("testnet": true)`, ErrGenesis)
	case f.Amount == 0:
		return fmt.Errorf("%w: faucet of zero", ErrGenesis)
	case len(f.Peers) == 0:
		return fmt.Errorf("%w: a faucet lists the peers that may claim it (faucet.peers)", ErrGenesis)
	}
	seen := make(map[peer.ID]bool, len(f.Peers))
	for i, p := range f.Peers {
		switch {
		case !isEd25519Peer([]byte(p)):
			return fmt.Errorf("%w: faucet peer %d: %q is not an Ed25519 peer ID", ErrGenesis, i, p)
		case seen[p]:
			return fmt.Errorf("%w: faucet peer %d: %s listed twice", ErrGenesis, i, p)
		case granted[p]:
			return fmt.Errorf("%w: faucet peer %d: %s has a grant", ErrGenesis, i, p)
		}
		seen[p] = true
		var carry uint64
		if sum, carry = bits.Add64(sum, f.Amount, 0); carry != 0 {
			return fmt.Errorf("%w: grants and faucet claims sum past 2^64", ErrGenesis)
		}
	}
	return nil
}

// RateLimit is the network's per-account limit on entries.
func (g *Genesis) RateLimit() RateLimit {
	if r := g.EntryRate; r != nil {
		return NewRateLimit(r.Burst, r.PerSecond)
	}
	return NewRateLimit(DefaultEntryBurst, DefaultEntryRate)
}

// GrantFor returns what account may claim with its Grant entry: its own
// grant if genesis lists it, else the faucet amount if it is one of the
// faucet's peers on a test network. ok is false if the account may not
// claim anything.
func (g *Genesis) GrantFor(account peer.ID) (amount uint64, ok bool) {
	for _, gr := range g.Grants {
		if gr.Peer == account {
			return gr.Amount, true
		}
	}
	if f := g.Faucet; f != nil && g.Testnet && slices.Contains(f.Peers, account) {
		return f.Amount, true
	}
	return 0, false
}

// Total returns what the given accounts may claim in all: the sum of
// GrantFor over the distinct accounts listed (saturating at 2^64-1). For
// the ledger's accounts that have written their Grant entry, it equals the
// sum of all balances (Ledger.Total). Total of the granted and the faucet's
// peers is everything the network will ever hold.
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
// (network, fingerprint, grants sorted by peer, faucet; then, each behind
// its own tag and only when set, so that a genesis without them keeps the
// hash it had before they existed: the testnet flag, the faucet's peers
// sorted, the entry rate), so two files that differ only in layout or in
// the order of grants or faucet peers hash the same.
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
	if g.Testnet {
		out = append(out, 't')
	}
	if g.Faucet != nil && len(g.Faucet.Peers) > 0 {
		peers := slices.Clone(g.Faucet.Peers)
		slices.Sort(peers)
		out = append(out, 'p')
		out = binary.BigEndian.AppendUint64(out, uint64(len(peers)))
		for _, p := range peers {
			out = appendField(out, []byte(p))
		}
	}
	if r := g.EntryRate; r != nil {
		out = append(out, 'r')
		out = binary.BigEndian.AppendUint64(out, r.Burst)
		out = binary.BigEndian.AppendUint64(out, r.PerSecond)
	}
	return sha256.Sum256(out)
}
