package market

import (
	"bytes"
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
// bill's amount, as final as the bill. The claim is written next.
func (e *Engine) onAccepted(now time.Time, m *protocol.Signed, a *pb.Accepted) {
	if !a.Final {
		e.onInterimAccepted(now, m, a)
		return
	}
	b := e.bills[billKey{m.Job, a.Attempt, m.Signer}]
	if b == nil || b.replicated || b.phase != phaseBilling || a.Amount > b.bill.Amount || a.Final != b.bill.Final {
		return
	}
	b.phase = phaseClaiming
	b.claim = &ClaimRequest{Job: m.Job, Attempt: a.Attempt, Requester: m.Signer,
		HoldSeq: b.bill.HoldSeq, Amount: a.Amount, Final: a.Final, Receipt: [32]byte(b.bill.Receipt),
		Acceptance: a.Acceptance}
	// Persisted before the claim is written: a restart claims it again.
	e.markBill(b.key)
	e.ready.Claims = append(e.ready.Claims, *b.claim)
}

// ClaimWritten takes the caller's answer to a claim request: written, the
// result leaves now and is re-sent until acknowledged; refused (a bad
// acceptance, say), the bill is sent again.
func (e *Engine) ClaimWritten(now time.Time, c ClaimRequest, err error) {
	if !c.Final {
		return // an interim acceptance's claim (claimInterim): the bill goes on
	}
	b := e.bills[billKey{c.Job, c.Attempt, c.Requester}]
	if b == nil || b.phase != phaseClaiming {
		return
	}
	e.markBill(b.key)
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
// acceptance to the bill's first arrival, by this node's clock, plus the
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
	observed := time.Duration(0)
	if !a.Leased.IsZero() {
		observed = a.BillAt.Sub(a.Leased)
	}
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
