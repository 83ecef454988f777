package market

import (
	"slices"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

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
	// worst-ranked kept one if it ranks better (worstBid), so the best
	// always win.
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

	// Awards are the job's awards that left or were about to (one per
	// attempt, so at most MaxAttempts): a provider that took one may
	// bill it whatever became of the job, and is paid what it ran.
	Awards []AwardRecord `json:"awards,omitempty"`
	// Majority is the outcome (result and outputs IDs) a majority of a
	// job's replicas returned, once one did.
	Majority string `json:"majority,omitempty"`

	// gossipLater is the first direct round's offer of an interactive
	// job, still to be gossiped.
	gossipLater *pb.MarketMessage
	// awaitingHold marks an assigned job whose award waits for its hold
	// (HoldWritten): its accept timeout has not started.
	awaitingHold bool
}

// AwardRecord is one award of a job and its settlement as the requester
// sees it: the hold that backs it, when its lease began (the provider's
// acceptance) and the first bill came, and what the requester accepted.
type AwardRecord struct {
	Attempt  uint32    `json:"attempt"`
	Provider peer.ID   `json:"provider"`
	Price    uint64    `json:"price"`
	HoldSeq  uint64    `json:"hold_seq,omitempty"`
	Expiry   time.Time `json:"expiry"`
	Leased   time.Time `json:"leased,omitzero"`
	// Ended is when the lease ended for the requester (cancelled,
	// revoked, the job offered again or finished): its observation of
	// the run stops there, whenever the bill comes.
	Ended  time.Time `json:"ended,omitzero"`
	BillAt time.Time `json:"bill_at,omitzero"`
	// InterimAt is when the requester last signed an interim acceptance
	// of the award: the next waits half a settlement interval.
	InterimAt time.Time `json:"interim_at,omitzero"`
	Billed    uint64    `json:"billed,omitempty"`
	Accepted  uint64    `json:"accepted,omitempty"`
	Final     bool      `json:"final,omitempty"`
	// Receipt and Acceptance are the last bill's receipt hash and the
	// requester's signature of what it accepted, re-sent as they are if
	// the bill comes again (the Accepted was lost).
	Receipt    []byte `json:"receipt,omitempty"`
	Acceptance []byte `json:"acceptance,omitempty"`
	// Delivered is set once the provider's result came (and was
	// acknowledged).
	Delivered bool `json:"delivered,omitempty"`

	// Of a job with replicas (replicas.go): the award's own timers; the
	// outcome its bill named (its vote); its verdict once a majority
	// decided, and for a minority whether its hold's release is done;
	// Gone once it cannot vote (declined, silent, or its hold failed).
	AcceptBy     time.Time `json:"accept_by,omitzero"`
	HeartbeatBy  time.Time `json:"heartbeat_by,omitzero"`
	Outcome      string    `json:"outcome,omitempty"`
	Verdict      string    `json:"verdict,omitempty"`
	Released     bool      `json:"released,omitempty"`
	Gone         bool      `json:"gone,omitempty"`
	awaitingHold bool
}

// award is j's award of attempt to p, if any.
func (j *Job) award(attempt uint32, p peer.ID) *AwardRecord {
	for i := range j.Awards {
		if a := &j.Awards[i]; a.Attempt == attempt && a.Provider == p {
			return a
		}
	}
	return nil
}

// observed is how long the requester saw the award's lease run up to at:
// from its acceptance to at, or to its end if that came first.
func (a *AwardRecord) observed(at time.Time) time.Duration {
	if a.Leased.IsZero() {
		return 0
	}
	if !a.Ended.IsZero() && a.Ended.Before(at) {
		at = a.Ended
	}
	return max(at.Sub(a.Leased), 0)
}

// endAwards records that every award of j still open ended at now: the
// job was offered again (a revoke, a timeout, a decline) or finished.
func endAwards(j *Job, now time.Time) {
	for i := range j.Awards {
		if a := &j.Awards[i]; a.Ended.IsZero() {
			a.Ended = now
		}
	}
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

// Copy returns a copy of the job that shares no slice the engine changes
// in place (its awards, bids, declines): what the engine's goroutine
// hands to another.
func (j *Job) Copy() Job {
	c := *j
	c.Bids, c.Declines, c.Excluded = slices.Clone(j.Bids), slices.Clone(j.Declines), slices.Clone(j.Excluded)
	c.DeclinedAwards, c.Candidates, c.Awards = slices.Clone(j.DeclinedAwards), slices.Clone(j.Candidates), slices.Clone(j.Awards)
	return c
}

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
	// MinHoldExpiry is the earliest expiry of the hold naming this
	// provider that the run may rely on: max_duration and half the claim
	// window from the award (the caller's escrow check refuses a hold
	// that expires sooner).
	MinHoldExpiry time.Time
	started       time.Time
	nextBeat      time.Time
	// pay is the run's interim settlement (interim.go): nil until the
	// run starts, and for a lease not longer than a settlement interval.
	pay *payState
}

// Outbound is a message for the caller to sign and send: to one peer, or
// published on a tier's topic when To is empty.
type Outbound struct {
	To   peer.ID
	Tier string
	Msg  *pb.MarketMessage
}
