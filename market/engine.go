package market

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"google.golang.org/protobuf/proto"

	"github.com/mira-market/mira/protocol"
	"github.com/mira-market/mira/protocol/pb"
)

// State is a job's place in its life, as its requester sees it.
type State string

// Job states.
const (
	Pending   State = "pending"
	Bidding   State = "bidding"
	Assigned  State = "assigned"
	Running   State = "running"
	Succeeded State = "succeeded"
	Failed    State = "failed"
	Cancelled State = "cancelled"
	Expired   State = "expired"
)

// Terminal reports whether a job in state s is finished for good.
func (s State) Terminal() bool {
	return s == Succeeded || s == Failed || s == Cancelled || s == Expired
}

// Decline reasons a provider sends.
const (
	ReasonNoGPU      = "no fitting GPU"
	ReasonPrice      = "max price below floor"
	ReasonNoSlot     = "no free slot"
	ReasonExecutor   = "executor not allowed"
	ReasonExpired    = "expired"
	ReasonUnknownJob = "unknown job"
	ReasonPreempted  = "preempted by interactive work"
	ReasonLowDisk    = "provider low on disk space"
	ReasonMemory     = "memory over the provider's limit"
	ReasonCPU        = "cpu over the provider's limit"
	ReasonImage      = "image not allowed"
	ReasonGrant      = "award without a valid grant"
)

// Bounds of what peers can add to a job's record, so that neither the
// record nor a write of it grows with what a peer sends.
const (
	// MaxDeclines bounds the declines a job keeps, besides those of its
	// direct candidates: one per provider, the latest round's.
	MaxDeclines = 32
	// MaxBids bounds the bids a round keeps; past it a bid replaces the
	// dearest kept one if it is cheaper, so the cheapest always win.
	MaxBids = 64
	// MaxExcluded bounds the providers a job remembers it excluded; the
	// longest excluded may bid again.
	MaxExcluded = 64
	// MaxAttempts bounds a job's awards: every award after the first
	// costs the requester a release and a new hold in its ledger chain,
	// so a job that went round this often fails instead of going on (a
	// provider that bids and declines every award, under as many
	// identities as it likes, would spend the requester's ledger entry
	// rate). Honest contention stays well within it: in a burst of 100
	// jobs on three providers (node's TestJobsOfBothTiersSucceedOnce),
	// full providers declining awards, a job needed up to 16.
	MaxAttempts = 64
)

// Config sets the engine's timing and, for a provider, its bid strategy.
type Config struct {
	Self peer.ID
	// InteractiveWindow is how long an interactive job waits for a first
	// acceptable bid; BatchWindow is how long a batch job collects bids
	// before the cheapest wins. A window that ends without an acceptable
	// bid leaves the job waiting: the first acceptable bid that comes late
	// wins at once, and the job is offered again only after a pause that
	// doubles with each empty round (see reofferDelay).
	InteractiveWindow time.Duration
	BatchWindow       time.Duration
	// AcceptTimeout bounds award → acceptance; HeartbeatTimeout bounds the
	// silence of a running provider. Either expiring returns the job to
	// the market without that provider.
	AcceptTimeout     time.Duration
	HeartbeatTimeout  time.Duration
	HeartbeatInterval time.Duration
	// MaxCandidates is how many providers an interactive offer goes to
	// directly.
	MaxCandidates int
	// OfferMemory and OfferMemoryPerRequester bound the bytes of the
	// offers a provider remembers to recognise repeats and lease awards,
	// in total and per requester; zero means DefaultOfferMemory and
	// DefaultOfferMemoryPerRequester.
	OfferMemory             int
	OfferMemoryPerRequester int
	// Provider is nil for a node that sells nothing.
	Provider *ProviderPolicy
	// CheckGrant checks an award's grant, the requester's signature that
	// the provider's lease entry quotes (storage.LeaseGrant): an award it
	// refuses is declined (ReasonGrant), as no ledger would take its
	// lease. nil checks nothing (tests of other things).
	CheckGrant func(requester peer.ID, job protocol.JobID, a *pb.Award) error
}

// ProviderPolicy is a provider's bid strategy.
type ProviderPolicy struct {
	GPUs      []protocol.GPU
	Slots     int
	Executors []string
	// MaxMemoryMiB and MaxCPUMillis are the most memory and CPU one job
	// may ask for (resources.memory_mib, resources.cpu_millis); zero: no
	// limit.
	MaxMemoryMiB uint32
	MaxCPUMillis uint32
	// DockerImages are the images a docker job may name (ImageAllowed);
	// empty: no docker job.
	DockerImages []string
	// Floors in micro-credits per GPU-second; the provider bids its floor.
	FloorInteractive uint64
	FloorBatch       uint64
}

// Bid is a bid a job received.
type Bid struct {
	Provider peer.ID   `json:"provider"`
	Price    uint64    `json:"price"`
	At       time.Time `json:"at"`
	// KnownSeq is the bidder's head of the requester's ledger chain.
	KnownSeq uint64 `json:"known_seq,omitempty"`
}

// Decline is a provider's reason for not bidding.
type Decline struct {
	Provider peer.ID   `json:"provider"`
	Reason   string    `json:"reason"`
	At       time.Time `json:"at"`
	// Round is the job's round when the decline came: a provider's
	// decline counts once per round.
	Round uint32 `json:"round,omitempty"`
}

// Job is a requester's job: what the API shows and the node persists.
type Job struct {
	ID protocol.JobID `json:"-"`
	// Offer is the first signed offer; offer is its body, re-sent (with a
	// new round) whenever the job returns to the market.
	Offer    []byte `json:"offer"`
	offer    *pb.Offer
	Round    uint32    `json:"round"`
	Tier     string    `json:"tier"`
	MaxPrice uint64    `json:"max_price"`
	Deadline time.Time `json:"deadline"`
	State    State     `json:"state"`
	Provider peer.ID   `json:"provider,omitempty"`
	Price    uint64    `json:"price"`
	// Attempt counts awards; a result must carry the current one.
	Attempt  uint32    `json:"attempt"`
	Leases   int       `json:"leases"`
	Bids     []Bid     `json:"bids"`
	Declines []Decline `json:"declines"`
	Excluded []peer.ID `json:"excluded,omitempty"`
	// DeclinedAwards are the providers that gave an award of the job
	// back (declined or preempted it), and until when their bids on it
	// are not taken (see holdOff). At most one per award, so at most
	// MaxAttempts.
	DeclinedAwards []AwardDecline `json:"declined_awards,omitempty"`
	Candidates     []peer.ID      `json:"candidates,omitempty"`
	ExitCode       int32          `json:"exit_code"`
	Output         []byte         `json:"output,omitempty"`
	// Log is the run's log when it came in the result, not streamed.
	Log   []byte `json:"log,omitempty"`
	Error string `json:"error,omitempty"`
	// ResultID and ResultSize name the result blob; Usage is the metered
	// usage; Receipt is the provider's signed result that says so.
	ResultID   string `json:"result_id,omitempty"`
	ResultSize uint64 `json:"result_size,omitempty"`
	// OutputsID and OutputsSize name the tar archive of the files the job
	// left in its out/ directory, if it left any.
	OutputsID   string    `json:"outputs_id,omitempty"`
	OutputsSize uint64    `json:"outputs_size,omitempty"`
	Usage       *pb.Usage `json:"usage,omitempty"`
	Receipt     []byte    `json:"receipt,omitempty"`
	Created     time.Time `json:"created"`
	Updated     time.Time `json:"updated"`
	// Leased is when the current lease began: the provider's acceptance.
	Leased time.Time `json:"leased,omitzero"`
	// Timers; zero when not running. ReofferAt is when a job whose window
	// ended without an acceptable bid is offered again; EmptyRounds counts
	// such windows since its last award.
	WindowEnds  time.Time `json:"window_ends"`
	ReofferAt   time.Time `json:"reoffer_at,omitzero"`
	EmptyRounds int       `json:"empty_rounds,omitempty"`
	AcceptBy    time.Time `json:"accept_by"`
	HeartbeatBy time.Time `json:"heartbeat_by"`
	// Preemptions counts leases given up for interactive work.
	Preemptions int `json:"preemptions"`
	// RefusedResults counts results from providers that no longer held
	// the lease.
	RefusedResults int `json:"refused_results"`

	// gossipLater is the first direct round's offer of an interactive
	// job, still to be gossiped.
	gossipLater *pb.MarketMessage
}

// AwardDecline is how often a provider gave an award of a job back, and
// until when its bids on the job are not taken.
type AwardDecline struct {
	Provider peer.ID   `json:"provider"`
	Count    int       `json:"count"`
	Until    time.Time `json:"until"`
}

// Spec is the job's spec as offered.
func (j *Job) Spec() *pb.JobSpec { return j.offer.GetSpec() }

// Lease is a provider's running job.
type Lease struct {
	Job       protocol.JobID
	Requester peer.ID
	Spec      *pb.JobSpec
	Attempt   uint32
	Price     uint64
	// Hold is the requester's signed escrow entry from the award; the
	// caller checks it against its ledger before it runs the job. Chain is
	// the requester's entries before it that the award carried. Grant is
	// the requester's signature of the award, which the lease entry
	// quotes (checked by Config.CheckGrant).
	Hold     []byte
	Chain    [][]byte
	Grant    []byte
	Deadline time.Time
	started  time.Time
	nextBeat time.Time
}

// Outbound is a message for the caller to sign and send: to one peer, or
// published on a tier's topic when To is empty.
type Outbound struct {
	To   peer.ID
	Tier string
	Msg  *pb.MarketMessage
}

// Ready is the work the engine asks of its caller after an input. The
// caller persists Save before it sends Send and Publish (a lease must be on
// disk before the acceptance goes out), then starts Run and stops Stop.
type Ready struct {
	Save []*Job
	// Changed are jobs whose change is for watchers only (a bid while
	// the window is open, a decline, a refused late result): not worth a
	// write, and safe to lose in a crash; the job's next write (its
	// window's end, at the latest) carries it. So a peer cannot make the
	// requester rewrite a job record message by message.
	Changed []*Job
	Send    []Outbound
	Publish []Outbound
	Run     []*Lease
	Stop    []protocol.JobID
}

// Empty reports whether there is nothing to do.
func (r Ready) Empty() bool {
	return len(r.Save)+len(r.Changed)+len(r.Send)+len(r.Publish)+len(r.Run)+len(r.Stop) == 0
}

// Engine is the market state machine of one node, requester and provider
// sides both. It is not safe for concurrent use: one goroutine feeds it.
type Engine struct {
	cfg    Config
	jobs   map[protocol.JobID]*Job
	active map[protocol.JobID]*Job // jobs not yet terminal: what Tick scans
	offers *offerMemos             // offers answered, within a budget of bytes
	swept  time.Time               // when expired offers were last dropped
	leases map[protocol.JobID]*Lease
	rtt    map[peer.ID]time.Duration
	// paused, when set, is why this provider takes no new work now.
	paused  string
	ready   Ready
	saving  map[*Job]bool // the jobs in ready.Save
	changed map[*Job]bool // the jobs in ready.Changed
}

// NewEngine returns an engine with no jobs.
func NewEngine(cfg Config) *Engine {
	return &Engine{
		cfg:     cfg,
		jobs:    map[protocol.JobID]*Job{},
		active:  map[protocol.JobID]*Job{},
		offers:  newOfferMemos(cfg.OfferMemory, cfg.OfferMemoryPerRequester),
		leases:  map[protocol.JobID]*Lease{},
		rtt:     map[peer.ID]time.Duration{},
		saving:  map[*Job]bool{},
		changed: map[*Job]bool{},
	}
}

// Ready returns the pending work and clears it.
func (e *Engine) Ready() Ready {
	r := e.ready
	e.ready = Ready{}
	// A job both saved and changed is in Save only.
	r.Changed = slices.DeleteFunc(r.Changed, func(j *Job) bool { return e.saving[j] })
	clear(e.saving)
	clear(e.changed)
	return r
}

// Job returns a job by ID.
func (e *Engine) Job(id protocol.JobID) (*Job, bool) {
	j, ok := e.jobs[id]
	return j, ok
}

// Jobs returns every job of this requester.
func (e *Engine) Jobs() []*Job {
	out := make([]*Job, 0, len(e.jobs))
	for _, j := range e.jobs {
		out = append(out, j)
	}
	slices.SortFunc(out, func(a, b *Job) int { return a.Created.Compare(b.Created) })
	return out
}

// Pause makes a provider decline every offer and award with reason (its
// disk is low, say) until Pause(""); the leases it runs go on.
func (e *Engine) Pause(reason string) { e.paused = reason }

// ActiveLeases is the number of leases this provider is running.
func (e *Engine) ActiveLeases() int { return len(e.leases) }

// OfferMemory is how many offers this provider remembers and what they
// cost in bytes (within Config.OfferMemory).
func (e *Engine) OfferMemory() (offers, bytes int) { return e.offers.len(), e.offers.bytes() }

// maxRTTPeers bounds the peers whose round-trip times the engine keeps:
// every signer of a message sets one, and a peer can make identities
// without end. Past it the record starts over (a tie on price then falls
// to the peer ID until the times come again).
const maxRTTPeers = 4096

// SetRTT records the measured round-trip time to a peer, for ranking.
func (e *Engine) SetRTT(p peer.ID, d time.Duration) {
	if _, ok := e.rtt[p]; !ok && len(e.rtt) >= maxRTTPeers {
		clear(e.rtt)
	}
	e.rtt[p] = d
}

// touch records a change of j that watchers see but that is not written.
func (e *Engine) touch(j *Job, now time.Time) {
	j.Updated = now
	if !e.changed[j] {
		e.changed[j] = true
		e.ready.Changed = append(e.ready.Changed, j)
	}
}

func (e *Engine) save(j *Job, now time.Time) {
	j.Updated = now
	if !e.saving[j] {
		e.saving[j] = true
		e.ready.Save = append(e.ready.Save, j)
	}
}

func (e *Engine) send(to peer.ID, m *pb.MarketMessage) {
	e.ready.Send = append(e.ready.Send, Outbound{To: to, Msg: m})
}

// Submit starts a job from its signed offer. Candidates are the providers
// an interactive offer goes to directly, best first; batch offers only go
// to gossip.
func (e *Engine) Submit(now time.Time, offer *protocol.Signed, candidates []peer.ID) *Job {
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
	if len(candidates) > e.cfg.MaxCandidates && e.cfg.MaxCandidates > 0 {
		candidates = candidates[:e.cfg.MaxCandidates]
	}
	j.Candidates = candidates
	e.jobs[j.ID] = j
	e.active[j.ID] = j
	e.offer(j, now)
	return j
}

// Restore puts a persisted job back after a restart; its timers run on.
// offer is the job's verified first offer.
func (e *Engine) Restore(j *Job, offer *protocol.Signed) {
	j.ID, j.offer = offer.Job, offer.Msg.GetOffer()
	e.jobs[j.ID] = j
	if !j.State.Terminal() {
		e.active[j.ID] = j
	}
}

// offer (re)opens bidding: direct to candidates for interactive jobs,
// gossip for both tiers.
func (e *Engine) offer(j *Job, now time.Time) {
	j.State = Bidding
	j.Provider, j.Price, j.Leased = "", 0, time.Time{}
	j.AcceptBy, j.HeartbeatBy, j.ReofferAt = time.Time{}, time.Time{}, time.Time{}
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

func (e *Engine) publish(j *Job, msg *pb.MarketMessage) {
	e.ready.Publish = append(e.ready.Publish, Outbound{Tier: j.Tier, Msg: msg})
}

func (e *Engine) window(tier string) time.Duration {
	if tier == protocol.TierInteractive {
		return e.cfg.InteractiveWindow
	}
	return e.cfg.BatchWindow
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
	if (j.State == Assigned || j.State == Running) && j.Provider != "" {
		e.send(j.Provider, &pb.MarketMessage{Body: &pb.MarketMessage_Cancel{Cancel: &pb.Cancel{JobId: j.ID[:], Reason: reason}}})
	}
	e.finish(j, now, Failed, reason)
	return true
}

// finish ends a job; a provider that holds it is told to stop, unless the
// job ended by its result.
func (e *Engine) finish(j *Job, now time.Time, s State, reason string) {
	if (j.State == Assigned || j.State == Running) && j.Provider != "" && s != Succeeded && s != Failed {
		e.send(j.Provider, &pb.MarketMessage{Body: &pb.MarketMessage_Cancel{Cancel: &pb.Cancel{JobId: j.ID[:], Reason: reason}}})
	}
	j.State = s
	delete(e.active, j.ID)
	if reason != "" && j.Error == "" && s != Succeeded {
		j.Error = reason
	}
	j.WindowEnds, j.ReofferAt, j.AcceptBy, j.HeartbeatBy = time.Time{}, time.Time{}, time.Time{}, time.Time{}
	j.gossipLater = nil
	e.save(j, now)
}

// Step feeds one verified message from the network into the engine.
func (e *Engine) Step(now time.Time, m *protocol.Signed) {
	switch b := m.Msg.Body.(type) {
	case *pb.MarketMessage_Offer:
		e.onOffer(now, m, b.Offer)
	case *pb.MarketMessage_Bid:
		e.onBid(now, m, b.Bid)
	case *pb.MarketMessage_Decline:
		e.onDecline(now, m, b.Decline)
	case *pb.MarketMessage_Award:
		e.onAward(now, m, b.Award)
	case *pb.MarketMessage_Accept:
		e.onAccept(now, m, b.Accept.Attempt)
	case *pb.MarketMessage_Heartbeat:
		if j := e.leaseHolderJob(m, b.Heartbeat.Attempt); j != nil {
			e.markRunning(j, now)
		}
	case *pb.MarketMessage_Result:
		e.onResult(now, m, b.Result)
	case *pb.MarketMessage_Cancel:
		e.onCancel(m)
	case *pb.MarketMessage_Taken:
		if o := e.offers.get(m.Job); o != nil && o.requester == m.Signer {
			e.offers.forget(o)
		}
	}
}

// --- requester side ---

func (e *Engine) onBid(now time.Time, m *protocol.Signed, b *pb.Bid) {
	j, ok := e.jobs[m.Job]
	if !ok || j.State != Bidding || !asked(j, m.Signer) || heldOff(j, m.Signer, now) {
		return
	}
	if slices.ContainsFunc(j.Bids, func(old Bid) bool { return old.Provider == m.Signer }) {
		return // one bid per provider
	}
	if len(j.Bids) >= MaxBids {
		// Full: the cheapest bids are kept, so the window's winner is the
		// same as without the bound.
		dearest := 0
		for i, old := range j.Bids {
			if old.Price > j.Bids[dearest].Price {
				dearest = i
			}
		}
		if b.Price >= j.Bids[dearest].Price {
			return
		}
		j.Bids = slices.Delete(j.Bids, dearest, dearest+1)
	}
	j.Bids = append(j.Bids, Bid{Provider: m.Signer, Price: b.Price, At: now, KnownSeq: b.KnownSeq})
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

func (e *Engine) award(j *Job, now time.Time, p peer.ID, price uint64) {
	j.Attempt++
	j.State = Assigned
	j.Provider, j.Price = p, price
	j.WindowEnds, j.ReofferAt, j.EmptyRounds = time.Time{}, time.Time{}, 0
	j.AcceptBy = now.Add(e.cfg.AcceptTimeout)
	e.send(p, &pb.MarketMessage{Body: &pb.MarketMessage_Award{Award: &pb.Award{
		JobId: j.ID[:], Provider: []byte(p), Price: price, Attempt: j.Attempt,
	}}})
	e.save(j, now)
}

// AwardSent restarts the accept timeout of a job's award of attempt when
// the award actually leaves: the driver holds an award back until its
// escrow hold is on disk, and that wait is not the provider's to answer
// for. The new time is kept in memory only; after a restart the stored,
// earlier one applies.
func (e *Engine) AwardSent(now time.Time, id protocol.JobID, attempt uint32) {
	if j, ok := e.jobs[id]; ok && j.State == Assigned && j.Attempt == attempt {
		j.AcceptBy = now.Add(e.cfg.AcceptTimeout)
	}
}

// leaseHolderJob returns the job m is about if m's signer holds its
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

func (e *Engine) onResult(now time.Time, m *protocol.Signed, r *pb.Result) {
	j := e.leaseHolderJob(m, r.Attempt)
	if j == nil {
		if j, ok := e.jobs[m.Job]; ok && (j.Provider == m.Signer || slices.Contains(j.Excluded, m.Signer)) {
			// A late result from a lease that ended: counted for watchers,
			// written with the job's next change, so that a provider
			// cannot make the requester write the job again and again.
			j.RefusedResults++
			e.touch(j, now)
		}
		return
	}
	if j.State == Assigned { // the result overtook the acceptance
		e.markRunning(j, now)
	}
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

// --- provider side ---

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
	reply(&pb.Bid{JobId: m.Job[:], Provider: []byte(e.cfg.Self), Price: e.floor(o.Spec.Tier)})
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
	var r Requirements
	if s.Resources != nil {
		r = Requirements{GPUModel: s.Resources.GpuModel, GPUs: int(s.Resources.Gpus), MinVRAMMiB: int(s.Resources.VramMib)}
	}
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
func (e *Engine) preempt(l *Lease) {
	delete(e.leases, l.Job)
	e.ready.Stop = append(e.ready.Stop, l.Job)
	e.send(l.Requester, &pb.MarketMessage{Body: &pb.MarketMessage_Decline{Decline: &pb.Decline{
		JobId: l.Job[:], Provider: []byte(e.cfg.Self), Reason: ReasonPreempted,
	}}})
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
	decline := func(reason string) {
		e.send(m.Signer, &pb.MarketMessage{Body: &pb.MarketMessage_Decline{Decline: &pb.Decline{
			JobId: m.Job[:], Provider: []byte(e.cfg.Self), Reason: reason,
		}}})
	}
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
	l := &Lease{Job: m.Job, Requester: m.Signer, Spec: spec, Attempt: a.Attempt, Price: a.Price, Hold: a.Hold,
		Chain: a.Chain, Grant: a.Grant, Deadline: o.deadline, started: now, nextBeat: now.Add(e.cfg.HeartbeatInterval)}
	e.leases[m.Job] = l
	e.send(m.Signer, &pb.MarketMessage{Body: &pb.MarketMessage_Accept{Accept: &pb.Accept{JobId: m.Job[:], Attempt: a.Attempt}}})
	e.ready.Run = append(e.ready.Run, l)
}

func (e *Engine) onCancel(m *protocol.Signed) {
	if l, ok := e.leases[m.Job]; ok && l.Requester == m.Signer {
		delete(e.leases, m.Job)
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
}

// Finished reports that a provider's run of a lease ended; the engine sends
// the outcome to the requester as the signed result.
func (e *Engine) Finished(now time.Time, id protocol.JobID, o Outcome) {
	l, ok := e.leases[id]
	if !ok || l.Attempt != o.Attempt {
		return // cancelled meanwhile, or re-awarded since
	}
	delete(e.leases, id)
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
	e.send(l.Requester, &pb.MarketMessage{Body: &pb.MarketMessage_Result{Result: &pb.Result{
		JobId: id[:], Attempt: l.Attempt, ExitCode: o.ExitCode, Output: o.Output, Error: o.Error,
		ResultId: o.ResultID, ResultSize: o.ResultSize, Usage: o.Usage, Log: o.Log,
		OutputsId: o.OutputsID, OutputsSize: o.OutputsSize,
	}}})
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

// --- time ---

// Tick advances the engine's clock: bidding windows close, timeouts fire,
// deadlines expire jobs, providers send heartbeats.
func (e *Engine) Tick(now time.Time) {
	for _, j := range e.active {
		switch {
		case !j.Deadline.After(now):
			e.finish(j, now, Expired, "deadline passed")
		case j.State == Bidding && !j.WindowEnds.IsZero() && !now.Before(j.WindowEnds):
			e.closeWindow(j, now)
		case j.State == Bidding && !j.ReofferAt.IsZero() && !now.Before(j.ReofferAt):
			e.reoffer(j, now, false)
		case j.State == Assigned && !now.Before(j.AcceptBy):
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
	for _, l := range e.leases {
		if !now.Before(l.nextBeat) {
			l.nextBeat = now.Add(e.cfg.HeartbeatInterval)
			e.send(l.Requester, &pb.MarketMessage{Body: &pb.MarketMessage_Heartbeat{Heartbeat: &pb.Heartbeat{JobId: l.Job[:], Attempt: l.Attempt}}})
		}
	}
}

// closeWindow awards a batch job to its cheapest acceptable bid (ties: lower
// RTT, then peer ID). With none, the job waits for a late bid until
// reofferDelay has passed, then is offered again.
func (e *Engine) closeWindow(j *Job, now time.Time) {
	var best *Bid
	for i := range j.Bids {
		b := &j.Bids[i]
		if b.Price > j.MaxPrice || slices.Contains(j.Excluded, b.Provider) {
			continue
		}
		if best == nil || cmp.Or(
			cmp.Compare(b.Price, best.Price),
			cmp.Compare(e.rtt[b.Provider], e.rtt[best.Provider]),
			cmp.Compare(b.Provider, best.Provider),
		) < 0 {
			best = b
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
		consider(j.AcceptBy)
		consider(j.HeartbeatBy)
	}
	for _, l := range e.leases {
		consider(l.nextBeat)
	}
	if e.offers.len() > 0 {
		consider(e.swept.Add(offerSweepInterval))
	}
	return next
}
