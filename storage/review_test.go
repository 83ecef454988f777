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
// node that saw the k fork first refuses it for good (ErrNoHold is final)
// before it learns of the equivocation. Both then freeze the requester, but
// the honest provider's balance differs between them for ever and its chain
// is broken on half the network (every later entry of p waits there). Under
// version 2 no entry of an honest chain was refused for what another chain
// holds: leases waited. Nothing reconciles the two nodes.
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
	for _, raw := range [][]byte{grant, holdJ, claim, later, holdK} {
		n1.Ingest(raw)
	}
	for _, raw := range [][]byte{grant, holdK, claim, later, holdJ} {
		n2.Ingest(raw)
	}
	// Reconciliation sends everything again.
	for _, l := range []*Ledger{n1, n2} {
		if _, err := l.IngestMany([][]byte{grant, holdJ, holdK, claim, later}); err != nil {
			t.Fatal(err)
		}
	}
	b1, _ := n1.Balance(p.id)
	b2, _ := n2.Balance(p.id)
	h1, _ := n1.Head(p.id)
	h2, _ := n2.Head(p.id)
	if b1 != b2 || h1 != h2 {
		t.Fatalf("honest provider after the requester's equivocation: node 1 balance %+v head %+v, node 2 balance %+v head %+v", b1, h1, b2, h2)
	}
}
