package storage

import (
	"slices"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/mira-market/mira/protocol/ledger"
)

// TestLedgerSettlementOnTwoNodes has a provider paid without the
// requester, and a requester release at expiry a hold its provider did
// not run, on two ledgers that receive the same entries in opposite
// orders (one in chain order, one backwards, waiting for what is
// missing): both end with the same balances and reputations, and Verify
// finds nothing. Then a rogue requester releases the hold its provider
// claimed instead: it waits on a ledger without the claim, and is
// refused once the claim arrives.
func TestLedgerSettlementOnTwoNodes(t *testing.T) {
	env := newLedgerEnv(t)
	a, p, q := newChainV3(t, "a", env.clock.Now()), newChainV3(t, "p", env.clock.Now()), newChainV3(t, "q", env.clock.Now())
	expiry := env.clock.Now().Add(time.Minute)
	hold := func(j string, to peer.ID) ledger.HoldBody {
		return ledger.HoldBody{Job: job(j), Provider: to, Amount: 300, Expiry: expiry.UnixNano(), Replicas: 1}
	}
	claim := func(j string, seq uint64) ledger.ClaimBody {
		return acceptedClaim(t, a.priv, p.id, ledger.ClaimBody{Job: job(j), HoldSeq: seq, Amount: 200, Final: true, Receipt: job("r")})
	}
	entries := [][]byte{
		a.next(t, ledger.GrantBody{Amount: 1000}),
		a.next(t, hold("paid", p.id)),   // 2
		a.next(t, hold("unpaid", q.id)), // 3
		a.next(t, ledger.HoldBody{Job: job("later"), Provider: q.id, Amount: 300, Expiry: expiry.Add(time.Hour).UnixNano(), Replicas: 1}),
		p.next(t, a.leaseFor(t, p.id, job("paid"), 300)),
		p.next(t, ledger.ReceiptBody{Job: job("paid"), Receipt: job("r"), Result: "bafy"}),
		p.next(t, claim("paid", 2)),
		q.next(t, a.leaseFor(t, q.id, job("unpaid"), 300)),
	}
	// After the expiry: q writes again, and a releases both holds.
	q.at, a.at = expiry.Add(time.Millisecond), expiry.Add(time.Second)
	entries = append(entries, q.next(t, a.leaseFor(t, q.id, job("later"), 300)))
	rogue := a.entry(t, ledger.ReleaseBody{Job: job("paid"), Provider: p.id})
	honest := a.next(t, ledger.ReleaseBody{Job: job("unpaid"), Provider: q.id})
	env.clock.Advance(2 * time.Minute)

	second := openTestLedger(t, env.g, env.clock.Now)
	if _, err := env.l.IngestMany(append(slices.Clone(entries), honest)); err != nil {
		t.Fatal(err)
	}
	backwards := append(slices.Clone(entries), honest)
	slices.Reverse(backwards)
	for _, raw := range backwards {
		second.Ingest(raw)
	}
	for i, l := range []*Ledger{env.l, second} {
		if l.PendingLen() != 0 || l.Count() != uint64(len(entries)+1) {
			t.Fatalf("ledger %d: %d stored, %d pending", i, l.Count(), l.PendingLen())
		}
		if c, err := l.Claimed(a.id, job("paid"), p.id); err != nil || !c {
			t.Fatalf("ledger %d: p's claim: %v, %v", i, c, err)
		}
		for id, want := range map[peer.ID]Balance{a.id: {Balance: 800, Held: 300}, p.id: {Balance: 200}, q.id: {}} {
			if b, _ := l.Balance(id); b != want {
				t.Fatalf("ledger %d: %s has %+v, want %+v", i, id, b, want)
			}
		}
		if probs, err := l.Verify(t.Context()); err != nil || len(probs) != 0 {
			t.Fatalf("ledger %d: verify: %v, %v", i, probs, err)
		}
	}
	for _, id := range []peer.ID{a.id, p.id, q.id} {
		r1, _ := env.l.Reputation(id)
		r2, _ := second.Reputation(id)
		if r1 != r2 {
			t.Fatalf("%s: reputation %+v on one node, %+v on the other", id, r1, r2)
		}
	}
	if r, _ := env.l.Reputation(q.id); r.NotRun != 1 || r.Leases != 2 {
		t.Fatalf("q's reputation %+v, want the award it did not run", r)
	}

	// The rogue release in place of the honest one waits, on a ledger
	// that has p's claim as on one that does not have it yet: a release
	// of a hold not open is not refused for good (another node may hold
	// a fork of p's chain on which it is open), it stalls the requester.
	third := openTestLedger(t, env.g, env.clock.Now)
	if _, err := third.IngestMany(append(slices.Clone(entries[:4]), rogue.Encode())); err != nil {
		t.Fatal(err)
	}
	if third.PendingLen() != 1 {
		t.Fatalf("the rogue release before p's claim: %d pending, want it waiting", third.PendingLen())
	}
	res, err := third.IngestMany(entries[4:])
	if err != nil || len(res.Rejected) != 0 || third.PendingLen() != 1 {
		t.Fatalf("the rogue release once p's claim arrived: %+v, %v; want it waiting", res, err)
	}
	if b, _ := third.Balance(p.id); b.Balance != 200 {
		t.Fatalf("p has %+v", b)
	}
}
