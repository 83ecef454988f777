package storage

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/mira-market/mira/protocol/ledger"
)

// ErrInconsistent marks an index that does not match the entries.
var ErrInconsistent = errors.New("ledger index inconsistent with entries")

// Verify re-validates the whole ledger from scratch: every entry's
// encoding, signature, chain, rate and kind rules (ledger.Rules.Replay),
// and every index (hashes, accounts, holds, payments, holds ever written,
// leases, voters, count, fraud proofs) against the entries. It returns the
// problems found; the error is for failing to read. It reads one snapshot
// and holds it in memory. Times are not checked against the clock: an
// entry valid when stored stays valid.
func (l *Ledger) Verify(ctx context.Context) ([]ledger.Problem, error) {
	s, probs, err := l.readAll(ctx)
	if err != nil {
		return nil, err
	}
	// Signatures, in parallel, in batches as IngestMany checks them.
	var all []*ledger.Candidate
	for _, ch := range s.chains {
		all = append(all, ch...)
	}
	ledger.VerifyAll(l.network, l.workers, all)
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	replayed, err := l.rules.Replay(ctx, s.chains)
	if err != nil {
		return nil, err
	}
	c := &indexCheck{s: s, want: replayed.State, broken: replayed.Broken, probs: append(probs, replayed.Problems...)}
	c.fraudProofs(l.network)
	c.accounts()
	c.jobIndexes()
	c.holds()
	c.funds()
	c.voters()
	c.claims()
	c.reputations()
	c.hashes()
	c.count()
	return c.probs, nil
}

// indexCheck holds the stored indexes against what the replay of the
// entries derives, and collects the problems found.
type indexCheck struct {
	s      *stored
	want   *ledger.MemState
	broken map[peer.ID]bool // chains that stopped at a problem: not checked
	probs  []ledger.Problem
}

func (c *indexCheck) add(id peer.ID, seq uint64, err error) {
	c.probs = append(c.probs, ledger.Problem{Account: id, Seq: seq, Err: err})
}

func (c *indexCheck) bad(id peer.ID, seq uint64, format string, a ...any) {
	c.add(id, seq, fmt.Errorf("%w: %s", ErrInconsistent, fmt.Sprintf(format, a...)))
}

// fraudProofs checks the stored proofs, and freezes in the replayed state
// the accounts they convict.
func (c *indexCheck) fraudProofs(network string) {
	for id, v := range c.s.fraud {
		p, err := ledger.DecodeFraudProof(v)
		var who peer.ID
		if err == nil {
			who, err = p.Verify(network)
		}
		if err == nil && who != id {
			err = fmt.Errorf("%w: proof against %s stored under %s", ledger.ErrBadFraudProof, who, id)
		}
		if err != nil {
			c.add(id, 0, err)
			continue
		}
		a, _ := c.want.Account(id)
		a.Frozen = true
	}
}

// accounts checks the account records.
func (c *indexCheck) accounts() {
	for id, want := range c.want.Accounts {
		if !c.broken[id] && c.s.accts[id] != *want {
			c.bad(id, 0, "account record %+v, entries give %+v", c.s.accts[id], *want)
		}
	}
	for id, got := range c.s.accts {
		if _, ok := c.want.Accounts[id]; !ok && !c.broken[id] && got != (ledger.AccountState{}) {
			c.bad(id, 0, "account record %+v without entries", got)
		}
	}
}

// holds checks the index of open holds.
func (c *indexCheck) holds() {
	for k, hr := range c.want.Holds {
		if v, ok := c.s.holds[k]; !c.broken[k.Requester] && (!ok || !bytes.Equal(v, hr.Encode())) {
			c.bad(k.Requester, hr.Seq, "open hold for job %s naming %q not indexed as such", k.Job, k.Provider)
		}
	}
	for k := range c.s.holds {
		if _, ok := c.want.Holds[k]; !ok && !c.broken[k.Requester] {
			c.bad(k.Requester, 0, "hold index for job %s naming %q without an open hold", k.Job, k.Provider)
		}
	}
}

// claims checks the index of final claims. A claim is the provider's
// entry, so the provider's chain is the one that must not be broken.
func (c *indexCheck) claims() {
	for k, seq := range c.want.Claims {
		if v, ok := c.s.claims[k]; !c.broken[k.Provider] && (!ok || !bytes.Equal(v, binary.BigEndian.AppendUint64(nil, seq))) {
			c.bad(k.Provider, seq, "final claim of job %s of %s not indexed", k.Job, k.Requester)
		}
	}
	for k := range c.s.claims {
		if _, ok := c.want.Claims[k]; !ok && !c.broken[k.Provider] {
			c.bad(k.Provider, 0, "claim index for job %s of %s without a final claim", k.Job, k.Requester)
		}
	}
}

// reputations checks the reputation counters. A peer's counters also
// count other chains' entries (claims against it, payments to it): when
// any chain is broken they may differ without an index being wrong, so
// they are checked only when none is.
func (c *indexCheck) reputations() {
	if len(c.broken) > 0 {
		return
	}
	for id, want := range c.want.Reps {
		if got, ok := c.s.reps[id]; !ok && want != (ledger.Reputation{}) || ok && got != want {
			c.bad(id, 0, "reputation %+v, entries give %+v", got, want)
		}
	}
	for id, got := range c.s.reps {
		if _, ok := c.want.Reps[id]; !ok && got != (ledger.Reputation{}) {
			c.bad(id, 0, "reputation %+v without entries", got)
		}
	}
}

// jobIndexes checks the indexes of payments and leases.
func (c *indexCheck) jobIndexes() {
	for k, seq := range c.want.Paids {
		if v, ok := c.s.paids[k]; !c.broken[k.Account] && (!ok || !bytes.Equal(v, binary.BigEndian.AppendUint64(nil, seq))) {
			c.bad(k.Account, seq, "payment for job %s not indexed", k.Job)
		}
	}
	for k := range c.s.paids {
		if _, ok := c.want.Paids[k]; !ok && !c.broken[k.Account] {
			c.bad(k.Account, 0, "payment index for job %s without a payment", k.Job)
		}
	}
	for k, r := range c.want.Leased {
		if v, ok := c.s.leases[k]; !c.broken[k.Account] && (!ok || !bytes.Equal(v, r.Encode())) {
			c.bad(k.Account, 0, "leases of job %s: %+v written, index says %x", k.Job, r, v)
		}
	}
	for k := range c.s.leases {
		if _, ok := c.want.Leased[k]; !ok && !c.broken[k.Account] {
			c.bad(k.Account, 0, "lease index for job %s without a lease", k.Job)
		}
	}
}

// voters checks the voters of jobs with replicas: the requester's holds
// made them.
func (c *indexCheck) voters() {
	for k, vs := range c.want.Votes {
		if v, ok := c.s.voters[k]; !c.broken[k.Account] && (!ok || !bytes.Equal(v, vs.Encode())) {
			c.bad(k.Account, 0, "voters of job %s: %+v written, index says %x", k.Job, vs, v)
		}
	}
	for k := range c.s.voters {
		if _, ok := c.want.Votes[k]; !ok && !c.broken[k.Account] {
			c.bad(k.Account, 0, "voters index for job %s without a hold", k.Job)
		}
	}
}

// funds checks the index of holds ever written.
func (c *indexCheck) funds() {
	for k, n := range c.want.Funds {
		if v, ok := c.s.funds[k]; !c.broken[k.Requester] && (!ok || !bytes.Equal(v, binary.BigEndian.AppendUint64(nil, n))) {
			c.bad(k.Requester, 0, "holds of job %s naming %q: %d written, index says %x", k.Job, k.Provider, n, v)
		}
	}
	for k := range c.s.funds {
		if _, ok := c.want.Funds[k]; !ok && !c.broken[k.Requester] {
			c.bad(k.Requester, 0, "hold index for job %s naming %q without a hold", k.Job, k.Provider)
		}
	}
}

// hashes checks the hash index: one key for each entry, pointing at it.
func (c *indexCheck) hashes() {
	hashes := 0
	for _, id := range sortedAccounts(c.s.chains) {
		for _, cand := range c.s.chains[id] {
			e := &cand.Entry
			if e.Account == "" { // undecodable, reported
				continue
			}
			if ref, ok := c.s.hashes[cand.Hash]; !ok || !bytes.Equal(ref, hashRef(e.Account, e.Seq, e.Time.UnixNano())) {
				c.bad(id, e.Seq, "hash index misses the entry")
			} else {
				hashes++
			}
		}
	}
	if hashes != len(c.s.hashes) {
		c.bad("", 0, "%d hash index keys, %d entries they index", len(c.s.hashes), hashes)
	}
}

// count checks the entry count.
func (c *indexCheck) count() {
	if c.s.nEntry > 0 || c.s.count != nil {
		if len(c.s.count) != 8 || binary.BigEndian.Uint64(c.s.count) != c.s.nEntry {
			c.bad("", 0, "entry count %x, %d entries stored", c.s.count, c.s.nEntry)
		}
	}
}
