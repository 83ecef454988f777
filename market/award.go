package market

import (
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/mira-market/mira/protocol"
	"github.com/mira-market/mira/protocol/pb"
)

// HoldRequest asks the caller for the escrow hold that backs an award: a
// hold of Amount naming Provider (PlanHold says whether the posting's
// hold serves), and the grant of the lease. The caller answers with
// HoldWritten; only then does the award leave.
type HoldRequest struct {
	Job      protocol.JobID
	Attempt  uint32
	Provider peer.ID
	Price    uint64
	// Amount is what the hold escrows (HoldAmount at Price).
	Amount uint64
	// KnownSeq is the provider's head of this requester's ledger chain,
	// from its latest bid; WithChain asks for the entries after it, up to
	// the hold, to go with the award. An interactive award carries them;
	// a batch job's window gives gossip the time to bring them (carrying
	// them too cost about a tenth of a burst's leases/s).
	KnownSeq  uint64
	WithChain bool
	// Expiry is when the hold expires: the award's time, the accept
	// timeout, the job's max_duration and the claim window, so the
	// provider can run the whole job and still claim. Until then only the
	// provider may close it. MinExpiry is the earliest expiry an open hold
	// naming the provider may have to serve again (PlanHold).
	Expiry    time.Time
	MinExpiry time.Time
	// Replicas is the job's verify.replicas, which the hold states
	// (0: 1, none).
	Replicas int
}

// HoldResult is the caller's answer to a HoldRequest: the hold entry that
// backs the award, the requester's entries before it the provider lacks
// (if asked for), and the requester's signed grant of the lease; or why
// the award cannot be backed.
type HoldResult struct {
	Hold []byte
	// Seq is the hold entry's sequence number in the requester's chain:
	// what the provider's bill and claim name.
	Seq   uint64
	Chain [][]byte
	Grant []byte
	Err   error
}

// award gives j to p at price: the job is assigned (and saved), and its
// award waits for the hold that backs it (NeedHolds). Its accept timeout
// runs only once the hold is written and the award leaves (HoldWritten):
// that wait is not the provider's to answer for. A price whose hold
// cannot be computed cancels the job, as a hold that fails would.
func (e *Engine) award(j *Job, now time.Time, p peer.ID, price uint64) {
	j.Attempt++
	j.State = Assigned
	j.Provider, j.Price = p, price
	j.WindowEnds, j.ReofferAt, j.EmptyRounds = time.Time{}, time.Time{}, 0
	// What a restart finds: the award may have left before it, so its
	// acceptance is due by then. (While the hold is written, Tick leaves
	// the job alone.)
	j.AcceptBy = now.Add(e.cfg.AcceptTimeout)
	j.awaitingHold = true
	e.save(j, now)
	amount, err := HoldAmount(price, j.Spec())
	if err != nil {
		e.Cancel(now, j.ID, escrowFailed(err))
		return
	}
	run := time.Duration(j.Spec().GetMaxDurationMs()) * time.Millisecond
	r := HoldRequest{Job: j.ID, Attempt: j.Attempt, Provider: p, Price: price, Amount: amount,
		WithChain: j.Tier == protocol.TierInteractive,
		Expiry:    now.Add(e.cfg.AcceptTimeout + run + e.claimWindow()),
		MinExpiry: now.Add(run + e.claimWindow()/2)}
	j.Awards = append(j.Awards, AwardRecord{Attempt: j.Attempt, Provider: p, Price: price, Expiry: r.Expiry})
	for _, b := range j.Bids {
		if b.Provider == p {
			r.KnownSeq = b.KnownSeq // its latest bid
		}
	}
	e.ready.NeedHolds = append(e.ready.NeedHolds, r)
}

// HoldWritten takes the caller's answer to the hold request of a job's
// award of attempt. With a hold, the award leaves now, carrying it, and
// the provider's time to accept starts; the new time is kept in memory
// only (after a restart the stored, earlier one applies). Without one,
// the job is cancelled with the reason. An answer for an award the job
// has left behind (cancelled or re-offered meanwhile) changes nothing.
func (e *Engine) HoldWritten(now time.Time, id protocol.JobID, attempt uint32, res HoldResult) {
	j, ok := e.jobs[id]
	if ok && replicated(j) {
		e.replicaHoldWritten(now, j, attempt, res)
		return
	}
	if !ok || j.State != Assigned || j.Attempt != attempt || !j.awaitingHold {
		return
	}
	if res.Err != nil {
		e.Cancel(now, id, escrowFailed(res.Err)) // the award never left: no Cancel to send
		return
	}
	j.awaitingHold = false
	j.AcceptBy = now.Add(e.cfg.AcceptTimeout)
	if a := j.award(attempt, j.Provider); a != nil {
		a.HoldSeq = res.Seq
	}
	e.send(j.Provider, &pb.MarketMessage{Body: &pb.MarketMessage_Award{Award: &pb.Award{
		JobId: j.ID[:], Provider: []byte(j.Provider), Price: j.Price, Attempt: j.Attempt,
		Hold: res.Hold, Chain: res.Chain, Grant: res.Grant,
	}}})
}

// escrowFailed is the reason a job whose award cannot be backed ends with.
func escrowFailed(err error) string { return "escrow failed: " + err.Error() }
