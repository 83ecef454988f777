package market

import (
	"slices"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/mira-market/mira/protocol"
	"github.com/mira-market/mira/protocol/pb"
)

// The provider's side of the engine: its answers to offers and awards,
// its leases and their outcomes.

func (e *Engine) onOffer(now time.Time, m *protocol.Signed, o *pb.Offer) {
	if e.cfg.Provider == nil || m.Signer == e.cfg.Self {
		return
	}
	if seen := e.offers.get(m.Job); seen != nil && m.Msg.Round <= seen.round {
		return // this round was answered: it came directly and by gossip
	}
	if _, leased := e.leases[m.Job]; leased {
		return
	}
	deadline := time.UnixMilli(o.DeadlineUnixMs)
	reason := e.declineReason(now, o.Spec, deadline)
	var spec []byte
	if reason == "" {
		// Kept encoded, an award's lease decodes it: what is remembered
		// costs exactly its bytes.
		var err error
		if spec, err = proto.Marshal(o.Spec); err != nil {
			return // not for a verified offer, whose ID is its encoding
		}
	}
	e.offers.put(m.Job, m.Signer, m.Msg.Round, deadline, spec)
	reply := func(body any) {
		msg := &pb.MarketMessage{}
		switch b := body.(type) {
		case *pb.Bid:
			msg.Body = &pb.MarketMessage_Bid{Bid: b}
		case *pb.Decline:
			msg.Body = &pb.MarketMessage_Decline{Decline: b}
		}
		e.send(m.Signer, msg)
	}
	if reason != "" {
		reply(&pb.Decline{JobId: m.Job[:], Provider: []byte(e.cfg.Self), Reason: reason})
		return
	}
	// The bid names the requester's head this provider knows, so that
	// the award carries the requester's entries it lacks.
	reply(&pb.Bid{JobId: m.Job[:], Provider: []byte(e.cfg.Self), Price: e.floor(o.Spec.Tier), KnownSeq: e.heads[m.Signer]})
}

func (e *Engine) floor(tier string) uint64 {
	if tier == protocol.TierInteractive {
		return e.cfg.Provider.FloorInteractive
	}
	return e.cfg.Provider.FloorBatch
}

// declineReason is why this provider will not take a job of spec s now,
// or "" if it will: the rules its bid on an offer and its acceptance of an
// award both pass (awardReason adds the award's price).
func (e *Engine) declineReason(now time.Time, s *pb.JobSpec, deadline time.Time) string {
	p := e.cfg.Provider
	r := SpecRequirements(s)
	switch {
	case !deadline.After(now):
		return ReasonExpired
	case e.paused != "":
		return e.paused
	case !slices.Contains(p.Executors, s.Executor):
		return ReasonExecutor
	case p.MaxMemoryMiB > 0 && s.GetResources().GetMemoryMib() > p.MaxMemoryMiB:
		return ReasonMemory
	case p.MaxCPUMillis > 0 && s.GetResources().GetCpuMillis() > p.MaxCPUMillis:
		return ReasonCPU
	case s.Executor == "docker" && !ImageAllowed(p.DockerImages, s.Image):
		return ReasonImage
	case !Fits(&protocol.Capacity{GPUs: p.GPUs}, r):
		return ReasonNoGPU
	case s.MaxPrice < e.floor(s.Tier):
		return ReasonPrice
	case len(e.leases) >= p.Slots && (s.Tier != protocol.TierInteractive || e.preemptible() == nil):
		return ReasonNoSlot
	}
	return ""
}

// preemptible is the batch lease that interactive work would displace: the
// most recently started, which has lost the least work.
func (e *Engine) preemptible() *Lease {
	var victim *Lease
	for _, l := range e.leases {
		if l.Spec.Tier == protocol.TierBatch && (victim == nil || l.started.After(victim.started)) {
			victim = l
		}
	}
	return victim
}

// preempt stops a batch lease and hands its job back to its requester,
// which returns it to the market.
// Giving the lease up is the provider's choice: it waives the hold rather
// than bill the time run.
func (e *Engine) preempt(l *Lease) {
	delete(e.leases, l.Job)
	e.markBill(billKey{l.Job, l.Attempt, l.Requester}) // its waive closes the hold: no running record
	e.ready.Stop = append(e.ready.Stop, l.Job)
	e.ready.Waives = append(e.ready.Waives, WaiveRequest{Job: l.Job, Requester: l.Requester, Attempt: l.Attempt,
		Hold: l.Hold, Chain: l.Chain, Reason: ReasonPreempted})
}

// awardReason is why this provider turns down an award of a job of spec s
// at price, or "" if it takes it: the rules of a bid, and a price between
// its floor and the offer's maximum.
func (e *Engine) awardReason(now time.Time, s *pb.JobSpec, deadline time.Time, price uint64) string {
	if r := e.declineReason(now, s, deadline); r != "" {
		return r
	}
	if price < e.floor(s.Tier) || price > s.MaxPrice {
		return ReasonPrice
	}
	return ""
}

func (e *Engine) onAward(now time.Time, m *protocol.Signed, a *pb.Award) {
	if e.cfg.Provider == nil || string(a.Provider) != string(e.cfg.Self) {
		return
	}
	// An award declined names this provider in a hold only it can close
	// before the hold expires: it gives the hold back (a waive) with the
	// decline, so the requester's credits return at once.
	decline := func(reason string) { e.waiveAward(m, a, reason) }
	if l, ok := e.leases[m.Job]; ok && l.Requester == m.Signer && l.Attempt == a.Attempt {
		return // the award it took, sent again (a stream retry): not a new one to decline
	}
	// Only an offer this provider bid on may be leased: one it declined,
	// or no longer remembers, is unknown to it.
	o := e.offers.get(m.Job)
	spec := &pb.JobSpec{}
	if o == nil || o.requester != m.Signer || o.spec == nil || proto.Unmarshal(o.spec, spec) != nil {
		decline(ReasonUnknownJob)
		return
	}
	// Things changed since the bid (slots, say): the award passes the
	// same rules again.
	if reason := e.awardReason(now, spec, o.deadline, a.Price); reason != "" {
		decline(reason)
		return
	}
	if e.cfg.CheckGrant != nil && e.cfg.CheckGrant(m.Signer, m.Job, a) != nil {
		decline(ReasonGrant)
		return
	}
	if len(e.leases) >= e.cfg.Provider.Slots {
		// declineReason let an interactive job past a full provider only
		// because a batch lease can make room.
		e.preempt(e.preemptible())
	}
	e.offers.forget(o)
	run := time.Duration(spec.MaxDurationMs) * time.Millisecond
	l := &Lease{Job: m.Job, Requester: m.Signer, Spec: spec, Attempt: a.Attempt, Price: a.Price, Hold: a.Hold,
		Chain: a.Chain, Grant: a.Grant, Deadline: o.deadline, MinHoldExpiry: now.Add(run + e.claimWindow()/2),
		started: now, nextBeat: now.Add(e.cfg.HeartbeatInterval)}
	e.leases[m.Job] = l
	e.send(m.Signer, &pb.MarketMessage{Body: &pb.MarketMessage_Accept{Accept: &pb.Accept{JobId: m.Job[:], Attempt: a.Attempt}}})
	e.ready.Run = append(e.ready.Run, l)
}

// onCancel stops a lease its requester cancelled; the time it ran is
// billed when the run has stopped (Finished), as the requester chose to
// end it.
func (e *Engine) onCancel(m *protocol.Signed) {
	if l, ok := e.leases[m.Job]; ok && l.Requester == m.Signer {
		delete(e.leases, m.Job)
		e.stopping[m.Job] = l
		e.ready.Stop = append(e.ready.Stop, m.Job)
	}
	if o := e.offers.get(m.Job); o != nil && o.requester == m.Signer {
		e.offers.forget(o)
	}
}

// Outcome is how a provider's run of a lease ended: the receipt it signs.
type Outcome struct {
	// Attempt is the lease's attempt the run belonged to; an outcome of
	// an earlier lease of the job is dropped.
	Attempt  uint32
	ExitCode int32
	// Error says why the run failed, if it did.
	Error string
	// ResultID and ResultSize name the result blob; Output is the result
	// inline when it is at most protocol.MaxResultOutput bytes.
	ResultID   string
	ResultSize uint64
	Output     []byte
	// OutputsID and OutputsSize name the archive of the job's out/ files.
	OutputsID   string
	OutputsSize uint64
	Usage       *pb.Usage
	// Log is the run's whole log when it was never streamed (at most
	// protocol.MaxResultLog bytes): it travels in the result instead.
	Log []byte
	// HoldSeq and HoldExpiry are the hold naming this provider that the
	// escrow check found backing the lease: the bill draws on it, until
	// its expiry.
	HoldSeq    uint64
	HoldExpiry time.Time
	// Declined is why the lease was given back before it ran (the escrow
	// check refused its hold), and Waive the waive entry the caller wrote
	// of the hold, if any: the requester is sent a decline, not a bill.
	Declined string
	Waive    []byte
}

// Finished reports that a provider's run of a lease ended (or was
// cancelled by its requester and stopped); the engine bills the outcome
// (see bill), and sends the result once the bill is accepted and claimed.
func (e *Engine) Finished(now time.Time, id protocol.JobID, o Outcome) {
	l, ok := e.leases[id]
	if ok && l.Attempt == o.Attempt {
		delete(e.leases, id)
	} else if l, ok = e.stopping[id]; ok && l.Attempt == o.Attempt {
		delete(e.stopping, id)
		if e.cancelledReplica(l, o) {
			return
		}
	} else {
		return // preempted meanwhile, or re-awarded since
	}
	if len(o.Output) > protocol.MaxResultOutput {
		o.Output = nil // too big to inline: the requester fetches the blob
	}
	if len(o.Log) > protocol.MaxResultLog {
		o.Log = nil // the caller streams such a log
	}
	if len(o.Error) > 1024 {
		o.Error = o.Error[:1024]
	}
	// A protobuf string must be UTF-8, or the result cannot be signed; a
	// job's own bytes (a file name, cut above mid-rune) may not be.
	o.Error = strings.ToValidUTF8(o.Error, "?")
	e.bill(now, l, o, &pb.Result{
		JobId: id[:], Attempt: l.Attempt, ExitCode: o.ExitCode, Output: o.Output, Error: o.Error,
		ResultId: o.ResultID, ResultSize: o.ResultSize, Usage: o.Usage, Log: o.Log,
		OutputsId: o.OutputsID, OutputsSize: o.OutputsSize,
	})
}
