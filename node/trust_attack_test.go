package node_test

import (
	"strings"
	"testing"
	"time"

	"github.com/mira-market/mira/protocol/ledger"
	"github.com/mira-market/mira/protocol/pb"
	"github.com/mira-market/mira/testnet"
)

// Attacks on the settlement by a rogue requester (trust_rogue_test.go):
// it signs its own market messages and ledger entries with its own key;
// the members are honest. Issue 17's "Must show".

// TestRogueRequesterSilentAfterAcceptancePaysProvider: the rogue awards
// the honest provider a job, takes its bill, signs the acceptance and
// vanishes (its host closes: it never acknowledges the result, never
// writes another entry). The provider claims alone: every member applies
// the claim and pays it, and counts it in both reputations.
//
// Before (the v2 settlement, 819f6d3 and earlier) the requester paid by
// a payment entry of its own after it had the result: a requester that
// went silent left the provider with a receipt and no payment, the hold
// open until the requester's own node released it.
func TestRogueRequesterSilentAfterAcceptancePaysProvider(t *testing.T) {
	tn, r := trustNet(t, 3, 1, nil)
	provider := tn.Node(1)
	j, bill := r.awardJob(provider)
	if r.from(j.id, provider.ID(), func(m *pb.MarketMessage) bool { return m.GetResult() != nil }) != nil {
		t.Fatal("the provider sent the result before the bill was accepted")
	}
	r.accept(j, bill, bill.Amount)
	r.host.Close() // silent from now on

	amount := paidEverywhere(t, tn, r.id(), j.id, provider.ID())
	if amount != bill.Amount || amount == 0 {
		t.Fatalf("claimed %d, the rogue accepted %d", amount, bill.Amount)
	}
	for i, n := range tn.Nodes() {
		b, err := n.Ledger().Balance(r.id())
		if err != nil || b.Balance != testnet.DefaultCredits-amount || b.Held != 0 {
			t.Errorf("node %d: the rogue's balance %+v (%v), want %d, nothing held", i, b, err, testnet.DefaultCredits-amount)
		}
		pr, _ := n.Ledger().Reputation(provider.ID())
		rr, _ := n.Ledger().Reputation(r.id())
		if pr.JobsPaid != 1 || pr.Earned != amount || rr.PaidFor != 1 || rr.Spent != amount || rr.Awards != 1 {
			t.Errorf("node %d: provider %+v, rogue %+v", i, pr, rr)
		}
	}
}

// TestRogueRequesterReleaseInsteadOfPaying: the rogue takes the bill and
// tries to take its hold back instead of paying, in each way the ledger
// has: a release of the hold naming the provider dated now (refused for
// good on every member: before the expiry only the provider closes it), a
// release of version 2 (the old rule let a requester release any time:
// it finds no hold it may release), and a release dated just after the
// expiry (members take entries dated up to 10 min ahead): every member
// keeps that one waiting, as the provider may still claim. The provider
// sees no acceptance yet and sends no result. Then the rogue accepts the
// bill and goes silent: the claim is applied everywhere, and the waiting
// release is never applied on any member.
//
// Before (v2, 819f6d3): the hold named no one the rules listened to;
// the requester's release was applied at once on every ledger and the
// provider was never paid (issue 17: "a patched requester that always
// releases left a correct 36-second job unpaid with every ledger
// verifying and agreeing").
func TestRogueRequesterReleaseInsteadOfPaying(t *testing.T) {
	tn, r := trustNet(t, 3, 1, nil)
	provider := tn.Node(1)
	j, bill := r.awardJob(provider)
	job := ledger.Hash(j.id)

	r.refused(r.ledger.try(time.Now(), false, ledger.ReleaseBody{Job: job, Provider: provider.ID()}),
		ledger.ErrReleaseEarly, "a release before the expiry")
	r.refused(r.ledger.try(time.Now(), true, ledger.ReleaseBody{Job: job}), ledger.ErrVersionDown, "a release of version 2")
	late := r.ledger.try(j.expiry.Add(time.Second), false, ledger.ReleaseBody{Job: job, Provider: provider.ID()})
	r.waits(late, "a release after the expiry, the provider's chain not past it")
	for i, n := range tn.Nodes() {
		if _, open, err := n.Ledger().HoldOf(r.id(), job, provider.ID()); err != nil || !open {
			t.Fatalf("node %d: the hold is closed before any claim (%v)", i, err)
		}
	}
	if r.from(j.id, provider.ID(), func(m *pb.MarketMessage) bool { return m.GetResult() != nil }) != nil {
		t.Fatal("the provider sent the result before the bill was accepted")
	}

	r.accept(j, bill, bill.Amount)
	r.host.Close()
	if amount := paidEverywhere(t, tn, r.id(), j.id, provider.ID()); amount != bill.Amount {
		t.Fatalf("claimed %d, accepted %d", amount, bill.Amount)
	}
	// The claimed hold is gone, so the release can never apply; it waits
	// (ErrNotDrawable) rather than being refused, because on an
	// equivocating provider's other fork the hold might be open: it
	// stalls only the rogue's own chain.
	r.waits(late, "the release after the expiry, once the hold is claimed")
	for i, n := range tn.Nodes() {
		if h, err := n.Ledger().Head(r.id()); err != nil || h.Seq != j.holdSeq {
			t.Errorf("node %d: the rogue's head %d (%v), want its hold's %d", i, h.Seq, err, j.holdSeq)
		}
	}
}

// TestHoldNamingOneProviderBacksNoOther: the rogue holds a job for
// provider A and awards it to A and, with the same hold entry, to
// provider B. B declines it (the escrow check finds no hold naming it)
// and writes no lease: no run of B's is left unpaid. At the ledger, a
// third party (a fresh key the rogue grants the award) leases the job
// against A's hold: every member keeps the lease waiting for a hold
// naming it, and stores it nowhere; so does its claim on A's hold with
// the rogue's acceptance. A payment to a peer the hold does not name is
// refused everywhere: of version 3 at all (payments are retired:
// providers claim), and of version 2 too, as a chain that wrote version
// 3 cannot go back (protocol/ledger's tests check ErrWrongPayee on a
// chain of version 2).
//
// Before (v2, 819f6d3): an award's hold named its provider, but the
// lease rule counted the job's unnamed posting hold for every provider
// and the payment rule did not check the payee: one hold backed a lease
// of each provider awarded, and the requester could pay the hold to
// anyone (issue 17).
func TestHoldNamingOneProviderBacksNoOther(t *testing.T) {
	tn, r := trustNet(t, 3, 2, nil)
	a, b := tn.Node(1), tn.Node(2)
	id, prices := r.offer(a, b)
	j := r.hold(id, a.ID(), prices[a.ID()])
	job := ledger.Hash(id)
	r.award(j, a.ID(), j.price, j.hold)
	bill := r.waitBill(j)
	r.award(j, b.ID(), prices[b.ID()], j.hold)
	d := r.waitFor(id, b.ID(), func(m *pb.MarketMessage) bool { return m.GetDecline() != nil }, "B's decline").GetDecline()
	if !strings.HasPrefix(d.Reason, "escrow") {
		t.Fatalf("B declined: %q, want the escrow check's reason", d.Reason)
	}

	third := newLedgerChain(t, nil)
	grant, err := ledger.LeaseGrant{Job: job, Requester: r.id(), Provider: third.id, Price: j.price, Attempt: 1}.Sign("testnet", r.key)
	if err != nil {
		t.Fatal(err)
	}
	lease := third.try(time.Now(), false, ledger.LeaseBody{Job: job, Requester: r.id(), Price: j.price, Attempt: 1, Grant: grant})
	r.waits(lease, "a lease against a hold naming another provider")
	claimer := newLedgerChain(t, nil)
	acceptance, err := ledger.Acceptance{Job: job, Requester: r.id(), Provider: claimer.id, HoldSeq: j.holdSeq,
		Amount: bill.Amount, Final: true, Receipt: ledger.Hash(bill.Receipt)}.Sign("testnet", r.key)
	if err != nil {
		t.Fatal(err)
	}
	claim := claimer.try(time.Now(), false, ledger.ClaimBody{Job: job, Requester: r.id(), HoldSeq: j.holdSeq,
		Amount: bill.Amount, Final: true, Receipt: ledger.Hash(bill.Receipt), Acceptance: acceptance})
	r.waits(claim, "a claim of a hold naming another provider")
	r.refused(r.ledger.try(time.Now(), false, ledger.PaymentBody{Job: job, To: third.id, Amount: 1}),
		ledger.ErrPaymentRetired, "a payment of version 3 to a peer the hold does not name")
	r.refused(r.ledger.try(time.Now(), false, ledger.PaymentBody{Job: job, To: a.ID(), Amount: 1}),
		ledger.ErrPaymentRetired, "a payment of version 3 to the provider the hold names")

	// Version 2, whose payments did not name a hold's provider: a chain
	// that wrote version 3 can no longer write it.
	r.refused(r.ledger.try(time.Now(), true, ledger.PaymentBody{Job: job, To: third.id, Amount: 1}),
		ledger.ErrVersionDown, "a payment of version 2 after entries of version 3")

	for i, n := range tn.Nodes() {
		for _, p := range []*ledgerChain{third, claimer} {
			if h, err := n.Ledger().Head(p.id); err != nil || h.Seq != 0 {
				t.Errorf("node %d stored %d entries of a third party (%v)", i, h.Seq, err)
			}
		}
		if leases, _, err := n.Ledger().Leases(b.ID(), job); err != nil || leases != 0 {
			t.Errorf("node %d: B leased the job %d times (%v)", i, leases, err)
		}
	}
	// A, which the hold names, is paid as ever.
	r.accept(j, bill, bill.Amount)
	if amount := paidEverywhere(t, tn, r.id(), id, a.ID()); amount != bill.Amount {
		t.Fatalf("A claimed %d, accepted %d", amount, bill.Amount)
	}
	r.waits(lease, "the third party's lease, A paid")
	r.waits(claim, "the third party's claim, A paid")
}
