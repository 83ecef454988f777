package market

import (
	"crypto/sha256"
	"encoding/binary"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/mira-market/mira/protocol"
	"github.com/mira-market/mira/protocol/pb"
)

// Long jobs are paid as they go. A lease whose max_duration is longer than
// the settlement interval I gets interim bills while it runs: every ¾ I
// the provider bills the cumulative cost of the usage so far (the runner's
// meter, paused spans left out; Bill.final false); the requester checks it
// against its own observation, from the lease's acceptance to the bill's
// arrival plus the tolerance (BillCap, as for a final bill), and answers
// with its signed acceptance of that cumulative amount. The provider keeps
// the latest acceptance, having checked it is one every ledger would take
// (Config.CheckAcceptance), and claims nothing while the requester answers:
// the final bill settles the run as before, one claim.
//
// A bill unanswered for ¼ I pauses the run (Ready.Pauses); the bill is
// sent again until the acceptance comes, which resumes it; the runner
// stops a run left paused past its grace period, and its final bill goes
// as for any run. A final bill unanswered for ¼ I makes the provider claim
// the latest interim acceptance (a claim that does not close the hold), so
// a requester that vanishes pays what it countersigned.
//
// The bound: between the sample of the last bill the requester accepted
// and the pause, the run goes at most ¾ I to the next bill plus ¼ I
// waiting for its answer, so a provider runs at most one interval unpaid;
// after a pause the next bill comes ¾ I of running time after the last,
// not ¾ I after the resume. A requester accepts at most what it observed
// (plus the tolerance), for time already run: it never pays ahead.

// DefaultSettlementInterval is Config.SettlementInterval's default.
const DefaultSettlementInterval = time.Minute

// PauseRequest asks a provider's caller to pause a lease's run (Resume
// false) or to resume it.
type PauseRequest struct {
	Job     protocol.JobID
	Attempt uint32
	Resume  bool
}

// payState is a lease's interim settlement on the provider's side, from
// its run's start until its final bill is settled.
type payState struct {
	holdSeq uint64
	expiry  time.Time // the hold's: no claim is dated after it
	receipt [32]byte  // InterimReceipt: what every interim acceptance names
	// next is when the next interim bill is due (while none is open).
	next time.Time
	// bill is the latest interim bill while it is unanswered, sampled at
	// billedAt and sent again at resend; billed is the most billed so far.
	bill     *pb.Bill
	billedAt time.Time
	resend   time.Time
	billed   uint64
	// paused is when the run was paused for an unanswered bill; zero
	// while it runs.
	paused time.Time
	// accepted is the latest interim acceptance: its amount, and the
	// requester's signature, which a claim quotes.
	accepted   uint64
	acceptance []byte
	// finalAt is when the run's final bill first left; tried is the
	// amount of the last claim of an interim acceptance asked for.
	finalAt time.Time
	tried   uint64
}

func (e *Engine) settlementInterval() time.Duration {
	if e.cfg.SettlementInterval > 0 {
		return e.cfg.SettlementInterval
	}
	return DefaultSettlementInterval
}

// interimWait is how long an interim bill (or a final one, before the
// interim acceptance is claimed) may go unanswered: a quarter interval.
func (e *Engine) interimWait() time.Duration { return e.settlementInterval() / 4 }

// interimCadence is the running time between interim bills: the rest of
// the interval, so that a bill's cadence and its wait make one interval.
func (e *Engine) interimCadence() time.Duration { return e.settlementInterval() - e.interimWait() }

// interimResend is how often an unanswered interim bill is sent again.
func (e *Engine) interimResend() time.Duration {
	if e.cfg.HeartbeatInterval > 0 {
		return min(e.cfg.HeartbeatInterval, e.interimWait())
	}
	return e.interimWait()
}

// InterimReceipt is what a lease's interim bills and their acceptances
// name as their receipt: no result exists yet, so a hash of the lease and
// hold it draws on, the same for every interim bill of the run, so that
// any acceptance of one pairs with it in a claim.
func InterimReceipt(job protocol.JobID, attempt uint32, holdSeq uint64) [32]byte {
	b := make([]byte, 0, 64)
	b = append(b, "mira-interim-receipt/1"...)
	b = append(b, job[:]...)
	b = binary.BigEndian.AppendUint32(b, attempt)
	b = binary.BigEndian.AppendUint64(b, holdSeq)
	return sha256.Sum256(b)
}

// RunStarted tells a provider's engine that a lease's run starts, backed
// by the hold at holdSeq that expires at expiry (the caller's escrow check
// found it): a lease longer than a settlement interval is billed as it
// goes from now on.
func (e *Engine) RunStarted(now time.Time, id protocol.JobID, attempt uint32, holdSeq uint64, expiry time.Time) {
	l, ok := e.leases[id]
	if !ok || l.Attempt != attempt || l.pay != nil || e.cfg.RunUsage == nil || holdSeq == 0 {
		return
	}
	if time.Duration(l.Spec.GetMaxDurationMs())*time.Millisecond <= e.settlementInterval() {
		return // billed once, at the end: one interval at most
	}
	if protocol.Replicas(l.Spec) > 1 {
		return // a replica is paid by its majority's verdict, at the end (replicas.go)
	}
	l.pay = &payState{holdSeq: holdSeq, expiry: expiry, receipt: InterimReceipt(id, attempt, holdSeq), next: now.Add(e.interimCadence())}
}

// Paused reports whether a provider's lease of job is paused for an
// interim bill its requester left unanswered.
func (e *Engine) Paused(job protocol.JobID) bool {
	l, ok := e.leases[job]
	return ok && l.pay != nil && !l.pay.paused.IsZero()
}

// tickInterim bills the running leases that are due, pauses those whose
// bill went unanswered for the wait, and sends open bills again.
func (e *Engine) tickInterim(now time.Time) {
	for _, l := range e.leases {
		p := l.pay
		if by, ok := p.claimBy(e); ok && p.accepted > p.tried && !now.Before(by) {
			// Pauses stretched the run towards its hold's expiry: what
			// was countersigned is claimed while a claim can draw on it.
			p.tried = p.accepted
			e.ready.Claims = append(e.ready.Claims, p.claim(l.Job, l.Attempt, l.Requester))
		}
		switch {
		case p == nil:
		case p.bill != nil:
			if p.paused.IsZero() && !now.Before(p.billedAt.Add(e.interimWait())) {
				p.paused = now
				e.ready.Pauses = append(e.ready.Pauses, PauseRequest{Job: l.Job, Attempt: l.Attempt})
			}
			if !now.Before(p.resend) {
				p.resend = now.Add(e.interimResend())
				e.send(l.Requester, &pb.MarketMessage{Body: &pb.MarketMessage_Bill{Bill: p.bill}})
			}
		case !now.Before(p.next):
			e.interimBill(now, l)
		}
	}
}

// interimBill bills a running lease its usage so far, if it costs more
// than the requester accepted already.
func (e *Engine) interimBill(now time.Time, l *Lease) {
	p := l.pay
	p.next = now.Add(e.interimCadence())
	u, ok := e.cfg.RunUsage(l.Job, l.Attempt)
	if !ok {
		return // not started yet (staging): nothing run to bill
	}
	u = BillUsage(l.Spec, u)
	limit, err := MaxCost(l.Price, l.Spec)
	if err != nil {
		return
	}
	amount := Cost(l.Price, BillableMS(l.Spec, u), limit)
	if amount <= p.accepted {
		return // nothing more is owed (a free job)
	}
	p.bill = &pb.Bill{JobId: l.Job[:], Attempt: l.Attempt, HoldSeq: p.holdSeq, Receipt: p.receipt[:], Usage: u, Amount: amount}
	p.billedAt, p.resend, p.billed = now, now.Add(e.interimResend()), max(p.billed, amount)
	e.send(l.Requester, &pb.MarketMessage{Body: &pb.MarketMessage_Bill{Bill: p.bill}})
}

// payOf finds the interim settlement an Accepted from requester names:
// of a running lease (running true), of one being stopped, or of a run
// that ended and is billed.
func (e *Engine) payOf(job protocol.JobID, attempt uint32, requester peer.ID) (p *payState, running bool) {
	if l, ok := e.leases[job]; ok && l.Attempt == attempt && l.Requester == requester {
		return l.pay, true
	}
	if l, ok := e.stopping[job]; ok && l.Attempt == attempt && l.Requester == requester {
		return l.pay, false
	}
	if b := e.bills[billKey{job, attempt, requester}]; b != nil {
		return b.pay, false
	}
	return nil, false
}

// onInterimAccepted keeps a requester's acceptance of an interim bill: a
// higher cumulative amount, at most what was billed, that the ledgers
// would take in a claim. One that covers the open bill answers it, and
// resumes the run if it was paused for it.
func (e *Engine) onInterimAccepted(now time.Time, m *protocol.Signed, a *pb.Accepted) {
	p, running := e.payOf(m.Job, a.Attempt, m.Signer)
	if p == nil || a.Amount <= p.accepted || a.Amount > p.billed {
		return
	}
	c := p.claim(m.Job, a.Attempt, m.Signer)
	c.Amount, c.Acceptance = a.Amount, a.Acceptance
	if e.cfg.CheckAcceptance != nil && e.cfg.CheckAcceptance(c) != nil {
		return // a forged or garbled acceptance answers nothing
	}
	p.accepted, p.acceptance = a.Amount, a.Acceptance
	// Persisted now, with a bill's record or a running lease's
	// (billRecords): a restart that loses the run still claims it.
	e.markBill(billKey{m.Job, a.Attempt, m.Signer})
	if p.bill == nil || p.accepted < p.bill.Amount {
		return
	}
	p.bill = nil
	if p.paused.IsZero() {
		return
	}
	// The pause's span is not running time: the next bill is due as
	// far after the last as if it had not been paused.
	p.next = p.next.Add(now.Sub(p.paused))
	p.paused = time.Time{}
	if running {
		e.ready.Pauses = append(e.ready.Pauses, PauseRequest{Job: m.Job, Attempt: a.Attempt, Resume: true})
	}
}

// claimBy is when a run still going claims its latest interim acceptance:
// half a claim window before its hold expires (ok false: no lease, or no
// expiry known).
func (p *payState) claimBy(e *Engine) (by time.Time, ok bool) {
	if p == nil || p.expiry.IsZero() {
		return time.Time{}, false
	}
	return p.expiry.Add(-e.claimWindow() / 2), true
}

// claim is a claim of the latest interim acceptance.
func (p *payState) claim(job protocol.JobID, attempt uint32, requester peer.ID) ClaimRequest {
	return ClaimRequest{Job: job, Attempt: attempt, Requester: requester, HoldSeq: p.holdSeq,
		Amount: p.accepted, Receipt: p.receipt, Acceptance: p.acceptance}
}

// finalBilled notes that a run with interim bills ended and its final bill
// left now; the final amount is at least what the requester accepted of
// it already.
func (p *payState) finalBilled(now time.Time, amount uint64) uint64 {
	if p == nil {
		return amount
	}
	p.bill, p.paused, p.finalAt = nil, time.Time{}, now
	return max(amount, p.accepted)
}

// claimInterim claims the latest interim acceptance of a run whose final
// bill went unanswered for the wait: the requester may have vanished, and
// the claim must be dated within the hold's expiry. A final acceptance
// later still claims the rest (and closes the hold).
func (e *Engine) claimInterim(now time.Time, k billKey, b *billing) {
	p := b.pay
	if p == nil || b.phase != phaseBilling || p.accepted <= p.tried || now.Before(p.finalAt.Add(e.interimWait())) {
		return
	}
	p.tried = p.accepted
	e.markBill(k)
	e.ready.Claims = append(e.ready.Claims, p.claim(k.Job, k.Attempt, k.Requester))
}

// nextInterim is the earliest time tickInterim or claimInterim has work.
func (e *Engine) nextInterim(consider func(time.Time)) {
	for _, l := range e.leases {
		if by, ok := l.pay.claimBy(e); ok && l.pay.accepted > l.pay.tried {
			consider(by)
		}
		switch p := l.pay; {
		case p == nil:
		case p.bill != nil:
			if p.paused.IsZero() {
				consider(p.billedAt.Add(e.interimWait()))
			}
			consider(p.resend)
		default:
			consider(p.next)
		}
	}
	for _, b := range e.bills {
		if p := b.pay; p != nil && b.phase == phaseBilling && p.accepted > p.tried {
			consider(p.finalAt.Add(e.interimWait()))
		}
	}
}

// The requester's side.

// onInterimBill checks an interim bill of award a against what the
// requester observed up to now (from the lease's acceptance, by its own
// clock, plus the tolerance) and accepts its cumulative amount up to
// that, signed by the caller. A bill it accepted already (the Accepted
// was lost) gets the same acceptance again.
func (e *Engine) onInterimBill(now time.Time, j *Job, a *AwardRecord, b *pb.Bill) {
	if a.Leased.IsZero() || !a.BillAt.IsZero() {
		return // nothing observed yet; or the run ended (a final bill came)
	}
	limit, err := MaxCost(a.Price, j.Spec())
	if err != nil {
		return
	}
	cap := BillCap(a.Price, j.Spec(), a.observed(now), e.tolerance(), limit)
	amount := AcceptedAmount(a.Price, j.Spec(), b.Usage, b.Amount, cap)
	if amount > a.Accepted && !a.InterimAt.IsZero() && now.Before(a.InterimAt.Add(e.settlementInterval()/2)) {
		// An honest provider bills every ¾ I; one that raises its bill
		// by a micro-credit at every message would cost a signature and
		// a job write each. It waits for the next half interval.
		amount = a.Accepted
	}
	if amount <= a.Accepted {
		if a.Acceptance != nil && amount > 0 {
			e.sendAccepted(j, a)
		}
		return
	}
	e.ready.NeedAcceptances = append(e.ready.NeedAcceptances, AcceptanceRequest{Job: j.ID, Attempt: a.Attempt,
		Provider: a.Provider, HoldSeq: b.HoldSeq, Amount: amount, Receipt: [32]byte(b.Receipt)})
}
