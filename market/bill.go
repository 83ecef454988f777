package market

import (
	"bytes"
	"math/bits"
	"strings"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/mira-market/mira/protocol"
	"github.com/mira-market/mira/protocol/pb"
)

// Settlement, both sides. After a run the provider bills the lease's hold
// (re-sent until accepted); the requester checks the bill against what it
// observed itself and accepts at most that, signed; the provider writes a
// claim entry quoting the acceptance (every ledger checks it against the
// hold, with no requester online) and only then sends the result, re-sent
// until acknowledged. A requester that wants the result must accept the
// bill first; a provider that has the acceptance is paid whatever the
// requester does next.

// AcceptanceRequest asks the requester's caller to sign its acceptance of
// a bill (ledger.Acceptance): Amount of the hold at HoldSeq naming
// Provider, cumulative, and Final.
type AcceptanceRequest struct {
	Job      protocol.JobID
	Attempt  uint32
	Provider peer.ID
	HoldSeq  uint64
	Amount   uint64
	Final    bool
	Receipt  [32]byte
}

// ClaimRequest asks the provider's caller to write a claim entry: Amount
// (cumulative) of Requester's hold at HoldSeq, with its Acceptance.
type ClaimRequest struct {
	Job        protocol.JobID
	Attempt    uint32
	Requester  peer.ID
	HoldSeq    uint64
	Amount     uint64
	Final      bool
	Receipt    [32]byte
	Acceptance []byte
}

// WaiveRequest asks the provider's caller to give an award's hold back (a
// waive entry) before its decline leaves: Hold and Chain are the award's.
type WaiveRequest struct {
	Job       protocol.JobID
	Requester peer.ID
	Attempt   uint32
	Hold      []byte
	Chain     [][]byte
	Reason    string
}

// Phases of a provider's bill.
const (
	phaseBilling    = iota // the bill is re-sent until accepted
	phaseClaiming          // the claim is being written
	phaseDelivering        // the result is re-sent until acknowledged
)

type billKey struct {
	Job       protocol.JobID
	Attempt   uint32
	Requester peer.ID
}

// billing is a provider's run that ended and is not settled.
type billing struct {
	key    billKey
	bill   *pb.Bill
	result *pb.Result
	phase  int
	next   time.Time // the next re-send
	until  time.Time // when it gives up
	pay    *payState // the run's interim settlement, if it had one
	// claim is the accepted claim, from phaseClaiming on.
	claim *ClaimRequest
	// replicated: a replica's bill, settled by a majority claim
	// (replicas.go), never by an acceptance.
	replicated bool
	// short is a final acceptance below what the provider takes
	// (leastAcceptable): kept, not claimed at once, and the result not
	// delivered; it is claimed only shortly before the hold expires, if
	// nothing better came (claimShort). shortTried: that claim was asked.
	short      *ClaimRequest
	shortTried bool
	// pollEvery is the current pause between a replica's looks for its
	// verdict (replicas.go): it doubles up to verdictPollMax.
	pollEvery time.Duration
}

// bill starts the settlement of a lease's outcome: the bill leaves now
// and its receipt is recorded. A run the escrow check stopped is declined
// instead (its reason, with the waive the caller wrote, if any).
func (e *Engine) bill(now time.Time, l *Lease, o Outcome, r *pb.Result) {
	if o.Declined != "" || o.HoldSeq == 0 {
		reason := o.Declined
		if reason == "" {
			reason = "no hold backs the lease"
		}
		e.send(l.Requester, declineMsg(l.Job, e.cfg.Self, reason, o.Waive))
		e.markBill(billKey{l.Job, l.Attempt, l.Requester}) // drops a running record (billstore.go)
		return
	}
	r.Usage = BillUsage(l.Spec, r.Usage)
	receipt, err := protocol.ReceiptHash(r)
	if err != nil {
		return // not for a result this engine built
	}
	limit, err := MaxCost(l.Price, l.Spec)
	if err != nil {
		return // an award at such a price was declined
	}
	b := &pb.Bill{JobId: l.Job[:], Attempt: l.Attempt, HoldSeq: o.HoldSeq, Receipt: receipt[:],
		Usage: r.Usage, ExitCode: r.ExitCode, ResultId: r.ResultId, OutputsId: r.OutputsId,
		ResultSize: r.ResultSize, OutputsSize: r.OutputsSize,
		Amount: l.pay.finalBilled(now, Cost(l.Price, BillableMS(l.Spec, r.Usage), limit)), Final: true}
	until := o.HoldExpiry
	if until.IsZero() {
		until = now.Add(e.claimWindow())
	}
	k := billKey{l.Job, l.Attempt, l.Requester}
	e.bills[k] = &billing{key: k, bill: b, result: r, next: now.Add(e.cfg.HeartbeatInterval), until: until, pay: l.pay,
		replicated: protocol.Replicas(l.Spec) > 1}
	e.markBill(k)
	e.ready.Receipts = append(e.ready.Receipts, b)
	if e.bills[k].replicated {
		e.pollVerdict(k, now)
	}
	e.send(l.Requester, &pb.MarketMessage{Body: &pb.MarketMessage_Bill{Bill: b}})
}

func declineMsg(job protocol.JobID, self peer.ID, reason string, waive []byte) *pb.MarketMessage {
	if len(reason) > maxDeclineReason {
		// A longer one is refused as malformed (an escrow check's error
		// names peers and amounts).
		reason = strings.ToValidUTF8(reason[:maxDeclineReason], "?")
	}
	return &pb.MarketMessage{Body: &pb.MarketMessage_Decline{Decline: &pb.Decline{
		JobId: job[:], Provider: []byte(self), Reason: reason, Waive: waive,
	}}}
}

// maxDeclineReason bounds a decline's reason (protocol's check).
const maxDeclineReason = 256

// onAccepted takes the requester's acceptance of a bill: at most the
// bill's amount, as final as the bill. One the provider takes
// (leastAcceptable) is claimed next, and the result delivered once it
// is; a short one is kept instead (shortAccepted).
func (e *Engine) onAccepted(now time.Time, m *protocol.Signed, a *pb.Accepted) {
	if !a.Final {
		e.onInterimAccepted(now, m, a)
		return
	}
	b := e.bills[billKey{m.Job, a.Attempt, m.Signer}]
	if b == nil || b.replicated || b.phase != phaseBilling || a.Amount > b.bill.Amount || a.Final != b.bill.Final {
		return
	}
	c := &ClaimRequest{Job: m.Job, Attempt: a.Attempt, Requester: m.Signer,
		HoldSeq: b.bill.HoldSeq, Amount: a.Amount, Final: a.Final, Receipt: [32]byte(b.bill.Receipt),
		Acceptance: a.Acceptance}
	if a.Amount < e.leastAcceptable(b) {
		e.shortAccepted(b, c)
		return
	}
	b.phase, b.claim = phaseClaiming, c
	// Persisted before the claim is written: a restart claims it again.
	e.markBill(b.key)
	e.ready.Claims = append(e.ready.Claims, *b.claim)
}

// leastAcceptable is the least final acceptance of bill b the provider
// claims and delivers the result for: never less than the interim
// acceptance it holds (a final claim below it would forfeit what was
// countersigned, the ledger taking no claim below one made), and never
// less than the bill less the requester's tolerance, in the provider's
// favour. The requester accepts min(bill, cap) with cap the time it
// observed, O, plus the tolerance tol(O) (Config.BillTolerance, the same
// on both sides). Its O is the run's wall time W less what the network
// shaves off the start (the lease's Accept in transit); the end only adds
// (the bill leaves after the run). So while O falls short of W by at most
// tol(W), cap ≥ W − tol(W) + tol(O) ≥ W − tol(W), and an honest
// acceptance is at least the bill scaled by (W − tol(W))/W: the units per
// millisecond of wall time (GPUs handed) are the same on both sides. A
// smaller one means the requester saw less than the run by more than two
// tolerances: a requester that signs a token amount, or one whose
// observation ended early (it revoked the lease while the provider ran
// on). Neither gets the result for it.
func (e *Engine) leastAcceptable(b *billing) uint64 {
	least := uint64(0)
	if b.pay != nil {
		least = b.pay.accepted
	}
	w := b.bill.GetUsage().GetWallMs()
	if w <= 0 {
		return least
	}
	tol := e.tolerance()
	keep := time.Duration(w)*time.Millisecond - tol.Fixed - time.Duration(w)*time.Millisecond*time.Duration(tol.Percent)/100
	if keep <= 0 {
		return least
	}
	hi, lo := bits.Mul64(b.bill.Amount, uint64(keep.Milliseconds()))
	if hi >= uint64(w) {
		return b.bill.Amount // cannot happen (keep < w); never more than the bill
	}
	q, _ := bits.Div64(hi, lo, uint64(w))
	return max(least, q)
}

// shortAccepted keeps a final acceptance below leastAcceptable, checked as
// a ledger would check its claim, and counted (ShortAcceptances) so the
// operator sees it. Nothing final is claimed now and the result stays
// here; an interim acceptance in hand is claimed at once (a claim that
// leaves the hold open), and the bill is sent again until the hold's
// expiry: a requester that reconsiders may still accept it. The
// acceptance signs Final (a ledger checks a claim's Final with its
// signature), so it can back only a final claim: claimShort writes it
// shortly before the expiry if it draws more than the interim claim,
// since the hold's rest returns to the requester after it anyway.
func (e *Engine) shortAccepted(b *billing, c *ClaimRequest) {
	if b.short != nil && c.Amount <= b.short.Amount {
		return // the same answer to a bill sent again
	}
	if e.cfg.CheckAcceptance != nil && e.cfg.CheckAcceptance(*c) != nil {
		return // no ledger would take it: nothing in hand
	}
	b.short, b.shortTried = c, false
	e.shortAcceptances.Add(1)
	e.markBill(b.key)
	if p := b.pay; p != nil && p.accepted > p.tried {
		p.tried = p.accepted
		e.ready.Claims = append(e.ready.Claims, p.claim(b.key.Job, b.key.Attempt, b.key.Requester))
	}
}

// shortClaimBy is when a bill's short acceptance is claimed: half a claim
// window before the hold expires (b.until while it bills).
func (e *Engine) shortClaimBy(b *billing) time.Time { return b.until.Add(-e.claimWindow() / 2) }

// claimShort claims a bill's short final acceptance when its time comes
// (shortClaimBy), if it draws more than the interim acceptance claimed.
func (e *Engine) claimShort(now time.Time, b *billing) {
	if b.short == nil || b.shortTried || b.phase != phaseBilling || now.Before(e.shortClaimBy(b)) {
		return
	}
	b.shortTried = true
	if p := b.pay; p != nil && b.short.Amount <= p.tried {
		return // it draws nothing more
	}
	b.phase, b.claim = phaseClaiming, b.short
	e.markBill(b.key)
	e.ready.Claims = append(e.ready.Claims, *b.claim)
}

// ShortAcceptances counts the final acceptances this provider kept
// without delivering the result: below its bill less the tolerance, or
// below an interim acceptance (shortAccepted). Safe to read from any
// goroutine.
func (e *Engine) ShortAcceptances() uint64 { return e.shortAcceptances.Load() }

// ClaimWritten takes the caller's answer to a claim request: written, the
// result leaves now and is re-sent until acknowledged; refused (a bad
// acceptance, say), the bill is sent again.
func (e *Engine) ClaimWritten(now time.Time, c ClaimRequest, err error) {
	k := billKey{c.Job, c.Attempt, c.Requester}
	if !c.Final {
		// An interim acceptance's claim (claimInterim): the bill goes
		// on. One of a run a restart lost (restoreRun) ends its record.
		if e.bills[k] == nil && e.runningPay(k) == nil {
			e.markBill(k)
		}
		return
	}
	b := e.bills[k]
	if b == nil || b.phase != phaseClaiming {
		return
	}
	e.markBill(b.key)
	if b.claim == b.short {
		// A short acceptance, claimed before the expiry: the result
		// stays here, tried once.
		b.phase, b.claim = phaseBilling, nil
		if err == nil {
			delete(e.bills, b.key)
		}
		return
	}
	if err != nil {
		b.phase, b.claim = phaseBilling, nil
		b.next = now
		return
	}
	b.phase = phaseDelivering
	b.until = now.Add(e.claimWindow())
	b.next = now.Add(e.cfg.HeartbeatInterval)
	e.deliver(b.key, b.result)
}

// Waived takes the caller's answer to a waive request: the decline leaves
// now, carrying the waive entry (nil: none was written).
func (e *Engine) Waived(w WaiveRequest, waive []byte) {
	e.send(w.Requester, declineMsg(w.Job, e.cfg.Self, w.Reason, waive))
}

// waiveAward gives an award back: with a hold, the decline waits for its
// waive (Waives); without one there is nothing to give back.
func (e *Engine) waiveAward(m *protocol.Signed, a *pb.Award, reason string) {
	if len(a.Hold) == 0 {
		e.send(m.Signer, declineMsg(m.Job, e.cfg.Self, reason, nil))
		return
	}
	e.ready.Waives = append(e.ready.Waives, WaiveRequest{Job: m.Job, Requester: m.Signer, Attempt: a.Attempt,
		Hold: a.Hold, Chain: a.Chain, Reason: reason})
}

// tickBills re-sends what waits for an answer, claims the interim
// acceptance of a final bill left unanswered, and gives up on a bill
// past its hold's expiry (no claim can draw on it then) and on a result
// not acknowledged within a claim window.
func (e *Engine) tickBills(now time.Time) {
	for k, b := range e.bills {
		if now.After(b.until) {
			delete(e.bills, k)
			e.markBill(k)
			continue
		}
		e.claimInterim(now, k, b)
		e.claimShort(now, b)
		switch {
		case b.phase == phaseClaiming || now.Before(b.next):
		case b.phase == phaseBilling:
			b.next = now.Add(e.cfg.HeartbeatInterval)
			e.send(k.Requester, &pb.MarketMessage{Body: &pb.MarketMessage_Bill{Bill: b.bill}})
		case b.phase == phaseDelivering:
			b.next = now.Add(e.cfg.HeartbeatInterval)
			e.deliver(k, b.result)
		}
	}
}

// onResultAck ends a bill: the requester has the result.
func (e *Engine) onResultAck(k billKey) {
	if _, ok := e.bills[k]; ok {
		delete(e.bills, k)
		e.markBill(k)
	}
}

// Bills is how many runs this provider has not settled yet.
func (e *Engine) Bills() int { return len(e.bills) }

// The requester's side.

// onBill checks a bill from the provider of one of the job's awards,
// whatever became of the job since (a run that ended through the job's
// own fault, a lease the requester revoked or cancelled: the time run is
// paid), against the requester's own observation: from the lease's
// acceptance to the bill's first arrival or the lease's end for this
// node (AwardRecord.Ended), whichever came first, by its clock, plus the
// tolerance. It accepts the bill's amount up to that, signed by the
// caller (NeedAcceptances).
func (e *Engine) onBill(now time.Time, m *protocol.Signed, b *pb.Bill) {
	j, ok := e.jobs[m.Job]
	if !ok {
		return
	}
	a := j.award(b.Attempt, m.Signer)
	if a == nil || (a.HoldSeq != 0 && a.HoldSeq != b.HoldSeq) {
		return
	}
	if replicated(j) {
		e.replicaBill(now, j, a, b)
		return
	}
	if j.Provider == m.Signer && j.Attempt == b.Attempt && (j.State == Assigned || j.State == Running) {
		e.markRunning(j, now) // a bill is a sign of life, like a heartbeat
	}
	if a.Final {
		if bytes.Equal(a.Receipt, b.Receipt) && a.Acceptance != nil {
			e.sendAccepted(j, a) // the Accepted was lost: the same again
		}
		return
	}
	if !b.Final {
		e.onInterimBill(now, j, a, b)
		return
	}
	if a.BillAt.IsZero() {
		// The first arrival ends the observation: a bill re-sent (while
		// this node was down, say) does not stretch it.
		a.BillAt = now
		e.save(j, now)
	}
	observed := a.observed(a.BillAt)
	limit, err := MaxCost(a.Price, j.Spec())
	if err != nil {
		return
	}
	cap := BillCap(a.Price, j.Spec(), observed, e.tolerance(), limit)
	// What it countersigned of the run's interim bills is owed already
	// (the provider can claim it): the final amount is not less.
	amount := max(AcceptedAmount(a.Price, j.Spec(), b.Usage, b.Amount, cap), min(a.Accepted, b.Amount))
	a.Billed = b.Amount
	e.ready.NeedAcceptances = append(e.ready.NeedAcceptances, AcceptanceRequest{Job: j.ID, Attempt: a.Attempt,
		Provider: a.Provider, HoldSeq: b.HoldSeq, Amount: amount, Final: b.Final, Receipt: [32]byte(b.Receipt)})
}

// AcceptanceSigned takes the caller's signature of an acceptance: the
// job records it (saved, so a bill re-sent after a restart gets the same
// answer) and the Accepted leaves. Without one nothing is sent; the
// provider bills again.
func (e *Engine) AcceptanceSigned(now time.Time, r AcceptanceRequest, sig []byte, err error) {
	j, ok := e.jobs[r.Job]
	if !ok || err != nil {
		return
	}
	a := j.award(r.Attempt, r.Provider)
	if a == nil || a.Final || !r.Final && r.Amount <= a.Accepted {
		return // settled, or an interim acceptance overtaken by a later one
	}
	a.HoldSeq, a.Accepted, a.Final, a.Receipt, a.Acceptance = r.HoldSeq, r.Amount, r.Final, r.Receipt[:], sig
	if !r.Final {
		a.InterimAt = now
	}
	e.save(j, now)
	e.sendAccepted(j, a)
}

func (e *Engine) sendAccepted(j *Job, a *AwardRecord) {
	e.send(a.Provider, &pb.MarketMessage{Body: &pb.MarketMessage_Accepted{Accepted: &pb.Accepted{
		JobId: j.ID[:], Attempt: a.Attempt, Amount: a.Accepted, Final: a.Final, Acceptance: a.Acceptance,
	}}})
}

// deliveredAward is the award whose accepted final bill r is the result
// of, or nil: a result is taken only after its bill was accepted, and
// only the one the bill named.
func deliveredAward(j *Job, signer peer.ID, r *pb.Result) *AwardRecord {
	a := j.award(r.Attempt, signer)
	if a == nil || !a.Final || a.Acceptance == nil {
		return nil
	}
	if h, err := protocol.ReceiptHash(r); err != nil || !bytes.Equal(h[:], a.Receipt) {
		return nil
	}
	return a
}
