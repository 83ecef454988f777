package market

import (
	"bytes"
	"errors"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/mira-market/mira/protocol"
	"github.com/mira-market/mira/protocol/pb"
)

// Replicas: a job whose spec asks verify.replicas k ≥ 2 runs on k
// distinct providers at once, each award backed by its own hold naming
// its provider and stating k. The ledger makes the first k providers a
// job's holds name its voters, each with its first receipt of the job;
// a majority (k/2+1) of one outcome (result and outputs content IDs)
// decides (protocol/ledger/verdict.go).
//
// The requester compares the bills: once a majority agrees, the job's
// result is the majority's (the first of them to deliver it), and it
// writes a majority release of the hold of each provider whose bill
// differs (the loser's reputation counts a verification loss). It signs
// no acceptance: a voter's hold is paid only by a majority claim, which
// each provider of the majority writes itself once its ledger holds the
// receipts of a majority agreeing with its own; then it delivers its
// result. If the awards that can still vote cannot make a majority, the
// job fails with "no majority": the voted holds are then nobody's to
// claim, and come back to the requester after their expiry.
//
// A replica that declines or goes silent is not replaced: the ledger
// counts the votes of the first k providers named only, so a provider
// awarded later could not vote. Its award is given up, and the others
// decide on their own (with k = 3, two agreeing still make a majority).

// Errors of verdicts, from the caller's ledger.
var (
	// ErrNoMajorityYet means the votes in the ledger do not decide yet:
	// a receipt has not come (or not been written); the verdict is tried
	// again later.
	ErrNoMajorityYet = errors.New("no majority in the ledger yet")
	// ErrMinority means a majority of the job's voters returned another
	// outcome than this provider's, or there is no hold left to settle:
	// nothing to claim.
	ErrMinority = errors.New("a majority returned another result")
)

// ReasonNoMajority is why a job with replicas fails when its replicas
// cannot agree.
const ReasonNoMajority = "no majority"

// Verdicts of a replica's award.
const (
	VerdictMajority = "majority"
	VerdictMinority = "minority"
)

// MajorityClaimRequest asks the provider's caller to write a majority
// claim of Requester's hold of Job naming it (the hold at HoldSeq),
// quoting the receipts of a majority that agrees with its own; it answers
// with MajorityClaimWritten.
type MajorityClaimRequest struct {
	Job       protocol.JobID
	Attempt   uint32
	Requester peer.ID
	HoldSeq   uint64
}

// MajorityReleaseRequest asks the requester's caller to release its hold
// of Job naming Loser, whose receipt a majority of the job's voters
// contradicts; it answers with MajorityReleased.
type MajorityReleaseRequest struct {
	Job   protocol.JobID
	Loser peer.ID
}

// replicated reports whether j runs on several providers.
func replicated(j *Job) bool { return protocol.Replicas(j.Spec()) > 1 }

// live reports whether a's replica may still vote: its award left (or is
// about to), it has not billed, not declined, not been given up.
func (a *AwardRecord) live() bool { return a.Outcome == "" && !a.Gone }

// outcomeKey is what replicas agree on: the result's and the outputs'
// content IDs.
func outcomeKey(resultID, outputsID string) string { return resultID + "\x00" + outputsID }

// replicaBid takes a bid on a job with replicas: a job whose window has
// ended (or an interactive one) is awarded once it has k acceptable bids
// from distinct providers.
func (e *Engine) replicaBid(j *Job, now time.Time) {
	if j.Tier == protocol.TierInteractive || j.WindowEnds.IsZero() {
		if bids := e.chooseBids(j, protocol.Replicas(j.Spec())); bids != nil {
			e.awardReplicas(j, now, bids)
			return
		}
	}
	e.touch(j, now)
}

// chooseBids picks the k best acceptable bids of distinct providers, by
// the window's ranking (chooseBid), or nil if there are fewer.
func (e *Engine) chooseBids(j *Job, k int) []Bid {
	view := *j
	view.Excluded = append([]peer.ID(nil), j.Excluded...)
	var out []Bid
	for len(out) < k {
		i := chooseBid(&view, e.cfg.Reputation, e.rttOf)
		if i < 0 {
			return nil
		}
		out = append(out, j.Bids[i])
		view.Excluded = append(view.Excluded, j.Bids[i].Provider)
	}
	return out
}

// awardReplicas awards j to each of bids' providers; the job is assigned
// to them all (Provider names the first, for display).
func (e *Engine) awardReplicas(j *Job, now time.Time, bids []Bid) {
	j.State = Assigned
	j.Provider, j.Price = bids[0].Provider, bids[0].Price
	j.WindowEnds, j.ReofferAt, j.EmptyRounds = time.Time{}, time.Time{}, 0
	j.AcceptBy, j.HeartbeatBy = time.Time{}, time.Time{}
	for _, b := range bids {
		amount, err := HoldAmount(b.Price, j.Spec())
		if err != nil {
			e.Cancel(now, j.ID, escrowFailed(err))
			return
		}
		j.Attempt++
		run := time.Duration(j.Spec().GetMaxDurationMs()) * time.Millisecond
		r := HoldRequest{Job: j.ID, Attempt: j.Attempt, Provider: b.Provider, Price: b.Price, Amount: amount,
			KnownSeq: b.KnownSeq, WithChain: j.Tier == protocol.TierInteractive,
			Expiry:    now.Add(e.cfg.AcceptTimeout + run + e.claimWindow()),
			MinExpiry: now.Add(run + e.claimWindow()/2), Replicas: protocol.Replicas(j.Spec())}
		j.Awards = append(j.Awards, AwardRecord{Attempt: j.Attempt, Provider: b.Provider, Price: b.Price,
			Expiry: r.Expiry, AcceptBy: now.Add(e.cfg.AcceptTimeout), awaitingHold: true})
		e.ready.NeedHolds = append(e.ready.NeedHolds, r)
	}
	e.save(j, now)
}

// holdWanted reports whether a hold request is still wanted: its job
// waits for it.
func (e *Engine) holdWanted(h HoldRequest) bool {
	j := e.jobs[h.Job]
	switch {
	case j == nil:
		return false
	case replicated(j):
		a := j.award(h.Attempt, h.Provider)
		return a != nil && a.awaitingHold && !j.State.Terminal()
	}
	return j.awaitingHold && j.Attempt == h.Attempt
}

// replicaHoldWritten is HoldWritten for a job with replicas: the award
// leaves with its hold. Without one the job cannot be verified as asked
// and is cancelled, like a job whose one award cannot be backed.
func (e *Engine) replicaHoldWritten(now time.Time, j *Job, attempt uint32, res HoldResult) {
	var a *AwardRecord
	for i := range j.Awards {
		if j.Awards[i].Attempt == attempt {
			a = &j.Awards[i]
		}
	}
	if a == nil || !a.awaitingHold || j.State.Terminal() {
		return
	}
	a.awaitingHold = false
	if res.Err != nil {
		a.Gone = true
		e.Cancel(now, j.ID, escrowFailed(res.Err))
		return
	}
	a.HoldSeq = res.Seq
	a.AcceptBy = now.Add(e.cfg.AcceptTimeout)
	e.send(a.Provider, &pb.MarketMessage{Body: &pb.MarketMessage_Award{Award: &pb.Award{
		JobId: j.ID[:], Provider: []byte(a.Provider), Price: a.Price, Attempt: a.Attempt,
		Hold: res.Hold, Chain: res.Chain, Grant: res.Grant,
	}}})
}

// replicaAlive takes an acceptance or a heartbeat of a replica's lease
// (either starts it: an acceptance may be lost); it reports whether j is a job with replicas (handled here).
func (e *Engine) replicaAlive(now time.Time, m *protocol.Signed, attempt uint32) bool {
	j, ok := e.jobs[m.Job]
	if !ok || !replicated(j) {
		return false
	}
	a := j.award(attempt, m.Signer)
	if a == nil || !a.live() || a.awaitingHold || (j.State != Assigned && j.State != Running) {
		return true
	}
	a.HeartbeatBy = now.Add(e.cfg.HeartbeatTimeout)
	if a.Leased.IsZero() {
		a.Leased, a.AcceptBy = now, time.Time{} // the observation of the run starts here
		j.Leases++
		if j.State == Assigned {
			j.State, j.Leased = Running, now
			if j.gossipLater != nil {
				e.publish(j, j.gossipLater)
				j.gossipLater = nil
			}
			e.publish(j, &pb.MarketMessage{Body: &pb.MarketMessage_Taken{Taken: &pb.Taken{JobId: j.ID[:], Provider: []byte(m.Signer)}}})
		}
		e.save(j, now)
		return true
	}
	e.touch(j, now) // a heartbeat: the timer is kept in memory
	return true
}

// replicaDecline takes a replica's decline of its award: it will not
// vote.
func (e *Engine) replicaDecline(now time.Time, j *Job, p peer.ID, reason string) {
	for i := range j.Awards {
		if a := &j.Awards[i]; a.Provider == p && a.live() && !a.awaitingHold {
			noteDecline(j, p, reason, now)
			a.Gone = true
			e.save(j, now)
			e.decide(j, now)
			return
		}
	}
}

// tickReplicas gives up the replicas that did not accept in time or went
// silent, and decides.
func (e *Engine) tickReplicas(j *Job, now time.Time) {
	gone := false
	for i := range j.Awards {
		a := &j.Awards[i]
		if !a.live() || a.awaitingHold {
			continue
		}
		if (a.Leased.IsZero() && !a.AcceptBy.IsZero() && !now.Before(a.AcceptBy)) ||
			(!a.Leased.IsZero() && !a.HeartbeatBy.IsZero() && !now.Before(a.HeartbeatBy)) {
			a.Gone, gone = true, true
			e.send(a.Provider, &pb.MarketMessage{Body: &pb.MarketMessage_Cancel{Cancel: &pb.Cancel{JobId: j.ID[:], Reason: "lease revoked"}}})
		}
	}
	if gone {
		e.save(j, now)
		e.decide(j, now)
	}
}

// replicaTimers are the times tickReplicas has work at.
func replicaTimers(j *Job, consider func(time.Time)) {
	for i := range j.Awards {
		if a := &j.Awards[i]; a.live() && !a.awaitingHold {
			if a.Leased.IsZero() {
				consider(a.AcceptBy)
			} else {
				consider(a.HeartbeatBy)
			}
		}
	}
}

// replicaBill records a replica's bill: its outcome is its vote (the
// ledger's is its receipt, which the bill names). No acceptance is
// signed: the majority claims the holds.
func (e *Engine) replicaBill(now time.Time, j *Job, a *AwardRecord, b *pb.Bill) {
	if a.Outcome != "" || !b.Final {
		return // an interim bill is no vote (replicas bill none)
	}
	a.Outcome = outcomeKey(b.ResultId, b.OutputsId)
	a.Receipt, a.Billed, a.HoldSeq, a.BillAt = b.Receipt, b.Amount, b.HoldSeq, now
	e.save(j, now)
	e.decide(j, now)
}

// decide applies the verdict of the bills so far: a majority's outcome
// makes each billed award majority or minority (whose holds are released);
// awards that cannot make a majority any more fail the job.
func (e *Engine) decide(j *Job, now time.Time) {
	k := protocol.Replicas(j.Spec())
	need := k/2 + 1
	count, live := map[string]int{}, 0
	for i := range j.Awards {
		a := &j.Awards[i]
		switch {
		case a.Outcome != "":
			count[a.Outcome]++
		case !a.Gone:
			live++
		}
	}
	if j.Majority == "" {
		for o, n := range count {
			if n >= need {
				j.Majority = o
			}
		}
	}
	if j.Majority == "" {
		best := 0
		for _, n := range count {
			best = max(best, n)
		}
		if best+live < need && !j.State.Terminal() {
			e.finish(j, now, Failed, ReasonNoMajority)
		}
		return
	}
	for i := range j.Awards {
		a := &j.Awards[i]
		switch {
		case a.Outcome == "" || a.Verdict != "":
		case a.Outcome == j.Majority:
			a.Verdict = VerdictMajority
		default:
			a.Verdict = VerdictMinority
			e.ready.MajorityReleases = append(e.ready.MajorityReleases, MajorityReleaseRequest{Job: j.ID, Loser: a.Provider})
		}
	}
	e.save(j, now)
}

// MajorityReleased takes the caller's answer to a majority release: a
// release that waits for receipts not in the ledger yet is asked for
// again at the next tick; one written, or refused for good, is done.
func (e *Engine) MajorityReleased(now time.Time, r MajorityReleaseRequest, err error) {
	j, ok := e.jobs[r.Job]
	if !ok {
		return
	}
	for i := range j.Awards {
		a := &j.Awards[i]
		if a.Provider != r.Loser || a.Verdict != VerdictMinority || a.Released {
			continue
		}
		if errors.Is(err, ErrNoMajorityYet) && now.Before(a.Expiry) {
			if len(e.retryRelease) == 0 {
				e.retryAt = now.Add(e.verdictPoll())
			}
			e.retryRelease = append(e.retryRelease, r)
			return
		}
		a.Released = true // written, or refused for good: the hold expires then
		e.save(j, now)
		return
	}
}

// replicaResult takes a result of a job with replicas: only one whose
// receipt is a majority award's bill's. The first ends the job.
func (e *Engine) replicaResult(now time.Time, j *Job, m *protocol.Signed, r *pb.Result) {
	a := j.award(r.Attempt, m.Signer)
	h, err := protocol.ReceiptHash(r)
	if a == nil || err != nil {
		return
	}
	if a.Outcome == "" && !j.State.Terminal() {
		// Its bill was lost, and it claimed by a majority the ledger
		// holds: the result names what the bill did.
		a.Outcome, a.Receipt, a.BillAt = outcomeKey(r.ResultId, r.OutputsId), h[:], now
		e.save(j, now)
		e.decide(j, now)
	}
	if a.Verdict != VerdictMajority || !bytes.Equal(h[:], a.Receipt) {
		return
	}
	e.send(m.Signer, &pb.MarketMessage{Body: &pb.MarketMessage_ResultAck{ResultAck: &pb.ResultAck{JobId: j.ID[:], Attempt: r.Attempt}}})
	if a.Delivered {
		return
	}
	a.Delivered = true
	if j.State.Terminal() {
		e.save(j, now)
		return
	}
	j.Provider, j.Price = a.Provider, a.Price
	e.takeResult(j, now, m, r)
}

// cancelReplicas tells the replicas still running j to stop.
func (e *Engine) cancelReplicas(j *Job, reason string) {
	for i := range j.Awards {
		if a := &j.Awards[i]; a.live() && !a.awaitingHold {
			e.send(a.Provider, &pb.MarketMessage{Body: &pb.MarketMessage_Cancel{Cancel: &pb.Cancel{JobId: j.ID[:], Reason: reason}}})
		}
	}
}

// The provider's side: a replica's bill is settled by a majority claim,
// tried at each re-send of the bill until the ledger decides.

// verdictPoll is how soon a provider first looks for a verdict on its
// replica's bill: a tenth of the heartbeat interval, at least 50 ms. Each
// look is a job of the ledger writer, so the pause doubles after every
// look that finds no majority yet, up to verdictPollMax.
func (e *Engine) verdictPoll() time.Duration {
	return max(e.cfg.HeartbeatInterval/10, 50*time.Millisecond)
}

// verdictPollMax bounds the pause between looks: a heartbeat interval, or
// a 64th of the claim window if longer. The claim must be written within
// the window, and a majority found a pause late loses at most that much
// of it; a bill whose other voters never vote (a requester's silent
// Sybils) costs at most about 64 looks a claim window, not one per tick.
func (e *Engine) verdictPollMax() time.Duration {
	return max(e.cfg.HeartbeatInterval, e.claimWindow()/64, e.verdictPoll())
}

// pollVerdict schedules the next look for a verdict on bill k: the first
// after verdictPoll, each later one twice as far as the last.
func (e *Engine) pollVerdict(k billKey, now time.Time) {
	if e.polls == nil {
		e.polls = map[billKey]time.Time{}
	}
	d := e.verdictPoll()
	if b := e.bills[k]; b != nil {
		if b.pollEvery > 0 {
			d = min(2*b.pollEvery, e.verdictPollMax())
		}
		b.pollEvery = d
	}
	e.polls[k] = now.Add(d)
}

// tickVerdicts asks for the majority claims of the replicas' bills due.
func (e *Engine) tickVerdicts(now time.Time) {
	for k, at := range e.polls {
		b := e.bills[k]
		switch {
		case b == nil || b.phase != phaseBilling:
			delete(e.polls, k)
		case !now.Before(at):
			delete(e.polls, k)
			b.phase = phaseClaiming
			e.ready.MajorityClaims = append(e.ready.MajorityClaims, MajorityClaimRequest{Job: k.Job,
				Attempt: k.Attempt, Requester: k.Requester, HoldSeq: b.bill.HoldSeq})
		}
	}
}

// MajorityClaimWritten takes the caller's answer to a majority claim:
// written, the result leaves now (re-sent until acknowledged); with no
// majority in the ledger yet, it is tried again after the next re-send of
// the bill; in a minority (or refused for good), nothing is paid and the
// bill is dropped.
func (e *Engine) MajorityClaimWritten(now time.Time, c MajorityClaimRequest, err error) {
	b := e.bills[billKey{c.Job, c.Attempt, c.Requester}]
	if b == nil || b.phase != phaseClaiming {
		return
	}
	e.markBill(b.key)
	switch {
	case err == nil:
		b.phase = phaseDelivering
		b.until = now.Add(e.claimWindow())
		b.next = now.Add(e.cfg.HeartbeatInterval)
		e.deliver(b.key, b.result)
	case errors.Is(err, ErrNoMajorityYet):
		b.phase = phaseBilling
		e.pollVerdict(b.key, now)
	default:
		delete(e.bills, b.key)
	}
}

// cancelledReplica gives back the award of a replica its requester
// cancelled (a waive; the decline follows it) rather than bill it: the
// receipt of a run cut short would be its vote, which a majority that
// ran to the end would outvote, and count a verification loss against a
// provider that did nothing wrong. The time it ran is not paid (a voter's
// hold is paid only by a majority). It reports whether l was one.
func (e *Engine) cancelledReplica(l *Lease, o Outcome) bool {
	if protocol.Replicas(l.Spec) < 2 || o.Declined != "" || o.HoldSeq == 0 {
		return false
	}
	e.ready.Waives = append(e.ready.Waives, WaiveRequest{Job: l.Job, Requester: l.Requester, Attempt: l.Attempt,
		Hold: l.Hold, Chain: l.Chain, Reason: "replica cancelled by its requester"})
	return true
}

// replicaCandidates is how many providers an interactive job with
// replicas asks directly: one more than it needs (0: no replicas).
func replicaCandidates(s *pb.JobSpec) int {
	if k := protocol.Replicas(s); k > 1 {
		return k + 1
	}
	return 0
}

// restoreReplicas asks again, after a restart, for the majority releases
// not done before it, and gives the replicas still running a full
// heartbeat timeout to be heard from.
func (e *Engine) restoreReplicas(j *Job, now time.Time) {
	if !replicated(j) {
		return
	}
	for i := range j.Awards {
		a := &j.Awards[i]
		switch {
		case a.Verdict == VerdictMinority && !a.Released:
			e.ready.MajorityReleases = append(e.ready.MajorityReleases, MajorityReleaseRequest{Job: j.ID, Loser: a.Provider})
		case a.live() && !a.Leased.IsZero():
			a.HeartbeatBy = later(a.HeartbeatBy, now.Add(e.cfg.HeartbeatTimeout))
		case a.live():
			a.AcceptBy = later(a.AcceptBy, now.Add(e.cfg.AcceptTimeout))
		}
	}
}
