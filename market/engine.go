package market

import (
	"slices"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/mira-market/mira/protocol"
	"github.com/mira-market/mira/protocol/pb"
)

// Config sets the engine's timing and, for a provider, its bid strategy.
type Config struct {
	Self peer.ID
	// InteractiveWindow is how long an interactive job waits for a first
	// acceptable bid; BatchWindow is how long a batch job collects bids
	// before the best wins (the cheapest, weighed by Reputation). A
	// window that ends without an acceptable bid leaves the job waiting:
	// the first acceptable bid that comes late wins at once, and the job
	// is offered again only after a pause that doubles with each empty
	// round (see reofferDelay).
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
	// BillTolerance is what a requester accepts in a bill beyond the time
	// it observed (zero: DefaultBillTolerance).
	BillTolerance Tolerance
	// ClaimWindow is how long after a run can have ended (award, accept
	// timeout, max_duration) an award's hold stays the provider's to
	// claim (zero: DefaultClaimWindow); the requester may release it only
	// after that.
	ClaimWindow time.Duration
	// SettlementInterval is the most a provider runs a lease without its
	// requester's countersignature of the usage so far (interim bills,
	// interim.go); zero: DefaultSettlementInterval.
	SettlementInterval time.Duration
	// RunUsage reads a provider's running lease's usage so far (paused
	// spans left out); ok is false before its job started. nil: no
	// interim bills (the run is billed when it ends).
	RunUsage func(job protocol.JobID, attempt uint32) (u *pb.Usage, ok bool)
	// CheckAcceptance checks that an interim acceptance is the
	// requester's signature of c, as every ledger checks the claim that
	// would quote it: the provider goes on running only on acceptances it
	// can claim. nil checks nothing (tests of other things).
	CheckAcceptance func(c ClaimRequest) error
	// Provider is nil for a node that sells nothing.
	Provider *ProviderPolicy
	// CheckGrant checks an award's grant, the requester's signature that
	// the provider's lease entry quotes (storage.LeaseGrant): an award it
	// refuses is declined (ReasonGrant), as no ledger would take its
	// lease. nil checks nothing (tests of other things).
	CheckGrant func(requester peer.ID, job protocol.JobID, a *pb.Award) error
	// Reputation weighs the providers' records in the choice of bid (a
	// batch window's winner, an interactive job's candidates); the zero
	// policy weighs nothing: the cheapest bid wins.
	Reputation ReputationPolicy
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

// Engine is the market state machine of one node, requester and provider
// sides both. It is not safe for concurrent use: one goroutine feeds it.
type Engine struct {
	cfg    Config
	jobs   map[protocol.JobID]*Job
	active map[protocol.JobID]*Job // jobs not yet terminal: what Tick scans
	offers *offerMemos             // offers answered, within a budget of bytes
	swept  time.Time               // when expired offers were last dropped
	leases map[protocol.JobID]*Lease
	// stopping are leases cancelled by their requesters whose runs are
	// ending: their outcomes are billed, not dropped.
	stopping map[protocol.JobID]*Lease
	// bills are this provider's runs that ended and are not settled yet:
	// billed until accepted, then claimed, then the result delivered
	// until acknowledged.
	bills map[billKey]*billing
	// billsChanged are the bills to persist with the next Ready.
	billsChanged map[billKey]bool
	rtt          map[peer.ID]time.Duration
	// heads are the requesters' heads of their ledger chains as this
	// provider's ledger shows them (SetKnownHead), for its bids.
	heads map[peer.ID]uint64
	// paused, when set, is why this provider takes no new work now.
	paused string
	// ready is the work asked for since the last Ready call; handed is
	// the last Ready, until it is advanced.
	ready  Ready
	handed *Ready
	// retryRelease are majority releases waiting for receipts, asked
	// again at retryAt.
	retryRelease []MajorityReleaseRequest
	retryAt      time.Time
	// polls are when this provider next looks for a verdict on each of
	// its replicas' bills (a majority claim).
	polls map[billKey]time.Time
	// shortAcceptances counts final acceptances kept without delivering
	// the result (shortAccepted); read by the operator's metrics.
	shortAcceptances atomic.Uint64
	saving           map[*Job]bool // the jobs in ready.Save
	changed          map[*Job]bool // the jobs in ready.Changed
}

// NewEngine returns an engine with no jobs.
func NewEngine(cfg Config) *Engine {
	return &Engine{
		cfg:      cfg,
		jobs:     map[protocol.JobID]*Job{},
		active:   map[protocol.JobID]*Job{},
		offers:   newOfferMemos(cfg.OfferMemory, cfg.OfferMemoryPerRequester),
		leases:   map[protocol.JobID]*Lease{},
		stopping: map[protocol.JobID]*Lease{},
		bills:    map[billKey]*billing{},
		rtt:      map[peer.ID]time.Duration{},
		heads:    map[peer.ID]uint64{},
		saving:   map[*Job]bool{},
		changed:  map[*Job]bool{},
	}
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

// SetKnownHead records the sequence number of the last entry of a
// requester's ledger chain that this provider's ledger holds. The caller
// sets it before it steps the requester's offer: the bid names it, so
// that the award carries the entries after it (Bid.KnownSeq). The record
// is bounded like the round-trip times.
func (e *Engine) SetKnownHead(requester peer.ID, seq uint64) {
	if _, ok := e.heads[requester]; !ok && len(e.heads) >= maxRTTPeers {
		clear(e.heads)
	}
	e.heads[requester] = seq
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

func (e *Engine) publish(j *Job, msg *pb.MarketMessage) {
	e.ready.Publish = append(e.ready.Publish, Outbound{Tier: j.Tier, Msg: msg})
}

// DefaultClaimWindow is Config.ClaimWindow's default.
const DefaultClaimWindow = 10 * time.Minute

func (e *Engine) claimWindow() time.Duration {
	if e.cfg.ClaimWindow > 0 {
		return e.cfg.ClaimWindow
	}
	return DefaultClaimWindow
}

func (e *Engine) tolerance() Tolerance {
	if e.cfg.BillTolerance == (Tolerance{}) {
		return DefaultBillTolerance
	}
	return e.cfg.BillTolerance
}

func (e *Engine) window(tier string) time.Duration {
	if tier == protocol.TierInteractive {
		return e.cfg.InteractiveWindow
	}
	return e.cfg.BatchWindow
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
		if !e.replicaAlive(now, m, b.Accept.Attempt) {
			e.onAccept(now, m, b.Accept.Attempt)
		}
	case *pb.MarketMessage_Heartbeat:
		if e.replicaAlive(now, m, b.Heartbeat.Attempt) {
			break
		}
		if j := e.leaseHolderJob(m, b.Heartbeat.Attempt); j != nil {
			e.markRunning(j, now)
		}
	case *pb.MarketMessage_Result:
		e.onResult(now, m, b.Result)
	case *pb.MarketMessage_Bill:
		e.onBill(now, m, b.Bill)
	case *pb.MarketMessage_Accepted:
		e.onAccepted(now, m, b.Accepted)
	case *pb.MarketMessage_ResultAck:
		e.onResultAck(billKey{m.Job, b.ResultAck.Attempt, m.Signer})
	case *pb.MarketMessage_Cancel:
		e.onCancel(m)
	case *pb.MarketMessage_Taken:
		if o := e.offers.get(m.Job); o != nil && o.requester == m.Signer {
			e.offers.forget(o)
		}
	}
}
