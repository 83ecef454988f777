package market

import (
	"time"

	"github.com/mira-market/mira/protocol"
	"github.com/mira-market/mira/protocol/pb"
)

// The engine's timers: bidding windows, timeouts, deadlines, heartbeats.

// Tick advances the engine's clock: bidding windows close, timeouts fire,
// deadlines expire jobs, providers send heartbeats.
func (e *Engine) Tick(now time.Time) {
	for _, j := range e.active {
		switch {
		case !j.Deadline.After(now):
			e.finish(j, now, Expired, "deadline passed")
		case replicated(j) && (j.State == Assigned || j.State == Running):
			e.tickReplicas(j, now)
		case j.State == Bidding && !j.WindowEnds.IsZero() && !now.Before(j.WindowEnds):
			e.closeWindow(j, now)
		case j.State == Bidding && !j.ReofferAt.IsZero() && !now.Before(j.ReofferAt):
			e.reoffer(j, now, false)
		case j.State == Assigned && !j.awaitingHold && !now.Before(j.AcceptBy):
			e.reoffer(j, now, true)
		case j.State == Running && !now.Before(j.HeartbeatBy):
			e.reoffer(j, now, true)
		}
	}
	if !now.Before(e.swept.Add(offerSweepInterval)) {
		// A sweep visits every remembered offer: not at every tick.
		e.offers.expire(now)
		e.swept = now
	}
	e.tickBills(now)
	e.tickInterim(now)
	e.tickVerdicts(now)
	if len(e.retryRelease) > 0 && !now.Before(e.retryAt) {
		e.ready.MajorityReleases = append(e.ready.MajorityReleases, e.retryRelease...)
		e.retryRelease = nil
	}
	for _, l := range e.leases {
		if !now.Before(l.nextBeat) {
			l.nextBeat = now.Add(e.cfg.HeartbeatInterval)
			e.send(l.Requester, &pb.MarketMessage{Body: &pb.MarketMessage_Heartbeat{Heartbeat: &pb.Heartbeat{JobId: l.Job[:], Attempt: l.Attempt}}})
		}
	}
}

// closeWindow awards a batch job to its best acceptable bid (chooseBid:
// the cheapest, weighed by the providers' records; ties: lower RTT, then
// peer ID). With none, the job waits for a late bid until reofferDelay has
// passed, then is offered again.
func (e *Engine) closeWindow(j *Job, now time.Time) {
	var best *Bid
	if i := chooseBid(j, e.cfg.Reputation, e.rttOf); i >= 0 {
		best = &j.Bids[i]
	}
	var replicaBids []Bid
	if replicated(j) {
		// k bids of distinct providers, or none.
		if replicaBids = e.chooseBids(j, protocol.Replicas(j.Spec())); replicaBids == nil {
			best = nil
		}
	}
	if best == nil {
		if j.gossipLater != nil {
			// The direct round is over: the rest of the market may bid.
			e.publish(j, j.gossipLater)
			j.gossipLater = nil
		}
		j.WindowEnds = time.Time{}
		j.EmptyRounds++
		j.ReofferAt = now.Add(e.reofferDelay(j))
		e.save(j, now)
		return
	}
	if replicaBids != nil {
		e.awardReplicas(j, now, replicaBids)
		return
	}
	e.award(j, now, best.Provider, best.Price)
}

// offerSweepInterval is how often a provider drops the offers whose
// deadlines have passed; until then they count against its budget.
const offerSweepInterval = 10 * time.Second

// maxReofferDelay caps the pause between a batch job's empty rounds;
// maxInteractivePause caps an interactive job's, in windows, since its
// requester is waiting.
const (
	maxReofferDelay     = time.Minute
	maxInteractivePause = 4
)

// reofferDelay is how long a job waits after a window ended without an
// acceptable bid: the window's length, doubling with each empty round since
// its last award, at most a minute (four windows for an interactive job). A
// market short of providers then sees a job a few times a minute, not every
// window; and a burst that slows the bids past the window gets them awarded
// as they come, not a new round of offers and bids for every job on every
// node.
func (e *Engine) reofferDelay(j *Job) time.Duration {
	w := e.window(j.Tier)
	limit := maxReofferDelay
	if j.Tier == protocol.TierInteractive {
		limit = min(limit, maxInteractivePause*w)
	}
	d := w
	for r := 1; r < j.EmptyRounds && d < limit; r++ {
		d *= 2
	}
	return min(d, limit)
}

// NextDeadline is the earliest time Tick has work, for the caller's timer;
// zero when nothing waits.
func (e *Engine) NextDeadline() time.Time {
	var next time.Time
	consider := func(t time.Time) {
		if !t.IsZero() && (next.IsZero() || t.Before(next)) {
			next = t
		}
	}
	for _, j := range e.active {
		consider(j.Deadline)
		consider(j.WindowEnds)
		consider(j.ReofferAt)
		if !j.awaitingHold {
			consider(j.AcceptBy)
		}
		consider(j.HeartbeatBy)
		replicaTimers(j, consider)
	}
	if len(e.retryRelease) > 0 {
		consider(e.retryAt)
	}
	for _, at := range e.polls {
		consider(at)
	}
	for _, l := range e.leases {
		consider(l.nextBeat)
	}
	e.nextInterim(consider)
	for _, b := range e.bills {
		if b.phase != phaseClaiming {
			consider(b.next)
		}
		if b.short != nil && !b.shortTried {
			consider(e.shortClaimBy(b))
		}
		consider(b.until.Add(time.Nanosecond))
	}
	if e.offers.len() > 0 {
		consider(e.swept.Add(offerSweepInterval))
	}
	return next
}
