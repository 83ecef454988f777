package market

import (
	"slices"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/mira-market/mira/protocol"
	"github.com/mira-market/mira/protocol/ledger"
	"github.com/mira-market/mira/protocol/pb"
)

// Review 2 of the settlement (market side). Each test fails on main.

// acceptedFrom is a requester's real, signed acceptance of amount of
// provider's bill b: what a rogue requester holding its key may send.
func (s *sim) acceptedFrom(req, prov peer.ID, b *pb.Bill, amount uint64, final bool) *pb.MarketMessage {
	s.t.Helper()
	sig, err := ledger.Acceptance{Job: ledger.Hash(protocol.JobID(b.JobId)), Requester: req, Provider: prov, HoldSeq: b.HoldSeq,
		Amount: amount, Final: final, Receipt: [32]byte(b.Receipt)}.Sign(simNet, s.keys[req])
	if err != nil {
		s.t.Fatal(err)
	}
	return &pb.MarketMessage{Body: &pb.MarketMessage_Accepted{Accepted: &pb.Accepted{
		JobId: b.JobId, Attempt: b.Attempt, Amount: amount, Final: final, Acceptance: sig}}}
}

func sentResult(s *sim, p peer.ID) bool {
	return slices.ContainsFunc(s.log[p], func(l string) bool { return l == "send Result 0" })
}

// Finding: the provider takes any final acceptance up to its bill. A rogue
// requester signs a final acceptance of 1 µcr for a 10 s bill: the
// provider writes a final claim of 1 (the ledger takes it: it is within
// the hold, and final closes the hold for good) and delivers the result.
// TRUST.md says the provider "may refuse to deliver"; the engine never
// does. (Reputation: the job counts as paid, never as left_unpaid.)
func TestReviewTokenAcceptanceBuysTheResult(t *testing.T) {
	s := newSim(t)
	req := s.add(nil)
	prov := s.add(wasmProvider(1000))
	j := s.submitExec(req, "process", 1, 1000, prov)
	wantState(t, j, Running)
	s.withhold = true // the rogue signs only what it chooses, below
	s.now = s.now.Add(10 * time.Second)
	s.finishWith(prov, j.ID, Outcome{Usage: &pb.Usage{WallMs: 10_000, GpuMs: 10_000}})
	b := s.engines[prov].bills[billKey{j.ID, j.Attempt, req}]
	if b == nil || b.bill.Amount != 10_000 {
		t.Fatalf("bill %+v, want one of 10000", b)
	}
	s.engines[prov].Step(s.now, s.sign(req, s.acceptedFrom(req, prov, b.bill, 1, true)))
	s.flush()
	for _, c := range s.claims[prov] {
		if c.Final && c.Amount < b.bill.Amount {
			t.Errorf("provider wrote a final claim of %d for its bill of %d: the hold is closed, the rest lost", c.Amount, b.bill.Amount)
		}
	}
	if sentResult(s, prov) {
		t.Errorf("provider delivered the result for an acceptance of 1 of its bill of %d", b.bill.Amount)
	}
}

// Finding (same root): a long job's requester countersigned 9000 in
// interim bills, then answers the final bill with a final acceptance of
// 0. The provider claims final 0 (Amount == Claimed is allowed with
// Final), closing the hold: the 9000 it held a valid acceptance for is
// forfeited, far beyond the "one interval" bound, and the result leaves.
func TestReviewFinalAcceptanceBelowInterimForfeitsIt(t *testing.T) {
	r := startPayRun(t, true)
	r.runFor(10 * time.Second)
	if r.accepted() != 9000 {
		t.Fatalf("accepted %d, want 9000", r.accepted())
	}
	r.s.withhold = true
	r.end("")
	b := r.s.engines[r.prov].bills[billKey{r.j.ID, r.j.Attempt, r.req}]
	if b == nil {
		t.Fatal("no bill")
	}
	r.s.engines[r.prov].Step(r.s.now, r.s.sign(r.req, r.s.acceptedFrom(r.req, r.prov, b.bill, 0, true)))
	r.s.flush()
	for _, c := range r.s.claims[r.prov] {
		if c.Final && c.Amount < 9000 {
			t.Errorf("final claim of %d although the provider holds an interim acceptance of 9000", c.Amount)
		}
	}
	if sentResult(r.s, r.prov) {
		t.Error("result delivered for a final acceptance of 0")
	}
}

// Finding: the requester's observation of a lease does not end when the
// lease does. Its job is cancelled 2 s into the run (or the lease is
// revoked on a heartbeat timeout and re-awarded); a rogue provider waits
// an hour and then bills an hour. onBill measures Leased → first bill
// (and onInterimBill Leased → now), so the requester signs for the full
// hour (up to the hold) although it saw the lease end after 2 s.
func TestReviewBillAfterCancelIsNotCappedAtTheCancel(t *testing.T) {
	for _, final := range []bool{true, false} {
		name := map[bool]string{true: "final bill", false: "interim bill"}[final]
		t.Run(name, func(t *testing.T) {
			s := newSim(t)
			req := s.add(nil)
			prov := s.add(wasmProvider(1000))
			j := s.submitExec(req, "process", 1, 1000, prov)
			wantState(t, j, Running)
			s.now = s.now.Add(2 * time.Second)
			s.engines[req].Cancel(s.now, j.ID, "cancelled by its requester")
			s.flush()
			wantState(t, j, Cancelled)
			s.now = s.now.Add(time.Hour)
			receipt := [32]byte{1}
			bill := &pb.Bill{JobId: j.ID[:], Attempt: j.Attempt, HoldSeq: 1, Receipt: receipt[:],
				Usage: &pb.Usage{WallMs: 3_600_000, GpuMs: 3_600_000}, Amount: 3_600_000, Final: final}
			s.engines[req].Step(s.now, s.sign(prov, &pb.MarketMessage{Body: &pb.MarketMessage_Bill{Bill: bill}}))
			s.flush()
			limit, _ := MaxCost(1000, j.Spec())
			observed := BillCap(1000, j.Spec(), 2*time.Second, DefaultBillTolerance, limit)
			if a := j.award(j.Attempt, prov); a.Accepted > observed {
				t.Fatalf("requester accepted %d for a lease it saw end after 2 s (cap %d)", a.Accepted, observed)
			}
		})
	}
}

// Finding (crash consistency): a provider's interim acceptances live only
// in the running lease's memory (payState; markBill only once the run has
// ended). A provider restarted mid-run loses the run and every
// countersigned amount with it: 9000 countersigned here, nothing is ever
// claimed, beyond the "one interval" bound TRUST.md states.
func TestReviewInterimAcceptanceSurvivesProviderRestart(t *testing.T) {
	r := startPayRun(t, true)
	r.runFor(10 * time.Second)
	if r.accepted() != 9000 {
		t.Fatalf("accepted %d, want 9000", r.accepted())
	}
	r.s.restart(r.prov)
	r.s.advance(time.Minute)
	r.s.advance(time.Hour) // up to the hold's expiry: a claim must be written by then
	got := uint64(0)
	for _, c := range r.s.claims[r.prov] {
		got = max(got, c.Amount)
	}
	if got < 9000 {
		t.Fatalf("after a provider restart mid-run it claimed %d of the 9000 the requester countersigned", got)
	}
}

// Finding (unbounded work): a replica's bill polls for a verdict every
// verdictPoll (HeartbeatInterval/10, ≥ 50 ms) until its hold expires,
// max_duration + claim window later (up to 24 h + 10 min), each poll a
// ledger-writer job, even when the job can no longer have a majority (the
// ledger answers ErrNoMajorityYet, never ErrMinority, for a split vote). A
// rogue requester awarding many replica jobs whose other voters are its
// own silent keys keeps each of a provider's bills polling at 10-20/s.
func TestReviewVerdictPollingIsBounded(t *testing.T) {
	s := newSim(t)
	req := s.add(nil)
	provs := []peer.ID{s.add(provider(5)), s.add(provider(6)), s.add(provider(7))}
	j := s.submitReplicated(req, 3)
	p := provs[0]
	if _, ok := s.engines[p].leases[j.ID]; !ok {
		t.Fatal("replica not leased")
	}
	s.cut[provs[1]], s.cut[provs[2]] = true, true // the requester's silent Sybils
	s.cut[req] = true
	o := Outcome{Usage: &pb.Usage{WallMs: 100}}
	if l, ok := s.engines[p].leases[j.ID]; ok {
		o.Attempt = l.Attempt
	}
	o.HoldSeq, o.Output, o.ResultID, o.ResultSize = 1, []byte("ok"), okID, 2
	e := s.engines[p]
	e.Finished(s.now, j.ID, o)
	take(e)
	polls := 0
	for range 6000 { // 10 minutes
		s.now = s.now.Add(100 * time.Millisecond)
		e.Tick(s.now)
		r := take(e)
		polls += len(r.MajorityClaims)
		for _, c := range r.MajorityClaims {
			e.MajorityClaimWritten(s.now, c, ErrNoMajorityYet)
		}
	}
	if polls > 200 {
		t.Fatalf("one replica bill asked its ledger for a majority claim %d times in 10 minutes (no backoff)", polls)
	}
}
