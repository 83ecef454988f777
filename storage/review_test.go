package storage

// Security review of entry version 3 and format 5 (branch ledger).

import (
	"testing"
	"time"

	"github.com/mira-market/mira/protocol/ledger"
)

// TestReviewEquivocationSplitsHonestProvider: a rogue requester signs two
// entries for seq 2, a hold of job j naming p on one, a hold of job k on
// the other, and hands each to half the network. p, honest, claims what it
// was accepted on j. A node that saw the j fork first applies the claim; a
// node that saw the k fork first refused it for good (ErrNoHold was
// final) before it learned of the equivocation, judging p's chain broken.
// Now the claim waits there (ErrNotDrawable), as a lease of version 2
// waits for its hold: no node refuses an entry of p's chain. The two
// nodes cannot agree on p's balance: each holds its own fork of the
// frozen requester's chain, and the claim's funds exist only on one (no
// rule can apply it on the other without making money); on that one p's
// chain waits behind the claim, which no node judges p's fault.
func TestReviewEquivocationSplitsHonestProvider(t *testing.T) {
	env := newLedgerEnv(t)
	now := env.clock.Now()
	a, p := newChainV3(t, "a", now), newChainV3(t, "p", now)
	expiry := now.Add(time.Hour).UnixNano()
	grant := a.next(t, ledger.GrantBody{Amount: 1000})
	fork := *a
	holdJ := a.next(t, ledger.HoldBody{Job: job("j"), Provider: p.id, Amount: 400, Expiry: expiry, Replicas: 1})
	holdK := fork.next(t, ledger.HoldBody{Job: job("k"), Provider: p.id, Amount: 400, Expiry: expiry, Replicas: 1})
	claim := p.next(t, acceptedClaim(t, a.priv, p.id, ledger.ClaimBody{Job: job("j"), HoldSeq: 2, Amount: 300, Final: true, Receipt: job("r")}))
	later := p.next(t, a.leaseFor(t, p.id, job("j"), 400)) // p goes on with its chain

	n1, n2 := env.l, openTestLedger(t, env.g, env.clock.Now)
	refused := func(l *Ledger, raws ...[]byte) {
		t.Helper()
		res, err := l.IngestMany(raws)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range res.Rejected {
			if r.Account == p.id {
				t.Fatalf("honest provider's seq %d refused for good: %v", r.Seq, r.Err)
			}
		}
	}
	for _, raw := range [][]byte{grant, holdJ, claim, later, holdK} {
		refused(n1, raw)
	}
	for _, raw := range [][]byte{grant, holdK, claim, later, holdJ} {
		refused(n2, raw)
	}
	// Reconciliation sends everything again.
	for _, l := range []*Ledger{n1, n2} {
		refused(l, grant, holdJ, holdK, claim, later)
	}
	if b, _ := n1.Balance(p.id); b.Balance != 300 {
		t.Fatalf("node of the j fork: p has %+v, want the claim applied", b)
	}
	if h, _ := n2.Head(p.id); h.Seq != 0 || n2.PendingLen() != 2 {
		t.Fatalf("node of the k fork: p's head %+v, %d pending; want the claim and the lease waiting", h, n2.PendingLen())
	}
}
