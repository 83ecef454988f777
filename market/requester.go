package market

import (
	"cmp"
	"fmt"
	"slices"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/mira-market/mira/protocol"
	"github.com/mira-market/mira/protocol/pb"
)

// The requester's side of the engine: a job's offer, its bids and
// declines, its lease and its end.

// Submit starts a job from its signed offer. An interactive offer goes
// directly to the best of providers, the capacity records the caller's
// lookup found (RankCandidates, by the round-trip times SetRTT gave), and
// to gossip; batch offers only go to gossip.
func (e *Engine) Submit(now time.Time, offer *protocol.Signed, providers []*protocol.Capacity) *Job {
	o := offer.Msg.GetOffer()
	if j, ok := e.jobs[offer.Job]; ok {
		return j // a resubmitted offer is the same job
	}
	j := &Job{
		ID:       offer.Job,
		Offer:    offer.Raw,
		offer:    o,
		Tier:     o.Spec.Tier,
		MaxPrice: o.Spec.MaxPrice,
		Deadline: time.UnixMilli(o.DeadlineUnixMs),
		State:    Pending,
		Created:  now,
		Bids:     []Bid{},
		Declines: []Decline{},
	}
	if j.Tier == protocol.TierInteractive {
		candidates := e.rankCandidates(offer.Job, o.Spec, providers)
		// A job with replicas asks one more than it needs.
		if limit := max(e.cfg.MaxCandidates, replicaCandidates(o.Spec)); len(candidates) > limit && e.cfg.MaxCandidates > 0 {
			candidates = candidates[:limit]
		}
		j.Candidates = candidates
	}
	e.jobs[j.ID] = j
	e.active[j.ID] = j
	e.offer(j, now)
	return j
}

// Restore puts a persisted job back after a restart; its timers run on,
// but a lease's timeout is at least a full one from now: its provider,
// which went on running while this node was down, is heard again (its
// heartbeats, or the bill it re-sends) before the job is given to
// another. offer is the job's verified first offer.
func (e *Engine) Restore(now time.Time, j *Job, offer *protocol.Signed) {
	j.ID, j.offer = offer.Job, offer.Msg.GetOffer()
	e.jobs[j.ID] = j
	e.restoreReplicas(j, now)
	if j.State.Terminal() {
		return
	}
	e.active[j.ID] = j
	switch j.State {
	case Running:
		j.HeartbeatBy = later(j.HeartbeatBy, now.Add(e.cfg.HeartbeatTimeout))
	case Assigned:
		j.AcceptBy = later(j.AcceptBy, now.Add(e.cfg.AcceptTimeout))
	}
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// offer (re)opens bidding: direct to candidates for interactive jobs,
// gossip for both tiers.
func (e *Engine) offer(j *Job, now time.Time) {
	j.State = Bidding
	endAwards(j, now) // a lease of an earlier award is over for this node
	j.Provider, j.Price, j.Leased = "", 0, time.Time{}
	j.AcceptBy, j.HeartbeatBy, j.ReofferAt = time.Time{}, time.Time{}, time.Time{}
	j.awaitingHold = false
	j.WindowEnds = now.Add(e.window(j.Tier))
	j.Round++
	msg := &pb.MarketMessage{Round: j.Round, Body: &pb.MarketMessage_Offer{Offer: j.offer}}
	direct := 0
	if j.Tier == protocol.TierInteractive {
		for _, c := range j.Candidates {
			if !slices.Contains(j.Excluded, c) && !heldOff(j, c, now) {
				e.send(c, msg)
				direct++
			}
		}
	}
	j.gossipLater = nil
	if direct > 0 && j.Round == 1 {
		// The first direct round usually ends in a lease within
		// milliseconds: its gossip copy, there for visibility, goes out
		// just before the taken notice instead of landing on every node
		// while the candidates bid, or once they have all declined. A
		// later round (after one without a lease) is gossiped at once.
		j.gossipLater = msg
	} else {
		e.publish(j, msg)
	}
	e.save(j, now)
}

// Cancel cancels a job wherever it is; a provider holding it is told.
func (e *Engine) Cancel(now time.Time, id protocol.JobID, reason string) bool {
	j, ok := e.jobs[id]
	if !ok || j.State.Terminal() {
		return false
	}
	e.finish(j, now, Cancelled, reason)
	return true
}

// Fail ends a job as failed for reason (its stored offer no longer passes
// the protocol's checks, say); a provider holding it is told to stop.
func (e *Engine) Fail(now time.Time, id protocol.JobID, reason string) bool {
	j, ok := e.jobs[id]
	if !ok || j.State.Terminal() {
		return false
	}
	if providerHolds(j) {
		e.send(j.Provider, &pb.MarketMessage{Body: &pb.MarketMessage_Cancel{Cancel: &pb.Cancel{JobId: j.ID[:], Reason: reason}}})
	}
	e.finish(j, now, Failed, reason)
	return true
}

// providerHolds reports whether a provider may hold j: it was awarded j
// and the award left (an award waiting for its hold has not).
func providerHolds(j *Job) bool {
	return (j.State == Assigned || j.State == Running) && j.Provider != "" && !j.awaitingHold
}

// finish ends a job; a provider that holds it is told to stop, unless the
// job ended by its result.
func (e *Engine) finish(j *Job, now time.Time, s State, reason string) {
	if replicated(j) {
		if s != Succeeded {
			e.cancelReplicas(j, reason)
		}
	} else if providerHolds(j) && s != Succeeded && s != Failed {
		e.send(j.Provider, &pb.MarketMessage{Body: &pb.MarketMessage_Cancel{Cancel: &pb.Cancel{JobId: j.ID[:], Reason: reason}}})
	}
	j.State = s
	endAwards(j, now)
	delete(e.active, j.ID)
	if reason != "" && j.Error == "" && s != Succeeded {
		j.Error = reason
	}
	j.WindowEnds, j.ReofferAt, j.AcceptBy, j.HeartbeatBy = time.Time{}, time.Time{}, time.Time{}, time.Time{}
	j.gossipLater, j.awaitingHold = nil, false
	e.save(j, now)
}
func (e *Engine) onBid(now time.Time, m *protocol.Signed, b *pb.Bid) {
	j, ok := e.jobs[m.Job]
	if !ok || j.State != Bidding || !asked(j, m.Signer) || heldOff(j, m.Signer, now) {
		return
	}
	if slices.ContainsFunc(j.Bids, func(old Bid) bool { return old.Provider == m.Signer }) {
		return // one bid per provider
	}
	if len(j.Bids) >= MaxBids {
		// Full: the best bids by the window's ranking are kept, so the
		// window's winner is the same as without the bound.
		worst := worstBid(j.Bids, e.cfg.Reputation, e.rttOf)
		if !e.ranksBefore(Bid{Provider: m.Signer, Price: b.Price}, j.Bids[worst]) {
			return
		}
		j.Bids = slices.Delete(j.Bids, worst, worst+1)
	}
	j.Bids = append(j.Bids, Bid{Provider: m.Signer, Price: b.Price, At: now, KnownSeq: b.KnownSeq})
	if replicated(j) {
		e.replicaBid(j, now)
		return
	}
	if (j.Tier == protocol.TierInteractive || j.WindowEnds.IsZero()) && b.Price <= j.MaxPrice {
		// An interactive job takes its first acceptable bid; so does any
		// job whose window has already ended (a bid that came late).
		e.award(j, now, m.Signer, b.Price)
		return
	}
	e.touch(j, now)
}

// onDecline takes a decline from a provider that was asked about the job's
// current round (see asked), once per round, or from the holder of its
// lease; anything else changes nothing and is not written.
func (e *Engine) onDecline(now time.Time, m *protocol.Signed, d *pb.Decline) {
	j, ok := e.jobs[m.Job]
	if !ok {
		return
	}
	switch {
	case (j.State == Assigned || j.State == Running) && replicated(j):
		e.replicaDecline(now, j, m.Signer, d.Reason)
	case (j.State == Assigned || j.State == Running) && j.Provider == m.Signer:
		// The provider turned the award down (it filled up since it bid)
		// or gave the lease up for interactive work: offer again; it may
		// bid again once it has room (holdOff says when).
		noteDecline(j, m.Signer, d.Reason, now)
		if j.State == Running && d.Reason == ReasonPreempted {
			j.Preemptions++
		}
		e.holdOff(j, m.Signer, now)
		e.reoffer(j, now, false)
	case j.State == Bidding && asked(j, m.Signer):
		if !noteDecline(j, m.Signer, d.Reason, now) {
			return
		}
		if j.gossipLater != nil && allDeclined(j, now) {
			// Every candidate turned the job down: the rest of the market
			// sees it now, not when the window ends.
			e.publish(j, j.gossipLater)
			j.gossipLater = nil
		}
		// For watchers; written with the job's next change (the window's
		// end at the latest), like a bid.
		e.touch(j, now)
	}
}

// asked reports whether p was asked about j's current round: an
// interactive job's direct candidates always, anyone once the round went
// to gossip; never a provider excluded from the job.
func asked(j *Job, p peer.ID) bool {
	if slices.Contains(j.Excluded, p) {
		return false
	}
	return j.gossipLater == nil || slices.Contains(j.Candidates, p)
}

// noteDecline records p's decline of j's current round and reports whether
// that changed the record: a provider keeps one decline, that of its
// latest round; besides the candidates' at most MaxDeclines are kept, and
// when that many are, a new one takes the place of one from an earlier
// round, or is dropped.
func noteDecline(j *Job, p peer.ID, reason string, now time.Time) bool {
	d := Decline{Provider: p, Reason: reason, At: now, Round: j.Round}
	if i := slices.IndexFunc(j.Declines, func(old Decline) bool { return old.Provider == p }); i >= 0 {
		if j.Declines[i].Round == j.Round {
			return false
		}
		j.Declines[i] = d
		return true
	}
	candidate := func(d Decline) bool { return slices.Contains(j.Candidates, d.Provider) }
	if !slices.Contains(j.Candidates, p) && len(j.Declines)-countFunc(j.Declines, candidate) >= MaxDeclines {
		stale := slices.IndexFunc(j.Declines, func(old Decline) bool { return old.Round < j.Round && !candidate(old) })
		if stale < 0 {
			return false
		}
		j.Declines = slices.Delete(j.Declines, stale, stale+1)
	}
	j.Declines = append(j.Declines, d)
	return true
}

func countFunc[T any](s []T, f func(T) bool) int {
	n := 0
	for _, v := range s {
		if f(v) {
			n++
		}
	}
	return n
}

// allDeclined reports whether every candidate still in the running (not
// excluded, not held off) has declined j's current round.
func allDeclined(j *Job, now time.Time) bool {
	for _, c := range j.Candidates {
		if !slices.Contains(j.Excluded, c) && !heldOff(j, c, now) &&
			!slices.ContainsFunc(j.Declines, func(d Decline) bool { return d.Provider == c && d.Round == j.Round }) {
			return false
		}
	}
	return true
}

// holdOff keeps p's bids on j from being taken for a while after p gave
// an award of j back: a window, doubling with each award of j it gave
// back, at most maxReofferDelay. An honest provider that filled up (or
// was preempted) has no room to bid meanwhile anyway, and wins the job
// again once it has; one that bids first and declines every award, which
// would make the requester write a release and a hold each round, gets
// one award a minute at most, and the other bidders get the job.
func (e *Engine) holdOff(j *Job, p peer.ID, now time.Time) {
	i := slices.IndexFunc(j.DeclinedAwards, func(a AwardDecline) bool { return a.Provider == p })
	if i < 0 {
		j.DeclinedAwards = append(j.DeclinedAwards, AwardDecline{Provider: p})
		i = len(j.DeclinedAwards) - 1
	}
	a := &j.DeclinedAwards[i]
	a.Count++
	d := e.window(j.Tier)
	for k := 1; k < a.Count && d < maxReofferDelay; k++ {
		d *= 2
	}
	a.Until = now.Add(min(d, maxReofferDelay))
}

// heldOff reports whether p's bids on j are not taken now (see holdOff).
func heldOff(j *Job, p peer.ID, now time.Time) bool {
	return slices.ContainsFunc(j.DeclinedAwards, func(a AwardDecline) bool { return a.Provider == p && now.Before(a.Until) })
}

// current lease with the given attempt.
func (e *Engine) leaseHolderJob(m *protocol.Signed, attempt uint32) *Job {
	j, ok := e.jobs[m.Job]
	if !ok || j.Provider != m.Signer || j.Attempt != attempt || (j.State != Assigned && j.State != Running) {
		return nil
	}
	return j
}

func (e *Engine) onAccept(now time.Time, m *protocol.Signed, attempt uint32) {
	if j := e.leaseHolderJob(m, attempt); j != nil && j.State == Assigned {
		e.markRunning(j, now)
	}
}

func (e *Engine) markRunning(j *Job, now time.Time) {
	if j.State == Assigned {
		j.State = Running
		j.Leases++
		j.Leased = now
		j.AcceptBy = time.Time{}
		if a := j.award(j.Attempt, j.Provider); a != nil && a.Leased.IsZero() {
			a.Leased = now // the observation of the run starts here
		}
		if j.gossipLater != nil {
			e.publish(j, j.gossipLater)
			j.gossipLater = nil
		}
		e.publish(j, &pb.MarketMessage{
			Body: &pb.MarketMessage_Taken{Taken: &pb.Taken{JobId: j.ID[:], Provider: []byte(j.Provider)}},
		})
	}
	j.HeartbeatBy = now.Add(e.cfg.HeartbeatTimeout)
	e.save(j, now)
}

// onResult takes a provider's result, which comes only after the
// requester accepted its final bill and the provider claimed it: a result
// is taken from the provider of one of the job's awards whose bill this
// node accepted, and only the result that bill named. It is acknowledged
// (the provider re-sends it until then). The current lease's result ends
// the job, succeeded or failed with the job's own exit code; so does a
// result of an earlier lease (one revoked, whose provider ran on) while
// the job has not ended: the current lease is cancelled then.
func (e *Engine) onResult(now time.Time, m *protocol.Signed, r *pb.Result) {
	j, ok := e.jobs[m.Job]
	if !ok {
		return
	}
	if replicated(j) {
		e.replicaResult(now, j, m, r)
		return
	}
	a := deliveredAward(j, m.Signer, r)
	if a == nil {
		if j.Provider == m.Signer || slices.Contains(j.Excluded, m.Signer) {
			// A result without an accepted bill: counted for watchers,
			// written with the job's next change, so that a provider
			// cannot make the requester write the job again and again.
			j.RefusedResults++
			e.touch(j, now)
		}
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
	current := j.Provider == m.Signer && j.Attempt == r.Attempt && (j.State == Assigned || j.State == Running)
	if !current {
		if providerHolds(j) {
			e.send(j.Provider, &pb.MarketMessage{Body: &pb.MarketMessage_Cancel{Cancel: &pb.Cancel{JobId: j.ID[:], Reason: "result delivered by an earlier lease"}}})
		}
		j.Provider, j.Price = a.Provider, a.Price
	} else if j.State == Assigned { // the result overtook the acceptance
		e.markRunning(j, now)
	}
	e.takeResult(j, now, m, r)
}

// takeResult ends j with r, its provider's result: succeeded, or failed
// with the job's own exit code or error.
func (e *Engine) takeResult(j *Job, now time.Time, m *protocol.Signed, r *pb.Result) {
	j.ExitCode, j.Output, j.Error = r.ExitCode, r.Output, r.Error
	j.ResultID, j.ResultSize, j.Usage, j.Receipt, j.Log = r.ResultId, r.ResultSize, r.Usage, m.Raw, r.Log
	j.OutputsID, j.OutputsSize = r.OutputsId, r.OutputsSize
	if err := checkInline(r); err != nil {
		// Bytes that are not the result the receipt names are not kept.
		j.Output = nil
		j.Error = cmp.Or(j.Error, err.Error())
	}
	if r.ExitCode == 0 && j.Error == "" {
		e.finish(j, now, Succeeded, "")
	} else {
		e.finish(j, now, Failed, "")
	}
}

// reoffer takes the job from its provider and returns it to the market. A
// provider that failed the job (silence) is excluded from it for good. A
// job awarded MaxAttempts times fails instead.
func (e *Engine) reoffer(j *Job, now time.Time, revoke bool) {
	if j.Provider != "" && revoke {
		exclude(j, j.Provider)
		e.send(j.Provider, &pb.MarketMessage{Body: &pb.MarketMessage_Cancel{Cancel: &pb.Cancel{JobId: j.ID[:], Reason: "lease revoked"}}})
	}
	j.Bids = j.Bids[:0]
	if j.Attempt >= MaxAttempts {
		reason := fmt.Sprintf("no provider kept the job: %d awards, the last to %s", j.Attempt, j.Provider)
		if i := slices.IndexFunc(j.Declines, func(d Decline) bool { return d.Provider == j.Provider && d.Round == j.Round }); i >= 0 {
			reason += " (declined: " + j.Declines[i].Reason + ")"
		}
		e.finish(j, now, Failed, reason)
		return
	}
	e.offer(j, now)
}

// exclude keeps p from bidding on j again (the MaxExcluded latest).
func exclude(j *Job, p peer.ID) {
	if slices.Contains(j.Excluded, p) {
		return
	}
	if len(j.Excluded) >= MaxExcluded {
		j.Excluded = slices.Delete(j.Excluded, 0, 1)
	}
	j.Excluded = append(j.Excluded, p)
}

// checkInline checks that a result's inline output is the blob it names.
// An empty output is checked too: it is the whole of an empty result.
func checkInline(r *pb.Result) error {
	if r.ResultId == "" || (len(r.Output) == 0 && r.ResultSize > 0) {
		return nil // no result, or one the requester fetches as a blob
	}
	if !protocol.IsBlob(r.Output, r.ResultId) || uint64(len(r.Output)) != r.ResultSize {
		return fmt.Errorf("inline output does not match result %s", r.ResultId)
	}
	return nil
}
