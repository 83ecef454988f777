package storage

import (
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/mira-market/mira/protocol/ledger"
)

// TestLedgerVerdictOnTwoNodes settles a job on three replicas by its
// verdict (p and q agree and claim by majority, r's other result is
// released by the majority and counts as a verification loss) on two
// ledgers that receive the entries in opposite orders: both end with the
// same balances, voters and reputations, nothing pending, and Verify finds
// nothing. Then the requester's release of p's hold by a made-up
// mismatch is refused.
func TestLedgerVerdictOnTwoNodes(t *testing.T) {
	env := newLedgerEnv(t)
	now := env.clock.Now()
	a, p, q, r := newChainV3(t, "a", now), newChainV3(t, "p", now), newChainV3(t, "q", now), newChainV3(t, "r", now)
	expiry := now.Add(time.Minute).UnixNano()
	v := job("v")
	receipt := func(result string, gpums uint64) ledger.ReceiptBody {
		return ledger.ReceiptBody{Job: v, Receipt: job(result), Result: result, Outputs: "bafy-out", Usage: ledger.Usage{WallMS: gpums, GPUMS: gpums}}
	}
	ref := func(c *chain, seq uint64) ledger.ReceiptRef { return ledger.ReceiptRef{Provider: c.id, Seq: seq} }
	entries := [][]byte{a.next(t, ledger.GrantBody{Amount: 1000})}
	for _, c := range []*chain{p, q, r} {
		entries = append(entries, a.next(t, ledger.HoldBody{Job: v, Provider: c.id, Amount: 300, Expiry: expiry, Replicas: 3}))
	}
	for _, c := range []*chain{p, q, r} {
		entries = append(entries, c.next(t, a.leaseFor(t, c.id, v, 100)))
	}
	entries = append(entries,
		p.next(t, receipt("good", 2000)), q.next(t, receipt("good", 2000)), r.next(t, receipt("bad", 5_000_000)),
		p.next(t, ledger.MajorityClaimBody{Job: v, Requester: a.id, HoldSeq: 2, Amount: 200, Receipt: 2, Majority: []ledger.ReceiptRef{ref(q, 2)}}),
		q.next(t, ledger.MajorityClaimBody{Job: v, Requester: a.id, HoldSeq: 3, Amount: 200, Receipt: 2, Majority: []ledger.ReceiptRef{ref(p, 2)}}),
		a.next(t, ledger.MajorityReleaseBody{Job: v, Loser: ref(r, 2), Majority: []ledger.ReceiptRef{ref(p, 2), ref(q, 2)}}),
	)
	rogue := a.next(t, ledger.MajorityReleaseBody{Job: v, Loser: ref(p, 2), Majority: []ledger.ReceiptRef{ref(q, 2), ref(r, 2)}})
	env.clock.Advance(time.Second)

	second := openTestLedger(t, env.g, env.clock.Now)
	if _, err := env.l.IngestMany(slices.Clone(entries)); err != nil {
		t.Fatal(err)
	}
	backwards := slices.Clone(entries)
	slices.Reverse(backwards)
	for _, raw := range backwards {
		second.Ingest(raw)
	}
	for i, l := range []*Ledger{env.l, second} {
		if l.PendingLen() != 0 || l.Count() != uint64(len(entries)) {
			t.Fatalf("ledger %d: %d stored, %d pending", i, l.Count(), l.PendingLen())
		}
		for id, want := range map[peer.ID]Balance{a.id: {Balance: 600}, p.id: {Balance: 200}, q.id: {Balance: 200}, r.id: {}} {
			if b, _ := l.Balance(id); b != want {
				t.Fatalf("ledger %d: %s has %+v, want %+v", i, id, b, want)
			}
		}
		if probs, err := l.Verify(t.Context()); err != nil || len(probs) != 0 {
			t.Fatalf("ledger %d: verify: %v, %v", i, probs, err)
		}
	}
	for _, id := range []peer.ID{a.id, p.id, q.id, r.id} {
		r1, _ := env.l.Reputation(id)
		r2, _ := second.Reputation(id)
		if r1 != r2 {
			t.Fatalf("%s: reputation %+v on one node, %+v on the other", id, r1, r2)
		}
	}
	if rep, _ := env.l.Reputation(r.id); rep.VerificationLosses != 1 || rep.JobsPaid != 0 {
		t.Fatalf("r's reputation %+v, want one verification loss", rep)
	}
	res, err := env.l.IngestMany([][]byte{rogue})
	if err != nil || len(res.Rejected) != 1 || !errors.Is(res.Rejected[0].Err, ledger.ErrBadVerdict) {
		t.Fatalf("a made-up mismatch: %+v, %v; want it refused", res, err)
	}
}
